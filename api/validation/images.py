"""Checking an item's or a query's image: uploaded bytes (base64 or a file part), a URL or a path.

- Image sources: exactly one of `base64` (strict alphabet, no whitespace), `url` or `path`.
- A `url` must be http/https with a host, no credentials, no whitespace or control characters,
  at most 8192 characters, and a host given as a literal IP address must be one the URL
  policy allows (shared.encoding.url_policy: no loopback, private, link-local or metadata
  address unless MMSEARCH_URL_ALLOW_PRIVATE says so); host names are resolved and checked by
  the worker, so an unreachable or forbidden host fails the item alone.
- A `path` is relative to MMSEARCH_INGEST_ROOT; absolute paths, paths that lead out of the
  root (through `..` or a symlink), that cannot be resolved, or that name something other
  than a regular file (a directory, a FIFO, a device) are refused here, a file over
  MMSEARCH_MAX_IMAGE_BYTES is a 413; a missing file, like an unreachable URL, fails only its
  item and is reported in the job's `errors`.
- Uploaded images (base64 or file parts) must be non-empty and at most
  MMSEARCH_MAX_IMAGE_BYTES (413 above); whether they decode is checked by the workers.
"""
from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Any, Union

from werkzeug.datastructures import FileStorage

from api.validation.common import invalid, too_large
from shared.encoding.source_errors import SourceError
from shared.encoding.url_policy import address_allowed, check_url_syntax, literal_address
from shared.runtime.config import Settings

# Uploaded bytes to stage for the workers, or a source they fetch: {"url": u} / {"path": abs}.
ImageInput = Union[bytes, dict[str, str]]

IMAGE_SOURCES = ("base64", "url", "path")


def _checked_upload(data: bytes, settings: Settings, field: str, where: dict[str, Any]) -> bytes:
    if not data:
        raise invalid(f"{field} is empty", **where, field=field)
    if len(data) > settings.max_image_bytes:
        raise too_large(f"{field} is {len(data)} bytes; at most {settings.max_image_bytes} allowed",
                        **where, field=field, max_image_bytes=settings.max_image_bytes)
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
        raise too_large(f"image.path is {info.st_size} bytes; at most {settings.max_image_bytes} allowed",
                        **where, field="image.path", max_image_bytes=settings.max_image_bytes)
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
