"""Validating collection, item and search requests before anything is stored or enqueued.

Every check raises `ApiError` (400 `invalid_request`, 413 `payload_too_large`) whose details
name the offending `field` (and the item's `index`), so a malformed request is refused as a
whole and a well-formed one carries only what the workers can use.

Rules where docs/api.md is silent:
- Unknown fields are refused everywhere; `null` counts as an absent optional field.
- A text that is empty or only whitespace counts as no text.
- Image sources: exactly one of `base64` (strict alphabet, no whitespace), `url` or `path`.
  A `url` must be http/https with a host, no credentials, no whitespace or control characters,
  at most 8192 characters, and a host given as a literal IP address must be one the URL
  policy allows (shared.encoding.sources: no loopback, private, link-local or metadata address unless
  MMSEARCH_URL_ALLOW_PRIVATE says so); host names are resolved and checked by the worker, so
  an unreachable or forbidden host fails the item alone. A `path` is relative to
  MMSEARCH_INGEST_ROOT; absolute paths, paths that lead out of the root (through `..` or a
  symlink), that cannot be resolved, or that name something other than a regular file (a
  directory, a FIFO, a device) are refused here, a file over MMSEARCH_MAX_IMAGE_BYTES is a
  413; a missing file, like an unreachable URL, fails only its item and is reported in the
  job's `errors`.
- Error messages echo at most a short prefix of what the client sent and never an internal
  path (the ingest root stays private).
- Uploaded images (base64 or file parts) must be non-empty and at most
  MMSEARCH_MAX_IMAGE_BYTES (413 above); whether they decode is checked by the workers.
- Multipart ingest: file parts named `image` are items 0..n-1 in order; the optional `items`
  part (a form field or a file, one JSON array of items without `image` fields) is aligned by
  position. It may be shorter than the images (the rest get generated ids and no text) or
  longer (each extra item is text-only, so it needs a `text`).
- Multipart search: an optional `image` file part; `text`, `k` (decimal digits), `weights` and
  `filter` (JSON objects) as form fields.
"""
from __future__ import annotations

import base64
import binascii
import math
import re
import uuid
from dataclasses import dataclass
import os
import stat
from pathlib import Path
from typing import Any, Union

from werkzeug.datastructures import FileStorage, MultiDict

from api.bodies import loads_strict
from api.errors import ApiError
from shared.store import catalog
from shared.runtime.config import Settings
from shared.encoding.precision import PRECISIONS
from shared.encoding.sources import SourceError, address_allowed, check_url_syntax, literal_address

# Uploaded bytes to stage for the workers, or a source they fetch: {"url": u} / {"path": abs}.
ImageInput = Union[bytes, dict[str, str]]

IMAGE_SOURCES = ("base64", "url", "path")
ITEM_FIELDS = frozenset({"id", "image", "text", "metadata"})
SEARCH_FIELDS = frozenset({"text", "image", "k", "weights", "filter"})
COLLECTION_FIELDS = frozenset({"name", "shards", "image_model", "text_model", "store_thumbnails", "precision"})
BLOCKS = ("image", "text")
MAX_ID_CHARS = 256
DEFAULT_K = 10
MAX_K = 1000
MAX_WEIGHT = 1e6  # large enough for any ratio; sums of larger ones could overflow in scoring
_DIGITS = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class NewCollection:
    name: str
    shards: int | None
    image_model: str | None
    text_model: str | None
    store_thumbnails: bool | None
    precision: str | None


@dataclass(frozen=True)
class ItemInput:
    id: str
    text: str | None
    metadata: dict[str, Any]
    image: ImageInput | None


@dataclass(frozen=True)
class SearchInput:
    text: str | None
    image: ImageInput | None
    k: int
    weights: dict[str, float] | None
    filter: dict[str, Any] | None


def invalid(message: str, **details: Any) -> ApiError:
    return ApiError(400, "invalid_request", message, details)


def _names(names: list[str]) -> list[str]:
    """Client-chosen names as echoed in an error: at most 10, each at most 64 characters."""
    return [n if len(n) <= 64 else n[:64] + "..." for n in names[:10]]


