"""bench.bulk: synthetic fused vectors, and bulk inserts that land in the shard logs under a job
that counts each item once and goes final when a shard owner has applied them (real Redis)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.bulk import bulk_insert, synthetic_vectors
from shared.store import catalog, jobs, keys, shardlog
from shared.runtime.config import Settings
from shared.index.labels import shard_for
from workers.shard_owner import ShardOwner

IMAGE_DIM, TEXT_DIM = 1280, 50


def test_synthetic_vectors_are_fused_unit_blocks_and_seeded():
    vectors = synthetic_vectors(300, IMAGE_DIM, TEXT_DIM, seed=7, clusters=10)
    assert vectors.shape == (300, IMAGE_DIM + TEXT_DIM) and vectors.dtype == np.float32
    block_norms = np.stack([np.linalg.norm(vectors[:, :IMAGE_DIM], axis=1),
                            np.linalg.norm(vectors[:, IMAGE_DIM:], axis=1)])
    np.testing.assert_allclose(block_norms, 1 / math.sqrt(2), rtol=1e-5)
    np.testing.assert_array_equal(vectors, synthetic_vectors(300, IMAGE_DIM, TEXT_DIM, seed=7, clusters=10))
    assert not np.array_equal(vectors, synthetic_vectors(300, IMAGE_DIM, TEXT_DIM, seed=8, clusters=10))
    # Clustered: each item's nearest neighbour is much closer than a typical item.
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    assert np.median(sims.max(axis=1)) > np.median(sims[np.isfinite(sims)]) + 0.2


def test_anchored_vectors_lie_near_their_anchors():
    rng = np.random.default_rng(0)
    image = np.maximum(rng.standard_normal((4, IMAGE_DIM)) - 1, 0)  # sparse, unlike the random centres
    anchors = np.stack([np.concatenate([i / np.linalg.norm(i), t / np.linalg.norm(t)]) / math.sqrt(2)
                        for i, t in zip(image, rng.standard_normal((4, TEXT_DIM)))])
    anchored = synthetic_vectors(200, IMAGE_DIM, TEXT_DIM, seed=3, anchors=anchors, clusters=20)
    free = synthetic_vectors(200, IMAGE_DIM, TEXT_DIM, seed=3, clusters=20)
    assert (anchored[:, :IMAGE_DIM] >= 0).all()
    assert np.median((anchored @ anchors.T).max(axis=1)) > np.median((free @ anchors.T).max(axis=1)) + 0.2
    with pytest.raises(ValueError, match="anchors"):
        synthetic_vectors(5, IMAGE_DIM, TEXT_DIM, anchors=anchors[:, :IMAGE_DIM])


@pytest.fixture()
def collection(redis_client, tmp_path):
    settings = Settings(data_dir=tmp_path, shard_slots=1)
    return settings, catalog.create_collection(redis_client, settings, "bulk", shards=3)


def _logged(r, coll) -> dict[int, list[shardlog.LogEntry]]:
    return {s: [shardlog.LogEntry.from_fields(f) for _, f in r.xrange(keys.shard_log(coll.cid, s))]
            for s in range(coll.shards)}


def test_bulk_insert_logs_every_item_once_and_the_job_goes_final_when_applied(redis_client, collection):
    settings, coll = collection
    vectors = synthetic_vectors(100, IMAGE_DIM, TEXT_DIM, seed=1)
    ids = [f"item-{i}" for i in range(100)]
    metadata = [{"n": i} for i in range(100)]
    job_id = bulk_insert(redis_client, coll, vectors, ids, metadata=metadata, chunk=32)

    logged = _logged(redis_client, coll)
    assert sum(len(entries) for entries in logged.values()) == 100
    rows = {item_id: i for i, item_id in enumerate(ids)}
    for shard, entries in logged.items():
        for entry in entries:
            assert shard_for(entry.item_id, coll.shards) == shard and entry.op == "upsert"
            np.testing.assert_array_equal(entry.vector, vectors[rows[entry.item_id]])
            assert entry.metadata == {"n": rows[entry.item_id]} and entry.has_image
    view = jobs.job_view(redis_client, job_id, ttl_s=60)
    assert (view["kind"], view["total"], view["done"], view["failed"]) == ("ingest", 100, 100, 0)
    assert view["state"] == "running"  # counted, but no shard owner has applied the entries yet

    # Re-running the same job logs and counts nothing twice.
    assert bulk_insert(redis_client, coll, vectors, ids, metadata=metadata, job_id=job_id) == job_id
    assert sum(len(entries) for entries in _logged(redis_client, coll).values()) == 100
    assert jobs.job_view(redis_client, job_id, ttl_s=60)["done"] == 100

    owner = ShardOwner(0, settings, redis_client)
    owner.refresh()
    assert owner.step(block_ms=10) == 100
    view = jobs.job_view(redis_client, job_id, ttl_s=60)
    assert view["state"] == "succeeded" and view["done"] == 100
    assert catalog.collection_count(redis_client, coll) == 100
    state = owner.get(coll.cid, shard_for("item-42", coll.shards))
    assert state.index.search(vectors[42], 1)[0].id == "item-42"


def test_bulk_insert_refuses_mismatched_shapes(redis_client, collection):
    _, coll = collection
    with pytest.raises(ValueError, match="shape"):
        bulk_insert(redis_client, coll, np.zeros((3, 10), np.float32), ["a", "b", "c"])
    with pytest.raises(ValueError, match="texts"):
        bulk_insert(redis_client, coll, synthetic_vectors(2, IMAGE_DIM, TEXT_DIM), ["a", "b"], texts=["x"])
