"""`mmsearch up` (the whole stack on this machine) and `mmsearch status` (is the service ready)."""
from __future__ import annotations

import os
import sys

import click

from mmsearch.cli.collections import collections_table
from mmsearch.cli.common import EXIT_API_ERROR, client_of, dump
from mmsearch.errors import ApiError


@click.command()
def up() -> None:
    """Start Redis, the API and every worker on this machine (Ctrl-C stops them).

    Runs the service's stack supervisor (`python -m shared.runtime.stack`) in this process's
    place: the client package itself imports nothing of the service."""
    os.execv(sys.executable, [sys.executable, "-m", "shared.runtime.stack"])


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Readiness, shard slots and owners, collections with counts, queue lengths.

    Exits 1 when the service is not ready (Redis down, an encode or query worker still starting
    or not running, or a shard slot without an owner).
    """
    client = client_of(ctx)
    ready = client.readyz()
    try:
        colls = client.collections()
    except ApiError as exc:
        colls, ready["collections_error"] = [], str(exc)
    if as_json:
        dump({"api": client.url, "readyz": ready, "collections": colls})
    else:
        state = "ready" if ready["ready"] else f"NOT READY: {ready.get('message', '')}"
        click.echo(f"api          {client.url}  {state}")
        click.echo(f"redis        {ready.get('redis', '?')}")
        for role, state in (ready.get("roles") or {}).items():
            click.echo(f"{role:<12} {state}")
        click.echo(f"slots in use {ready.get('slots', ready.get('missing_slots', '?'))}")
        if ready.get("queues"):
            click.echo("queues       " + "  ".join(f"{q}={n}" for q, n in ready["queues"].items()))
        if not ready["ready"] and ready.get("missing_shards"):
            click.echo(f"missing      {ready['missing_shards']}")
        if not ready["ready"] and ready.get("loading_slots"):
            click.echo(f"loading      slots {ready['loading_slots']}")
        click.echo(f"collections  {len(colls)}")
        if colls:
            collections_table(colls)
    if not ready["ready"]:
        ctx.exit(EXIT_API_ERROR)
