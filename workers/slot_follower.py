"""What the owner of a shard slot and its read replicas share: in-memory hnswlib indexes of the
slot's shards, kept up to date with the shards' logs.

Slot `i` holds shard `s` of every collection where `s mod MMSEARCH_SHARDS == i`. A background
thread applies each shard's log in order, in bounded batches (the index's write lock is held
per batch, so searches are not starved), and publishes the applied position; what it publishes,
and what it writes besides, is the role's (`workers.shard_owner.ShardOwner`,
`workers.shard_replica.ShardReplica`).

A shard is loaded from the newest verified snapshot in `MMSEARCH_DATA_DIR/shards/<cid>/<s>`
(falling back to the previous one), and the log after it is replayed; each index keeps one
graph per vector block (the collection's image dim) and tunes its search list for
`Settings.recall_target`, and a snapshot of the older one-graph format is rebuilt that way as
it loads. A shard whose log has been quiet for IDLE_S is at rest: its tuning is measured again
there if the writes since the last measurement call for it (`ShardIndex.settle`), before the
owner's snapshot of it.

A shard whose log was trimmed (the shard state's `trimmed` mark) but that has no verified
snapshot cannot be rebuilt: it is refused loudly (searches report it as not answered) rather
than served with items missing, until a snapshot appears. A reader whose position is older
than the trim mark (a replica that fell behind, an owner whose lease lapsed while another took
the slot) reloads the newest snapshot instead of reading on past the gap.
"""
from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import redis

from shared.errors import SnapshotError
from shared.index.shard_index import ItemRecord, ShardIndex
from shared.runtime.config import Settings
from shared.store import catalog, keys, shardlog
from shared.store.catalog import Collection
from shared.store.queues import slot_for_shard
from shared.store.streamids import at_least
from workers.lease import SlotLease

log = logging.getLogger(__name__)

APPLY_BATCH = 256
REFRESH_S = 1.0
RETRY_REFUSED_S = 30.0  # a shard that could not be rebuilt is tried again this often
IDLE_S = 2.0  # a shard whose log has been quiet this long is at rest
SNAPSHOT, PREVIOUS = "snapshot.bin", "snapshot.prev.bin"
PENDING = "snapshot.new.bin"  # complete and verified, not yet rotated in (a crash between two renames)
SNAPSHOT_FILES = (SNAPSHOT, PENDING, PREVIOUS)  # in the order a load tries them

ShardKey = tuple[str, int]


def shard_dir(settings: Settings, cid: str, shard: int) -> Path:
    """Where the snapshots of shard `shard` of collection `cid` live."""
    return settings.data_dir / "shards" / cid / str(shard)


class ShardState:
    """One shard's index, the log position it reflects, and its snapshot bookkeeping."""

    def __init__(self, directory: Path, index: ShardIndex, position: str) -> None:
        self.directory = directory
        self.index = index
        self.position = position
        self.unsaved = 0
        self.last_write = 0.0


class Unrecoverable(Exception):
    """The shard's log was trimmed and no verified snapshot covers the trimmed part."""


