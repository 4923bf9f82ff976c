"""`mmsearch items list|get|delete|thumbnail`: a collection's items by id."""
from __future__ import annotations

import json
import sys
from typing import Any

import click

from mmsearch.cli.common import (EXIT_JOB_NOT_SUCCEEDED, FILTER_HELP, client_of, dump, filter_option,
                                 print_job_errors, short, table)
from mmsearch.job_states import overall_state

DELETE_BATCH = 1000  # ids per delete request (the API's limit)
FIELDS = ("text", "metadata", "has_image", "thumbnail")


@click.group()
def items() -> None:
    """List, show, delete items and fetch their thumbnails."""


def _fields(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip() and n.strip() != "id"]
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise click.BadParameter(f"unknown field {unknown[0]!r}; give a comma-separated list of "
                                 f"{', '.join(FIELDS)} (or id)", ctx, param)
    return names


def _items_table(listed: list[dict[str, Any]]) -> None:
    table([[short(i["id"], 40), i["shard"], {True: "yes", False: "no"}.get(i.get("has_image"), ""),
            short(i.get("text"), 40), short(json.dumps(i["metadata"], ensure_ascii=False), 40)
            if "metadata" in i else ""] for i in listed],
          ["ID", "SHARD", "IMAGE", "TEXT", "METADATA"])


@items.command("list")
@click.option("-c", "--collection", required=True, help="Collection to list.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Items per page.")
@click.option("--cursor", help="Start after this id (the next cursor a page before printed).")
@click.option("--all", "every", is_flag=True, help="Every page, not just one.")
@click.option("--filter", "filters", multiple=True, callback=filter_option, metavar="FILTER", help=FILTER_HELP)
@click.option("--fields", callback=_fields, metavar="F,...",
              help=f"Of {', '.join(FIELDS)}; 'id' for ids alone (default: the server's: text,metadata,has_image).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON page (with --all: every item).")
@click.pass_context
def items_list(ctx: click.Context, collection: str, limit: int, cursor: str | None, every: bool,
               filters: dict[str, Any] | None, fields: list[str] | None, as_json: bool) -> None:
    """List the items of a collection by id, a page at a time."""
    client = client_of(ctx)
    if every:
        listed = list(client.iter_items(collection, filter=filters, fields=fields, page_size=limit))
        page: dict[str, Any] = {"items": listed, "next_cursor": None}
    else:
        page = client.items(collection, limit=limit, cursor=cursor, filter=filters, fields=fields)
    if as_json:
        dump(page)
        return
    _items_table(page["items"])
    more = f"; next page: --cursor {page['next_cursor']!r}" if page["next_cursor"] else ""
    click.echo(f"{len(page['items'])} items{more}", err=True)


@items.command("get")
@click.option("-c", "--collection", required=True, help="Collection of the item.")
@click.argument("item_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def items_get(ctx: click.Context, collection: str, item_id: str, as_json: bool) -> None:
    """Show the item ID."""
    body = client_of(ctx).item(collection, item_id)
    if as_json:
        dump(body)
        return
    for key, value in body.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else value
        click.echo(f"{key:<10}{shown}")


@items.command("delete")
@click.option("-c", "--collection", required=True, help="Collection to delete from.")
@click.argument("item_ids", metavar="[ID]...", nargs=-1)
@click.option("--filter", "filters", multiple=True, callback=filter_option, metavar="FILTER",
              help="Delete the items meeting this filter instead of ids. " + FILTER_HELP)
@click.option("--no-wait", is_flag=True, help="Print the job ids and return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the final job bodies as JSON.")
@click.pass_context
def items_delete(ctx: click.Context, collection: str, item_ids: tuple[str, ...], filters: dict[str, Any] | None,
                 no_wait: bool, as_json: bool) -> None:
    """Delete the items ID... or those meeting --filter; exits 3 unless the jobs succeeded."""
    if bool(item_ids) == bool(filters):
        raise click.UsageError("give item ids or --filter (one of the two)")
    client = client_of(ctx)
    ids = list(dict.fromkeys(item_ids))
    answers = ([client.delete_items(collection, ids=ids[i:i + DELETE_BATCH]) for i in range(0, len(ids), DELETE_BATCH)]
               if ids else [client.delete_items(collection, filter=filters)])
    if no_wait:
        for answer in answers:
            click.echo(answer["job_id"])
        return
    bodies = client.wait_jobs([a["job_id"] for a in answers])
    if as_json:
        dump(bodies if len(bodies) > 1 else bodies[0])
    else:
        absent = sum(len(b.get("not_found", [])) for b in bodies)
        total = sum(b["total"] for b in bodies)
        click.echo(f"{overall_state(bodies)}: {total - absent} deleted, {absent} not found of {total} "
                   f"from {collection}")
        print_job_errors(bodies)
    ctx.exit(0 if overall_state(bodies) == "succeeded" else EXIT_JOB_NOT_SUCCEEDED)


@items.command("thumbnail")
@click.option("-c", "--collection", required=True, help="Collection of the item.")
@click.argument("item_id", metavar="ID")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True), required=True,
              help="JPEG file to write ('-': standard output).")
@click.pass_context
def items_thumbnail(ctx: click.Context, collection: str, item_id: str, output: str) -> None:
    """Write the JPEG thumbnail of the item ID."""
    data = client_of(ctx).thumbnail(collection, item_id)
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    with open(output, "wb") as f:
        f.write(data)
    click.echo(f"wrote {output} ({len(data)} bytes)")
