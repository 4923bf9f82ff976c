"""Checking the query of a listing (GET /v1/collections/{c}/items) and the body of a delete by
ids or by filter (POST /v1/collections/{c}/items/delete).

A listing takes `limit` (1..MAX_PAGE, default DEFAULT_PAGE), `cursor` (the `next_cursor` of
the page before: an item id), `filter` (a JSON object as a string, as in a search) and
`fields` (a comma-separated subset of LIST_FIELDS; `id` alone asks for ids only).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict

from api.bodies import loads_strict
from api.validation.common import invalid, only_fields, only_params, single
from api.validation.items import is_valid_id
from api.validation.search import parse_filter

MAX_PAGE = 1000
DEFAULT_PAGE = 100
MAX_DELETE_IDS = 1000
LIST_FIELDS = ("text", "metadata", "has_image", "thumbnail")
DEFAULT_FIELDS = ("text", "metadata", "has_image")
LIST_PARAMS = frozenset({"limit", "cursor", "filter", "fields"})
_DIGITS = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class ListInput:
    after: str | None
    limit: int
    filter: dict[str, Any] | None
    fields: tuple[str, ...]


@dataclass(frozen=True)
class DeleteInput:
    """Exactly one of the two: the ids to delete, or the filter their items meet."""

    ids: list[str] | None
    filter: dict[str, Any] | None


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE
    if not _DIGITS.match(raw) or not 1 <= int(raw) <= MAX_PAGE:
        raise invalid(f"limit must be an integer in 1..{MAX_PAGE}", field="limit")
    return int(raw)


def _fields(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return DEFAULT_FIELDS
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = sorted(set(names) - set(LIST_FIELDS) - {"id", "shard"})
    if unknown:
        raise invalid(f"unknown field(s) {', '.join(unknown)[:200]}; fields takes a comma-separated list of "
                      f"{', '.join(LIST_FIELDS)} (id and shard always come)", field="fields", unknown=unknown[:10])
    return tuple(field for field in LIST_FIELDS if field in names)


def parse_list_args(args: MultiDict[str, str]) -> ListInput:
    only_params(args, LIST_PARAMS)
    cursor = single(args, "cursor")
    if cursor is not None and not is_valid_id(cursor):
        raise invalid("cursor must be the next_cursor of the page before (an item id)", field="cursor")
    raw_filter = single(args, "filter")
    return ListInput(cursor, _limit(single(args, "limit")),
                     None if raw_filter is None else parse_filter(loads_strict(raw_filter, "filter")),
                     _fields(single(args, "fields")))


def parse_delete_request(body: dict[str, Any]) -> DeleteInput:
    only_fields(body, frozenset({"ids", "filter"}), {})
    ids, filter = body.get("ids"), body.get("filter")
    if (ids is None) == (filter is None):
        raise invalid("a delete takes either ids or filter", field="ids" if ids is not None else "filter")
    if filter is not None:
        if filter == {}:
            raise invalid("an empty filter would delete every item; delete the collection instead", field="filter")
        return DeleteInput(None, parse_filter(filter))
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_DELETE_IDS or not all(is_valid_id(i) for i in ids):
        raise invalid(f"ids must be a list of 1 to {MAX_DELETE_IDS} item ids", field="ids")
    return DeleteInput(list(dict.fromkeys(ids)), None)
