"""Checking a new collection's body (`POST /v1/collections`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.validation.common import invalid, is_int_in, only_fields
from shared.encoding.encoder_settings import encoder_setting
from shared.encoding.precision import PRECISIONS
from shared.store import catalog

COLLECTION_FIELDS = frozenset({"name", "shards", "image_model", "text_model", "store_thumbnails", "precision",
                               "encoder_setting"})


@dataclass(frozen=True)
class NewCollection:
    name: str
    shards: int | None
    image_model: str | None
    text_model: str | None
    store_thumbnails: bool | None
    precision: str | None
    encoder_setting: str | None


def _optional_str(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise invalid(f"{field} must be a non-empty string", field=field)
    return value


def parse_new_collection(body: dict[str, Any]) -> NewCollection:
    only_fields(body, COLLECTION_FIELDS, {})
    name = body.get("name")
    if not isinstance(name, str) or not catalog.NAME_RE.fullmatch(name):
        raise invalid(f"name must match {catalog.NAME_RE.pattern}", field="name")
    shards = body.get("shards")
    if shards is not None and not is_int_in(shards, 1, catalog.MAX_SHARDS):
        raise invalid(f"shards must be an integer in 1..{catalog.MAX_SHARDS}", field="shards")
    thumbnails = body.get("store_thumbnails")
    if thumbnails is not None and not isinstance(thumbnails, bool):
        raise invalid("store_thumbnails must be true or false", field="store_thumbnails")
    precision = _optional_str(body, "precision")
    if precision is not None and precision not in ("auto", *PRECISIONS):
        raise invalid(f"precision must be one of auto, {', '.join(PRECISIONS)}", field="precision")
    setting = body.get("encoder_setting")
    if setting is not None:
        try:
            encoder_setting(setting)
        except ValueError as exc:
            raise invalid(str(exc), field="encoder_setting") from None
    return NewCollection(name, shards, _optional_str(body, "image_model"),
                         _optional_str(body, "text_model"), thumbnails, precision, setting)
