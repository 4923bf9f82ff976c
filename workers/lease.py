"""A renewed lease on a shard slot, so that each slot has exactly one owner at a time.

The owner holds `mms:owner:<slot>` with a short expiry and renews it every second; a killed
owner's lease lapses within `LEASE_MS` and a restarted (or standby) process takes it over. An
owner that finds its lease taken by someone else stops at once rather than write beside them.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

import redis

from shared import keys

log = logging.getLogger(__name__)

LEASE_MS = 5000
RENEW_S = 1.0

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class SlotLease:
    def __init__(self, r: redis.Redis, slot: int) -> None:
        self.r = r
        self.slot = slot
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()

    def try_acquire(self) -> bool:
        return bool(self.r.set(keys.slot_owner(self.slot), self.token, nx=True, px=LEASE_MS))

    def _renew_forever(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                held = self.r.eval(_RENEW, 1, keys.slot_owner(self.slot), self.token, LEASE_MS)
            except redis.exceptions.RedisError as exc:
                log.warning("slot %d: cannot renew the lease (%s)", self.slot, exc)
                continue
            if not held:
                log.critical("slot %d: lease lost to another owner; exiting", self.slot)
                os._exit(3)

    def start_renewing(self) -> None:
        threading.Thread(target=self._renew_forever, name=f"lease-{self.slot}", daemon=True).start()

    def release(self) -> None:
        self._stop.set()
        self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                    1, keys.slot_owner(self.slot), self.token)


def claim_slot(r: redis.Redis, slots: int, wanted: int | None = None, poll_s: float = 0.5) -> SlotLease:
    """Wait for and take the lease of slot `wanted`, or of the first free slot."""
    candidates = [wanted] if wanted is not None else list(range(slots))
    announced = False
    while True:
        for slot in candidates:
            lease = SlotLease(r, slot)
            if lease.try_acquire():
                lease.start_renewing()
                return lease
        if not announced:
            log.info("no free shard slot among %s; waiting for one", candidates)
            announced = True
        time.sleep(poll_s)
