"""The owner of one shard slot: keeps the hnswlib indexes of the shards the slot owns.

Slot `i` owns shard `s` of every collection where `s mod MMSEARCH_SHARDS == i`. Only the owner
writes those indexes. A background thread applies each shard's log in order, in bounded
batches (the index's write lock is held per batch, so searches are not starved), publishes the
applied position and item count to Redis, and snapshots to `MMSEARCH_DATA_DIR/shards/<cid>/<s>`.
On start it loads the newest verified snapshot (falling back to the previous one) and replays
the log after it. The log is trimmed only up to the position the *previous* snapshot covers,
so that fallback always has the entries it needs.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import redis

from shared import catalog, keys, shardlog
from shared.catalog import Collection
from shared.config import Settings
from shared.errors import SnapshotError
from shared.queues import slot_for_shard
from shared.shard_index import ItemRecord, ShardIndex

log = logging.getLogger(__name__)

APPLY_BATCH = 256
IDLE_SNAPSHOT_S = 2.0
REFRESH_S = 1.0
SNAPSHOT, PREVIOUS = "snapshot.bin", "snapshot.prev.bin"

ShardKey = tuple[str, int]


class ShardState:
    """One shard's index, the log position it reflects, and its snapshot bookkeeping."""

    def __init__(self, directory: Path, index: ShardIndex, position: str) -> None:
        self.directory = directory
        self.index = index
        self.position = position
        self.unsaved = 0
        self.last_write = 0.0


class ShardOwner:
    def __init__(self, slot: int, settings: Settings, r: redis.Redis) -> None:
        self.slot = slot
        self.settings = settings
        self.r = r
        self.shards: dict[ShardKey, ShardState] = {}
        self.collections: dict[str, Collection] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- ownership and loading -------------------------------------------------------------
    def owns(self, shard: int) -> bool:
        return slot_for_shard(shard, self.settings.shard_slots) == self.slot

    def shard_dir(self, cid: str, shard: int) -> Path:
        return self.settings.data_dir / "shards" / cid / str(shard)

    def _load(self, coll: Collection, shard: int) -> ShardState:
        directory = self.shard_dir(coll.cid, shard)
        directory.mkdir(parents=True, exist_ok=True)
        for name in (SNAPSHOT, PREVIOUS):
            path = directory / name
            if not path.exists():
                continue
            try:
                index, position = ShardIndex.load(path)
                log.info("shard %s/%d: loaded %s (%d items, log position %s)",
                         coll.name, shard, name, len(index), position)
                return ShardState(directory, index, position)
            except SnapshotError as exc:
                log.error("shard %s/%d: refusing %s: %s", coll.name, shard, name, exc)
        dim = coll.dims["image"] + coll.dims["text"]
        return ShardState(directory, ShardIndex(dim), "0-0")

    def refresh(self) -> None:
        """Pick up new collections, drop deleted ones."""
        live = catalog.live_collections(self.r)
        with self._lock:
            self.collections = live
            for cid, coll in live.items():
                for shard in range(coll.shards):
                    if self.owns(shard) and (cid, shard) not in self.shards:
                        self.shards[(cid, shard)] = self._load(coll, shard)
                        self._publish((cid, shard))
            for key in [k for k in self.shards if k[0] not in live]:
                state = self.shards.pop(key)
                shutil.rmtree(state.directory, ignore_errors=True)
                log.info("dropped shard %s/%d of a deleted collection", *key)
        # Snapshots of collections deleted while no owner was running.
        for cid_dir in (self.settings.data_dir / "shards").glob("*"):
            if cid_dir.name not in live:
                shutil.rmtree(cid_dir, ignore_errors=True)

    def get(self, cid: str, shard: int) -> ShardState | None:
        state = self.shards.get((cid, shard))
        if state is None:
            self.refresh()
            state = self.shards.get((cid, shard))
        return state

    # -- applying the log ------------------------------------------------------------------
    def _publish(self, key: ShardKey) -> None:
        state = self.shards[key]
        self.r.hset(keys.shard_state(*key), mapping={"applied": state.position, "count": len(state.index)})

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
                        state.index.delete([e.item_id for e in run])
                    run = []
                if entry is not None:
                    run.append(entry)
            state.position = batch[-1][0]
            state.unsaved += len(batch)
            state.last_write = time.monotonic()
            self._publish(key)

    def step(self, block_ms: int = 200) -> int:
        """Apply what the logs hold beyond each shard's position; returns entries applied."""
        with self._lock:
            current = list(self.shards.items())
        positions = {keys.shard_log(*k): s.position for k, s in current}
        by_stream = {keys.shard_log(*k): k for k, _ in current}
        applied = 0
        for stream, entries in shardlog.read_entries(self.r, positions, APPLY_BATCH * 4, block_ms):
            key = by_stream.get(stream)
            if key is None or key not in self.shards:
                continue
            self._apply(key, entries)
            applied += len(entries)
        return applied

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self, key: ShardKey) -> None:
        state = self.shards[key]
        current, previous = state.directory / SNAPSHOT, state.directory / PREVIOUS
        older_position = None
        if current.exists():
            os.replace(current, previous)
            try:
                older_position = ShardIndex.read_position(previous)
            except SnapshotError:
                older_position = None
        state.index.save(current, state.position)
        state.unsaved = 0
        if older_position:
            shardlog.trim_before(self.r, key[0], key[1], older_position)

    def snapshot_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            current = list(self.shards.items())
        for key, state in current:
            if state.unsaved and (state.unsaved >= self.settings.snapshot_every
                                  or now - state.last_write >= IDLE_SNAPSHOT_S):
                self.snapshot(key)

    def snapshot_all(self) -> None:
        for key, state in list(self.shards.items()):
            if state.unsaved:
                self.snapshot(key)

    # -- the background thread -------------------------------------------------------------
    def _run(self) -> None:
        last_refresh = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_refresh >= REFRESH_S:
                    self.refresh()
                    last_refresh = time.monotonic()
                if not self.shards:
                    self._stop.wait(0.2)
                    continue
                self.step()
                self.snapshot_due()
            except redis.exceptions.ConnectionError as exc:
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
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.snapshot_all()
