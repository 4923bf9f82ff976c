"""Checking ingest requests: a JSON `items` array, or a multipart body of image file parts.

Multipart ingest: file parts named `image` are items 0..n-1 in order; the optional `items`
part (a form field or a file, one JSON array of items without `image` fields) is aligned by
position. It may be shorter than the images (the rest get no text) or longer (each extra item
is text-only, so it needs a `text`). An uploaded image's item without an `id` takes the file's
name (`cat.jpg`), unless another part has the same name; then, and for text-only items, the id
is generated.
"""
from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from werkzeug.datastructures import FileStorage, MultiDict

from api.bodies import loads_strict
from api.validation.common import invalid, only_fields, only_parts, parse_text, too_large
from api.validation.images import ImageInput, parse_image, read_upload
from shared.runtime.config import Settings

ITEM_FIELDS = frozenset({"id", "image", "text", "metadata"})
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class ItemInput:
    id: str
    text: str | None
    metadata: dict[str, Any]
    image: ImageInput | None


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
                json_image: bool = True, default_id: str | None = None) -> ItemInput:
    """Item `index`; its image from its own `image` field, or else the uploaded file part; its id
    from its `id` field, else `default_id`, else a generated one."""
    where = {"index": index}
    if not isinstance(value, dict):
        raise invalid("each item must be a JSON object", **where, field="items")
    only_fields(value, ITEM_FIELDS if json_image else ITEM_FIELDS - {"image"}, where)
    image = parse_image(value.get("image"), settings, where) if json_image else upload
    text = parse_text(value.get("text"), settings, where)
    if image is None and text is None:
        raise invalid("an item needs an image, a text or both", **where, field="image")
    metadata = value.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid("metadata must be a JSON object", **where, field="metadata")
    return ItemInput(_parse_id(value.get("id", default_id), where), text, metadata or {}, image)


def _check_count(count: int, settings: Settings) -> None:
    if count == 0:
        raise invalid("the request holds no items", field="items")
    if count > settings.max_items_per_request:
        raise too_large(f"{count} items; at most {settings.max_items_per_request} per request",
                        field="items", items=count, max_items=settings.max_items_per_request)


def _unique(items: list[ItemInput]) -> list[ItemInput]:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id in seen:
            raise invalid(f"id {item.id!r} appears twice in the request", index=index, field="id",
                          first_index=seen[item.id])
        seen[item.id] = index
    return items


def parse_items_json(body: dict[str, Any], settings: Settings) -> list[ItemInput]:
    only_fields(body, frozenset({"items"}), {})
    raw = body.get("items")
    if not isinstance(raw, list):
        raise invalid("items must be a JSON array", field="items")
    _check_count(len(raw), settings)
    return _unique([_parse_item(i, value, settings) for i, value in enumerate(raw)])


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
    only_parts(form, files, frozenset({"items"}), frozenset({"image", "items"}))
    meta = _items_part(form, files)
    images = files.getlist("image")
    _check_count(max(len(images), len(meta)), settings)
    names = _file_names(images)
    items = []
    for index in range(max(len(images), len(meta))):
        upload = read_upload(images[index], settings, {"index": index}) if index < len(images) else None
        items.append(_parse_item(index, meta[index] if index < len(meta) else {}, settings,
                                 upload=upload, json_image=False,
                                 default_id=names[index] if index < len(names) else None))
    return _unique(items)


def _file_names(parts: list[FileStorage]) -> list[str | None]:
    """The id an uploaded file gets unless its item names one: its file name (without any
    folder), when that is a valid id and no other part of the request has the same name."""
    names = [PurePosixPath((part.filename or "").replace("\\", "/")).name for part in parts]
    counts = Counter(names)
    return [name if name and counts[name] == 1 and is_valid_id(name) else None for name in names]
