"""A shard's projected wide graph (`shared.index.projection`): directions learned from its own
items once it holds enough of them, searches ranked exactly, snapshots that keep it, and
searches that go on while the graph is rebuilt."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shared.encoding.fusion import build_query, fuse
from shared.index import projection
from shared.index.projection import Projection
from shared.index.shard_index import ShardIndex
from tests.unit.index.helpers import TEXT_DIM, WIDE_IMAGE_DIM, records_for, unit, wide_items
from tests.unit.index.test_snapshot import as_older_version

WIDE = WIDE_IMAGE_DIM + TEXT_DIM
KINDS = {"image": (1.0, 0.0), "text": (0.0, 1.0), "fused": (1.0, 1.0), "fused 1:0.25": (1.0, 0.25),
         "fused 0.25:1": (0.25, 1.0)}


def wide_shard(n: int, seed: int, **kwargs) -> tuple[ShardIndex, list[str], np.ndarray, dict[str, np.ndarray]]:
    """A shard of n wide items written in batches of 500, and 40 fresh queries of each kind."""
    rng = np.random.default_rng(seed)
    images, texts = wide_items(rng, n + 40)
    vectors = np.stack([fuse(i, t, WIDE_IMAGE_DIM, TEXT_DIM) for i, t in zip(images[:n], texts[:n])])
    ids = [f"w{j}" for j in range(n)]
    index = ShardIndex(WIDE, image_dim=WIDE_IMAGE_DIM, **kwargs)
    for start in range(0, n, 500):
        index.upsert(ids[start:start + 500], vectors[start:start + 500], records_for(ids[start:start + 500]))
    queries = {kind: np.stack([build_query(i if wi else None, t if wt else None, WIDE_IMAGE_DIM, TEXT_DIM,
                                           {"image": wi or 1.0, "text": wt or 1.0}).vector
                               for i, t in zip(images[n:], texts[n:])])
               for kind, (wi, wt) in KINDS.items()}
    return index, ids, vectors, queries


def recall_and_exactness(index: ShardIndex, ids: list[str], queries: np.ndarray) -> float:
    """recall@10 against exact search over the stored vectors; asserts every score is exact."""
    stored = np.stack([vector for _, vector in index.with_vectors(ids)])
    found = 0
    for query in queries:
        scores = stored @ query
        hits = index.search(query, 10)
        assert [h.score for h in hits] == pytest.approx([scores[ids.index(h.id)] for h in hits], abs=1e-4)
        found += len({ids[j] for j in np.argsort(-scores)[:10]} & {h.id for h in hits})
    return found / (10 * len(queries))


def test_learned_directions_are_orthonormal_and_keep_inner_products_of_low_rank_rows():
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((500, 8)) @ unit(rng, 8, 40)
    learned = Projection.learn(rows, 8)
    np.testing.assert_allclose(learned.directions @ learned.directions.T, np.eye(8), atol=1e-5)
    assert learned.kept == pytest.approx(1.0, abs=1e-6) and (learned.dims, learned.width) == (8, 40)
    projected = learned(rows)
    np.testing.assert_allclose(projected @ projected[:10].T, rows @ rows[:10].T, rtol=1e-3, atol=1e-3)
    assert Projection.learn(unit(rng, 500, 40), 8).kept < 0.5
    with pytest.raises(ValueError, match="dims"):
        Projection.learn(rows, 40)


def test_a_graph_is_due_once_wide_and_large_enough_and_again_after_it_grew():
    assert not projection.due(511, 10**6, 0, dims=256, project_at=100)
    assert not projection.due(512, 99, 0, dims=256, project_at=100)
    assert projection.due(512, 100, 0, dims=256, project_at=100)
    assert not projection.due(512, 8 * 1000 - 1, 1000, dims=256, project_at=100)
    assert projection.due(512, 8 * 1000, 1000, dims=256, project_at=100)


def test_a_wide_shard_projects_its_fused_graph_and_finds_what_its_whole_graph_finds():
    index, ids, _, queries = wide_shard(3000, 5, project_at=1000, projected_dims=48)
    whole = wide_shard(3000, 5, project_at=10**9)[0]
    graphs = index.stats()["graphs"]
    assert (graphs["fused"]["graph_dim"], graphs["fused"]["dim"], graphs["fused"]["count"]) == (48, WIDE, 3000)
    assert graphs["text"]["graph_dim"] == TEXT_DIM  # too narrow to project
    assert whole.stats()["graphs"]["fused"]["graph_dim"] == WIDE
    assert index._graphs[0].learned_at == 1000  # learned at 1000 items, again at 8000
    for kind, kind_queries in queries.items():
        # Text-heavy mixes are short of 0.99 in the whole graph too, at its calibrated lists.
        expected = min(0.99, recall_and_exactness(whole, ids, kind_queries)) - 0.01
        assert recall_and_exactness(index, ids, kind_queries) >= expected, kind


def test_items_without_few_dominant_directions_keep_their_whole_graph():
    rng = np.random.default_rng(6)
    vectors = np.stack([fuse(i, t, WIDE_IMAGE_DIM, TEXT_DIM)
                        for i, t in zip(unit(rng, 1200, WIDE_IMAGE_DIM), unit(rng, 1200, TEXT_DIM))])
    ids = [f"r{j}" for j in range(1200)]
    index = ShardIndex(WIDE, image_dim=WIDE_IMAGE_DIM, project_at=1000, projected_dims=32)
    index.upsert(ids, vectors, records_for(ids))
    assert index.stats()["graphs"]["fused"]["graph_dim"] == WIDE and index._graphs[0].learned_at == 1200
    assert recall_and_exactness(index, ids, vectors[:20]) == 1.0


def test_a_projection_survives_a_snapshot_and_an_older_snapshot_is_projected_on_load(tmp_path: Path):
    index, ids, _, queries = wide_shard(projection.PROJECT_AT, 7, project_at=10**9)
    assert index.stats()["graphs"]["fused"]["graph_dim"] == WIDE
    path = tmp_path / "v5.bin"
    index.save(path, "3-1", forked=False)
    as_older_version(path, 5)
    loaded, position = ShardIndex.load(path)
    assert position == "3-1" and loaded.stats()["graphs"]["fused"]["graph_dim"] == projection.PROJECTED_DIMS
    assert loaded.stats()["calibrated_at"] == projection.PROJECT_AT  # tuned again for the new graph
    path = tmp_path / "v6.bin"
    loaded.save(path, "3-2", forked=False)
    again = ShardIndex.load(path)[0]
    np.testing.assert_array_equal(again._graphs[0].projection.directions, loaded._graphs[0].projection.directions)
    assert again._graphs[0].learned_at == projection.PROJECT_AT
    for query in queries["fused"][:10]:
        assert [h.id for h in again.search(query, 10)] == [h.id for h in loaded.search(query, 10)]
    assert recall_and_exactness(again, ids, queries["fused"]) >= 0.99


def test_searches_go_on_and_miss_no_item_while_the_graph_is_projected():
    rng = np.random.default_rng(8)
    images, texts = wide_items(rng, 2400)
    vectors = np.stack([fuse(i, t, WIDE_IMAGE_DIM, TEXT_DIM) for i, t in zip(images, texts)])
    ids = [f"c{j}" for j in range(2400)]
    index = ShardIndex(WIDE, image_dim=WIDE_IMAGE_DIM, project_at=1500, projected_dims=48)
    index.upsert(ids[:1400], vectors[:1400], records_for(ids[:1400]))
    gone = set(ids[:100])
    index.delete(sorted(gone))
    errors: list[BaseException] = []
    wrong: list[str] = []
    done = threading.Event()

    def search() -> None:
        try:
            while not done.is_set():
                for j in range(100, 140):  # kept items: each is its own best match
                    hits = index.search(vectors[j], 5)
                    wrong.extend(h.id for h in hits if h.id in gone)
                    if hits[0].id != ids[j]:
                        wrong.append(f"{ids[j]} not first")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            errors.append(exc)

    searcher = threading.Thread(target=search)
    searcher.start()
    for start in range(1400, 2400, 100):  # crosses project_at: the graph is rebuilt mid-way
        index.upsert(ids[start:start + 100], vectors[start:start + 100], records_for(ids[start:start + 100]))
    done.set()
    searcher.join()
    assert not errors and not wrong
    assert index.stats()["graphs"]["fused"]["graph_dim"] == 48 and len(index) == 2300
