"""Tests of the shard index (hnswlib graphs + records): writes, searches, filters, searches
during writes, the per-block graphs and their joined scores, and the memory estimate."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shared.encoding.fusion import build_query, fuse
from shared.index import calibration, shard_index
from shared.index.calibration import ef_for
from shared.index.labels import label_for
from shared.index.shard_index import ItemRecord, SearchHit, ShardIndex
from tests.unit.index.helpers import (IMAGE_DIM, STORED_ABS, TEXT_DIM, DIM, all_ids, as_stored, clustered_blocks,
                                      filled, fused_items, items_missing_blocks, records_for, unit)


# -- writes ------------------------------------------------------------------------------------
def test_upsert_get_search_delete():
    index, ids, vectors = filled()
    assert len(index) == index.count == 50
    assert "item-3" in index and "nope" not in index
    assert index.get("item-3") == ItemRecord("item-3", "text 3", {"parity": 1, "tens": 0}, True, b"\x03\x03\x03")
    hits = index.search(vectors[7], 5, return_vectors=True)
    assert isinstance(hits[0], SearchHit)
    assert hits[0].id == "item-7" and hits[0].label == label_for("item-7")
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].record.text == "text 7"
    np.testing.assert_array_equal(hits[0].vector, as_stored(vectors[7]))
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert index.search(vectors[7], 5)[0].vector is None

    assert index.delete(["item-7", "item-8", "unknown", "item-7"]) == 2
    assert index.delete(["item-7"]) == 0
    assert len(index) == 48 and index.get("item-7") is None and "item-7" not in index
    assert "item-7" not in all_ids(index, 16)
    assert index.stats()["deleted"] == 2


def test_ids_and_with_vectors_read_what_the_index_holds_now():
    index, ids, vectors = filled()
    index.delete(["item-4"])
    index.upsert(["item-5"], vectors[6:7], records_for(["item-5"], text="replaced"))
    assert sorted(index.ids()) == sorted(set(ids) - {"item-4"})
    read = index.with_vectors(["item-5", "item-4", "unknown", "item-9"])
    assert [record.id for record, _ in read] == ["item-5", "item-9"]
    assert read[0][0].text == "replaced"
    np.testing.assert_array_equal(read[0][1], as_stored(vectors[6]))
    np.testing.assert_array_equal(read[1][1], as_stored(vectors[9]))
    assert index.with_vectors([]) == []


def test_upsert_validates_its_input():
    index = ShardIndex(4)
    with pytest.raises(ValueError):
        index.upsert(["a"], np.ones((1, 5)), records_for(["a"]))
    with pytest.raises(ValueError):
        index.upsert(["a", "b"], np.ones((2, 4)), records_for(["a"]))
    with pytest.raises(ValueError):
        index.upsert(["a"], np.ones((1, 4)), records_for(["b"]))
    with pytest.raises(ValueError):
        index.search(np.ones(5), 1)
    index.upsert([], np.zeros((0, 4)), [])
    assert len(index) == 0


def test_reupsert_replaces_vector_and_record():
    index, ids, vectors = filled()
    new = -vectors[3]
    index.upsert(["item-3"], new[None, :], [ItemRecord("item-3", text="changed", metadata={"v": 2})])
    assert len(index) == 50
    assert index.get("item-3").text == "changed"
    top = index.search(new, 1, return_vectors=True)[0]
    assert top.id == "item-3" and top.score == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(top.vector, as_stored(new))
    assert "item-3" not in [h.id for h in index.search(vectors[3], 5)]
    assert index.stats()["deleted"] == 0


def test_reupsert_after_delete_revives_in_place():
    index, ids, vectors = filled()
    capacity = index.stats()["capacity"]
    index.delete(["item-4"])
    index.upsert(["item-4"], vectors[5][None, :], [ItemRecord("item-4", text="back")])
    assert len(index) == 50 and index.get("item-4").text == "back"
    hits = index.search(vectors[5], 2)
    assert {h.id for h in hits} == {"item-4", "item-5"}
    assert index.stats()["deleted"] == 0 and index.stats()["capacity"] == capacity


def test_deleted_slots_are_reused_and_never_duplicate_labels():
    index, ids, vectors = filled(n=20)
    stats = index.stats()
    index.delete(ids[:5])
    rng = np.random.default_rng(1)
    fresh = [f"fresh-{j}" for j in range(5)]
    index.upsert(fresh, unit(rng, 5, 16), records_for(fresh))
    after = index.stats()
    assert after["capacity"] == stats["capacity"] and after["deleted"] == 0  # slots reused
    # Now the old ids' slots belong to other labels: bringing them back takes new slots.
    index.upsert(ids[:5], vectors[:5], records_for(ids[:5]))
    # ...and re-upserting live ids must update in place, not give them a second slot.
    index.upsert(fresh + ids, np.concatenate([unit(rng, 5, 16), vectors]), records_for(fresh + ids))
    found = all_ids(index, 16)
    assert len(found) == len(set(found)) == 25 == len(index)
    assert set(found) == set(ids) | set(fresh)
    for j in range(5):
        assert index.search(vectors[j], 1)[0].id == ids[j]


def test_duplicate_ids_in_one_batch_last_wins():
    index = ShardIndex(4)
    vectors = np.eye(4, dtype=np.float32)
    index.upsert(["a", "b", "a"], vectors[:3],
                 [ItemRecord("a", "first"), ItemRecord("b"), ItemRecord("a", "last")])
    assert len(index) == 2 and index.get("a").text == "last"
    top = index.search(vectors[2], 1, return_vectors=True)[0]
    assert top.id == "a" and top.score == pytest.approx(1.0)
    np.testing.assert_array_equal(top.vector, as_stored(vectors[2]))


def test_reapplying_the_same_writes_is_idempotent():
    rng = np.random.default_rng(2)
    ids = [f"x{j}" for j in range(40)]
    vectors = unit(rng, 40, 8)
    recs = [ItemRecord(i, metadata={"j": j}) for j, i in enumerate(ids)]

    def apply(index: ShardIndex) -> None:  # the same log, e.g. replayed after a restart
        index.upsert(ids, vectors, recs)
        index.delete(ids[:10])
        index.upsert(ids[5:10], vectors[5:10] * -1, recs[5:10])

    once, twice = ShardIndex(8), ShardIndex(8)
    apply(once)
    apply(twice)
    apply(twice)
    assert len(once) == len(twice) == 35
    assert {i: once.get(i) for i in ids} == {i: twice.get(i) for i in ids}
    assert once.stats() == twice.stats()
    for q in unit(rng, 10, 8):
        a, b = once.search(q, 35, return_vectors=True), twice.search(q, 35, return_vectors=True)
        assert [h.id for h in a] == [h.id for h in b]
        for x, y in zip(a, b):
            assert x.score == pytest.approx(y.score, abs=1e-6)
            np.testing.assert_array_equal(x.vector, y.vector)


def test_capacity_grows_geometrically_past_the_initial_one():
    rng = np.random.default_rng(3)
    index = ShardIndex(8, initial_capacity=4)
    vectors = unit(rng, 300, 8)
    ids = [f"g{j}" for j in range(300)]
    capacities = []
    for start in range(0, 300, 7):
        index.upsert(ids[start:start + 7], vectors[start:start + 7], records_for(ids[start:start + 7]))
        capacities.append(index.stats()["capacity"])
    assert len(index) == 300 and index.stats()["capacity"] >= 300
    assert len(set(capacities)) <= 10  # doubling, not one resize per batch
    for j in range(0, 300, 13):
        assert index.search(vectors[j], 1)[0].id == ids[j]


# -- searches ----------------------------------------------------------------------------------
def test_k_is_clamped_to_what_the_shard_holds():
    assert ShardIndex(4).search(np.ones(4), 10) == []
    index, ids, vectors = filled(n=3)
    assert len(index.search(vectors[0], 10)) == 3
    assert index.search(vectors[0], 0) == []
    index.delete(ids[:1])
    assert sorted(h.id for h in index.search(vectors[0], 10)) == ids[1:]
    index.delete(ids)
    assert index.search(vectors[0], 10) == []


@pytest.mark.parametrize("exact_max", [shard_index.EXACT_FILTER_MAX, 0], ids=["exact", "hnswlib-filter"])
def test_filter_is_metadata_equality_on_every_key(monkeypatch, exact_max):
    monkeypatch.setattr(shard_index, "EXACT_FILTER_MAX", exact_max)
    index, ids, vectors = filled(n=200)
    index.upsert(["none"], vectors[:1], [ItemRecord("none", metadata={"parity": None})])
    index.delete(["item-1", "item-3"])
    q = vectors[1]
    hits = index.search(q, 500, filter={"parity": 1})
    expected = [j for j in range(200) if j % 2 == 1 and j not in (1, 3)]
    assert sorted(int(h.id.split("-")[1]) for h in hits) == expected  # k clamped to the matches
    scores = vectors[expected] @ q
    top = [f"item-{expected[i]}" for i in np.argsort(-scores)[:10]]
    assert [h.id for h in index.search(q, 10, filter={"parity": 1})] == top
    both = index.search(q, 50, filter={"parity": 0, "tens": 3})
    assert sorted(h.id for h in both) == [f"item-{j}" for j in range(30, 40, 2)]
    assert [h.id for h in index.search(q, 5, filter={"parity": None})] == ["none"]  # absent != None
    assert index.search(q, 5, filter={"colour": "red"}) == []
    assert len(index.search(q, 5, filter={})) == 5


def test_recall_at_10_against_exact_search_at_default_settings():
    rng = np.random.default_rng(4)
    n, dim = 5000, 64
    vectors = unit(rng, n, dim)
    ids = [f"r{j}" for j in range(n)]
    index = ShardIndex(dim)
    for start in range(0, n, 1000):  # batches, as the shard owner applies them
        index.upsert(ids[start:start + 1000], vectors[start:start + 1000], records_for(ids[start:start + 1000]))
    queries = unit(rng, 200, dim)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    found = 0
    for q, truth in zip(queries, exact):
        found += len({h.id for h in index.search(q, 10)} & {ids[j] for j in truth})
    recall = found / (10 * len(queries))
    assert recall >= 0.99, f"recall@10 = {recall:.4f} with ef={ef_for(10)}"


# -- concurrency -------------------------------------------------------------------------------
@pytest.mark.parametrize("image_dim", [0, 24], ids=["one-graph", "per-block"])
def test_searches_during_bulk_writes_and_deletes(tmp_path: Path, image_dim: int):
    rng = np.random.default_rng(7)
    dim, n = 32, 4000
    vectors = unit(rng, n, dim)
    ids = [f"c{j}" for j in range(n)]
    index = ShardIndex(dim, image_dim=image_dim, initial_capacity=64)
    index.upsert(ids[:200], vectors[:200], records_for(ids[:200], metadata={"even": True}))
    gone: set[str] = set()
    done = threading.Event()
    errors: list[BaseException] = []
    searches = [0]

    def writer() -> None:
        try:
            for start in range(200, n, 100):
                batch = slice(start, start + 100)
                recs = [ItemRecord(i, metadata={"even": j % 2 == 0}) for j, i in enumerate(ids[batch], start)]
                index.upsert(ids[batch], vectors[batch], recs)
                victims = ids[start - 150:start - 100:3]  # never re-added
                index.delete(victims)
                gone.update(victims)
                if start % 1000 == 0:
                    index.save(tmp_path / "live.bin", str(start))
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            done.set()

    def reader(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            while not done.is_set():
                before = set(gone)
                q = unit(local, 1, dim)[0]
                hits = index.search(q, 20, filter={"even": True} if local.random() < 0.3 else None,
                                    return_vectors=True)
                found = [h.id for h in hits]
                assert not before & set(found), f"deleted items returned: {before & set(found)}"
                assert len(found) == len(set(found))
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
                for h in hits:  # a reused store row never shows another item's vector
                    np.testing.assert_array_equal(h.vector, as_stored(vectors[int(h.id[1:])]))
                searches[0] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=writer, daemon=True)]
    threads += [threading.Thread(target=reader, args=(s,), daemon=True) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert searches[0] > 20
    assert len(index) == n - len(gone)
    assert not gone & set(all_ids(index, dim))
    loaded, position = ShardIndex.load(tmp_path / "live.bin")
    assert position == "3000" and len(loaded) > 0


# -- per-block graphs --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["text", "image", "fused", "fused 1:0.25", "fused 0.25:1"])
def test_recall_at_10_per_query_kind_against_exact_search(block_shard, kind):
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    stats = index.stats()
    assert stats["calibrated_at"] >= 4000 and set(stats["ef"]) == {"text", "image", "fused"}
    queries = block_shard["queries"][kind]
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    found = sum(len({h.id for h in index.search(q, 10)} & {ids[j] for j in truth})
                for q, truth in zip(queries, exact))
    recall = found / exact.size
    assert recall >= 0.99, f"{kind} recall@10 = {recall:.4f} with ef {stats['ef']}"


def test_single_block_queries_rank_by_that_block_and_missing_blocks_score_zero(block_shard):
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    has_image, has_text = block_shard["has_image"], block_shard["has_text"]
    image_query = block_shard["queries"]["image"][0]
    hits = index.search(image_query, 20, return_vectors=True)
    cosines = vectors[:, :IMAGE_DIM] @ image_query[:IMAGE_DIM]
    assert [h.id for h in hits] == [ids[j] for j in np.argsort(-cosines, kind="stable")[:20]]
    for h in hits:
        j = ids.index(h.id)
        assert has_image[j]
        assert h.score == pytest.approx(float(vectors[j] @ image_query), abs=1e-5)
        np.testing.assert_array_equal(h.vector, as_stored(vectors[j]))  # the fused stored vector, both blocks
    # Asked for every item, an image query puts the items without an image last, at exactly 0.
    everything = index.search(image_query, len(ids))
    assert len({h.id for h in everything}) == len(ids)
    tail = everything[int(has_image.sum()):]
    assert {h.id for h in tail} == {ids[j] for j in np.flatnonzero(~has_image)}
    assert all(h.score == 0.0 for h in tail)
    text_query = block_shard["queries"]["text"][0]
    hits = index.search(text_query, 10, return_vectors=True)
    assert all(has_text[ids.index(h.id)] for h in hits)
    text_only = [h for h in hits if not has_image[ids.index(h.id)]]
    for h in text_only:
        assert not h.vector[:IMAGE_DIM].any()


@pytest.mark.parametrize("layout", ["fused", "blocks"])
def test_fused_queries_score_the_whole_vector_and_find_items_missing_a_block(layout):
    images, texts, _, _, vectors = items_missing_blocks(12, 400, 4)  # every 4th: text only; the next: image only
    ids = [f"f{j}" for j in range(400)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, layout=layout)
    index.upsert(ids, vectors, records_for(ids))
    for j in (0, 1, 2):  # a text-only, an image-only and a complete item, each queried by both its blocks
        query = build_query(images[j], texts[j], IMAGE_DIM, TEXT_DIM).vector
        hits = index.search(query, 10, return_vectors=True)
        scores = vectors @ query
        assert [h.id for h in hits] == [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
        rank = int((scores > scores[j]).sum())  # the queried item, missing a block or not, at its exact rank
        assert index.search(query, rank + 1)[rank].id == ids[j]
        for h in hits:
            assert h.score == pytest.approx(float(scores[ids.index(h.id)]), abs=STORED_ABS)
            np.testing.assert_array_equal(h.vector, as_stored(vectors[ids.index(h.id)]))


@pytest.mark.parametrize("layout", ["fused", "blocks"])
def test_a_fused_query_whose_words_thousands_of_captions_share_gets_the_exact_top_k(monkeypatch, layout):
    # 3000 items have the query's caption (a text list shorter than 3000 holds any part of them);
    # 3000 others have unrelated captions and images nearer the query's than any of the first's.
    # The best fused items are the caption's items with the best images, which the image graph
    # lists only past its 3000th place (in the per-block layout; uncalibrated, each graph's first
    # list is 2 x 256). The fused graph ranks by the whole vector.
    monkeypatch.setattr(calibration, "CALIBRATE_MIN", 10**6)
    rng = np.random.default_rng(7)
    n = 3000
    target, caption = unit(rng, 1, IMAGE_DIM)[0], unit(rng, 1, TEXT_DIM)[0]
    near = np.maximum(target + 0.3 * unit(rng, n, IMAGE_DIM), 0)
    far = np.maximum(0.3 * target + unit(rng, n, IMAGE_DIM), 0)
    texts = np.concatenate([unit(rng, n, TEXT_DIM), np.tile(caption, (n, 1))])
    vectors = fused_items(np.concatenate([near, far]), texts, np.ones(2 * n, bool), np.ones(2 * n, bool))
    ids = [f"c{j}" for j in range(2 * n)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, layout=layout)
    for start in range(0, 2 * n, 1000):
        index.upsert(ids[start:start + 1000], vectors[start:start + 1000], records_for(ids[start:start + 1000]))
    query = build_query(target, caption, IMAGE_DIM, TEXT_DIM).vector
    scores = as_stored(vectors) @ query
    exact = [ids[i] for i in np.argsort(-scores, kind="stable")[:10]]
    image_scores = as_stored(vectors[:, :IMAGE_DIM]) @ query[:IMAGE_DIM]
    assert all(int(i[1:]) >= n for i in exact)
    assert (image_scores > max(image_scores[ids.index(i)] for i in exact)).sum() >= n
    assert [h.id for h in index.search(query, 10)] == exact


@pytest.mark.parametrize("filtered", [False, True])
def test_hits_carry_their_score_split_by_block(block_shard, filtered):
    """`blocks` is what `score_parts` needs, without reading the stored vectors back: each block's
    inner product with the query, 0 for a block the query or the item lacks."""
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    for kind in ("text", "image", "fused"):
        for query in block_shard["queries"][kind][:5]:
            hits = index.search(query, 10, filter={"tens": 3} if filtered else None)
            assert len(hits) == 10
            for h in hits:
                stored = vectors[ids.index(h.id)]
                expected = {"image": float(stored[:IMAGE_DIM] @ query[:IMAGE_DIM]),
                            "text": float(stored[IMAGE_DIM:] @ query[IMAGE_DIM:])}
                assert h.blocks == pytest.approx(expected, abs=STORED_ABS)
                assert sum(h.blocks.values()) == pytest.approx(h.score, abs=1e-6)
    one_graph = ShardIndex(DIM)
    one_graph.upsert(ids[:50], vectors[:50], records_for(ids[:50]))
    assert one_graph.search(vectors[0], 3)[0].blocks is None  # no blocks to split the score by


@pytest.mark.parametrize("layout", ["fused", "blocks"])
def test_a_block_that_comes_and_goes_moves_between_graphs(layout):
    """An item that loses its image leaves the image graph (a tombstone its return revives);
    the fused graph keeps it, with its new vector."""
    rng = np.random.default_rng(13)
    images, texts = clustered_blocks(rng, 100)
    ids = [f"m{j}" for j in range(100)]
    both = fused_items(images, texts, np.ones(100, bool), np.ones(100, bool))
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, layout=layout)
    image_graph, image_dim = ("image", IMAGE_DIM) if layout == "blocks" else ("fused", DIM)
    index.upsert(ids, both, records_for(ids))
    image_query = build_query(images[7], None, IMAGE_DIM, TEXT_DIM).vector
    assert index.search(image_query, 1)[0].id == "m7"
    text_only = fuse(None, texts[7], IMAGE_DIM, TEXT_DIM)[None, :]
    index.upsert(["m7"], text_only, records_for(["m7"]))
    graphs = index.stats()["graphs"]
    assert graphs[image_graph] == {"count": 99 + (layout == "fused"), "capacity": 1024,
                                   "deleted": int(layout == "blocks"), "dim": image_dim,
                                   "graph_dim": image_dim}
    assert graphs["text"]["count"] == 100
    hits = {h.id: h for h in index.search(image_query, 100, return_vectors=True)}
    assert hits["m7"].score == 0.0 and not hits["m7"].vector[:IMAGE_DIM].any()
    np.testing.assert_array_equal(hits["m7"].vector, as_stored(text_only[0]))
    index.upsert(["m7"], both[7:8], records_for(["m7"]))  # the image block's tombstone is revived
    assert index.stats()["graphs"][image_graph] == {"count": 100, "capacity": 1024, "deleted": 0, "dim": image_dim,
                                                 "graph_dim": image_dim}
    top = index.search(image_query, 1, return_vectors=True)[0]
    assert top.id == "m7"
    np.testing.assert_array_equal(top.vector, as_stored(both[7]))
    # An item whose vector is all zeros is in neither graph, yet stored and found (score 0).
    index.upsert(["blank"], np.zeros((1, DIM), np.float32), records_for(["blank"]))
    assert "blank" in index and {h.id for h in index.search(image_query, 101)} == set(ids) | {"blank"}
    assert [h.id for h in index.search(image_query, 5, filter={"nope": 1})] == []
    assert index.delete(["blank", "m7"]) == 2
    assert index.stats()["graphs"]["text"]["count"] == 99 and index.stats()["deleted"] == 2


@pytest.mark.parametrize("exact_max", [shard_index.EXACT_FILTER_MAX, 0], ids=["exact", "hnswlib-filter"])
def test_filters_with_per_block_graphs(block_shard, monkeypatch, exact_max):
    monkeypatch.setattr(shard_index, "EXACT_FILTER_MAX", exact_max)
    index, ids, vectors = block_shard["index"], block_shard["ids"], block_shard["vectors"]
    tens = np.array([j // 10 % 10 for j in range(len(ids))])
    for kind in ("text", "image", "fused"):
        for q in block_shard["queries"][kind][:5]:
            hits = index.search(q, 10, filter={"tens": 3})
            assert all(index.get(h.id).metadata == {"tens": 3} for h in hits)
            scores = np.where(tens == 3, vectors @ q, -np.inf)
            expected = [ids[j] for j in np.argsort(-scores, kind="stable")[:10]]
            assert len(set(h.id for h in hits) & set(expected)) >= 9
            if exact_max:
                assert [h.id for h in hits] == expected


@pytest.mark.parametrize("layout", ["fused", "blocks"])
def test_bytes_stay_within_half_again_of_vectors_and_graphs(layout):
    """The float16 store adds half of the vectors, and its text blocks, kept in float32, half of
    theirs again; the fused layout also keeps the text blocks twice in float32 (in the fused
    graph and the text graph)."""
    rng = np.random.default_rng(16)
    image_dim, n = 1280, 3000
    vectors = np.concatenate([unit(rng, n, image_dim), unit(rng, n, 50)], axis=1) / np.sqrt(2)
    ids = [f"y{j}" for j in range(n)]
    index = ShardIndex(image_dim + 50, image_dim=image_dim, layout=layout, ef_construction=40)
    for start in range(0, n, 500):
        index.upsert(ids[start:start + 500], vectors[start:start + 500], records_for(ids[start:start + 500]))
    stats = index.stats()
    assert stats["vector_bytes"] == n * (image_dim + 50) * 4
    assert 0 < stats["graph_bytes"] < stats["vector_bytes"] / 10
    text_in_float32 = n * 50 * 2
    second_text = n * 50 * 4 if layout == "fused" else 0
    assert stats["bytes"] <= 1.5 * (stats["vector_bytes"] + stats["graph_bytes"]) + text_in_float32 + second_text


@pytest.mark.parametrize("exact_max", [shard_index.EXACT_FILTER_MAX, 0], ids=["exact", "hnswlib-filter"])
def test_operator_filters_give_the_exact_top_k_after_writes_and_a_snapshot(monkeypatch, tmp_path, exact_max):
    monkeypatch.setattr(shard_index, "EXACT_FILTER_MAX", exact_max)
    index, ids, vectors = filled(n=400)
    index.upsert(["item-5"], vectors[5:6], [ItemRecord("item-5", metadata={"parity": 0, "tens": 99})])  # moved
    index.delete(["item-7", "item-12"])
    live = {j: {"parity": j % 2, "tens": j // 10} for j in range(400) if j not in (7, 12)}
    live[5] = {"parity": 0, "tens": 99}
    filters = [{"tens": {"$in": [0, 1, 99]}}, {"tens": {"$gte": 3, "$lt": 5}, "parity": 1},
               {"tens": {"$gt": 38.5}}, {"parity": {"$in": [None]}},
               {"$or": [{"parity": 1, "tens": {"$lte": 0}}, {"tens": 97}]}]
    wanted = [lambda m: m["tens"] in (0, 1, 99), lambda m: 3 <= m["tens"] < 5 and m["parity"] == 1,
              lambda m: m["tens"] > 38.5, lambda m: False,
              lambda m: (m["parity"] == 1 and m["tens"] <= 0) or m["tens"] == 97]
    q = vectors[9]
    path = tmp_path / "snapshot.bin"
    index.save(path, "1-0", forked=False)
    loaded, _ = shard_index.ShardIndex.load(path)
    for shard in (index, loaded):
        for conditions, keep in zip(filters, wanted):
            matching = sorted(j for j, meta in live.items() if keep(meta))
            exact = [f"item-{matching[i]}" for i in np.argsort(-(vectors[matching] @ q), kind="stable")[:10]]
            assert [h.id for h in shard.search(q, 10, filter=conditions)] == exact, conditions
