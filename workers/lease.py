"""Renewed leases on shard slots: one owner per slot, and any number of read replicas.

The owner holds `mms:owner:<slot>` with a short expiry and renews it every second; a killed
owner's lease lapses within `LEASE_MS` and a restarted process, or a live one with room for
another slot (workers.slot_keeper), takes it over. An owner that finds its lease taken by
someone else stops renewing it and sets `taken`, and its process gives the slot up rather than
write beside them.

While Redis is unreachable nothing can be renewed: `held()` turns false `LEASE_MS` after the
last successful renewal, and the owner stops writing (no snapshots, no log trims, no published
positions) until it renews again; it keeps answering searches from memory. When Redis is back
(e.g. restarted from its AOF, where the lease has expired meanwhile) the owner takes its
expired lease back if nobody else took the slot, else it gives the slot up.

Once the owner has loaded the slot's shards and serves its requests, it writes its token to
`mms:serving:<slot>` (`serve`; again at its next renewal if Redis did not answer), which
`/readyz` compares with the lease (shared.store.slots): a new owner's token is not there yet.

A read replica holds `mms:replica:<slot>:<n>` (the first free n) the same way, so the API and
the query workers see the slot served while its owner is down; a replica never exits over its
lease, it takes another free replica lease of its slot.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis

from shared.store import keys
from shared.store.slots import MAX_REPLICAS

log = logging.getLogger(__name__)

LEASE_MS = 5000
RENEW_S = 1.0

# 1: renewed; 2: had expired and nobody held it, taken back; 0: someone else holds it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class SlotLease:
    """The owner's lease on a slot (or, as `ReplicaLease`, a replica's)."""

    role = "owner"

    def __init__(self, r: redis.Redis, slot: int, key: str | None = None) -> None:
        self.r = r
        self.slot = slot
        self.key = key or keys.slot_owner(slot)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._valid_until = 0.0
        self._unreachable = False
        self.retaken = 0  # times the lease was taken back after it had lapsed
        self.taken = threading.Event()  # set once another process was found holding it
        self._serving = False  # the slot's shards are loaded and its requests served here
        self._marked = False   # ...and Redis has the mark

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; whether it is now ours."""
        return self._take(self.key)

    def _take(self, key: str) -> bool:
        sent = time.monotonic()
        if self.r.set(key, self.token, nx=True, px=LEASE_MS):
            self._valid_until = sent + LEASE_MS / 1000
            return True
        return False

    def held(self) -> bool:
        """True while the lease is certainly ours: renewed less than LEASE_MS ago."""
        return time.monotonic() < self._valid_until

    def renew(self) -> bool:
        """One renewal; False when Redis did not answer. Calls `lost()` when another holds it."""
        sent = time.monotonic()
        try:
            result = self.r.eval(_RENEW, 1, self.key, self.token, LEASE_MS)
        except redis.exceptions.RedisError as exc:
            if not self._unreachable:
                log.warning("slot %d: cannot renew the %s lease (%s); %s", self.slot, self.role, exc,
                            "still held" if self.held() else "lapsed")
            self._unreachable = True
            return False
        if self._unreachable:
            log.info("slot %d: Redis answers again", self.slot)
            self._unreachable = False
        if result in (1, 2):
            if result == 2:
                self.retaken += 1
                log.warning("slot %d: the %s lease had lapsed (Redis unreachable?); taken back", self.slot, self.role)
            self._valid_until = sent + LEASE_MS / 1000
            if self._serving and (result == 2 or not self._marked):
                self._mark_serving()
            return True
        self._valid_until = 0.0
        self.lost()
        return True

    def serve(self) -> None:
        """Mark the slot served by this process (an owner that has loaded its shards)."""
        self._serving = True
        self._mark_serving()

    def _mark_serving(self) -> None:
        try:
            self.r.set(keys.slot_serving(self.slot), self.token)
        except redis.exceptions.RedisError as exc:  # the next renewal writes it
            log.warning("slot %d: cannot mark the slot served (%s)", self.slot, exc)
            self._marked = False
        else:
            self._marked = True

    def lost(self) -> None:
        """Another process holds the lease: stop renewing it and say so (`taken`)."""
        log.critical("slot %d: lease lost to another owner; giving the slot up", self.slot)
        self._stop.set()
        self.taken.set()

    def _renew_forever(self) -> None:
        while not self._stop.wait(RENEW_S):
            self.renew()

    def start_renewing(self) -> None:
        threading.Thread(target=self._renew_forever, name=f"lease-{self.slot}", daemon=True).start()

    def release(self) -> None:
        self._stop.set()
        self._valid_until = 0.0
        try:
            self.r.eval(_RELEASE, 1, self.key, self.token)
        except redis.exceptions.RedisError as exc:  # it lapses by itself
            log.warning("slot %d: could not release the %s lease (%s)", self.slot, self.role, exc)


class ReplicaLease(SlotLease):
    """A read replica's lease; losing it means taking another free replica lease of the slot."""

    role = "replica"

    def lost(self) -> None:
        for n in range(MAX_REPLICAS):
            key = keys.slot_replica(self.slot, n)
            if self._take(key):
                log.warning("slot %d: replica lease %s was taken; now holding %s", self.slot, self.key, key)
                self.key = key
                return
        log.error("slot %d: no free replica lease (at most %d replicas per slot)", self.slot, MAX_REPLICAS)


def claim_replica(r: redis.Redis, slots: int, wanted: int | None = None, poll_s: float = 0.5) -> ReplicaLease:
    """Wait for and take a replica lease on slot `wanted`, or on the slot with the fewest
    replicas (the first free replica number n, slots in order for each n); keep it renewed."""
    candidates = [wanted] if wanted is not None else list(range(slots))
    announced = False
    while True:
        for n in range(MAX_REPLICAS):
            for slot in candidates:
                lease = ReplicaLease(r, slot, keys.slot_replica(slot, n))
                if lease.try_acquire():
                    lease.start_renewing()
                    return lease
        if not announced:
            log.info("every replica lease of slots %s is taken; waiting for one", candidates)
            announced = True
        time.sleep(poll_s)
