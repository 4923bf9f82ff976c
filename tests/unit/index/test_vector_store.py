"""Tests of the shard's vector store: rows by label, reuse and compaction, growth, scores by
block, exact top k, float16 rows against float32 ones; and in the shard: every kind of query
(weighted ones too) against exact search, deleted items and their rows."""
from __future__ import annotations

import numpy as np
import pytest

from shared.encoding.fusion import build_query
from shared.index.graph import GROW_MIN
from shared.index import shard_index
from shared.index.shard_index import ItemRecord, ShardIndex
from shared.index.vector_store import VectorStore, as_float32
from tests.unit.index.helpers import (DIM, IMAGE_DIM, STORED_ABS, TEXT_DIM, as_stored, items_missing_blocks,
                                      records_for, unit)

W, WIDE = 96, 80  # a wide span kept in float16 and a narrow one kept in float32
SPANS = [(0, WIDE), (WIDE, W)]


def filled_store(n: int, dtype: str = "float16", seed: int = 0) -> tuple[VectorStore, np.ndarray]:
    vectors = unit(np.random.default_rng(seed), n, W)
    store = VectorStore(SPANS, dtype=dtype, capacity=8)
    store.put(list(range(1, n + 1)), vectors)
    return store, vectors


def test_rows_by_label_grow_and_read_back_per_block():
    store, vectors = filled_store(100)
    assert len(store) == 100 and store.capacity >= 100
    labels = [5, 1, 100]
    np.testing.assert_array_equal(store.vectors(labels, W), as_stored(vectors[[4, 0, 99]], WIDE))
    np.testing.assert_array_equal(store.part(1, labels), np.asarray(vectors[[4, 0, 99], WIDE:]))
    query = unit(np.random.default_rng(1), 1, W)[0]
    expected = as_stored(vectors[[4, 0, 99]], WIDE) @ query
    np.testing.assert_allclose(store.scores(0, labels, query) + store.scores(1, labels, query), expected, atol=1e-6)
    with pytest.raises(KeyError):
        store.scores(0, [101], query)


def test_an_update_keeps_its_row_and_a_delete_frees_it_for_the_next_new_label():
    store, vectors = filled_store(50)
    capacity = store.capacity
    store.put([7], -vectors[6:7])
    np.testing.assert_array_equal(store.vectors([7], W)[0], as_stored(-vectors[6], WIDE))
    store.remove([3, 4, 999])  # an unknown label is ignored
    assert len(store) == 48
    with pytest.raises(KeyError):
        store.vectors([3], W)
    store.put([200, 201], vectors[:2])  # the freed rows, not new ones
    assert store.capacity == capacity and len(store) == 50
    np.testing.assert_array_equal(store.vectors([200, 201, 5], W), as_stored(vectors[[0, 1, 4]], WIDE))


def test_mostly_free_rows_are_compacted_and_the_rest_stay_readable():
    store, vectors = filled_store(4 * GROW_MIN)
    big = store.capacity
    store.remove(range(1, 3 * GROW_MIN + 1))
    assert store.capacity < big and len(store) == GROW_MIN
    kept = list(range(3 * GROW_MIN + 1, 4 * GROW_MIN + 1))
    np.testing.assert_array_equal(store.vectors(kept, W), as_stored(vectors[3 * GROW_MIN:], WIDE))
    store.put([1], vectors[:1])
    np.testing.assert_array_equal(store.vectors([1, kept[-1]], W), as_stored(vectors[[0, -1]], WIDE))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_top_is_the_exact_top_k_of_the_labels_given(dtype):
    store, vectors = filled_store(500, dtype)
    stored = as_stored(vectors, WIDE) if dtype == "float16" else vectors
    query = unit(np.random.default_rng(2), 1, W)[0]
    labels = list(range(1, 501, 2))
    scores = stored[np.asarray(labels) - 1] @ query
    expected = [labels[i] for i in np.argsort(-scores, kind="stable")[:7]]
    top = store.top(query, labels, 7)
    assert [label for label, _ in top] == expected
    np.testing.assert_allclose([score for _, score in top], np.sort(scores)[::-1][:7], atol=1e-6)
    text_only = np.concatenate([np.zeros(WIDE, np.float32), query[WIDE:]])
    assert [s for _, s in store.top(text_only, labels, 3)] == pytest.approx(
        sorted((stored[np.asarray(labels) - 1, WIDE:] @ query[WIDE:]).tolist(), reverse=True)[:3], abs=1e-6)
    assert len(store.top(query, labels[:3], 10)) == 3


