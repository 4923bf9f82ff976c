"""What `mmsearch ingest` reads from disk: the images of folders and files with their ids,
captions (sidecar .txt, file name, or a CSV) and metadata (a CSV)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Iterable

import click

from mmsearch.cli.common import scalar

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
CAPTION_SOURCES = ("sidecar", "filename", "csv", "none")
HEADER_KEYS = frozenset({"id", "filename", "file", "path", "name", "id_or_filename", "image"})


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


def lookup(table: dict[str, Any], item_id: str, path: Path) -> Any:
    """A CSV row's value for an image, keyed by its id, its file name or its file name's stem."""
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


def read_metadata_csv(path: str) -> dict[str, dict[str, Any]]:
    """A header row `id_or_filename,key1,key2,...`, then one row per item (empty cells left out)."""
    rows = _read_csv(path)
    if len(rows) < 1 or len(rows[0]) < 2:
        raise click.BadParameter(f"{path}: needs a header row 'id_or_filename,key1,...'",
                                 param_hint="--metadata-csv")
    header = [h.strip() for h in rows[0]]
    return {row[0].strip(): {k: scalar(v) for k, v in zip(header[1:], row[1:]) if v.strip()}
            for row in rows[1:]}


def caption_for(source: str, item_id: str, path: Path, table: dict[str, str]) -> str | None:
    """An image's caption from one of CAPTION_SOURCES (`table`: the captions CSV)."""
    if source == "sidecar":
        sidecar = path.with_suffix(".txt")
        if not sidecar.is_file():
            return None
        return sidecar.read_text(encoding="utf-8").strip() or None
    if source == "filename":
        return " ".join(path.stem.replace("_", " ").replace("-", " ").split()) or None
    if source == "csv":
        return lookup(table, item_id, path)
    return None
