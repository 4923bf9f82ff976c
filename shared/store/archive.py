"""The portable archive of one collection (export and import): a zip of two members.

- `manifest.json`: `{"format": "mmsearch-export", "version": 1, "collection": {the settings:
  name, shards, image_model, text_model, dims, precision, encoder_setting, store_thumbnails},
  "items": n, "exported_at": epoch seconds, "sha256": hex digest of items.jsonl}`; an archive
  written before encoder settings existed lacks `encoder_setting` and reads as "v1";
- `items.jsonl`: one JSON object per item, by id: `{"id", "text", "metadata", "has_image",
  "thumbnail": base64 JPEG or null, "vector": base64 little-endian float32, the fused vector as
  the shard stored it}`.

`read_archive` checks everything before anything is used, so an archive is taken whole or
refused whole (`ArchiveError` saying why): a zip that opens and whose members pass their CRC,
not unpacking to more than MAX_UNPACK_RATIO times its size, the format and version, the
manifest's fields, the items' digest and count, and every item (a valid id, each once and in
ascending order as exports write them; a vector of the collection's size; the record's types).
It reads the archive from a seekable file and streams items.jsonl, so its memory does not grow
with the archive: one item at a time, the ids' order standing in for a set of them.
`Archive.batches()` then reads the checked items again, a bounded batch at a time.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import time
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Iterable, Iterator

import numpy as np

from shared.encoding.encoder_settings import LEGACY_ENCODER_SETTING
from shared.errors import MMSearchError
from shared.store.serializers import vector_from_b64

FORMAT, VERSION = "mmsearch-export", 1
MANIFEST, ITEMS = "manifest.json", "items.jsonl"
SETTINGS = ("name", "shards", "image_model", "text_model", "dims", "precision", "encoder_setting", "store_thumbnails")
LEGACY_SETTINGS = {"encoder_setting": LEGACY_ENCODER_SETTING}  # what older exports that lack them had
MAX_ID_CHARS = 256
MAX_UNPACK_RATIO = 8  # vectors hardly compress: an archive that unpacks to more is refused (a zip bomb)
MAX_MANIFEST_BYTES = 2**20
MAX_LINE_BYTES = 64 * 2**20  # one item of items.jsonl, read whole


class ArchiveError(MMSearchError):
    """The archive is not one this server can import; nothing of it was used."""


@dataclass(frozen=True)
class ArchivedItem:
    id: str
    text: str | None
    metadata: dict[str, Any]
    has_image: bool
    thumbnail: bytes | None
    vector: np.ndarray


@dataclass(frozen=True)
class Archive:
    """A checked archive in a seekable file: the exported collection's SETTINGS and item count."""

    collection: dict[str, Any]
    count: int
    file: IO[bytes]

    def batches(self, max_items: int, max_bytes: int) -> Iterator[list[ArchivedItem]]:
        """The archive's items in order, read again from its file, in lists of at most `max_items`
        items whose lines in items.jsonl hold at most `max_bytes` together (or of one longer item)."""
        dim = self.collection["dims"]["image"] + self.collection["dims"]["text"]
        batch: list[ArchivedItem] = []
        size = 0
        with _opened(self.file) as zf, _lines(zf, ITEMS) as lines:
            for number, line in enumerate(lines):
                if batch and (len(batch) == max_items or size + len(line) > max_bytes):
                    yield batch
                    batch, size = [], 0
                batch.append(_item(line, dim, number))
                size += len(line)
        if batch:
            yield batch


def item_line(item_id: str, text: str | None, metadata: dict[str, Any], has_image: bool,
              thumbnail_b64: str | None, vector_b64: str) -> bytes:
    """One line of items.jsonl (the thumbnail and the float32 vector as base64)."""
    return json.dumps({"id": item_id, "text": text, "metadata": metadata, "has_image": has_image,
                       "thumbnail": thumbnail_b64, "vector": vector_b64}, ensure_ascii=False).encode() + b"\n"


def write_archive(out: IO[bytes], collection: dict[str, Any], lines: Iterable[bytes]) -> int:
    """Write the archive of `collection` (its SETTINGS) with the items' lines (`item_line`, by
    id) to `out`; the number of items."""
    digest, count = hashlib.sha256(), 0
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(ITEMS, "w", force_zip64=True) as items:
            for line in lines:
                items.write(line)
                digest.update(line)
                count += 1
        zf.writestr(MANIFEST, json.dumps({"format": FORMAT, "version": VERSION,
                                          "collection": {k: collection[k] for k in SETTINGS}, "items": count,
                                          "exported_at": time.time(), "sha256": digest.hexdigest()}, indent=1))
    return count