class SlotFollower(ABC):
    """The indexes of one slot's shards, following their logs; a role adds what it publishes
    (`_publish`), does once caught up (`housekeeping`) and on stop (`_wind_down`)."""

    role: str  # "owner" or "replica", for the logs
    replica: bool  # whether the answers come from a read replica (shard searches say so)

    def __init__(self, slot: int, settings: Settings, r: redis.Redis, *,
                 lease: SlotLease | None = None) -> None:
        self.slot = slot
        self.settings = settings
        self.r = r
        self.lease = lease  # None: always held (tests)
        self.shards: dict[ShardKey, ShardState] = {}
        self.collections: dict[str, Collection] = {}
        self.refused: dict[ShardKey, tuple[str, float]] = {}  # shards that cannot be served: why, since
        self.reloads = 0  # snapshot reloads after finding the log trimmed past the position
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.caught_up = threading.Event()  # set once the logs were read to their end after start

    def lease_held(self) -> bool:
        """Whether this process may publish (and, as the owner, write): its lease is certainly held."""
        return self.lease is None or self.lease.held()

    # -- the role's part -------------------------------------------------------------------
    @abstractmethod
    def _publish(self, key: ShardKey) -> None:
        """Make shard `key`'s applied position known in its shard state."""

    @abstractmethod
    def _wind_down(self) -> None:
        """What the role leaves in order when it stops."""

    def _deleting_absent(self, key: ShardKey, entries: list[shardlog.LogEntry]) -> None:
        """Delete entries about to be applied whose item is not here (reported by the owner)."""

    def housekeeping(self) -> None:
        """Work between two reads of the logs, once caught up with them (none by default)."""

    def settle(self) -> None:
        """Measure the tuning of each shard at rest again where its writes call for it; a shard
        measured again counts as unsaved (the owner's next snapshot keeps the new tuning)."""
        now = time.monotonic()
        for state in list(self.shards.values()):
            if now - state.last_write >= IDLE_S and state.index.settle():
                state.unsaved = max(state.unsaved, 1)

    # -- ownership and loading -------------------------------------------------------------
    def owns(self, shard: int) -> bool:
        return slot_for_shard(shard, self.settings.shard_slots) == self.slot

    def shard_dir(self, cid: str, shard: int) -> Path:
        return shard_dir(self.settings, cid, shard)

    def _load(self, coll: Collection, shard: int) -> ShardState:
        """The newest verified snapshot that the log can continue, else an empty index when the
        log was never trimmed; Unrecoverable otherwise."""
        directory = self.shard_dir(coll.cid, shard)
        trimmed = shardlog.trimmed_before(self.r, coll.cid, shard)
        for name in SNAPSHOT_FILES:
            path = directory / name
            if not path.exists():
                continue
            try:
                index, position = ShardIndex.load(path, image_dim=coll.dims["image"],
                                                  recall_target=self.settings.recall_target,
                                                  sampled_lists=self.settings.sampled_lists)
            except SnapshotError as exc:
                log.error("shard %s/%d: refusing %s: %s", coll.name, shard, name, exc)
                continue
            if trimmed and not at_least(position, trimmed):
                log.error("shard %s/%d: %s covers the log up to %s but the log was trimmed up to %s",
                          coll.name, shard, name, position, trimmed)
                continue
            log.info("shard %s/%d: loaded %s (%d items, log position %s) as the slot's %s",
                     coll.name, shard, name, len(index), position, self.role)
            return ShardState(directory, index, position)
        if trimmed:
            raise Unrecoverable(f"the log of shard {coll.name}/{shard} was trimmed up to {trimmed} and no "
                                f"verified snapshot in {directory} covers it")
        dim = coll.dims["image"] + coll.dims["text"]
        return ShardState(directory, ShardIndex(dim, image_dim=coll.dims["image"], recall_target=self.settings.recall_target,
                                                sampled_lists=self.settings.sampled_lists), "0-0")

    def _try_load(self, coll: Collection, shard: int) -> ShardState | None:
        key = (coll.cid, shard)
        try:
            state = self._load(coll, shard)
        except Unrecoverable as exc:
            if self.refused.get(key, ("",))[0] != str(exc):
                log.critical("slot %d: not serving shard: %s", self.slot, exc)
            self.refused[key] = (str(exc), time.monotonic())
            return None
        self.refused.pop(key, None)
        return state

    def _drop(self, key: ShardKey) -> ShardState:
        """Forget shard `key` of a deleted collection; returns its state."""
        state = self.shards.pop(key)
        log.info("dropped shard %s/%d of a deleted collection", *key)
        return state

    def refresh(self) -> dict[str, Collection]:
        """Pick up new collections, drop deleted ones; returns the live collections."""
        live = catalog.live_collections(self.r)
        with self._lock:
            self.collections = live
            for cid, coll in live.items():
                for shard in range(coll.shards):
                    if self.owns(shard) and (cid, shard) not in self.shards:
                        refused = self.refused.get((cid, shard))
                        if refused and time.monotonic() - refused[1] < RETRY_REFUSED_S:
                            continue
                        state = self._try_load(coll, shard)
                        if state is not None:
                            self.shards[(cid, shard)] = state
                            self._publish((cid, shard))
            for key in [k for k in self.shards if k[0] not in live]:
                self._drop(key)
            for key in [k for k in self.refused if k[0] not in live]:
                self.refused.pop(key)
        return live

    def get(self, cid: str, shard: int) -> ShardState | None:
        state = self.shards.get((cid, shard))
        if state is None and (cid, shard) not in self.refused:
            self.refresh()
            state = self.shards.get((cid, shard))
        return state

    # -- applying the log ------------------------------------------------------------------
    def _reload(self, key: ShardKey) -> None:
        """The log was trimmed past this shard's position: start again from the newest snapshot."""
        coll = self.collections.get(key[0])
        if coll is None:
            return
        self.reloads += 1
        log.warning("slot %d: shard %s/%d fell behind the trimmed log; reloading its snapshot",
                    self.slot, coll.name, key[1])
        state = self._try_load(coll, key[1])
        with self._lock:
            if state is None:
                self.shards.pop(key, None)
            else:
                self.shards[key] = state

    def _apply(self, key: ShardKey, entries: list[tuple[str, shardlog.LogEntry]]) -> None:
        state = self.shards[key]
        for start in range(0, len(entries), APPLY_BATCH):
            batch = entries[start:start + APPLY_BATCH]
            # Consecutive runs of one op are applied together; order between runs is kept.
            run: list[shardlog.LogEntry] = []
            for _, entry in batch + [("", None)]:
                if run and (entry is None or entry.op != run[0].op):
                    if run[0].op == "upsert":
                        state.index.upsert([e.item_id for e in run], np.stack([e.vector for e in run]),
                                           [ItemRecord(e.item_id, e.text, e.metadata, e.has_image, e.thumbnail)
                                            for e in run])
                    else:
                        self._deleting_absent(key, [e for e in run if e.item_id not in state.index])
                        state.index.delete([e.item_id for e in run])
                    run = []
                if entry is not None:
                    run.append(entry)
            state.position = batch[-1][0]
            state.unsaved += len(batch)
            state.last_write = time.monotonic()
            self._publish(key)

    def step(self, block_ms: int | None = 200) -> int:
        """Apply what the logs hold beyond each shard's position; returns the entries handled
        (0: every shard is at the end of its log)."""
        with self._lock:
            current = list(self.shards.items())
        positions = {keys.shard_log(*k): s.position for k, s in current}
        by_stream = {keys.shard_log(*k): k for k, _ in current}
        applied = 0
        replies = shardlog.read_entries(self.r, positions, APPLY_BATCH * 4, block_ms)
        read = [(by_stream.get(stream), entries) for stream, entries in replies]
        read = [(key, entries) for key, entries in read if key is not None and key in self.shards]
        if read:
            # Marked before any trim: a position older than the mark may have skipped entries.
            pipe = self.r.pipeline(transaction=False)
            for key, _ in read:
                pipe.hget(keys.shard_state(*key), "trimmed")
            marks = pipe.execute()
        for (key, entries), mark in zip(read, marks if read else []):
            if mark and not at_least(positions[keys.shard_log(*key)], mark):
                self._reload(key)
                applied += len(entries)  # superseded by the snapshot: progress all the same
                continue
            self._apply(key, entries)
            applied += len(entries)
        return applied

    # -- the background thread -------------------------------------------------------------
    def _run(self) -> None:
        last_refresh = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_refresh >= REFRESH_S:
                    self.refresh()
                    last_refresh = time.monotonic()
                if not self.shards:
                    self.caught_up.set()
                    self._stop.wait(0.2)
                    continue
                if not self.step(block_ms=200 if self.caught_up.is_set() else None):
                    self.caught_up.set()
                if self.caught_up.is_set():  # nothing that pauses applying before the first replay is done
                    self.settle()
                    self.housekeeping()
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("slot %d: Redis unreachable (%s); retrying", self.slot, exc)
                self._stop.wait(1.0)
            except Exception:  # keep applying; one bad entry must not stop the shard
                log.exception("slot %d: applier error", self.slot)
                self._stop.wait(1.0)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._run, name=f"applier-{self.slot}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop applying, then leave the role's work in order (`_wind_down`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._wind_down()
