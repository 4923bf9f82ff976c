"""bench.search's queries: exact answers read in blocks and over a filter's rows match a plain
sort, the filters select what they say, every run gets distinct queries."""
from __future__ import annotations

import numpy as np

from bench.search.plan import Plan
from bench.search.queries import (BUCKETS, CLASS_WORDS, FILTER_001PCT, FILTER_1PCT, Query, bucket_metadata, crop_boxes,
                                  exact_top, filter_rows, phrases)


def test_exact_top_in_blocks_and_over_rows_matches_a_full_sort() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    ids = [f"i{j}" for j in range(len(vectors))]
    queries = [Query("text", None, None, rng.standard_normal(16).astype(np.float32), None) for _ in range(5)]
    rows = np.arange(0, 1000, 7)
    for subset in (None, rows):
        kept = np.arange(1000) if subset is None else subset
        expected = [[ids[kept[j]] for j in np.argsort(-(vectors[kept] @ q.vector))[:10]] for q in queries]
        assert exact_top(vectors, ids, queries, subset, block=64) == expected
    assert exact_top(vectors, ids, queries, np.array([5, 9])) == [["i5", "i9"] if q.vector @ vectors[5] >
                                                                  q.vector @ vectors[9] else ["i9", "i5"]
                                                                  for q in queries]


def test_filters_keep_what_they_say() -> None:
    n = 3 * BUCKETS + 17
    metadata = bucket_metadata(n)
    one_pct, rare = filter_rows(FILTER_1PCT, n), filter_rows(FILTER_001PCT, n)
    assert [i for i in range(n) if metadata[i]["bucket"] < 100] == one_pct.tolist()
    assert [i for i in range(n) if metadata[i]["bucket"] == 4321] == rare.tolist()
    assert len(one_pct) == 300 + 17 and len(rare) == 3
    assert filter_rows(None, n) is None


def test_runs_take_distinct_queries() -> None:
    plan = Plan(sizes=[10], shard_counts=[1], client_counts=[1, 8, 32], min_queries=64, per_client=8,
                repeats=1, max_minutes=1.0)
    slices = list(plan.slices())
    assert [s.stop - s.start for s in slices] == [2, 64, 64, 256]
    taught = plan.taught_slice()
    assert all(a.stop == b.start for a, b in zip(slices + [taught], slices[1:] + [taught]))
    assert taught.stop - taught.start == plan.taught and taught.stop == plan.per_kind()
    boxes = crop_boxes(15)
    assert len(set(boxes)) == 15 and all(b - t == 0.75 and r - l == 0.75 for t, b, l, r in boxes)


def test_phrases_are_distinct_and_hold_their_word() -> None:
    texts = phrases(CLASS_WORDS, 300)
    assert len(set(texts)) == 300
    assert all(any(word in text for word in CLASS_WORDS) for text in texts)
