"""Operations: /healthz (the process lives) and /readyz (Redis answers, an encode and a query
worker are ready, every shard slot has a live owner that has loaded its shards: a slot that read
replicas alone serve answers searches, but an ingest or delete to it would wait for its owner;
one whose owner is still loading answers nothing yet)."""
from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from api.context import services
from api.errors import ApiError
from api.readiness import SERVING_ROLES, roles_not_ready
from shared.store import catalog, queues, slots as slot_leases

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    svc = services()
    try:
        svc.redis.ping()
        collections = catalog.list_collections(svc.redis)
        slot_of = {(c.name, s): queues.slot_for_shard(s, svc.settings.shard_slots)
                   for c in collections for s in range(c.shards)}
        slots = sorted(set(slot_of.values()))
        owned = slot_leases.live_slots(svc.redis, slots, owners_only=True)
        loading = sorted(slot_leases.loading_slots(svc.redis, owned))
        waiting = _queue_lengths(svc.redis)
        starting = roles_not_ready(svc.redis)
    except redis.exceptions.RedisError as exc:
        raise ApiError(503, "unavailable", "Redis does not answer",
                       {"redis": f"unreachable ({type(exc).__name__})"}) from exc
    missing = [slot for slot in slots if slot not in owned]
    role_states = {role: starting.get(role, "ready") for role in SERVING_ROLES}
    if missing or loading or starting:
        shards: dict[str, list[int]] = {}
        for (name, shard), slot in slot_of.items():
            if slot not in owned:
                shards.setdefault(name, []).append(shard)
        why = (list(starting.values()) + ([f"shard slot(s) without a live owner: {missing}"] if missing else [])
               + ([f"shard slot(s) whose owner is still loading their shards: {loading}"] if loading else []))
        raise ApiError(503, "unavailable", "; ".join(why),
                       {"redis": "ok", "roles": role_states, "missing_slots": missing,
                        "missing_shards": shards, "loading_slots": loading, "queues": waiting})
    return jsonify({"status": "ready", "redis": "ok", "roles": role_states, "collections": len(collections),
                    "slots": slots, "queues": waiting})


def _queue_lengths(r: redis.Redis) -> dict[str, int]:
    """Messages waiting on the encode and query queues (one round trip)."""
    names = (queues.ENCODE, queues.QUERY)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
    return dict(zip(names, pipe.execute()))
