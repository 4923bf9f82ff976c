"""Collections: their settings stored in Redis, created, listed and deleted.

A collection fixes its shard count, its models, their precision and its encoder setting
(vectors encoded differently never share an index). Deleting one removes its record, logs,
shard states and staged bytes here; the shard owners notice the collection is gone and drop
its indexes and snapshots.
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from shared.store import keys, shardlog, staging
from shared.runtime.config import Settings
from shared.errors import MMSearchError, ModelUnavailableError
from shared.encoding.precision import LEGACY_PRECISION, resolve_precision
from shared.encoding.encoder_settings import LEGACY_ENCODER_SETTING, resolve_encoder_setting

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")

# Feature sizes of the registered image models (shared.encoding.image_models builds them; this table
# lets the API answer without importing torch; a test keeps the two in step).
IMAGE_MODEL_DIMS = {"efficientnet_lite0": 1280, "resnet50": 2048}
MAX_SHARDS = 64


class CollectionExists(MMSearchError):
    code = "conflict"


@dataclass(frozen=True)
class Collection:
    name: str
    cid: str
    shards: int
    image_model: str
    text_model: str
    dims: dict[str, int]
    store_thumbnails: bool
    created_at: float
    precision: str = LEGACY_PRECISION  # records written before the field existed were fp32
    encoder_setting: str = LEGACY_ENCODER_SETTING  # and those written before this one, v1

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Collection":
        return cls(**json.loads(raw))

    def public(self, count: int) -> dict[str, Any]:
        return {"name": self.name, "shards": self.shards, "image_model": self.image_model,
                "text_model": self.text_model, "dims": dict(self.dims), "count": count,
                "precision": self.precision, "encoder_setting": self.encoder_setting,
                "store_thumbnails": self.store_thumbnails, "created_at": self.created_at}


def _resnet50_weights_present(settings: Settings) -> bool:
    if settings.resnet50_weights is not None:
        return settings.resnet50_weights.is_file()
    hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
    return any(hub.glob("resnet50-*.pth"))


def check_models(settings: Settings, image_model: str, text_model: str) -> dict[str, int]:
    """The block sizes of a model pair; ModelUnavailableError for unknown or absent models."""
    if image_model not in IMAGE_MODEL_DIMS:
        raise ModelUnavailableError(
            f"unknown image_model {image_model!r}; available: {', '.join(sorted(IMAGE_MODEL_DIMS))}")
    if image_model == "resnet50" and not _resnet50_weights_present(settings):
        raise ModelUnavailableError(
            "resnet50 weights are not on this machine (set MMSEARCH_RESNET50_WEIGHTS to a torchvision "
            "state_dict file); image_model 'efficientnet_lite0' works offline")
    from shared.encoding.text_encoder import TEXT_MODELS, text_model_dim

    if text_model not in TEXT_MODELS and text_model != settings.text_model:
        raise ModelUnavailableError(
            f"unknown text_model {text_model!r}; available: {', '.join(sorted({*TEXT_MODELS, settings.text_model}))} "
            "(a GloVe file is served when an operator sets it as MMSEARCH_TEXT_MODEL)")
    return {"image": IMAGE_MODEL_DIMS[image_model], "text": text_model_dim(text_model)}


def create_collection(r: redis.Redis, settings: Settings, name: str, shards: int | None = None,
                      image_model: str | None = None, text_model: str | None = None,
                      store_thumbnails: bool | None = None, precision: str | None = None,
                      encoder_setting: str | None = None) -> Collection:
    """Store a new collection; unset settings take the server's defaults. ModelUnavailableError
    for a model, precision or encoder setting this server does not have; CollectionExists."""
    image_model = image_model or settings.image_model
    text_model = text_model or settings.text_model
    dims = check_models(settings, image_model, text_model)
    try:
        precision = resolve_precision(precision, settings.precision)
        encoder_setting = resolve_encoder_setting(encoder_setting, settings.encoder_setting)
    except ValueError as exc:
        raise ModelUnavailableError(str(exc)) from None
    coll = Collection(
        name=name, cid=uuid.uuid4().hex[:12], shards=shards or settings.default_shards,
        image_model=image_model, text_model=text_model, dims=dims, precision=precision,
        encoder_setting=encoder_setting,
        store_thumbnails=settings.store_thumbnails if store_thumbnails is None else store_thumbnails,
        created_at=time.time())
    if not r.hsetnx(keys.COLLECTIONS, name, coll.to_json()):
        raise CollectionExists(f"collection {name!r} already exists")
    r.sadd(keys.LIVE_CIDS, coll.cid)
    return coll


def get_collection(r: redis.Redis, name: str) -> Collection | None:
    raw = r.hget(keys.COLLECTIONS, name)
    return Collection.from_json(raw) if raw else None


def list_collections(r: redis.Redis) -> list[Collection]:
    return sorted((Collection.from_json(v) for v in r.hvals(keys.COLLECTIONS)), key=lambda c: c.name)


def live_collections(r: redis.Redis) -> dict[str, Collection]:
    """cid -> collection, for the shard owners."""
    return {c.cid: c for c in list_collections(r)}


def collection_count(r: redis.Redis, coll: Collection) -> int:
    pipe = r.pipeline(transaction=False)
    for shard in range(coll.shards):
        pipe.hget(keys.shard_state(coll.cid, shard), "count")
    return sum(int(c) for c in pipe.execute() if c is not None)


def delete_collection(r: redis.Redis, name: str) -> Collection | None:
    coll = get_collection(r, name)
    if coll is None:
        return None
    pipe = r.pipeline()
    pipe.hdel(keys.COLLECTIONS, name)
    pipe.srem(keys.LIVE_CIDS, coll.cid)
    pipe.execute()
    shardlog.delete_logs(r, coll.cid, range(coll.shards))
    staging.purge_collection(r, coll.cid)
    return coll