def test_a_scan_of_the_whole_store_is_top_over_every_live_label():
    store, vectors = filled_store(3000)
    store.remove(range(1, 3000, 3))  # free rows amid the live ones, holding their old rows
    store.put([5000], vectors[:1])   # a new label in a freed row
    live = sorted(set(range(1, 3001)) - set(range(1, 3000, 3))) + [5000]
    text_only = np.concatenate([np.zeros(WIDE, np.float32), unit(np.random.default_rng(5), 1, W - WIDE)[0]])
    assert store.scannable(text_only) and not store.scannable(np.ones(W, np.float32))
    top = store.top_of_all(text_only, 10)
    assert [label for label, _ in top] == [label for label, _ in store.top(text_only, live, 10)]
    assert len(store.top_of_all(text_only, 5000)) == len(live)
    assert 1 not in {label for label, _ in store.top_of_all(-text_only, 10)}  # freed: never returned


def test_ties_at_the_kth_score_keep_the_order_of_the_labels():
    store = VectorStore(SPANS, dtype="float32")
    store.put([1, 2, 3, 4], np.ones((4, W), np.float32))
    assert [label for label, _ in store.top(np.ones(W, np.float32), [4, 2, 3, 1], 2)] == [4, 2]


def test_float16_rows_score_within_rounding_of_float32():
    store, vectors = filled_store(300)
    query = unit(np.random.default_rng(3), 1, W)[0]
    scores = store.scores(0, list(range(1, 301)), query) + store.scores(1, list(range(1, 301)), query)
    assert np.abs(scores - vectors @ query).max() < 2e-3
    assert store.bytes() == store.capacity * (WIDE * 2 + (W - WIDE) * 4 + 8)  # the narrow span in float32


def test_a_store_of_given_rows_and_its_checks():
    vectors = unit(np.random.default_rng(4), 3, W)
    store = VectorStore.of(SPANS, [9, 8, 7], [vectors[:, :WIDE], vectors[:, WIDE:]], "float16")
    np.testing.assert_array_equal(store.vectors([7, 9], W), as_stored(vectors[[2, 0]], WIDE))
    store.put([6], vectors[:1])  # grows from exactly full
    assert len(store) == 4
    with pytest.raises(ValueError):
        VectorStore.of(SPANS, [9, 9, 7], [vectors[:, :WIDE], vectors[:, WIDE:]], "float16")
    with pytest.raises(ValueError):
        VectorStore(SPANS, dtype="int8")


# -- in the shard --------------------------------------------------------------------------------
WEIGHTS = {"text": None, "image": None, "fused": {}, "fused 1:0.25": {"text": 0.25}, "fused 0.25:1": {"image": 0.25}}


