"""Reading request bodies: strict JSON and multipart forms; 415 for any other media type.

JSON is parsed by hand rather than with `request.get_json` so that the body must be UTF-8,
`NaN`/`Infinity` (which Python's json accepts) are refused, and every failure is a 400
`invalid_request` in the API's error body. Size limits are Flask's MAX_CONTENT_LENGTH (413).
"""
from __future__ import annotations

import json
from typing import Any, Literal

from flask import request

from api.errors import ApiError

JSON = "json"
MULTIPART = "multipart"
BodyKind = Literal["json", "multipart"]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(raw: bytes | str, what: str = "body") -> Any:
    """Parse JSON text; 400 for bad UTF-8, bad syntax, NaN or Infinity. `what` names the field."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_request", f"{what} is not valid UTF-8",
                       {"field": what, "position": exc.start}) from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request", f"{what} is not valid JSON: {exc.msg}",
                       {"field": what, "line": exc.lineno, "column": exc.colno}) from exc
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{what} is not valid JSON: {exc}", {"field": what}) from exc


def body_kind(allowed: tuple[BodyKind, ...]) -> BodyKind:
    """Which of the `allowed` encodings the request body uses; 415 when none."""
    mimetype = request.mimetype
    kind: BodyKind | None = None
    if mimetype == "application/json" or mimetype.endswith("+json"):
        kind = JSON
    elif mimetype == "multipart/form-data":
        kind = MULTIPART
    if kind not in allowed:
        accepted = " or ".join("application/json" if k == JSON else "multipart/form-data" for k in allowed)
        raise ApiError(415, "unsupported_media_type",
                       f"send {accepted} (got {mimetype or 'no Content-Type'})",
                       {"content_type": request.content_type})
    return kind


def read_json_object() -> dict[str, Any]:
    """The request's JSON body, which must be an object."""
    body_kind((JSON,))
    value = loads_strict(request.get_data(cache=False))
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object", {"field": "body"})
    return value

