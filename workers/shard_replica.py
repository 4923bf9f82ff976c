"""A read replica of one shard slot: follows the owner's snapshots and the slot's logs, writes nothing.

It loads the owner's snapshots from the same `MMSEARCH_DATA_DIR` and applies the logs
(`workers.slot_follower`), but never writes a snapshot, trims a log, publishes the owner's
position or removes a directory. It publishes its own position per shard, in the shard
state's field `replica.<slot>.<n>` (n from its lease), so that a job is final only once every
live replica applied it; it removes those fields when it stops.
"""
from __future__ import annotations

import logging

import redis

from shared.store import keys
from workers.slot_follower import ShardKey, SlotFollower

log = logging.getLogger(__name__)


class ShardReplica(SlotFollower):
    """Applies the slot's logs and publishes how far it got, under its own field."""

    role = "replica"
    replica = True

    def replica_field(self) -> str:
        """The shard-state field where this replica publishes its position: `replica.<slot>.<n>`."""
        n = self.lease.key.rsplit(":", 1)[1] if self.lease is not None else "0"
        return f"replica.{self.slot}.{n}"

    def _publish(self, key: ShardKey) -> None:
        if self.lease_held():
            self.r.hset(keys.shard_state(*key), self.replica_field(), self.shards[key].position)

    def unpublish(self) -> None:
        """Remove this replica's positions (a lapsed lease would make them ignored anyway)."""
        field = self.replica_field()
        pipe = self.r.pipeline(transaction=False)
        for key in list(self.shards):
            pipe.hdel(keys.shard_state(*key), field)
        pipe.execute()

    def _wind_down(self) -> None:
        try:
            self.unpublish()
        except redis.exceptions.RedisError as exc:
            log.warning("slot %d: the replica's positions could not be removed on stop (%s)", self.slot, exc)
