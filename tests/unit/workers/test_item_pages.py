"""Pages of a slot's items in id order (the shard side of GET /v1/collections/{c}/items): a scan
with writes going on between its pages returns every item live for the whole scan exactly
once, filters and fields as asked."""
import random

import numpy as np
import pytest

from shared.runtime.config import Settings
from shared.store import catalog, jobs, shardlog
from shared.store.shardlog import LogEntry
from shared.index.labels import shard_for
from workers.item_pages import shard_page, sorted_ids
from workers.shard import list_page
from workers.shard_owner import ShardOwner

rng = np.random.default_rng(3)
SHARDS = 3


@pytest.fixture()
def owner(redis_client, tmp_path):
    settings = Settings(data_dir=tmp_path, shard_slots=1, snapshot_every=100_000)
    coll = catalog.create_collection(redis_client, settings, "photos", shards=SHARDS)
    return ShardOwner(0, settings, redis_client), coll


def write(r, coll, upserts: dict[str, dict], deletes: list[str] = ()) -> None:
    """Log upserts (id -> metadata) and deletes to the ids' shards, as one job each."""
    dim = coll.dims["image"] + coll.dims["text"]
    job = jobs.create_job(r, "ingest", coll.name, coll.cid, len(upserts) + len(deletes))
    entries = []
    for item_id, metadata in upserts.items():
        vector = rng.normal(size=dim).astype(np.float32)
        entries.append(LogEntry("upsert", item_id, vector / np.linalg.norm(vector), f"text of {item_id}", metadata,
                                True, b"jpeg"))
    entries += [LogEntry("delete", item_id, job=job) for item_id in deletes]
    outcomes = shardlog.log_items(r, coll.cid, job, [(shard_for(e.item_id, coll.shards), e) for e in entries])
    assert set(outcomes) <= {shardlog.LOGGED}


def drain(owner: ShardOwner) -> None:
    owner.refresh()
    while owner.step(block_ms=10):
        pass


def scan(owner, coll, limit, between=lambda: None, **kwargs) -> list[dict]:
    """Every page of the slot's shards, `between` called after each."""
    seen, after = [], None
    while True:
        page = list_page(owner, coll.cid, list(range(SHARDS)), after, limit, kwargs.get("filter"),
                         kwargs.get("fields", []))
        assert page["unserved"] == []
        seen += page["items"]
        if len(page["items"]) < limit:
            return seen
        after = page["items"][-1]["id"]
        between()


def test_a_scan_with_writes_between_pages_returns_every_stable_item_exactly_once(owner, redis_client):
    own, coll = owner
    stable = {f"s{i:04d}" for i in range(300)}
    doomed = [f"d{i:04d}" for i in range(200)]
    write(redis_client, coll, {i: {"n": 1} for i in [*stable, *doomed]})
    drain(own)
    shuffle = random.Random(5)
    fresh = iter(range(10_000))
    deleted: set[str] = set()

    def writes() -> None:
        # New ids before, among and after the cursor; deletes of the doomed; upserts of stable ids.
        new = {f"{shuffle.choice('adsz')}{next(fresh):05d}x": {"n": 2} for _ in range(15)}
        gone = shuffle.sample(sorted(set(doomed) - deleted), 10) if len(deleted) < len(doomed) else []
        deleted.update(gone)
        write(redis_client, coll, {**new, **{i: {"n": 3} for i in shuffle.sample(sorted(stable), 5)}}, gone)
        drain(own)

    seen = [item["id"] for item in scan(own, coll, 37, writes)]
    assert len(seen) == len(set(seen))  # no item twice
    assert stable <= set(seen)          # none live for the whole scan skipped
    assert seen == sorted(seen)         # in id order, across shards


def test_pages_filter_and_carry_the_fields_asked(owner, redis_client):
    own, coll = owner
    write(redis_client, coll, {f"i{n:03d}": {"year": 2000 + n % 30, "tags": ["a", "b"] if n % 2 else ["c"]}
                               for n in range(120)})
    drain(own)
    filter = {"year": {"$gte": 2020}, "tags": {"$ne": "c"}}
    wanted = [f"i{n:03d}" for n in range(120) if 2000 + n % 30 >= 2020 and n % 2]
    assert [i["id"] for i in scan(own, coll, 7, filter=filter)] == wanted
    (item,) = list_page(own, coll.cid, [0, 1, 2], None, 1, None, [])["items"]
    assert item == {"id": "i000", "shard": shard_for("i000", SHARDS)}
    (item,) = list_page(own, coll.cid, [0, 1, 2], "i000", 1, None, ["text", "metadata", "has_image",
                                                                     "thumbnail"])["items"]
    assert item == {"id": "i001", "shard": shard_for("i001", SHARDS), "text": "text of i001",
                    "metadata": {"year": 2001, "tags": ["a", "b"]}, "has_image": True, "thumbnail": "anBlZw=="}


def test_a_shard_not_loaded_here_is_named_and_ids_are_sorted_once_per_position(owner, redis_client):
    own, coll = owner
    write(redis_client, coll, {"b": {}, "a": {}})
    drain(own)
    state = own.get(coll.cid, shard_for("a", SHARDS))
    first = sorted_ids(state.index, state.position)
    assert sorted_ids(state.index, state.position) is first  # kept while the shard applies nothing
    assert sorted_ids(state.index, "another position") is not first
    assert shard_page(state.index, state.position, 0, "a", 5, None, ()) == \
        [{"id": i, "shard": 0} for i in first if i > "a"]
    own.refused[(coll.cid, 7)] = ("cannot be rebuilt", 0.0)
    assert list_page(own, coll.cid, [0, 7], None, 5, None, [])["unserved"] == [7]