def kind_query(kind: str, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    return build_query(None if kind == "text" else image, None if kind == "image" else text, IMAGE_DIM, TEXT_DIM,
                       WEIGHTS[kind]).vector


@pytest.mark.parametrize("kind", list(WEIGHTS))
@pytest.mark.parametrize("filtered", [False, True], ids=["all", "filtered"])
def test_every_kind_of_query_matches_exact_search_on_a_small_set(kind, filtered):
    """Each hit is one of the exact top k (up to the store's float16 rounding), scored as exact
    search scores it, best first; a filter keeps only matching items."""
    images, texts, has_image, has_text, vectors = items_missing_blocks(21, 900, 7)
    n = 800
    ids = [f"e{j}" for j in range(n)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    index.upsert(ids, vectors[:n], [ItemRecord(i, metadata={"third": j % 3}) for j, i in enumerate(ids)])
    allowed = np.arange(n) % 3 == 1 if filtered else np.ones(n, bool)
    for j in range(n, 900, 5):
        query = kind_query(kind, images[j], texts[j])
        exact = np.where(allowed, vectors[:n] @ query, -np.inf)
        hits = index.search(query, 10, filter={"third": 1} if filtered else None)
        assert len(hits) == 10
        kth = np.sort(exact)[::-1][9]
        for h in hits:
            score = exact[ids.index(h.id)]
            assert score >= kth - STORED_ABS and h.score == pytest.approx(score, abs=STORED_ABS)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_deleted_items_are_never_returned_and_their_rows_are_reused():
    vectors = unit(np.random.default_rng(22), 3000, DIM)
    ids = [f"d{j}" for j in range(3000)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, initial_capacity=2000)
    index.upsert(ids[:2000], vectors[:2000], records_for(ids[:2000]))
    store_bytes = index.stats()["store_bytes"]
    assert index.delete(ids[:1000:2]) == 500
    for j in range(0, 1000, 50):
        assert ids[j] not in {h.id for h in index.search(vectors[j], 20)}
        assert ids[j] not in {h.id for h in index.search(vectors[j], 20, filter={})}
    index.upsert(ids[2000:2500], vectors[2000:2500], records_for(ids[2000:2500]))
    assert index.stats()["store_bytes"] == store_bytes  # the 500 freed rows, not new ones
    for j in range(2000, 2500, 50):
        top = index.search(vectors[j], 1, return_vectors=True)[0]
        assert top.id == ids[j]
        np.testing.assert_array_equal(top.vector, as_stored(vectors[j]))
    assert not set(ids[:1000:2]) & {h.id for h in index.search(np.ones(DIM, np.float32), 3000)}


@pytest.mark.parametrize("rows_per_ef", [0, 10**6], ids=["graph", "scan"])
def test_text_queries_scanned_or_searched_give_the_exact_top_k_without_deleted_items(monkeypatch, rows_per_ef):
    """A text query may scan the store's float32 text blocks instead of searching the text graph
    (SCAN_ROWS_PER_EF); either way it gets exact search's top k, never a deleted item, and items
    without a text block score 0."""
    monkeypatch.setattr(shard_index, "SCAN_ROWS_PER_EF", rows_per_ef)
    images, texts, has_image, has_text, vectors = items_missing_blocks(23, 2600, 4)
    ids = [f"s{j}" for j in range(2500)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM)
    index.upsert(ids, vectors[:2500], records_for(ids))
    index.delete(ids[::7])
    live = np.ones(2500, bool)
    live[::7] = False
    for j in range(2500, 2600, 4):
        query = kind_query("text", images[j], texts[j])
        exact = np.where(live, vectors[:2500] @ query, -np.inf)
        hits = index.search(query, 10)
        expected = [ids[i] for i in np.argsort(-exact, kind="stable")[:10]]
        if rows_per_ef:  # the scan is exact
            assert [h.id for h in hits] == expected
            assert [h.score for h in hits] == pytest.approx(np.sort(exact)[::-1][:10], abs=1e-5)
        else:
            assert len({h.id for h in hits} & set(expected)) >= 9
        assert all(h.score == pytest.approx(exact[ids.index(h.id)], abs=1e-5) for h in hits)
    assert not set(ids[::7]) & {h.id for h in index.search(kind_query("text", images[0], texts[0]), 2500)}


def test_rows_read_as_float32_keep_every_float16_value():
    """Every float16 bit pattern but NaN's (zeros of both signs, subnormals, normals, infinities),
    and rows of any length, come out as numpy's own conversion gives them; float32 rows as they are."""
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    every = every[~np.isnan(every)]
    for rows in (every[:63488].reshape(248, 256), every[:130].reshape(13, 10), every[-7:].reshape(1, 7)):
        converted = as_float32(rows)
        assert converted.dtype == np.float32 and converted.shape == rows.shape
        assert np.array_equal(converted, rows.astype(np.float32))
        assert np.array_equal(np.signbit(converted), np.signbit(rows))
    plain = np.ones((3, 4), np.float32)
    assert as_float32(plain) is plain and as_float32(every[:5]).dtype == np.float32
