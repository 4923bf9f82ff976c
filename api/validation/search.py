"""Checking search requests: a JSON body, or a multipart body with an optional `image` file part.

Multipart search: `text`, `k` and `offset` (decimal digits), `weights` and `filter` (JSON
objects) as form fields. `offset` pages one ranking: hits offset..offset+k-1 of it, with
offset + k <= MAX_K.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import FileStorage, MultiDict

from api.bodies import loads_strict
from api.validation.common import as_float, invalid, is_int_in, is_number, only_fields, only_parts, parse_text, single
from api.validation.images import ImageInput, parse_image, read_upload
from shared.index.filters import LIST_OPERATORS, LOGICAL, OPERATORS, RANGE_OPERATORS
from shared.runtime.config import Settings

SEARCH_FIELDS = frozenset({"text", "image", "k", "offset", "weights", "filter"})
BLOCKS = ("image", "text")
DEFAULT_K = 10
MAX_K = 1000
MAX_IN = 1000  # values of one `$in` / `$nin` list, filters of one `$and` / `$or`
MAX_FILTER_DEPTH = 4
MAX_WEIGHT = 1e6  # large enough for any ratio; sums of larger ones could overflow in scoring
_DIGITS = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class SearchInput:
    text: str | None
    image: ImageInput | None
    k: int
    weights: dict[str, float] | None
    filter: dict[str, Any] | None
    offset: int = 0


def _parse_k(value: Any) -> int:
    if value is None:
        return DEFAULT_K
    if not is_int_in(value, 1, MAX_K):
        raise invalid(f"k must be an integer in 1..{MAX_K}", field="k")
    return value


def _parse_offset(value: Any, k: int) -> int:
    if value is None:
        return 0
    if not is_int_in(value, 0, MAX_K - k):
        raise invalid(f"offset must be an integer in 0..{MAX_K - k} (offset + k <= {MAX_K})", field="offset")
    return value


def _parse_weights(value: Any, present: list[str]) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("weights must be a JSON object", field="weights")
    only_fields(value, frozenset(BLOCKS), {}, prefix="weights.")
    for block, weight in value.items():
        if not is_number(weight) or not 0 <= as_float(weight) <= MAX_WEIGHT:
            raise invalid(f"weights.{block} must be a number in 0..{MAX_WEIGHT:g}", field=f"weights.{block}")
    if all(value.get(block, 1.0) == 0 for block in present):
        raise invalid(f"the weights of the query's blocks ({', '.join(present)}) are all 0", field="weights")
    return {block: float(weight) for block, weight in value.items()}


def _check_scalar(value: Any, field: str) -> None:
    if value is not None and not isinstance(value, (str, bool, int, float)):
        raise invalid("filter values must be strings, numbers, booleans or null", field=field)
    if isinstance(value, float) and not math.isfinite(value):
        raise invalid("filter numbers must be finite", field=field)


def _check_operators(condition: dict[str, Any], field: str) -> None:
    """An operator object (shared.index.filters): every operator known, with its argument's type."""
    if not condition:
        raise invalid(f"a filter condition object needs an operator: {', '.join(OPERATORS)}", field=field)
    only_fields(condition, frozenset(OPERATORS), {}, prefix=f"{field}.")
    for op, arg in condition.items():
        where = f"{field}.{op}"
        if op in LIST_OPERATORS:
            if not isinstance(arg, list) or len(arg) > MAX_IN:
                raise invalid(f"{where} must be a list of at most {MAX_IN} values", field=where)
            for i, v in enumerate(arg):
                _check_scalar(v, f"{where}[{i}]")
        elif op in RANGE_OPERATORS:
            if not is_number(arg) or not math.isfinite(as_float(arg)):
                raise invalid(f"{where} must be a finite number", field=where)
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise invalid(f"{where} must be true or false", field=where)
        else:
            _check_scalar(arg, where)


def _check_filter(value: Any, field: str, depth: int) -> None:
    """A filter object: metadata keys to conditions, `$and` / `$or` lists of filters."""
    if not isinstance(value, dict):
        raise invalid("a filter must be a JSON object of metadata key -> value or condition", field=field)
    if depth > MAX_FILTER_DEPTH:
        raise invalid(f"filters nest at most {MAX_FILTER_DEPTH} levels of $and / $or", field=field)
    for key, condition in value.items():
        where = f"{field}.{key}"
        if key in LOGICAL:
            if not isinstance(condition, list) or not 1 <= len(condition) <= MAX_IN:
                raise invalid(f"{where} must be a list of 1 to {MAX_IN} filters", field=where)
            for i, sub in enumerate(condition):
                _check_filter(sub, f"{where}[{i}]", depth + 1)
        elif key.startswith("$"):
            raise invalid(f"unknown filter operator {key!r} here: {', '.join(LOGICAL)} combine filters; "
                          "other operators go inside a key's condition", field=where)
        elif isinstance(condition, dict):
            _check_operators(condition, where)
        else:
            _check_scalar(condition, where)


def parse_filter(value: Any) -> dict[str, Any] | None:
    """A metadata filter (shared.index.filters) of a search, a listing or a delete; `{}` is no
    filter."""
    if value is None:
        return None
    _check_filter(value, "filter", 0)
    return value or None


def _search_input(text: Any, image: ImageInput | None, k: Any, offset: Any, weights: Any, filter_: Any,
                  settings: Settings) -> SearchInput:
    parsed_text = parse_text(text, settings, {})
    present = [block for block, given in zip(BLOCKS, (image, parsed_text)) if given is not None]
    if not present:
        raise invalid("a search needs a text, an image or both", field="text")
    parsed_k = _parse_k(k)
    return SearchInput(parsed_text, image, parsed_k, _parse_weights(weights, present), parse_filter(filter_),
                       _parse_offset(offset, parsed_k))


def parse_search_json(body: dict[str, Any], settings: Settings) -> SearchInput:
    only_fields(body, SEARCH_FIELDS, {})
    return _search_input(body.get("text"), parse_image(body.get("image"), settings, {}), body.get("k"),
                         body.get("offset"), body.get("weights"), body.get("filter"), settings)


def _form_json(form: MultiDict[str, str], name: str) -> Any:
    raw = single(form, name)
    return None if raw is None else loads_strict(raw, name)


def parse_search_multipart(form: MultiDict[str, str], files: MultiDict[str, FileStorage],
                           settings: Settings) -> SearchInput:
    only_parts(form, files, SEARCH_FIELDS - {"image"}, frozenset({"image"}))
    images = files.getlist("image")
    if len(images) > 1:
        raise invalid("a search takes at most one image part", field="image")
    image = read_upload(images[0], settings, {}) if images else None
    k, offset = single(form, "k"), single(form, "offset")
    if k is not None and not _DIGITS.match(k):
        raise invalid(f"k must be an integer in 1..{MAX_K}", field="k")
    if offset is not None and not _DIGITS.match(offset):
        raise invalid(f"offset must be an integer in 0..{MAX_K - 1}", field="offset")
    return _search_input(single(form, "text"), image, None if k is None else int(k),
                         None if offset is None else int(offset), _form_json(form, "weights"),
                         _form_json(form, "filter"), settings)
