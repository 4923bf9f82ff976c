"""The `mmsearch` command: run the stack, manage collections, ingest folders, watch jobs, search.

Built on `mmsearch.client.Client`. `--api` / `--key` (or `MMSEARCH_API` / `MMSEARCH_API_KEY`)
choose the server; without them the API of `mmsearch up` on this machine is used
(`MMSEARCH_HOST` / `MMSEARCH_PORT`, default http://127.0.0.1:8000).

Exit codes: 0 success; 1 an API or operation error (one line on stderr, no traceback);
2 a usage error (bad flag or argument, one line); 3 a job ended without succeeding
(`completed_with_errors`, `failed` or `cancelled`; `ingest` and `jobs watch`).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import click

from mmsearch.client import (DEFAULT_URL, ApiError, Client, FileItem, NotFound, ProgressBar,
                           overall_state)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
EXIT_API_ERROR = 1
EXIT_USAGE = 2
EXIT_JOB_NOT_SUCCEEDED = 3
CAPTION_SOURCES = ("sidecar", "filename", "csv", "none")


def _default_api() -> str:
    if os.environ.get("MMSEARCH_API"):
        return os.environ["MMSEARCH_API"]
    host = os.environ.get("MMSEARCH_HOST") or "127.0.0.1"
    port = os.environ.get("MMSEARCH_PORT") or "8000"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}" if (host, port) != ("127.0.0.1", "8000") else DEFAULT_URL


class Cli(click.Group):
    """A group whose errors are one line: usage errors exit 2, API errors 1, failed jobs 3."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `mmsearch` alone: the help text
                exc.show()
                sys.exit(EXIT_USAGE)
            where = exc.ctx.command_path if exc.ctx else "mmsearch"
            hint = f" (see '{where} --help')" if exc.ctx else ""
            click.echo(f"{where}: error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_USAGE)
        except click.exceptions.Abort:
            click.echo("mmsearch: aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"mmsearch: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except ApiError as exc:
            click.echo(f"mmsearch: error: {exc}", err=True)
            sys.exit(EXIT_API_ERROR)
        except (OSError, TimeoutError, ValueError) as exc:
            click.echo(f"mmsearch: error: {exc}", err=True)
            sys.exit(EXIT_API_ERROR)
        sys.exit(code if isinstance(code, int) else 0)


def _client(ctx: click.Context) -> Client:
    return ctx.find_root().obj


def _dump(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[list[Any]], header: list[str]) -> None:
    cells = [header] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _short(text: Any, width: int) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--api", default=_default_api, show_default="$MMSEARCH_API or http://127.0.0.1:8000",
              help="Base URL of the mmsearch API.")
@click.option("--key", envvar="MMSEARCH_API_KEY", default=None, help="API key [$MMSEARCH_API_KEY].")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds per HTTP request.")
@click.version_option(package_name="mmsearch", prog_name="mmsearch")
@click.pass_context
def cli(ctx: click.Context, api: str, key: str | None, timeout: float) -> None:
    """mmsearch: multimodal image search (text, image or both) over sharded collections.

    \b
    Exit codes: 0 ok, 1 API/operation error, 2 usage error,
                3 a job ended completed_with_errors, failed or cancelled.
    """
    ctx.obj = Client(api, key=key, timeout=timeout)


# up / status ------------------------------------------------------------------------------

@cli.command()
def up() -> None:
    """Start Redis, the API and every worker on this machine (Ctrl-C stops them).

    Runs the service's stack supervisor (`python -m shared.runtime.stack`) in this process's
    place: the client package itself imports nothing of the service."""
    os.execv(sys.executable, [sys.executable, "-m", "shared.runtime.stack"])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Readiness, shard slots and owners, collections with counts, queue lengths.

    Exits 1 when the service is not ready (Redis down or a shard slot without an owner).
    """
    client = _client(ctx)
    ready = client.readyz()
    try:
        colls = client.collections()
    except ApiError as exc:
        colls, ready["collections_error"] = [], str(exc)
    if as_json:
        _dump({"api": client.url, "readyz": ready, "collections": colls})
    else:
        state = "ready" if ready["ready"] else f"NOT READY: {ready.get('message', '')}"
        click.echo(f"api          {client.url}  {state}")
        click.echo(f"redis        {ready.get('redis', '?')}")
        click.echo(f"slots in use {ready.get('slots', ready.get('missing_slots', '?'))}")
        if ready.get("queues"):
            click.echo("queues       " + "  ".join(f"{q}={n}" for q, n in ready["queues"].items()))
        if not ready["ready"] and ready.get("missing_shards"):
            click.echo(f"missing      {ready['missing_shards']}")
        click.echo(f"collections  {len(colls)}")
        if colls:
            _collections_table(colls)
    if not ready["ready"]:
        ctx.exit(EXIT_API_ERROR)


# collections ------------------------------------------------------------------------------

@cli.group()
def collections() -> None:
    """Create, list, show and delete collections."""


def _collections_table(colls: list[dict[str, Any]]) -> None:
    _table([[c["name"], c["shards"], c["count"], c["image_model"], c.get("precision", "fp32"), c["text_model"],
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def collections_create(ctx: click.Context, name: str, shards: int | None, image_model: str | None,
                       text_model: str | None, thumbnails: bool | None, precision: str | None,
                       as_json: bool) -> None:
    """Create the collection NAME."""
    body = _client(ctx).create_collection(name, shards=shards, image_model=image_model, text_model=text_model,
                                          store_thumbnails=thumbnails, precision=precision)
    if as_json:
        _dump(body)
    else:
        click.echo(f"created collection {body['name']}: {body['shards']} shards, "
                   f"{body['image_model']} + {body['text_model']}")


@collections.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def collections_list(ctx: click.Context, as_json: bool) -> None:
    """List the collections with their item counts."""
    colls = _client(ctx).collections()
    if as_json:
        _dump(colls)
    elif colls:
        _collections_table(colls)
    else:
        click.echo("no collections")


@collections.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def collections_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show the collection NAME."""
    body = _client(ctx).collection(name)
    if as_json:
        _dump(body)
        return
    for key, value in body.items():
        if key == "dims":
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif key == "created_at":
            value = _time(value)
        click.echo(f"{key:<17}{value}")


@collections.command("delete")
@click.argument("name")
@click.pass_context
def collections_delete(ctx: click.Context, name: str) -> None:
    """Delete the collection NAME with all its items."""
    _client(ctx).delete_collection(name)
    click.echo(f"deleted collection {name}")


# ingest -----------------------------------------------------------------------------------

def walk_images(paths: Iterable[str]) -> list[tuple[str, Path]]:
    """(id, path) of every image: ids are paths relative to the walked folder (a file: its name)."""
    found: list[tuple[str, Path]] = []
    seen: dict[str, Path] = {}
    for raw in paths:
        root = Path(raw)
        if root.is_dir():
            entries = sorted(p for p in root.rglob("*")
                             if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                             and not any(part.startswith(".") for part in p.relative_to(root).parts))
            pairs = [(p.relative_to(root).as_posix(), p) for p in entries]
        else:
            if root.suffix.lower() not in IMAGE_SUFFIXES:
                raise click.BadParameter(f"{raw} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))})",
                                         param_hint="DIR_OR_FILES")
            pairs = [(root.name, root)]
        for item_id, path in pairs:
            if item_id in seen and seen[item_id].resolve() != path.resolve():
                raise click.BadParameter(f"two files would get the id {item_id!r}: {seen[item_id]} and {path}",
                                         param_hint="DIR_OR_FILES")
            if item_id not in seen:
                seen[item_id] = path
                found.append((item_id, path))
    return found


def _read_csv(path: str) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]


