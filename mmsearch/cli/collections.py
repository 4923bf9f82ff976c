"""`mmsearch collections create|list|show|delete|export|import`."""
from __future__ import annotations

from typing import Any

import click

from mmsearch.cli.common import EXIT_JOB_NOT_SUCCEEDED, client_of, dump, local_time, print_job_errors, table


@click.group()
def collections() -> None:
    """Create, list, show, delete, export and import collections."""


def collections_table(colls: list[dict[str, Any]]) -> None:
    table([[c["name"], c["shards"], c["count"], c["image_model"], c.get("precision", "fp32"), c["text_model"],
            "yes" if c.get("store_thumbnails") else "no"] for c in colls],
          ["NAME", "SHARDS", "COUNT", "IMAGE MODEL", "PRECISION", "TEXT MODEL", "THUMBNAILS"])


@collections.command("create")
@click.argument("name")
@click.option("--shards", type=click.IntRange(1), help="Shards (default: the server's).")
@click.option("--image-model", help="efficientnet_lite0 or resnet50 (default: the server's).")
@click.option("--text-model", help="Text model name (default: the server's).")
@click.option("--thumbnails/--no-thumbnails", default=None, help="Keep a small JPEG per item.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Image model precision, fixed for the collection (default: the server's).")
@click.option("--encoder-setting", help="Encoder setting (v1, ...), fixed for the collection (default: the server's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def collections_create(ctx: click.Context, name: str, shards: int | None, image_model: str | None,
                       text_model: str | None, thumbnails: bool | None, precision: str | None,
                       encoder_setting: str | None, as_json: bool) -> None:
    """Create the collection NAME."""
    body = client_of(ctx).create_collection(name, shards=shards, image_model=image_model, text_model=text_model,
                                            store_thumbnails=thumbnails, precision=precision,
                                            encoder_setting=encoder_setting)
    if as_json:
        dump(body)
    else:
        click.echo(f"created collection {body['name']}: {body['shards']} shards, "
                   f"{body['image_model']} + {body['text_model']}")


@collections.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def collections_list(ctx: click.Context, as_json: bool) -> None:
    """List the collections with their item counts."""
    colls = client_of(ctx).collections()
    if as_json:
        dump(colls)
    elif colls:
        collections_table(colls)
    else:
        click.echo("no collections")


@collections.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def collections_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show the collection NAME."""
    body = client_of(ctx).collection(name)
    if as_json:
        dump(body)
        return
    for key, value in body.items():
        if key == "dims":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif key == "created_at":
            value = local_time(value)
        click.echo(f"{key:<17}{value}")


@collections.command("delete")
@click.argument("name")
@click.pass_context
def collections_delete(ctx: click.Context, name: str) -> None:
    """Delete the collection NAME with all its items."""
    client_of(ctx).delete_collection(name)
    click.echo(f"deleted collection {name}")


@collections.command("export")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the export job's final body as JSON.")
@click.pass_context
def collections_export(ctx: click.Context, name: str, file: str, timeout: float | None, as_json: bool) -> None:
    """Export the collection NAME (records, vectors, thumbnails, settings) into the archive FILE."""
    job = client_of(ctx).export_collection(name, file, timeout=timeout)
    if as_json:
        dump(job)
    elif job["state"] == "succeeded":
        click.echo(f"exported {job['result']['items']} items of {name} to {file} ({job['result']['bytes']} bytes)")
    else:
        click.echo(f"export of {name} {job['state']}", err=True)
        print_job_errors([job])
    ctx.exit(0 if job["state"] == "succeeded" else EXIT_JOB_NOT_SUCCEEDED)


@collections.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", help="Name of the new collection (default: the archive's).")
@click.option("--no-wait", is_flag=True, help="Print the import job's id and return at once.")
@click.option("--json", "as_json", is_flag=True, help="Print the import job's final body as JSON.")
@click.pass_context
def collections_import(ctx: click.Context, file: str, name: str | None, no_wait: bool, as_json: bool) -> None:
    """Create a collection from the export archive FILE, without encoding anything again."""
    body = client_of(ctx).import_collection(file, name=name, wait=not no_wait)
    if no_wait:
        click.echo(body["job_id"])
        return
    if as_json:
        dump(body)
    else:
        click.echo(f"{body['state']}: imported {body['done']} items of {body['total']} into "
                   f"{body['collection']['name']}")
        print_job_errors([body])
    ctx.exit(0 if body["state"] == "succeeded" else EXIT_JOB_NOT_SUCCEEDED)
