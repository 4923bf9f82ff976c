"""The owner of one shard slot: keeps the hnswlib indexes of the shards the slot owns.

Slot `i` owns shard `s` of every collection where `s mod MMSEARCH_SHARDS == i`. Only the owner
writes those indexes. A background thread applies each shard's log in order, in bounded
batches (the index's write lock is held per batch, so searches are not starved), publishes the
applied position and item count to Redis, and snapshots to `MMSEARCH_DATA_DIR/shards/<cid>/<s>`
(every `snapshot_interval` entries while writes come, and once they stop).
On start it loads the newest verified snapshot (falling back to the previous one) and replays
the log after it; each index keeps one graph per vector block (the collection's image dim) and
tunes its search list for `Settings.recall_target`, and a snapshot of the older one-graph format
is rebuilt that way as it loads. The log is trimmed only up to the position the *previous* snapshot covers,
so that fallback always has the entries it needs. A new snapshot is written completely
(`snapshot.new.bin`, atomic and fsynced) before the rotation renames, so a crash at any moment
leaves a complete newest snapshot. No snapshot is taken before the first replay after a start
is done, so that a restarted owner serves as soon as it has caught up.

A shard whose log was trimmed (the shard state's `trimmed` mark) but that has no verified
snapshot cannot be rebuilt: it is refused loudly (searches report it as not answered) rather
than served with items missing, until a snapshot appears. A reader whose position is older
than the trim mark (a replica that fell behind, an owner whose lease lapsed while another took
the slot) reloads the newest snapshot instead of reading on past the gap.

With `replica=True` the same class follows the logs as a read replica: it loads the owner's
snapshots from the same data directory and applies the logs, but never writes a snapshot,
trims a log, publishes a position or removes a directory. With a `lease`, an owner writes
(snapshots, trims, published positions) only while the lease is certainly held.
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

from shared.store import catalog, keys, shardlog
from shared.store.catalog import Collection
from shared.runtime.config import Settings
from shared.errors import SnapshotError
from shared.store.queues import slot_for_shard
from shared.index.shard_index import ItemRecord, ShardIndex, fsync_dir
from shared.store.streamids import at_least

log = logging.getLogger(__name__)

APPLY_BATCH = 256
IDLE_SNAPSHOT_S = 2.0
SNAPSHOT_SHARE = 0.1  # a shard also waits for this share of its items in new entries between snapshots
REFRESH_S = 1.0
RETRY_REFUSED_S = 30.0  # a shard that could not be rebuilt is tried again this often
SNAPSHOT, PREVIOUS = "snapshot.bin", "snapshot.prev.bin"
PENDING = "snapshot.new.bin"  # complete and verified, not yet rotated in (a crash between two renames)

ShardKey = tuple[str, int]


def snapshot_interval(items: int, every: int) -> int:
    """Log entries a shard of `items` items applies between two snapshots while writes keep
    coming: `every` (MMSEARCH_SNAPSHOT_EVERY), or SNAPSHOT_SHARE of its items once that is more.
    Each snapshot writes the whole shard, so with a fixed interval filling a shard would cost
    time quadratic in its size; this keeps snapshots to a constant share of the applier's time
    (and a replay after a crash to at most twice the interval)."""
    return max(every, int(SNAPSHOT_SHARE * items))


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


class ShardOwner:
    def __init__(self, slot: int, settings: Settings, r: redis.Redis, *, replica: bool = False,
                 lease=None) -> None:
        self.slot = slot
        self.settings = settings
        self.r = r
        self.replica = replica
        self.lease = lease  # a workers.lease.SlotLease; None: writes are always allowed (tests)
        self.shards: dict[ShardKey, ShardState] = {}
        self.collections: dict[str, Collection] = {}
        self.refused: dict[ShardKey, tuple[str, float]] = {}  # shards that cannot be served: why, since
        self.reloads = 0  # snapshot reloads after finding the log trimmed past the position
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.caught_up = threading.Event()  # set once the logs were read to their end after start

    def may_write(self) -> bool:
        """Snapshots, trims and published positions: only an owner that holds its lease."""
        return not self.replica and (self.lease is None or self.lease.held())

    # -- ownership and loading -------------------------------------------------------------
    def owns(self, shard: int) -> bool:
        return slot_for_shard(shard, self.settings.shard_slots) == self.slot

    def shard_dir(self, cid: str, shard: int) -> Path:
        return self.settings.data_dir / "shards" / cid / str(shard)

    def _load(self, coll: Collection, shard: int) -> ShardState:
        """The newest verified snapshot that the log can continue, else an empty index when the
        log was never trimmed; Unrecoverable otherwise."""
        directory = self.shard_dir(coll.cid, shard)
        if not self.replica:
            directory.mkdir(parents=True, exist_ok=True)
        trimmed = shardlog.trimmed_before(self.r, coll.cid, shard)
        for name in (SNAPSHOT, PENDING, PREVIOUS):
            path = directory / name
            if not path.exists():
                continue
            try:
                index, position = ShardIndex.load(path, image_dim=coll.dims["image"],
                                                  recall_target=self.settings.recall_target)
            except SnapshotError as exc:
                log.error("shard %s/%d: refusing %s: %s", coll.name, shard, name, exc)
                continue
            if trimmed and not at_least(position, trimmed):
                log.error("shard %s/%d: %s covers the log up to %s but the log was trimmed up to %s",
                          coll.name, shard, name, position, trimmed)
                continue
            log.info("shard %s/%d: loaded %s (%d items, log position %s)%s",
                     coll.name, shard, name, len(index), position, " as a replica" if self.replica else "")
            return ShardState(directory, index, position)
        if trimmed:
            raise Unrecoverable(f"the log of shard {coll.name}/{shard} was trimmed up to {trimmed} and no "
                                f"verified snapshot in {directory} covers it")
        dim = coll.dims["image"] + coll.dims["text"]
        return ShardState(directory, ShardIndex(dim, image_dim=coll.dims["image"],
                                                recall_target=self.settings.recall_target), "0-0")

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

    def refresh(self) -> None:
        """Pick up new collections, drop deleted ones."""
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
                state = self.shards.pop(key)
                if not self.replica:
                    shutil.rmtree(state.directory, ignore_errors=True)
                log.info("dropped shard %s/%d of a deleted collection", *key)
            for key in [k for k in self.refused if k[0] not in live]:
                self.refused.pop(key)
        if self.replica:
            return
        # Snapshots of collections deleted while no owner was running.
        for cid_dir in (self.settings.data_dir / "shards").glob("*"):
            if cid_dir.name not in live:
                shutil.rmtree(cid_dir, ignore_errors=True)

    def get(self, cid: str, shard: int) -> ShardState | None:
        state = self.shards.get((cid, shard))
        if state is None and (cid, shard) not in self.refused:
            self.refresh()
            state = self.shards.get((cid, shard))
        return state

    # -- applying the log ------------------------------------------------------------------
    def replica_field(self) -> str:
        """The shard-state field where this replica publishes its position: `replica.<slot>.<n>`
        (n from its lease), so that a job is final only once every live replica applied it."""
        n = self.lease.key.rsplit(":", 1)[1] if self.lease is not None else "0"
        return f"replica.{self.slot}.{n}"

    def _publish(self, key: ShardKey) -> None:
        state = self.shards[key]
        if self.replica:
            if self.lease is None or self.lease.held():
                self.r.hset(keys.shard_state(*key), self.replica_field(), state.position)
            return
        if not self.may_write():
            return
        self.r.hset(keys.shard_state(*key), mapping={"applied": state.position, "count": len(state.index)})

    def unpublish(self) -> None:
        """A replica that stops removes its positions (a lapsed lease would make them ignored anyway)."""
        if not self.replica:
            return
        field = self.replica_field()
        pipe = self.r.pipeline(transaction=False)
        for key in list(self.shards):
            pipe.hdel(keys.shard_state(*key), field)
        pipe.execute()

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

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self, key: ShardKey) -> None:
        if not self.may_write():
            return
        state = self.shards[key]
        current, previous = state.directory / SNAPSHOT, state.directory / PREVIOUS
        pending = state.directory / PENDING
        # Written in full first, then rotated: there is always a complete newest snapshot on disk.
        state.index.save(pending, state.position)
        state.unsaved = 0
        if current.exists():
            os.replace(current, previous)
        os.replace(pending, current)
        fsync_dir(state.directory)
        if self.may_write():  # what a restart of this shard would replay from, for operators and benchmarks
            self.r.hset(keys.shard_state(*key), "snapshot", state.position)
        older_position = None
        if previous.exists():
            try:
                older_position = ShardIndex.read_position(previous)  # verified again before the trim
            except SnapshotError:
                older_position = None
        if older_position and self.may_write():
            shardlog.trim_before(self.r, key[0], key[1], older_position)

    def snapshot_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            current = list(self.shards.items())
        for key, state in current:
            interval = snapshot_interval(len(state.index), self.settings.snapshot_every)
            if state.unsaved and (state.unsaved >= interval or now - state.last_write >= IDLE_SNAPSHOT_S):
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
                    self.caught_up.set()
                    self._stop.wait(0.2)
                    continue
                if not self.step(block_ms=200 if self.caught_up.is_set() else None):
                    self.caught_up.set()
                if self.caught_up.is_set():  # no snapshot pause before the first replay is done
                    self.snapshot_due()
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
        """Stop applying and, as an owner, snapshot every shard with unsaved entries."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.snapshot_all()
            self.unpublish()
        except redis.exceptions.RedisError as exc:  # the snapshots are written; only the trim failed
            log.warning("slot %d: snapshots on stop could not trim the logs (%s)", self.slot, exc)
