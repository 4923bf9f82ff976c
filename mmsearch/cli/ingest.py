"""`mmsearch ingest`: upload folders and files, skipping ids already present, and follow the jobs."""
from __future__ import annotations

import sys
from typing import Any

import click

from mmsearch.cli.common import EXIT_JOB_NOT_SUCCEEDED, client_of, dump, print_job_errors
from mmsearch.cli.folders import (CAPTION_SOURCES, IMAGE_SUFFIXES, caption_for, lookup, read_captions_csv,
                                  read_metadata_csv, walk_images)
from mmsearch.errors import NotFound
from mmsearch.job_states import overall_state
from mmsearch.progress import ProgressBar
from mmsearch.uploads import FileItem


def _final_summary(collection: str, bodies: list[dict[str, Any]], skipped: int) -> tuple[str, int]:
    done = sum(b["done"] for b in bodies)
    failed = sum(b["failed"] for b in bodies)
    total = sum(b["total"] for b in bodies)
    state = overall_state(bodies)
    line = (f"{state}: {done} ingested, {failed} failed of {total} into {collection}; "
            f"{skipped} already present, skipped")
    return line, 0 if state == "succeeded" else EXIT_JOB_NOT_SUCCEEDED


@click.command()
@click.argument("paths", metavar="DIR_OR_FILES...", nargs=-1, required=True,
                type=click.Path(exists=True, readable=True))
@click.option("-c", "--collection", required=True, help="Target collection.")
@click.option("--captions", type=click.Choice(CAPTION_SOURCES), default=None,
              help="Where captions come from: photo.txt beside photo.jpg (sidecar, the default), the "
                   "file name (filename), a CSV (csv, with --captions-file), or none.")
@click.option("--captions-file", type=click.Path(exists=True, dir_okay=False),
              help="CSV of id_or_filename,caption (implies --captions csv).")
@click.option("--metadata-csv", type=click.Path(exists=True, dir_okay=False),
              help="CSV with a header id_or_filename,key1,key2,...: metadata per item.")
@click.option("--batch", type=click.IntRange(1, 1000), default=64, show_default=True, help="Items per request.")
@click.option("--no-wait", is_flag=True, help="Print the job ids and return at once.")
@click.option("--force", is_flag=True, help="Upload every file, even ids already in the collection.")
@click.option("--create", is_flag=True, help="Create the collection when it does not exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the final job bodies as JSON.")
@click.pass_context
def ingest(ctx: click.Context, paths: tuple[str, ...], collection: str, captions: str | None,
           captions_file: str | None, metadata_csv: str | None, batch: int, no_wait: bool,
           force: bool, create: bool, as_json: bool) -> None:
    """Upload the images in folders (walked recursively) and files, with captions and metadata.

    Item ids are the paths relative to each folder given (a file given by itself: its name), so
    re-running the same command uploads only the images not yet in the collection.
    Formats: .jpg .jpeg .png .webp .bmp .gif. Exits 3 when an item failed.
    """
    if captions == "csv" and not captions_file:
        raise click.UsageError("--captions csv needs --captions-file FILE")
    if captions_file and captions not in (None, "csv"):
        raise click.UsageError(f"--captions-file goes with --captions csv, not {captions}")
    source = captions or ("csv" if captions_file else "sidecar")
    client = client_of(ctx)
    caption_table = read_captions_csv(captions_file) if captions_file else {}
    metadata = read_metadata_csv(metadata_csv) if metadata_csv else {}
    found = walk_images(paths)
    if not found:
        raise click.ClickException(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {', '.join(paths)}")
    try:
        client.collection(collection)
    except NotFound as exc:
        if not create:
            raise click.ClickException(f"{exc.message}; create it with 'mmsearch collections create "
                                       f"{collection}' or add --create") from None
        client.create_collection(collection)
        click.echo(f"created collection {collection}", err=True)
    present = set() if force else client.exists(collection, [i for i, _ in found])
    todo = [FileItem(path, id=item_id, text=caption_for(source, item_id, path, caption_table),
                     metadata=lookup(metadata, item_id, path))
            for item_id, path in found if item_id not in present]
    if present:
        click.echo(f"{len(present)} of {len(found)} images already in {collection}, skipped", err=True)
    if not todo:
        if as_json:
            dump({"jobs": [], "skipped": len(present)})
        else:
            click.echo(f"nothing to upload: all {len(found)} images are in {collection}")
        return
    if no_wait:
        answers = client.ingest(collection, files=todo, wait=False, batch=batch)
        if as_json:
            dump({"jobs": answers, "skipped": len(present)})
        else:
            for answer in answers:
                click.echo(answer["job_id"])
        return
    try:
        bodies = client.ingest(collection, files=todo, batch=batch,
                               bar=ProgressBar(stream=sys.stderr))
    except KeyboardInterrupt:
        click.echo("\nstopped; uploaded batches go on in the service. Re-run the same command to "
                   "upload the rest.", err=True)
        ctx.exit(130)
    line, code = _final_summary(collection, bodies, len(present))
    if as_json:
        dump({"jobs": bodies, "skipped": len(present)})
    else:
        click.echo(line)
    print_job_errors(bodies)
    ctx.exit(code)
