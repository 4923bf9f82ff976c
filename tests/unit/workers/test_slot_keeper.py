"""Which shard slots a process owns (workers.slot_keeper), on a real Redis: every free slot up to
its cap, lapsed ones later when their data is reachable, never one that another process holds;
a slot counts as loading until its owner marks it served."""
from __future__ import annotations

import threading
import time

import pytest

from shared.runtime.config import Settings
from shared.store import catalog, keys
from shared.store.slots import loading_slots
from workers.slot_follower import SNAPSHOT, shard_dir
from workers.slot_keeper import SlotKeeper


@pytest.fixture()
def keepers(redis_client, tmp_path):
    """Makes keepers of `slots` slots on the test Redis, as separate processes would run them;
    `served` maps each slot handed to a keeper's `serve` to its stop event. All stopped after."""
    made: list[SlotKeeper] = []
    served: dict[int, threading.Event] = {}

    def make(slots: int = 2, slot: int | None = None, **settings) -> SlotKeeper:
        cfg = Settings(data_dir=tmp_path, shard_slots=slots, **settings)
        keeper = SlotKeeper(redis_client, cfg, lambda owner, stop: served.__setitem__(owner.slot, stop), slot)
        made.append(keeper)
        return keeper

    make.served = served
    yield make
    for keeper in made:
        keeper.stop()


def wait_served(keepers, slots: set[int]) -> None:
    """Until `serve` was handed each of `slots` (it runs on a thread of its own)."""
    deadline = time.monotonic() + 10
    while not slots <= set(keepers.served):
        assert time.monotonic() < deadline, keepers.served
        time.sleep(0.01)


def holder(r, slot: int) -> str | None:
    token = r.get(keys.slot_owner(slot))
    return token.decode() if token else None


def test_a_process_without_a_slot_takes_every_free_one_and_serves_each(redis_client, keepers):
    redis_client.set(keys.slot_owner(1), "another-process", px=5000)
    keeper = keepers(slots=3)
    assert keeper.look() == [0, 2]
    assert {slot: holder(redis_client, slot) for slot in (0, 2)} == {
        slot: keeper.held[slot].lease.token for slot in (0, 2)}
    wait_served(keepers, {0, 2})
    assert set(keepers.served) == {0, 2}
    assert keeper.look() == []  # slot 1 is still held


def test_a_pinned_process_owns_its_slot_alone_once_it_is_free(redis_client, keepers):
    redis_client.set(keys.slot_owner(1), "another-process", px=5000)
    pinned = keepers(slot=1)
    assert pinned.look() == []
    redis_client.delete(keys.slot_owner(1))  # its holder died and the lease lapsed
    assert pinned.look() == [1] and list(pinned.held) == [1]
    assert holder(redis_client, 0) is None


def test_the_cap_bounds_the_slots_of_one_process(redis_client, keepers):
    first, second = keepers(slots=3, shard_max_slots=2), keepers(slots=3, shard_max_slots=2)
    assert first.look() == [0, 1]
    assert second.look() == [2]
    assert first.look() == [] and second.look() == []
    assert Settings.from_env({"MMSEARCH_SHARDS": "3", "MMSEARCH_SHARD_MAX_SLOTS": "1"}).slots_per_shard_process == 1
    for unset_or_more in ({}, {"MMSEARCH_SHARD_MAX_SLOTS": "0"}, {"MMSEARCH_SHARD_MAX_SLOTS": "7"}):
        assert Settings.from_env({"MMSEARCH_SHARDS": "3", **unset_or_more}).slots_per_shard_process == 3


def test_a_lapsed_slot_goes_to_one_live_process_below_its_cap(redis_client, keepers):
    full, spare, other = keepers(shard_max_slots=1), keepers(), keepers()
    assert full.look() == [0] and spare.look() == [1]
    full.held[0].lease.release()  # as if its process died: the lease is gone, nobody renews it
    assert other.look() == [0]  # whoever looks first takes it (SET NX)...
    assert spare.look() == []  # ...and the others leave it alone
    assert holder(redis_client, 0) == other.held[0].lease.token


def test_a_slot_whose_trimmed_shards_have_no_snapshot_here_waits_for_a_process_that_has_them(
        redis_client, keepers, tmp_path):
    settings = Settings(data_dir=tmp_path, shard_slots=2)
    coll = catalog.create_collection(redis_client, settings, "photos", shards=2)
    redis_client.hset(keys.shard_state(coll.cid, 1), "trimmed", "5-0")
    keeper = keepers()
    assert keeper.look() == [0]
    assert keeper.look() == []  # shard 1 (slot 1) could not be rebuilt from this data dir
    directory = shard_dir(settings, coll.cid, 1)
    directory.mkdir(parents=True)
    (directory / SNAPSHOT).write_bytes(b"from the owner that died")
    assert keeper.look() == [1]


def test_a_pinned_process_takes_its_slot_whatever_its_data_dir_holds(redis_client, keepers, tmp_path):
    coll = catalog.create_collection(redis_client, Settings(data_dir=tmp_path, shard_slots=2), "photos", shards=2)
    redis_client.hset(keys.shard_state(coll.cid, 1), "trimmed", "5-0")
    assert keepers(slot=1).look() == [1]


def test_a_slot_whose_lease_another_process_took_is_given_up_and_taken_again_once_free(redis_client, keepers):
    keeper = keepers()
    assert keeper.look() == [0, 1]
    wait_served(keepers, {0, 1})
    lease = keeper.held[0].lease
    redis_client.set(keys.slot_owner(0), "intruder")  # took it while this one could not renew
    lease.renew()
    assert lease.taken.is_set() and not lease.held()
    assert keeper.look() == [] and list(keeper.held) == [1]
    assert keepers.served[0].is_set()  # its request threads stop
    assert holder(redis_client, 0) == "intruder"  # released nothing of theirs
    redis_client.delete(keys.slot_owner(0))
    assert keeper.look() == [0]


def test_a_slot_counts_as_loading_until_its_owner_marks_it_served(redis_client, keepers):
    redis_client.set(keys.slot_serving(1), "an-earlier-owner")
    keeper = keepers()
    assert keeper.look() == [0, 1]
    wait_served(keepers, {0, 1})  # `serve` here marks nothing: both still load as far as Redis knows
    assert loading_slots(redis_client, [0, 1]) == {0, 1}
    lease = keeper.held[0].lease
    lease.serve()
    assert loading_slots(redis_client, [0, 1]) == {1}
    redis_client.delete(keys.slot_owner(0), keys.slot_serving(0))  # a Redis restart that lost both
    lease.renew()  # takes its lapsed lease back, and marks the slot served again
    assert holder(redis_client, 0) == lease.token and loading_slots(redis_client, [0, 1]) == {1}
    keeper.stop()
    assert loading_slots(redis_client, [0, 1]) == set()  # no owner: missing, not loading