HEADER_KEYS = frozenset({"id", "filename", "file", "path", "name", "id_or_filename", "image"})


def _lookup(table: dict[str, Any], item_id: str, path: Path) -> Any:
    for key in (item_id, path.name, path.stem):
        if key in table:
            return table[key]
    return None


def read_captions_csv(path: str) -> dict[str, str]:
    """`id_or_filename,caption` rows (an optional header row is skipped)."""
    rows = _read_csv(path)
    if rows and rows[0][0].strip().lower() in HEADER_KEYS:
        rows = rows[1:]
    out = {}
    for n, row in enumerate(rows, 1):
        if len(row) < 2:
            raise click.BadParameter(f"{path}: row {n} needs two columns: id_or_filename,caption",
                                     param_hint="--captions-file")
        out[row[0].strip()] = ",".join(row[1:]).strip()
    return out


def _scalar(text: str) -> Any:
    """A metadata cell: integers, numbers and true/false become JSON scalars, the rest stays text."""
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


def read_metadata_csv(path: str) -> dict[str, dict[str, Any]]:
    """A header row `id_or_filename,key1,key2,...`, then one row per item (empty cells left out)."""
    rows = _read_csv(path)
    if len(rows) < 1 or len(rows[0]) < 2:
        raise click.BadParameter(f"{path}: needs a header row 'id_or_filename,key1,...'",
                                 param_hint="--metadata-csv")
    header = [h.strip() for h in rows[0]]
    return {row[0].strip(): {k: _scalar(v) for k, v in zip(header[1:], row[1:]) if v.strip()}
            for row in rows[1:]}


