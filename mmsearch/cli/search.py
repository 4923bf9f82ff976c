"""`mmsearch search`: a text, image or combined query, printed as a table or as the API's JSON."""
from __future__ import annotations

from typing import Any

import click

from mmsearch.cli.common import FILTER_HELP, client_of, dump, filter_option, short, table


def _weights(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, float] | None:
    if value is None:
        return None
    try:
        parts = [float(p) for p in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 2 or any(p < 0 or p != p or p == float("inf") for p in parts):
        raise click.BadParameter("give two numbers >= 0: IMAGE,TEXT (e.g. 1,0.5)", ctx, param)
    return {"image": parts[0], "text": parts[1]}


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@click.command()
@click.option("-c", "--collection", required=True, help="Collection to search.")
@click.option("-t", "--text", help="Text query.")
@click.option("-i", "--image", type=click.Path(exists=True, dir_okay=False), help="Image file query.")
@click.option("-k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Number of hits.")
@click.option("--offset", type=click.IntRange(0, 999), default=0, show_default=True,
              help="Skip this many hits of the ranking (offset + k <= 1000): the next page.")
@click.option("--weights", callback=_weights, metavar="I,T", help="Weights of the image and text blocks.")
@click.option("--filter", "filters", multiple=True, callback=filter_option, metavar="FILTER", help=FILTER_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_context
def search(ctx: click.Context, collection: str, text: str | None, image: str | None, k: int, offset: int,
           weights: dict[str, float] | None, filters: dict[str, Any] | None, as_json: bool) -> None:
    """Search a collection by text, by an example image, or both."""
    if not text and not image:
        raise click.UsageError("give --text, --image or both")
    if offset + k > 1000:
        raise click.UsageError("--offset plus -k must be at most 1000")
    body = client_of(ctx).search(collection, text=text, image=image, k=k, weights=weights, filter=filters,
                                 offset=offset)
    if as_json:
        dump(body)
        return
    hits = body.get("hits", [])
    table([[rank, short(h["id"], 40), f"{h['score']:.4f}", _score((h.get("scores") or {}).get("image")),
            _score((h.get("scores") or {}).get("text")), short(h.get("text"), 50)]
           for rank, h in enumerate(hits, offset + 1)], ["RANK", "ID", "SCORE", "IMAGE", "TEXT", "CAPTION"])
    shards = body.get("shards", {})
    note = "" if shards.get("answered") == shards.get("total") else \
        f"  WARNING: only {shards.get('answered')} of {shards.get('total')} shards answered"
    click.echo(f"{len(hits)} hits in {body.get('took_ms', 0):.0f} ms{note}", err=True)
