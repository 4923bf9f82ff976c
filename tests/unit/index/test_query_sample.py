"""Tests of the lists measured on a shard's own real queries: the mix a query is of, when a
kind's sample is measured, the tuning a mix then searches with, that it reaches the target on
other queries like them, and that a snapshot keeps it."""
from __future__ import annotations

import numpy as np

from shared.encoding.fusion import build_query
from shared.index import calibration, query_sample
from shared.index.calibration import Tuning
from shared.index.layouts import blocks
from shared.index.query_sample import SAMPLE_MIN, QuerySample, mix_of
from shared.index.shard_index import ShardIndex
from tests.unit.index.helpers import DIM, IMAGE_DIM, TEXT_DIM, clustered_blocks, fused_items, records_for, unit

WEIGHTS = ({"image": 1.0, "text": 1.0}, {"image": 1.0, "text": 0.25}, {"image": 0.25, "text": 1.0})


def fused_query(image: np.ndarray, text: np.ndarray, weights: dict[str, float]) -> np.ndarray:
    return build_query(image, text, IMAGE_DIM, TEXT_DIM, weights).vector


def test_a_query_is_of_the_mix_nearest_its_block_weights():
    rng = np.random.default_rng(1)
    parts = blocks(DIM, IMAGE_DIM)
    image, text = unit(rng, 1, IMAGE_DIM)[0], unit(rng, 1, TEXT_DIM)[0]
    for mix, weights in enumerate(WEIGHTS):
        assert mix_of(parts, fused_query(image, text, weights)) == mix
    assert mix_of(parts, fused_query(image, text, {"image": 0.9, "text": 1.0})) == 0
    assert mix_of(parts, fused_query(image, text, {"image": 0.1, "text": 1.0})) == 2
    assert mix_of(parts[:1], unit(rng, 1, IMAGE_DIM)[0]) == 0  # one block: one mix


def test_a_kind_is_measured_once_a_mix_holds_enough_then_when_its_queries_doubled():
    sample = QuerySample(("image", "text"))
    query = np.ones(4, np.float32)
    for _ in range(SAMPLE_MIN - 1):
        sample.add("image", 0, query)
    assert not sample.due() and sample.take("image") == [None, None, None]
    sample.add("image", 0, query)
    assert sample.due()
    taken = sample.take("image")
    assert taken[0].shape == (SAMPLE_MIN, 4) and taken[1:] == [None, None]
    assert not sample.due() and sample.take("text") == [None, None, None]
    assert sample.take("image", only_due=True) == [None, None, None]  # measured, not due again
    assert sample.take("image")[0].shape == (SAMPLE_MIN, 4)
    for _ in range(SAMPLE_MIN - 1):
        sample.add("image", 1, query)
    assert not sample.due()  # 127 seen: not yet twice SAMPLE_MIN
    sample.add("image", 1, query)
    assert sample.due()
    taken = sample.take("image")
    assert taken[0].shape == taken[1].shape == (SAMPLE_MIN, 4) and taken[2] is None
    measured_at, every = [], query_sample.SAMPLE_EVERY
    for seen in range(2 * SAMPLE_MIN + 1, 2 * every + 2):
        sample.add("image", 2, query)
        if sample.due():
            sample.take("image")
            measured_at.append(seen)
    doublings = [4 * SAMPLE_MIN * 2 ** i for i in range(every.bit_length()) if 4 * SAMPLE_MIN * 2 ** i <= every]
    assert measured_at == doublings + [2 * every]  # at each doubling of SAMPLE_MIN, then every SAMPLE_EVERY
    for _ in range(3 * query_sample.SAMPLE_QUERIES):
        sample.add("image", 0, 2 * query)
    assert np.all(sample.take("image")[0] == 2)  # the ring holds the latest


def test_a_mix_measured_on_real_queries_takes_their_list_and_the_bands_beyond_the_farthest():
    measured = Tuning(512, ((0.5, 1024), (0.3, 2048)), ((128, 0.4), (0, 0.0), (4096, 0.6)))
    assert measured.at(0) == Tuning(128, ((0.4, 1024), (0.3, 2048)))  # 0.4 lies in the band of 1024
    assert measured.at(1) is measured  # not measured: the items' calibration
    assert measured.at(2) == Tuning(4096)  # longer than every band
    nearer = Tuning(512, ((0.5, 1024), (0.3, 2048)), ((64, 0.7),))
    assert nearer.at(0) == Tuning(64, ((0.5, 1024), (0.3, 2048)))  # farthest one nearer than every band
    assert Tuning.of({"ef": 512, "bands": [[0.5, 1024]], "mixes": [[128, 0.4]]}) == \
        Tuning(512, ((0.5, 1024),), ((128, 0.4),))


def test_lists_measured_on_a_shards_real_queries_reach_the_target_on_others_like_them(monkeypatch, tmp_path):
    """Fused queries of two mixes (fresh items of the items' clusters) are sampled as they are
    searched; at rest the shard measures their lists, then searches each mix with its own list
    and reaches about the target on other queries of the mix; a snapshot keeps the lists."""
    monkeypatch.setattr(calibration, "CALIBRATE_MIN", 1000)
    rng = np.random.default_rng(23)
    n, fresh = 4000, 2 * SAMPLE_MIN + 100
    images, texts = clustered_blocks(rng, n + fresh)
    everything = np.ones(n, bool)
    vectors = fused_items(images[:n], texts[:n], everything, everything)
    ids = [f"q{j}" for j in range(n)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    index.upsert(ids, vectors, records_for(ids))
    sampled, later = slice(n, n + SAMPLE_MIN), slice(n + SAMPLE_MIN, n + fresh)
    for mix in (0, 2):
        for image, text in zip(images[sampled], texts[sampled]):
            index.search(fused_query(image, text, WEIGHTS[mix]), 10)
    assert index.stats()["sampled"]["fused"] == []
    assert index.settle() and not index.settle()
    lists = index.stats()["sampled"]["fused"]
    assert lists[0][0] > 0 and lists[2][0] > 0 and lists[1] == [0, 0.0]
    searched: list[int] = []
    approximate = index._approximate
    monkeypatch.setattr(index, "_approximate", lambda q, graphs, k, ef, allowed, far=None:
                        searched.append(ef) or approximate(q, graphs, k, ef, allowed, far))
    for mix in (0, 2):
        queries = np.stack([fused_query(i, t, WEIGHTS[mix]) for i, t in zip(images[later], texts[later])])
        exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
        found = 0
        for query, truth in zip(queries, exact):
            searched.clear()
            found += len({h.id for h in index.search(query, 10)} & {ids[j] for j in truth})
            assert searched[0] == lists[mix][0]
        assert found / exact.size >= 0.97, (mix, lists[mix], found / exact.size)
    index.save(tmp_path / "shard.snap", "0-1", forked=False)
    loaded, _ = ShardIndex.load(tmp_path / "shard.snap")
    assert loaded.stats()["sampled"] == index.stats()["sampled"]


def test_a_shard_told_not_to_sample_keeps_the_lists_of_its_items(monkeypatch):
    monkeypatch.setattr(calibration, "CALIBRATE_MIN", 1000)
    rng = np.random.default_rng(29)
    vectors = unit(rng, 1200 + SAMPLE_MIN, 16)
    ids = [f"n{j}" for j in range(1200)]
    index = ShardIndex(16, sampled_lists=False)
    index.upsert(ids, vectors[:1200], records_for(ids))
    for query in vectors[1200:]:
        index.search(query, 10)
    assert not index.settle() and index.stats()["sampled"]["vector"] == []