def caption_for(source: str, item_id: str, path: Path, table: dict[str, str]) -> str | None:
    if source == "sidecar":
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file():
            return None
        return sidecar.read_text(encoding="utf-8").strip() or None
    if source == "filename":
        return " ".join(path.stem.replace("_", " ").replace("-", " ").split()) or None
    if source == "csv":
        return _lookup(table, item_id, path)
    return None


def _final_summary(collection: str, bodies: list[dict[str, Any]], skipped: int) -> tuple[str, int]:
    done = sum(b["done"] for b in bodies)
    failed = sum(b["failed"] for b in bodies)
    total = sum(b["total"] for b in bodies)
    state = overall_state(bodies)
    line = (f"{state}: {done} ingested, {failed} failed of {total} into {collection}; "
            f"{skipped} already present, skipped")
    return line, 0 if state == "succeeded" else EXIT_JOB_NOT_SUCCEEDED


def _print_errors(bodies: list[dict[str, Any]], limit: int = 20) -> None:
    errors = [e for b in bodies for e in b.get("errors", [])]
    for e in errors[:limit]:
        click.echo(f"  failed {e.get('id')}: {e.get('code')}: {e.get('message')}", err=True)
    if len(errors) > limit:
        click.echo(f"  ... and {len(errors) - limit} more errors (mmsearch jobs show JOB)", err=True)


@cli.command()
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
    client = _client(ctx)
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
                     metadata=_lookup(metadata, item_id, path))
            for item_id, path in found if item_id not in present]
    if present:
        click.echo(f"{len(present)} of {len(found)} images already in {collection}, skipped", err=True)
    if not todo:
        if as_json:
            _dump({"jobs": [], "skipped": len(present)})
        else:
            click.echo(f"nothing to upload: all {len(found)} images are in {collection}")
        return
    if no_wait:
        answers = client.ingest(collection, files=todo, wait=False, batch=batch)
        if as_json:
            _dump({"jobs": answers, "skipped": len(present)})
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
        _dump({"jobs": bodies, "skipped": len(present)})
    else:
        click.echo(line)
    _print_errors(bodies)
    ctx.exit(code)


# jobs -------------------------------------------------------------------------------------

@cli.group()
def jobs() -> None:
    """Show, watch and cancel jobs."""


def _time(value: float | None) -> str:
    if value is None:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(value).isoformat(sep=" ", timespec="seconds")


