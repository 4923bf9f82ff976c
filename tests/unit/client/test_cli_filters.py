"""The CLI's `--filter` values: KEY=VALUE equalities and JSON objects with operators, together."""
import click
import pytest

from mmsearch.cli.common import filter_option


def parse(*values: str):
    return filter_option(click.Context(click.Command("x")), click.Option(["--filter"]), values)


def test_equalities_and_operator_objects_combine():
    assert parse() is None
    assert parse("year=2020", "ok=true", "name=a=b") == {"year": 2020, "ok": True, "name": "a=b"}
    assert parse('{"year": {"$gte": 2020}, "$or": [{"a": 1}, {"b": 2}]}', "tag=red") == {
        "year": {"$gte": 2020}, "$or": [{"a": 1}, {"b": 2}], "tag": "red"}


@pytest.mark.parametrize("values, message", [
    (("year",), "is not KEY=VALUE"), (("=1",), "is not KEY=VALUE"), (('{"a": ',), "not a JSON object"),
    (("{}[]",), "not a JSON object"), (("year=1", '{"year": {"$lt": 3}}'), "filtered twice"),
])
def test_bad_values_are_usage_errors(values, message):
    with pytest.raises(click.BadParameter, match=message):
        parse(*values)
