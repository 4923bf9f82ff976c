"""Which shard slots can answer: a slot is live while its owner or any of its read replicas
holds a lease (`mms:owner:<slot>`, `mms:replica:<slot>:<n>`, each renewed every second and
lapsing `LEASE_MS` after its process died).

The API (item look-ups) and the query workers (which shards a search waits for) ask here, so an
owner and its replicas count alike: either one answers the slot's requests. `/readyz` asks for
owners alone: a slot served by replicas only answers searches, but its writes wait. An owner
answers nothing until it has loaded the slot's shards (a snapshot and a log replay: some 25 s
for two shards of 250,000 items); it then marks the slot served with its lease token
(`mms:serving:<slot>`), and `/readyz` waits for that mark too (`loading_slots`).
"""
from __future__ import annotations

from collections.abc import Iterable

import redis

from shared.store import keys

MAX_REPLICAS = 8  # read replicas per slot (lease names 0..7)


def liveness_keys(slot: int) -> list[str]:
    """The lease keys of a slot: its owner's, then its replicas'."""
    return [keys.slot_owner(slot)] + [keys.slot_replica(slot, n) for n in range(MAX_REPLICAS)]


def live_slots(r: redis.Redis, slots: Iterable[int], *, owners_only: bool = False) -> set[int]:
    """The slots among `slots` that an owner or a replica serves now (one round trip); with
    `owners_only`, those whose owner does (only an owner applies a slot's writes)."""
    ordered = sorted(set(slots))
    if not ordered:
        return set()
    pipe = r.pipeline(transaction=False)
    for slot in ordered:
        pipe.exists(*(liveness_keys(slot)[:1] if owners_only else liveness_keys(slot)))
    return {slot for slot, alive in zip(ordered, pipe.execute()) if alive}


def loading_slots(r: redis.Redis, slots: Iterable[int]) -> set[int]:
    """The slots among `slots` whose owner holds its lease but has not marked them served yet
    (still loading their shards; one round trip)."""
    ordered = sorted(set(slots))
    if not ordered:
        return set()
    pipe = r.pipeline(transaction=False)
    for slot in ordered:
        pipe.mget(keys.slot_owner(slot), keys.slot_serving(slot))
    return {slot for slot, (owner, serving) in zip(ordered, pipe.execute()) if owner is not None and owner != serving}