def _show_job(body: dict[str, Any]) -> None:
    click.echo(f"job          {body['id']}")
    click.echo(f"kind         {body.get('kind')}   collection {body.get('collection')}")
    click.echo(f"state        {body['state']}")
    click.echo(f"items        {body['done']} done, {body['failed']} failed of {body['total']}")
    click.echo(f"created      {_time(body.get('created_at'))}   started {_time(body.get('started_at'))}   "
               f"finished {_time(body.get('finished_at'))}")
    for e in body.get("errors", [])[:20]:
        click.echo(f"  error #{e.get('index')} {e.get('id')}: {e.get('code')}: {e.get('message')}")


@jobs.command("show")
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def jobs_show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's state, counters and errors."""
    body = _client(ctx).job(job_id)
    _dump(body) if as_json else _show_job(body)


@jobs.command("watch")
@click.argument("job_ids", metavar="JOB...", nargs=-1, required=True)
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="Give up after this many seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the final bodies as JSON.")
@click.pass_context
def jobs_watch(ctx: click.Context, job_ids: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """One progress bar over the jobs until they are final; exits 3 unless all succeeded."""
    bar = ProgressBar(stream=sys.stderr, label="jobs")
    bodies = _client(ctx).wait_jobs(list(job_ids), timeout=timeout, bar=bar)
    if as_json:
        _dump(bodies if len(bodies) > 1 else bodies[0])
    else:
        for body in bodies:
            click.echo(f"{body['id']} {body['state']}: {body['done']} done, {body['failed']} failed "
                       f"of {body['total']}")
        _print_errors(bodies)
    ctx.exit(0 if overall_state(bodies) == "succeeded" else EXIT_JOB_NOT_SUCCEEDED)


@jobs.command("cancel")
@click.argument("job_id", metavar="JOB")
@click.pass_context
def jobs_cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel what has not run yet of a job."""
    _client(ctx).cancel_job(job_id)
    click.echo(f"cancel requested for job {job_id}")


# search -----------------------------------------------------------------------------------

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


def _filters(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any] | None:
    out = {}
    for value in values:
        key, sep, raw = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx, param)
        out[key] = _scalar(raw)
    return out or None


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


@cli.command()
@click.option("-c", "--collection", required=True, help="Collection to search.")
@click.option("-t", "--text", help="Text query.")
@click.option("-i", "--image", type=click.Path(exists=True, dir_okay=False), help="Image file query.")
@click.option("-k", type=click.IntRange(1, 1000), default=10, show_default=True, help="Number of hits.")
@click.option("--weights", callback=_weights, metavar="I,T", help="Weights of the image and text blocks.")
@click.option("--filter", "filters", multiple=True, callback=_filters, metavar="KEY=VALUE",
              help="Metadata filter (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")
@click.pass_context
def search(ctx: click.Context, collection: str, text: str | None, image: str | None, k: int,
           weights: dict[str, float] | None, filters: dict[str, Any] | None, as_json: bool) -> None:
    """Search a collection by text, by an example image, or both."""
    if not text and not image:
        raise click.UsageError("give --text, --image or both")
    body = _client(ctx).search(collection, text=text, image=image, k=k, weights=weights, filter=filters)
    if as_json:
        _dump(body)
        return
    hits = body.get("hits", [])
    _table([[rank, _short(h["id"], 40), f"{h['score']:.4f}", _score((h.get("scores") or {}).get("image")),
             _score((h.get("scores") or {}).get("text")), _short(h.get("text"), 50)]
            for rank, h in enumerate(hits, 1)], ["RANK", "ID", "SCORE", "IMAGE", "TEXT", "CAPTION"])
    shards = body.get("shards", {})
    note = "" if shards.get("answered") == shards.get("total") else \
        f"  WARNING: only {shards.get('answered')} of {shards.get('total')} shards answered"
    click.echo(f"{len(hits)} hits in {body.get('took_ms', 0):.0f} ms{note}", err=True)


def main() -> None:
    """Console-script entry point (`mmsearch`)."""
    cli.main(prog_name="mmsearch")


if __name__ == "__main__":
    main()