def _only_fields(value: dict[str, Any], allowed: frozenset[str], where: dict[str, Any],
                 prefix: str = "") -> None:
    unknown = _names(sorted(set(value) - allowed))
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(prefix + u for u in unknown)}; "
                      f"allowed: {', '.join(sorted(allowed))}",
                      **where, field=prefix + unknown[0], unknown=unknown)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_float(value: int | float) -> float:
    """A JSON number as a float; NaN for what no float holds (10**400), which fails every range."""
    try:
        return float(value)
    except OverflowError:
        return math.nan


def _is_int_in(value: Any, low: int, high: int) -> bool:
    """An integer (JSON's true/false are not) in low..high."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# Collections ------------------------------------------------------------------------------

def _optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise invalid(f"{field} must be a non-empty string", field=field)
    return value


def parse_new_collection(body: dict[str, Any]) -> NewCollection:
    _only_fields(body, COLLECTION_FIELDS, {})
    name = body.get("name")
    if not isinstance(name, str) or not catalog.NAME_RE.fullmatch(name):
        raise invalid(f"name must match {catalog.NAME_RE.pattern}", field="name")
    shards = body.get("shards")
    if shards is not None and not _is_int_in(shards, 1, catalog.MAX_SHARDS):
        raise invalid(f"shards must be an integer in 1..{catalog.MAX_SHARDS}", field="shards")
    thumbnails = body.get("store_thumbnails")
    if thumbnails is not None and not isinstance(thumbnails, bool):
        raise invalid("store_thumbnails must be true or false", field="store_thumbnails")
    precision = _optional_str(body, "precision")
    if precision is not None and precision not in ("auto", *PRECISIONS):
        raise invalid(f"precision must be one of auto, {', '.join(PRECISIONS)}", field="precision")
    return NewCollection(name, shards, _optional_str(body, "image_model"),
                         _optional_str(body, "text_model"), thumbnails, precision)


# Images -----------------------------------------------------------------------------------

def _checked_upload(data: bytes, settings: Settings, field: str, where: dict[str, Any]) -> bytes:
    if not data:
        raise invalid(f"{field} is empty", **where, field=field)
    if len(data) > settings.max_image_bytes:
        raise ApiError(413, "payload_too_large",
                       f"{field} is {len(data)} bytes; at most {settings.max_image_bytes} allowed",
                       {**where, "field": field, "max_image_bytes": settings.max_image_bytes})
    return data


def _decode_base64(raw: str, settings: Settings, where: dict[str, Any]) -> bytes:
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"image.base64 is not valid base64: {exc}", **where, field="image.base64") from exc
    return _checked_upload(data, settings, "image.base64", where)


def _checked_url(raw: str, settings: Settings, where: dict[str, Any]) -> dict[str, str]:
    try:
        _, host, _ = check_url_syntax(raw)
    except SourceError as exc:
        raise invalid(f"image.url: {exc}", **where, field="image.url") from None
    literal = literal_address(host)
    if literal is not None and not address_allowed(literal, settings):
        raise invalid(f"image.url: {literal} is not a public address; such URLs are refused",
                      **where, field="image.url")
    return {"url": raw}


def _resolved_path(raw: str, settings: Settings, where: dict[str, Any]) -> dict[str, str]:
    if settings.ingest_root is None:
        raise invalid("path images need MMSEARCH_INGEST_ROOT", **where, field="image.path")
    relative = Path(raw)
    if "\x00" in raw or relative.is_absolute():
        raise invalid("image.path must be a path relative to the ingest root", **where, field="image.path")
    root = settings.ingest_root.resolve()
    try:
        target = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a name too long...
        reason = getattr(exc, "strerror", None) or "symlink loop"
        raise invalid(f"image.path cannot be resolved ({reason})", **where, field="image.path") from None
    if target == root or not target.is_relative_to(root):
        raise invalid("image.path leads outside the ingest root", **where, field="image.path")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return {"path": str(target)}  # fails its item alone (the file may yet appear)
    except OSError as exc:
        raise invalid(f"image.path cannot be read ({exc.strerror})", **where, field="image.path") from None
    if not stat.S_ISREG(info.st_mode):
        raise invalid("image.path is not a regular file (a directory, FIFO or device)", **where, field="image.path")
    if info.st_size > settings.max_image_bytes:
        raise ApiError(413, "payload_too_large",
                       f"image.path is {info.st_size} bytes; at most {settings.max_image_bytes} allowed",
                       {**where, "field": "image.path", "max_image_bytes": settings.max_image_bytes})
    return {"path": str(target)}


def image_source(image: ImageInput | None, staged_key: str | None) -> dict[str, str] | None:
    """What a worker gets for a checked image: the staging key of uploaded bytes, or the source."""
    if isinstance(image, bytes):
        return {"staged": staged_key}
    return image


def parse_image(value: Any, settings: Settings, where: dict[str, Any]) -> ImageInput | None:
    """A JSON image source, checked (base64 decoded, path resolved inside the ingest root)."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in IMAGE_SOURCES:
        raise invalid("image must be an object with exactly one of: base64, url, path", **where, field="image")
    ((kind, raw),) = value.items()
    if not isinstance(raw, str) or not raw:
        raise invalid(f"image.{kind} must be a non-empty string", **where, field=f"image.{kind}")
    if kind == "base64":
        return _decode_base64(raw, settings, where)
    if kind == "url":
        return _checked_url(raw, settings, where)
    return _resolved_path(raw, settings, where)


