"""What the CLI's commands share: exit codes, the invocation's client, `--filter` values, and
the ways they print.

Printing: JSON (`--json`), aligned tables, shortened cells, local times, the errors of jobs.
"""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from mmsearch.client import Client

EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_NOT_SUCCEEDED = 3


def client_of(ctx: click.Context) -> Client:
    """The client the root command built from --api, --key and --timeout."""
    return ctx.find_root().obj


def dump(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def short(text: Any, width: int) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def local_time(value: float | None) -> str:
    if value is None:
        return "-"
    return dt.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")


def scalar(text: str) -> Any:
    """A typed value (a metadata cell, a filter): integers, numbers and true/false become JSON scalars, the rest stays text."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            value = kind(text)
            return value if value == value and value not in (float("inf"), float("-inf")) else text
        except ValueError:
            pass
    return text


def filter_option(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any] | None:
    """The metadata filter of repeated `--filter` options, their entries together: `KEY=VALUE`
    (equality, VALUE typed by `scalar`) or a JSON object with operators
    (`{"year": {"$gte": 2020}}`, docs/api.md)."""
    out: dict[str, Any] = {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                entries = json.loads(value)  # an object: JSON text that starts with "{"
            except ValueError as exc:
                raise click.BadParameter(f"not a JSON object: {exc}", ctx, param) from None
        else:
            key, sep, raw = value.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{value!r} is not KEY=VALUE or a JSON object", ctx, param)
            entries = {key: scalar(raw)}
        twice = sorted(set(entries) & set(out))
        if twice:
            raise click.BadParameter(f"{twice[0]!r} is filtered twice; combine its conditions in one object",
                                     ctx, param)
        out.update(entries)
    return out or None


FILTER_HELP = 'Metadata filter: KEY=VALUE or a JSON object with operators, e.g. \'{"year": {"$gte": 2020}}\' ' \
              '(repeatable; all must hold).'


def print_job_errors(bodies: list[dict[str, Any]], limit: int = 20) -> None:
    """The first `limit` item errors of the jobs, on stderr."""
    errors = [e for b in bodies for e in b.get("errors", [])]
    for e in errors[:limit]:
        click.echo(f"  failed {e.get('id')}: {e.get('code')}: {e.get('message')}", err=True)
    if len(errors) > limit:
        click.echo(f"  ... and {len(errors) - limit} more errors (mmsearch jobs show JOB)", err=True)
