"""Reading request bodies: strict JSON and multipart forms; 415 for any other media type.

JSON is parsed by hand rather than with `request.get_json` so that every failure is a 400
`invalid_request` in the API's error body, and so that:

- the body must be UTF-8 (a `charset` other than utf-8 in the Content-Type is a 415; invalid
  UTF-8 bytes, and strings holding lone surrogates such as `"\\ud800"`, are 400s);
- `NaN`/`Infinity` (which Python's json accepts) are refused;
- nesting deeper than MMSEARCH_MAX_JSON_DEPTH is refused (a body of a million `[` is a 400,
  not a RecursionError);
- no string, object key included, is longer than MMSEARCH_MAX_STRING_CHARS, except an image's
  `base64` (`image.base64` of a search, `items[].image.base64` of an ingest), which validation
  caps by MMSEARCH_MAX_IMAGE_BYTES once decoded (413).

Size limits of whole bodies are Flask's MAX_CONTENT_LENGTH (413).
"""
from __future__ import annotations

import json
from typing import Any, Literal

from flask import request

from api.context import services
from api.errors import ApiError

JSON = "json"
MULTIPART = "multipart"
BodyKind = Literal["json", "multipart"]
UTF8_CHARSETS = frozenset({"utf-8", "utf8"})

# Where a JSON document may hold a base64 image (list indices skipped): those strings are left
# to validation (strict base64 alphabet, MMSEARCH_MAX_IMAGE_BYTES once decoded).
BASE64_PATHS = frozenset({("image", "base64"), ("items", "image", "base64")})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _bad(what: str, message: str, **details: Any) -> ApiError:
    return ApiError(400, "invalid_request", f"{what} {message}", {"field": what, **details})


def _check_string(value: str, what: str, path: tuple[str, ...], limit: int) -> None:
    if len(value) > limit:
        where = ".".join(path) or what
        raise _bad(what, f"holds a string longer than {limit} characters (at {where[:200]})",
                   max_string_chars=limit)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _bad(what, "holds a string that is not valid Unicode (a lone surrogate escape)",
                   position=exc.start) from None


def check_shape(value: Any, what: str, max_depth: int, max_chars: int,
                path: tuple[str, ...] = ()) -> None:
    """400 when a parsed JSON value nests deeper than max_depth or holds an over-long or
    non-Unicode string. Iterative, so any depth that json could parse is walked safely."""
    stack: list[tuple[Any, int, tuple[str, ...]]] = [(value, 1, path)]
    while stack:
        node, depth, where = stack.pop()
        if isinstance(node, str):
            if where not in BASE64_PATHS:
                _check_string(node, what, where, max_chars)
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            raise _bad(what, f"nests deeper than {max_depth} levels", max_depth=max_depth)
        if isinstance(node, dict):
            for key, child in node.items():
                _check_string(key, what, where, max_chars)
                stack.append((child, depth + 1, (*where, key[:64])))
        else:
            stack.extend((child, depth + 1, where) for child in node)


def loads_strict(raw: bytes | str, what: str = "body", path: tuple[str, ...] = ()) -> Any:
    """Parse JSON text; 400 for bad UTF-8, bad syntax, NaN or Infinity, too deep a nesting,
    too long or non-Unicode strings. `what` names the field; `path` is where the value sits in
    a request (for the base64 exemption of multipart parts)."""
    settings = services().settings
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise ApiError(400, "invalid_request", f"{what} is not valid UTF-8",
                       {"field": what, "position": exc.start}) from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_request", f"{what} is not valid JSON: {exc.msg}",
                       {"field": what, "line": exc.lineno, "column": exc.colno}) from exc
    except RecursionError:
        raise _bad(what, f"nests deeper than {settings.max_json_depth} levels",
                   max_depth=settings.max_json_depth) from None
    except ValueError as exc:
        raise ApiError(400, "invalid_request", f"{what} is not valid JSON: {exc}", {"field": what}) from exc
    check_shape(value, what, settings.max_json_depth, settings.max_string_chars, path)
    return value


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
                       f"send {accepted} (got {mimetype[:100] or 'no Content-Type'})",
                       {"content_type": (request.content_type or "")[:200]})
    charset = request.mimetype_params.get("charset")
    if kind == JSON and charset is not None and charset.strip().lower() not in UTF8_CHARSETS:
        raise ApiError(415, "unsupported_media_type",
                       f"JSON bodies must be UTF-8 (got charset {charset[:40]!r})",
                       {"content_type": (request.content_type or "")[:200]})
    return kind


def read_json_object() -> dict[str, Any]:
    """The request's JSON body, which must be an object."""
    body_kind((JSON,))
    value = loads_strict(request.get_data(cache=False))
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object", {"field": "body"})
    return value
