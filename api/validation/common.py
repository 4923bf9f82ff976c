"""What every request check shares: the 400 and 413 errors, unknown-field, unknown-part and
unknown-parameter refusals, number and text checks, single form fields."""
from __future__ import annotations

import math
from typing import Any

from werkzeug.datastructures import FileStorage, MultiDict

from api.errors import ApiError
from shared.runtime.config import Settings


def invalid(message: str, **details: Any) -> ApiError:
    return ApiError(400, "invalid_request", message, details)


def too_large(message: str, **details: Any) -> ApiError:
    return ApiError(413, "payload_too_large", message, details)


def _names(names: list[str]) -> list[str]:
    """Client-chosen names as echoed in an error: at most 10, each at most 64 characters."""
    return [n if len(n) <= 64 else n[:64] + "..." for n in names[:10]]


def only_fields(value: dict[str, Any], allowed: frozenset[str], where: dict[str, Any],
                prefix: str = "") -> None:
    """Refuse the fields of a JSON object that are not `allowed` (`where`: the item's index)."""
    unknown = _names(sorted(set(value) - allowed))
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(prefix + u for u in unknown)}; "
                      f"allowed: {', '.join(sorted(allowed))}",
                      **where, field=prefix + unknown[0], unknown=unknown)


def only_parts(form: MultiDict[str, str], files: MultiDict[str, FileStorage],
               fields: frozenset[str], file_parts: frozenset[str]) -> None:
    """Refuse the form fields and file parts of a multipart body that are not allowed."""
    unknown = _names(sorted((set(form) - fields) | (set(files) - file_parts)))
    if unknown:
        raise invalid(f"unknown part(s): {', '.join(unknown)}; allowed: form fields "
                      f"{', '.join(sorted(fields)) or 'none'}, file parts {', '.join(sorted(file_parts))}",
                      field=unknown[0], unknown=unknown)


def only_params(args: MultiDict[str, str], allowed: frozenset[str]) -> None:
    """Refuse the query parameters that are not `allowed`."""
    unknown = _names(sorted(set(args) - allowed))
    if unknown:
        raise invalid(f"unknown query parameter(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
                      field=unknown[0], unknown=unknown)


def single(form: MultiDict[str, str], name: str) -> str | None:
    """A form field given at most once (None when absent)."""
    values = form.getlist(name)
    if len(values) > 1:
        raise invalid(f"form field {name!r} appears more than once", field=name)
    return values[0] if values else None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_float(value: int | float) -> float:
    """A JSON number as a float; NaN for what no float holds (10**400), which fails every range."""
    try:
        return float(value)
    except OverflowError:
        return math.nan


def is_int_in(value: Any, low: int, high: int) -> bool:
    """An integer (JSON's true/false are not) in low..high."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def parse_text(value: Any, settings: Settings, where: dict[str, Any]) -> str | None:
    """An item's or a query's text; empty or whitespace-only text counts as none."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid("text must be a string", **where, field="text")
    if len(value) > settings.max_text_chars:
        raise invalid(f"text is longer than {settings.max_text_chars} characters", **where, field="text")
    return value if value.strip() else None
