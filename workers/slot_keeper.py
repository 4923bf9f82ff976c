"""The shard slots one owner process holds: every free slot up to a cap, and lapsed ones later.

`python -m workers shard` without `--slot` owns every slot that nobody holds, up to
`MMSEARCH_SHARD_MAX_SLOTS` (default: all of them), with one `ShardOwner` and its request threads
per slot in the one process, so a single `shard` process (the Procfile's) serves every slot.
While it is below its cap it looks again every second: a slot whose owner's lease lapsed (its
process died) is taken over when the slot's data is reachable from here, that is when every
shard of the slot whose log was trimmed has a snapshot under this process's `MMSEARCH_DATA_DIR`
(the log alone no longer holds those shards; a process that sees their snapshots should take the
slot). Processes that look at once never both take a slot: the lease's SET NX decides.

With `--slot N` a process owns slot N alone, whenever it is free, whatever its data directory
holds (as `docker-compose.yml` runs one process per slot, each with its own volume).

A slot whose lease another process took (this one could not renew it in time: Redis away, a
stalled process) is given up: its request threads stop, its owner stops without writing, and
the process may take the slot again once it lapses.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

import redis

from shared.runtime.config import Settings
from shared.store import catalog, keys, slots
from shared.store.queues import slot_for_shard
from workers.lease import SlotLease
from workers.shard_owner import ShardOwner
from workers.slot_follower import SNAPSHOT_FILES, shard_dir

log = logging.getLogger(__name__)

LOOK_S = 1.0  # how often a process below its cap looks for slots without an owner

Serve = Callable[[ShardOwner, threading.Event], None]


def unreachable_shards(r: redis.Redis, settings: Settings, slot: int) -> list[str]:
    """The shards of `slot` (as `collection/shard`) that could not be rebuilt from here: their
    log was trimmed and no snapshot of them is under `settings.data_dir`."""
    shards = [(coll, shard) for coll in catalog.live_collections(r).values()
              for shard in range(coll.shards) if slot_for_shard(shard, settings.shard_slots) == slot]
    pipe = r.pipeline(transaction=False)
    for coll, shard in shards:
        pipe.hexists(keys.shard_state(coll.cid, shard), "trimmed")
    return [f"{coll.name}/{shard}" for (coll, shard), trimmed in zip(shards, pipe.execute())
            if trimmed and not any((shard_dir(settings, coll.cid, shard) / name).exists() for name in SNAPSHOT_FILES)]


@dataclass
class Held:
    """A slot this process owns: its lease, its owner, and what stops its request threads."""

    lease: SlotLease
    owner: ShardOwner
    stop: threading.Event = field(default_factory=threading.Event)


class SlotKeeper:
    """The slots one process owns (`held`); `serve(owner, stop)` runs on a thread of its own for
    each slot it takes, once the slot's owner has loaded its snapshots, and answers the slot's
    requests until `stop` is set."""

    def __init__(self, r: redis.Redis, settings: Settings, serve: Serve, slot: int | None = None) -> None:
        self.r = r
        self.settings = settings
        self.serve = serve
        self.pinned = slot is not None
        self.candidates = [slot] if slot is not None else list(range(settings.shard_slots))
        self.cap = 1 if self.pinned else settings.slots_per_shard_process
        self.held: dict[int, Held] = {}
        self._unreachable: dict[int, list[str]] = {}  # as last logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def look(self) -> list[int]:
        """One round: give up the slots whose lease another process took, then take free slots
        up to the cap, in slot order; returns the slots it took."""
        for slot in [s for s, held in self.held.items() if held.lease.taken.is_set()]:
            self._give_up(slot)
        free = [s for s in self.candidates if s not in self.held]
        if len(self.held) >= self.cap or not free:
            return []
        owned = slots.live_slots(self.r, free, owners_only=True)
        taken = []
        for slot in free:
            if len(self.held) >= self.cap:
                break
            if slot in owned or not self._reachable(slot):
                continue
            lease = SlotLease(self.r, slot)
            if lease.try_acquire():
                self._own(lease)
                taken.append(slot)
        return taken

    def _reachable(self, slot: int) -> bool:
        """Whether this process may take `slot` (a pinned one always may); says once why not."""
        missing = [] if self.pinned else unreachable_shards(self.r, self.settings, slot)
        if missing and self._unreachable.get(slot) != missing:
            log.warning("shard slot %d has no owner, but shards %s have no snapshot under %s; "
                        "leaving the slot to a process that has them", slot, missing, self.settings.data_dir)
        self._unreachable[slot] = missing
        return not missing

    def _own(self, lease: SlotLease) -> None:
        """Keep the lease renewed, load the slot's shards and hand them to `serve`."""
        lease.start_renewing()
        log.info("owning shard slot %d of %d", lease.slot, self.settings.shard_slots)
        held = Held(lease, ShardOwner(lease.slot, self.settings, self.r, lease=lease))
        self.held[lease.slot] = held
        try:
            held.owner.start()
        except Exception:
            self._give_up(lease.slot)
            raise
        threading.Thread(target=self.serve, args=(held.owner, held.stop), daemon=True,
                         name=f"slot-{lease.slot}").start()

    def _give_up(self, slot: int) -> None:
        """Stop serving `slot`: its request threads, its owner (which snapshots what it has not
        saved while the lease is still held), then the lease."""
        held = self.held.pop(slot)
        held.stop.set()
        held.owner.stop()
        held.lease.release()
        log.info("shard slot %d: no longer owned here", slot)

    def _look_forever(self) -> None:
        said_idle = False
        while True:
            try:
                self.look()
            except redis.exceptions.RedisError as exc:  # the next round tries again
                log.warning("could not look for free shard slots (%s); trying again", exc)
            except Exception:  # a slot that failed to load: given up, tried again next round
                log.exception("could not take a free shard slot; trying again")
            idle = not self.held
            if idle and not said_idle:
                log.info("no free shard slot among %s; waiting for one", self.candidates)
            said_idle = idle
            if self._stop.wait(LOOK_S):
                return

    def start(self) -> None:
        """Take the free slots now and go on looking, in a background thread."""
        self._thread = threading.Thread(target=self._look_forever, name="slot-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop looking, then give up every slot held, all at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        stopping = [threading.Thread(target=self._give_up, args=(slot,)) for slot in list(self.held)]
        for thread in stopping:
            thread.start()
        for thread in stopping:
            thread.join()
