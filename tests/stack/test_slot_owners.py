"""Every shard slot gets an owner whatever the number of shard processes (workers.slot_keeper):
Redis and shard workers as real processes, nothing else. Items go straight into the shard logs
(bench.bulk), and each slot is asked which of them it holds through its request list, as the API
asks (an existence check), so an answer proves that a live owner applied the slot's log and
serves its requests."""
from __future__ import annotations

import signal
import time
import uuid
from typing import Callable, Iterator

import pytest

from bench.bulk import bulk_insert, synthetic_vectors
from shared.index.labels import shard_for
from shared.runtime.stack import Stack
from shared.store import catalog, jobs, keys, queues, replies
from tests.support.stack import stack_env

WAIT_S = 60  # bounds every wait: a process start, a lease lapsing (5 s) and a takeover fit well within


@pytest.fixture()
def stack(tmp_path) -> Iterator[Stack]:
    """A 2-slot deployment's Redis alone; each test starts the shard workers it needs."""
    stack = Stack(stack_env(tmp_path), log_dir=tmp_path / "logs")
    try:
        stack.start_redis()
        yield stack
    finally:
        stack.stop()


def until(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not ready():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.2)


def owners(stack: Stack) -> dict[int, int | None]:
    """The process id holding each slot's owner lease (None: nobody)."""
    tokens = [stack.redis.get(keys.slot_owner(slot)) for slot in range(stack.settings.shard_slots)]
    return {slot: int(token.decode().split(":")[1]) if token else None for slot, token in enumerate(tokens)}


def ingest(stack: Stack, coll: catalog.Collection, ids: list[str]) -> None:
    """The items, written to the shard logs under one ingest job; returns once the job succeeded
    (every shard it wrote to has an owner that applied it)."""
    vectors = synthetic_vectors(len(ids), coll.dims["image"], coll.dims["text"], seed=len(ids), clusters=4)
    job = bulk_insert(stack.redis, coll, vectors, ids)
    until(lambda: jobs.job_view(stack.redis, job, 60)["state"] == "succeeded", f"success of job {job}")


def held(stack: Stack, coll: catalog.Collection, ids: list[str]) -> set[str]:
    """The ids that the slots' request threads say they hold, every slot asked at once."""
    asked: dict[int, dict[str, list[str]]] = {}
    for item_id in ids:
        shard = shard_for(item_id, coll.shards)
        slot = queues.slot_for_shard(shard, stack.settings.shard_slots)
        asked.setdefault(slot, {}).setdefault(str(shard), []).append(item_id)
    assert sorted(asked) == [0, 1], "the ids must land on both slots"
    requests = {keys.slot_searches(slot): {"op": queues.SLOT_EXISTS, "cid": coll.cid, "ids": by_shard}
                for slot, by_shard in asked.items()}
    answers = replies.ask(stack.redis, requests, keys.search_replies(uuid.uuid4().hex), timeout_s=WAIT_S)
    assert len(answers) == len(requests), answers
    return {item_id for answer in answers for item_id in answer["present"]}


def test_one_shard_process_owns_and_serves_every_slot(stack):
    shard = stack.start_process("shard")  # the Procfile's command, as `honcho start` runs it
    until(lambda: owners(stack) == {0: shard.pid, 1: shard.pid}, "owner of both slots")
    coll = catalog.create_collection(stack.redis, stack.settings, "both", shards=2)
    ids = [f"item-{i}" for i in range(20)]
    ingest(stack, coll, ids)
    assert held(stack, coll, ids) == set(ids)


def test_a_killed_owners_slot_is_taken_over_by_a_live_process_with_room_for_it(stack):
    pinned = stack.start_process("shard.1")  # slot 0 alone
    until(lambda: owners(stack)[0] == pinned.pid, "owner of slot 0")
    spare = stack.start_process("shard")  # takes the free slot 1, and has room for slot 0
    until(lambda: owners(stack) == {0: pinned.pid, 1: spare.pid}, "owner of slot 1")
    coll = catalog.create_collection(stack.redis, stack.settings, "takeover", shards=2)
    before = [f"before-{i}" for i in range(20)]
    ingest(stack, coll, before)
    # The killed owner's snapshot (written 2 s after the writes stop) is what the next one loads.
    until(lambda: stack.redis.hexists(keys.shard_state(coll.cid, 0), "snapshot"), "snapshot of shard 0")

    stack.signal("shard.1", signal.SIGKILL)
    until(lambda: owners(stack) == {0: spare.pid, 1: spare.pid}, "takeover of slot 0")
    after = [f"after-{i}" for i in range(20)]
    ingest(stack, coll, after)
    assert held(stack, coll, before + after) == set(before + after)