@contextmanager
def _opened(file: IO[bytes]) -> Iterator[zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
        raise ArchiveError("not a zip archive, or a truncated one") from None
    with zf:
        yield zf


def _info(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    try:
        return zf.getinfo(name)
    except KeyError:
        raise ArchiveError(f"not an mmsearch export: no {name}") from None


@contextmanager
def _lines(zf: zipfile.ZipFile, name: str) -> Iterator[Iterator[bytes]]:
    """The lines of member `name` (each at most MAX_LINE_BYTES), read as they are used; a
    damaged member (a CRC, bad compressed data) raises ArchiveError."""
    def lines() -> Iterator[bytes]:
        while line := member.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise ArchiveError(f"{name} holds a line over {MAX_LINE_BYTES} bytes; not an export of this server")
            yield line

    try:
        with zf.open(_info(zf, name)) as member:
            yield lines()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError) as exc:  # CRC
        raise ArchiveError(f"{name} is damaged: {exc}") from None


def _manifest(zf: zipfile.ZipFile) -> dict[str, Any]:
    if _info(zf, MANIFEST).file_size > MAX_MANIFEST_BYTES:
        raise ArchiveError(f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes; not an export of this server")
    with _lines(zf, MANIFEST) as lines:
        raw = b"".join(lines)
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ArchiveError(f"{MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError("not an mmsearch export (its manifest names another format)")
    if manifest.get("version") != VERSION:
        raise ArchiveError(f"export format version {manifest.get('version')!r}; this server reads {VERSION}")
    coll = manifest.get("collection")
    if isinstance(coll, dict):
        coll = manifest["collection"] = {**LEGACY_SETTINGS, **coll}
    dims = coll.get("dims") if isinstance(coll, dict) else None
    if not isinstance(coll, dict) or set(coll) != set(SETTINGS) or not isinstance(dims, dict) \
            or not all(isinstance(dims.get(b), int) and dims[b] > 0 for b in ("image", "text")) \
            or not isinstance(manifest.get("items"), int) or not isinstance(manifest.get("sha256"), str):
        raise ArchiveError(f"{MANIFEST} lacks or mistypes the collection's settings, the item count or the digest")
    return manifest


def _item(raw: bytes, dim: int, number: int) -> ArchivedItem:
    try:
        entry = json.loads(raw)
        item_id, text, metadata = entry["id"], entry["text"], entry["metadata"]
        vector = vector_from_b64(entry["vector"])
        thumbnail = base64.b64decode(entry["thumbnail"], validate=True) if entry["thumbnail"] else None
        has_image = entry["has_image"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise ArchiveError(f"item {number} of {ITEMS} is not an item") from None
    if not (isinstance(item_id, str) and 1 <= len(item_id) <= MAX_ID_CHARS and item_id.isprintable()) \
            or not isinstance(text, (str, type(None))) or not isinstance(metadata, dict) \
            or not isinstance(has_image, bool) or vector.shape != (dim,) or not np.isfinite(vector).all():
        raise ArchiveError(f"item {number} of {ITEMS} has a bad id, record or vector (of {dim} numbers)")
    return ArchivedItem(item_id, text, metadata, has_image, thumbnail, vector)


def _scanned(lines: Iterable[bytes], dim: int) -> tuple[str, int, ArchiveError | None]:
    """(sha256 hex digest, count, the first bad item's error or None) of items.jsonl's lines;
    every line is read, so that a digest or count that does not match is what is reported."""
    digest, count, error, previous = hashlib.sha256(), 0, None, ""
    for count, line in enumerate(lines, start=1):
        digest.update(line)
        if error is None:
            try:
                item_id = _item(line, dim, count - 1).id
                if item_id <= previous:
                    raise ArchiveError(f"item {count - 1} of {ITEMS} names an id twice or out of order "
                                       "(an export lists each id once, ascending)")
                previous = item_id
            except ArchiveError as exc:
                error = exc
    return digest.hexdigest(), count, error


def read_archive(file: IO[bytes]) -> Archive:
    """The archive in the seekable `file`, checked whole; ArchiveError when any of it is wrong."""
    with _opened(file) as zf:
        size = file.seek(0, io.SEEK_END)
        if sum(info.file_size for info in zf.infolist()) > MAX_UNPACK_RATIO * size + 2**20:
            raise ArchiveError(f"unpacks to more than {MAX_UNPACK_RATIO} times its size; not an export of this server")
        manifest = _manifest(zf)
        dims = manifest["collection"]["dims"]
        with _lines(zf, ITEMS) as lines:
            digest, count, error = _scanned(lines, dims["image"] + dims["text"])
    if digest != manifest["sha256"]:
        raise ArchiveError(f"{ITEMS} does not match the manifest's checksum (altered or damaged)")
    if count != manifest["items"]:
        raise ArchiveError(f"{ITEMS} holds {count} items, the manifest says {manifest['items']}")
    if error is not None:
        raise error
    return Archive(manifest["collection"], count, file)
