"""The owner of one shard slot: the only writer of its shards' snapshots and log trims.

The owner follows the slot's logs (`workers.slot_follower`), publishes the applied position
and item count of each shard to Redis, and snapshots to `MMSEARCH_DATA_DIR/shards/<cid>/<s>`
(every `snapshot_interval` entries while writes come, and once they stop). The log is trimmed
only up to the position the *previous* snapshot covers, so that falling back to it always
finds the entries it needs. A new snapshot is written completely (`snapshot.new.bin`, atomic
and fsynced) before the rotation renames, so a crash at any moment leaves a complete newest
snapshot. No snapshot is taken before the first replay after a start is done, so that a
restarted owner serves as soon as it has caught up. It removes the snapshots of deleted
collections. With a `lease`, it writes (snapshots, trims, published positions) only while the
lease is certainly held.
"""
from __future__ import annotations

import logging
import os
import shutil
import time

import redis

from shared.errors import SnapshotError
from shared.index.shard_index import ShardIndex
from shared.index.snapshot import fsync_dir
from shared.store import jobs, keys, shardlog
from shared.store.catalog import Collection
from workers.slot_follower import IDLE_S, PENDING, PREVIOUS, SNAPSHOT, ShardKey, ShardState, SlotFollower

log = logging.getLogger(__name__)

SNAPSHOT_SHARE = 0.1  # a shard also waits for this share of its items in new entries between snapshots


def snapshot_interval(items: int, every: int) -> int:
    """Log entries a shard of `items` items applies between two snapshots while writes keep
    coming: `every` (MMSEARCH_SNAPSHOT_EVERY), or SNAPSHOT_SHARE of its items once that is more.
    Each snapshot writes the whole shard, so with a fixed interval filling a shard would cost
    time quadratic in its size; this keeps snapshots to a constant share of the applier's time
    (and a replay after a crash to at most twice the interval)."""
    return max(every, int(SNAPSHOT_SHARE * items))


class ShardOwner(SlotFollower):
    """Applies the slot's logs, publishes its shards' positions, snapshots and trims."""

    role = "owner"
    replica = False

    # -- the shards' directories ------------------------------------------------------------
    def _load(self, coll: Collection, shard: int) -> ShardState:
        self.shard_dir(coll.cid, shard).mkdir(parents=True, exist_ok=True)
        return super()._load(coll, shard)

    def _drop(self, key: ShardKey) -> ShardState:
        state = super()._drop(key)
        shutil.rmtree(state.directory, ignore_errors=True)
        return state

    def refresh(self) -> dict[str, Collection]:
        live = super().refresh()
        # Snapshots of collections deleted while no owner was running.
        for cid_dir in (self.settings.data_dir / "shards").glob("*"):
            if cid_dir.name not in live:
                shutil.rmtree(cid_dir, ignore_errors=True)
        return live

    # -- published positions -----------------------------------------------------------------
    def _deleting_absent(self, key: ShardKey, entries: list[shardlog.LogEntry]) -> None:
        """Name them in their delete jobs' `not_found`, before the position that finishes those
        jobs is published."""
        noted = [(e.job, e.item_id) for e in entries if e.job]
        if noted and self.lease_held():
            pipe = self.r.pipeline(transaction=False)
            jobs.note_not_found(pipe, noted, self.settings.job_ttl_s)
            pipe.execute()

    def _publish(self, key: ShardKey) -> None:
        if not self.lease_held():
            return
        state = self.shards[key]
        self.r.hset(keys.shard_state(*key), mapping={"applied": state.position, "count": len(state.index)})

    # -- snapshots -------------------------------------------------------------------------
    def snapshot(self, key: ShardKey) -> None:
        if not self.lease_held():
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
        if self.lease_held():  # what a restart of this shard would replay from, for operators and benchmarks
            self.r.hset(keys.shard_state(*key), "snapshot", state.position)
        older_position = None
        if previous.exists():
            try:
                older_position = ShardIndex.read_position(previous)  # verified again before the trim
            except SnapshotError:
                older_position = None
        if older_position and self.lease_held():
            shardlog.trim_before(self.r, key[0], key[1], older_position)

    def snapshot_due(self) -> None:
        now = time.monotonic()
        with self._lock:
            current = list(self.shards.items())
        for key, state in current:
            interval = snapshot_interval(len(state.index), self.settings.snapshot_every)
            if state.unsaved and (state.unsaved >= interval or now - state.last_write >= IDLE_S):
                self.snapshot(key)

    def snapshot_all(self) -> None:
        for key, state in list(self.shards.items()):
            if state.unsaved:
                self.snapshot(key)

    # -- the role's part in the background thread and on stop --------------------------------
    def housekeeping(self) -> None:
        """The snapshots that are due."""
        self.snapshot_due()

    def _wind_down(self) -> None:
        """Snapshot every shard with unsaved entries."""
        try:
            self.snapshot_all()
        except redis.exceptions.RedisError as exc:  # the snapshots are written; only the trim failed
            log.warning("slot %d: snapshots on stop could not trim the logs (%s)", self.slot, exc)
