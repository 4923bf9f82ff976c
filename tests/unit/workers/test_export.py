"""The export task against an in-process shard owner serving its slot's requests: the archive
file holds every item with its record, thumbnail and stored vector; a shard that is not served
fails the job instead of leaving items out, and leaves no file."""
import os
import threading
import time

import numpy as np
import pytest

from shared.runtime.config import Settings
from shared.store import archive, catalog, export_files, jobs, shardlog
from shared.store.shardlog import LogEntry
from shared.index.labels import shard_for
from workers import export as export_worker
from workers import shard as shard_worker
from workers.shard_owner import ShardOwner

SHARDS = 3


@pytest.fixture()
def served(redis_client, tmp_path, monkeypatch):
    settings = Settings(data_dir=tmp_path, shard_slots=1, snapshot_every=100_000, shard_timeout_s=2.0)
    for module in (shard_worker, export_worker):
        monkeypatch.setattr(module, "redis_client", lambda: redis_client)
    monkeypatch.setattr(export_worker, "settings", lambda: settings)
    monkeypatch.setattr(export_worker, "PAGE", 7)  # several pages
    monkeypatch.setattr(shard_worker, "POP_TIMEOUT_S", 0.1)
    coll = catalog.create_collection(redis_client, settings, "photos", shards=SHARDS)
    owner = ShardOwner(0, settings, redis_client)
    stop = threading.Event()
    thread = threading.Thread(target=shard_worker.serve_slot_requests, args=(owner, stop), daemon=True)
    thread.start()
    yield redis_client, coll, owner, settings.exports_path
    stop.set()
    thread.join()


def test_the_archive_holds_every_item_with_its_vector(served):
    r, coll, owner, folder = served
    rng = np.random.default_rng(2)
    dim = coll.dims["image"] + coll.dims["text"]
    vectors = {f"item-{n:02d}": rng.normal(size=dim).astype(np.float32) for n in range(20)}
    job = jobs.create_job(r, "ingest", coll.name, coll.cid, len(vectors))
    shardlog.log_items(r, coll.cid, job, [(shard_for(i, SHARDS), LogEntry("upsert", i, v, f"text {i}", {"i": i},
                                                                          True, b"jpeg")) for i, v in vectors.items()])
    owner.refresh()
    while owner.step(block_ms=10):
        pass
    export_job = jobs.create_job(r, "export", coll.name, coll.cid, 1)
    export_worker.export(export_job, coll.name, coll.cid)
    view = jobs.job_view(r, export_job, 60)
    assert view["state"] == "succeeded" and view["result"]["items"] == 20
    path = export_files.live(folder, export_job)
    assert os.listdir(folder) == [path.name]
    assert export_files.described(path) == (view["result"]["bytes"], view["result"]["sha256"])
    with open(path, "rb") as file:
        found = archive.read_archive(file)
        items = [item for batch in found.batches(1000, 2**30) for item in batch]
    assert found.collection["name"] == "photos" and found.collection["shards"] == SHARDS
    assert [i.id for i in items] == sorted(vectors)
    for item in items:
        assert item.text == f"text {item.id}" and item.metadata == {"i": item.id} and item.thumbnail == b"jpeg"
        assert np.allclose(item.vector, vectors[item.id], atol=2e-3 * np.abs(vectors[item.id]).max())  # float16


def test_a_shard_not_served_fails_the_export(served):
    r, coll, owner, folder = served
    owner.refused[(coll.cid, 1)] = ("cannot be rebuilt", time.monotonic())  # not retried for a while
    export_job = jobs.create_job(r, "export", coll.name, coll.cid, 1)
    export_worker.export(export_job, coll.name, coll.cid)
    view = jobs.job_view(r, export_job, 60)
    assert view["state"] == "failed" and view["errors"][0]["code"] == "unavailable"
    assert "not served" in view["errors"][0]["message"] and os.listdir(folder) == []
