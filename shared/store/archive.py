"""The portable archive of one collection (export and import): a zip of two members.

- `manifest.json`: `{"format": "mmsearch-export", "version": 1, "collection": {the settings:
  name, shards, image_model, text_model, dims, precision, store_thumbnails}, "items": n,
  "exported_at": epoch seconds, "sha256": hex digest of items.jsonl}`;
- `items.jsonl`: one JSON object per item, by id: `{"id", "text", "metadata", "has_image",
  "thumbnail": base64 JPEG or null, "vector": base64 little-endian float32, the fused vector as
  the shard stored it}`.

`read_archive` checks everything before anything is used, so an archive is taken whole or
refused whole (`ArchiveError` saying why): a zip that opens and whose members pass their CRC,
not unpacking to more than MAX_UNPACK_RATIO times its size, the format and version, the
manifest's fields, the items' digest and count, and every item
(a valid id, once; a vector of the collection's size; the record's types).
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
from dataclasses import dataclass
from typing import IO, Any, Iterable

import numpy as np

from shared.errors import MMSearchError
from shared.store.serializers import vector_from_b64

FORMAT, VERSION = "mmsearch-export", 1
MANIFEST, ITEMS = "manifest.json", "items.jsonl"
SETTINGS = ("name", "shards", "image_model", "text_model", "dims", "precision", "store_thumbnails")
MAX_ID_CHARS = 256
MAX_UNPACK_RATIO = 8  # vectors hardly compress: an archive that unpacks to more is refused (a zip bomb)


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
    collection: dict[str, Any]  # the exported collection's SETTINGS
    items: list[ArchivedItem]


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


def _member(zf: zipfile.ZipFile, name: str) -> bytes:
    try:
        return zf.read(name)
    except KeyError:
        raise ArchiveError(f"not an mmsearch export: no {name}") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError) as exc:  # CRC
        raise ArchiveError(f"{name} is damaged: {exc}") from None


def _manifest(raw: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise ArchiveError(f"{MANIFEST} is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError("not an mmsearch export (its manifest names another format)")
    if manifest.get("version") != VERSION:
        raise ArchiveError(f"export format version {manifest.get('version')!r}; this server reads {VERSION}")
    coll = manifest.get("collection")
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


def read_archive(data: bytes) -> Archive:
    """The whole archive in `data`, checked; ArchiveError when any of it is wrong."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError):
        raise ArchiveError("not a zip archive, or a truncated one") from None
    with zf:
        if sum(info.file_size for info in zf.infolist()) > MAX_UNPACK_RATIO * len(data) + 2**20:
            raise ArchiveError(f"unpacks to more than {MAX_UNPACK_RATIO} times its size; not an export of this server")
        manifest = _manifest(_member(zf, MANIFEST))
        raw_items = _member(zf, ITEMS)
    if hashlib.sha256(raw_items).hexdigest() != manifest["sha256"]:
        raise ArchiveError(f"{ITEMS} does not match the manifest's checksum (altered or damaged)")
    dims = manifest["collection"]["dims"]
    lines = raw_items.splitlines()
    if len(lines) != manifest["items"]:
        raise ArchiveError(f"{ITEMS} holds {len(lines)} items, the manifest says {manifest['items']}")
    items = [_item(line, dims["image"] + dims["text"], n) for n, line in enumerate(lines)]
    if len({item.id for item in items}) != len(items):
        raise ArchiveError(f"{ITEMS} names an id twice")
    return Archive(manifest["collection"], items)