def read_upload(part: FileStorage, settings: Settings, where: dict[str, Any]) -> bytes:
    """The bytes of an `image` file part, checked for size."""
    return _checked_upload(part.read(settings.max_image_bytes + 1), settings, "image", where)


# Items ------------------------------------------------------------------------------------

def _parse_text(value: Any, settings: Settings, where: dict[str, Any]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid("text must be a string", **where, field="text")
    if len(value) > settings.max_text_chars:
        raise invalid(f"text is longer than {settings.max_text_chars} characters", **where, field="text")
    return value if value.strip() else None


def is_valid_id(value: Any) -> bool:
    """Item ids are 1-256 printable characters."""
    return isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARS and value.isprintable()


def _parse_id(value: Any, where: dict[str, Any]) -> str:
    if value is None:
        return uuid.uuid4().hex
    if not is_valid_id(value):
        raise invalid(f"id must be 1-{MAX_ID_CHARS} printable characters", **where, field="id")
    return value


def _parse_item(index: int, value: Any, settings: Settings, upload: bytes | None = None,
                json_image: bool = True) -> ItemInput:
    """Item `index`; its image from its own `image` field, or else the uploaded file part."""
    where = {"index": index}
    if not isinstance(value, dict):
        raise invalid("each item must be a JSON object", **where, field="items")
    _only_fields(value, ITEM_FIELDS if json_image else ITEM_FIELDS - {"image"}, where)
    image = parse_image(value.get("image"), settings, where) if json_image else upload
    text = _parse_text(value.get("text"), settings, where)
    if image is None and text is None:
        raise invalid("an item needs an image, a text or both", **where, field="image")
    metadata = value.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid("metadata must be a JSON object", **where, field="metadata")
    return ItemInput(_parse_id(value.get("id"), where), text, metadata or {}, image)


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise invalid("the request holds no items", field="items")
    if count > settings.max_items_per_request:
        raise ApiError(413, "payload_too_large",
                       f"{count} items; at most {settings.max_items_per_request} per request",
                       {"field": "items", "items": count, "max_items": settings.max_items_per_request})


def _unique(items: list[ItemInput]) -> list[ItemInput]:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id in seen:
            raise invalid(f"id {item.id!r} appears twice in the request", index=index, field="id",
                          first_index=seen[item.id])
        seen[item.id] = index
    return items


def parse_items_json(body: dict[str, Any], settings: Settings) -> list[ItemInput]:
    _only_fields(body, frozenset({"items"}), {})
    raw = body.get("items")
    if not isinstance(raw, list):
        raise invalid("items must be a JSON array", field="items")
    _check_count(len(raw), settings)
    return _unique([_parse_item(i, value, settings) for i, value in enumerate(raw)])


def _single(form: MultiDict[str, str], name: str) -> str | None:
    values = form.getlist(name)
    if len(values) > 1:
        raise invalid(f"form field {name!r} appears more than once", field=name)
    return values[0] if values else None


def _only_parts(form: MultiDict[str, str], files: MultiDict[str, FileStorage],
                fields: frozenset[str], file_parts: frozenset[str]) -> None:
    unknown = _names(sorted((set(form) - fields) | (set(files) - file_parts)))
    if unknown:
        raise invalid(f"unknown part(s): {', '.join(unknown)}; allowed: form fields "
                      f"{', '.join(sorted(fields)) or 'none'}, file parts {', '.join(sorted(file_parts))}",
                      field=unknown[0], unknown=unknown)


def _items_part(form: MultiDict[str, str], files: MultiDict[str, FileStorage]) -> list[Any]:
    parts: list[str | bytes] = [*form.getlist("items"), *(f.read() for f in files.getlist("items"))]
    if len(parts) > 1:
        raise invalid("the items part appears more than once", field="items")
    if not parts:
        return []
    value = loads_strict(parts[0], "items")
    if not isinstance(value, list):
        raise invalid("the items part must be a JSON array", field="items")
    return value


def parse_items_multipart(form: MultiDict[str, str], files: MultiDict[str, FileStorage],
                          settings: Settings) -> list[ItemInput]:
    _only_parts(form, files, frozenset({"items"}), frozenset({"image", "items"}))
    meta = _items_part(form, files)
    images = files.getlist("image")
    _check_count(max(len(images), len(meta)), settings)
    items = []
    for index in range(max(len(images), len(meta))):
        upload = read_upload(images[index], settings, {"index": index}) if index < len(images) else None
        items.append(_parse_item(index, meta[index] if index < len(meta) else {}, settings,
                                 upload=upload, json_image=False))
    return _unique(items)


# Search -----------------------------------------------------------------------------------

def _parse_k(value: Any) -> int:
    if value is None:
        return DEFAULT_K
    if not _is_int_in(value, 1, MAX_K):
        raise invalid(f"k must be an integer in 1..{MAX_K}", field="k")
    return value


def _parse_weights(value: Any, present: list[str]) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("weights must be a JSON object", field="weights")
    _only_fields(value, frozenset(BLOCKS), {}, prefix="weights.")
    for block, weight in value.items():
        if not _is_number(weight) or not 0 <= _as_float(weight) <= MAX_WEIGHT:
            raise invalid(f"weights.{block} must be a number in 0..{MAX_WEIGHT:g}", field=f"weights.{block}")
    if all(value.get(block, 1.0) == 0 for block in present):
        raise invalid(f"the weights of the query's blocks ({', '.join(present)}) are all 0", field="weights")
    return {block: float(weight) for block, weight in value.items()}


def _parse_filter(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("filter must be a JSON object of metadata key -> value", field="filter")
    for key, wanted in value.items():
        if wanted is not None and not isinstance(wanted, (str, bool, int, float)):
            raise invalid("filter values must be strings, numbers, booleans or null", field=f"filter.{key}")
        if isinstance(wanted, float) and not math.isfinite(wanted):
            raise invalid("filter numbers must be finite", field=f"filter.{key}")
    return value or None


def _search_input(text: Any, image: ImageInput | None, k: Any, weights: Any, filter_: Any,
                  settings: Settings) -> SearchInput:
    parsed_text = _parse_text(text, settings, {})
    present = [block for block, given in zip(BLOCKS, (image, parsed_text)) if given is not None]
    if not present:
        raise invalid("a search needs a text, an image or both", field="text")
    return SearchInput(parsed_text, image, _parse_k(k), _parse_weights(weights, present), _parse_filter(filter_))


def parse_search_json(body: dict[str, Any], settings: Settings) -> SearchInput:
    _only_fields(body, SEARCH_FIELDS, {})
    return _search_input(body.get("text"), parse_image(body.get("image"), settings, {}), body.get("k"),
                         body.get("weights"), body.get("filter"), settings)


def _form_json(form: MultiDict[str, str], name: str) -> Any:
    raw = _single(form, name)
    return None if raw is None else loads_strict(raw, name)


def parse_search_multipart(form: MultiDict[str, str], files: MultiDict[str, FileStorage],
                           settings: Settings) -> SearchInput:
    _only_parts(form, files, SEARCH_FIELDS - {"image"}, frozenset({"image"}))
    images = files.getlist("image")
    if len(images) > 1:
        raise invalid("a search takes at most one image part", field="image")
    image = read_upload(images[0], settings, {}) if images else None
    k = _single(form, "k")
    if k is not None and not _DIGITS.match(k):
        raise invalid(f"k must be an integer in 1..{MAX_K}", field="k")
    return _search_input(_single(form, "text"), image, None if k is None else int(k),
                         _form_json(form, "weights"), _form_json(form, "filter"), settings)
