"""Tests of merging per-shard top-k lists."""
from __future__ import annotations

import random

from shared.index.merge import merge_topk


def hit(item_id: str, score: float, shard: int = 0) -> dict:
    return {"id": item_id, "score": score, "shard": shard}


def test_merges_sorted_lists_into_the_global_top_k():
    a = [hit("a1", 0.9), hit("a2", 0.5), hit("a3", 0.1)]
    b = [hit("b1", 0.8), hit("b2", 0.7), hit("b3", 0.6)]
    c = [hit("c1", 0.95)]
    assert [h["id"] for h in merge_topk([a, b, c], 4)] == ["c1", "a1", "b1", "b2"]
    assert merge_topk([a, b, c], 4)[0] is c[0]  # the shard's own dict, untouched


def test_matches_a_full_sort_on_random_input():
    rng = random.Random(0)
    shards = [sorted(({"id": f"s{s}-{j}", "score": rng.random()} for j in range(rng.randrange(0, 30))),
                     key=lambda h: -h["score"]) for s in range(6)]
    everything = sorted((h for hits in shards for h in hits), key=lambda h: -h["score"])
    for k in (1, 5, 17, 1000):
        assert merge_topk(shards, k) == everything[:k]


def test_duplicate_ids_are_kept_once_at_their_best_score():
    a = [hit("x", 0.4, 0), hit("a", 0.3, 0)]
    b = [hit("x", 0.9, 1), hit("b", 0.2, 1)]
    merged = merge_topk([a, b], 10)
    assert [(h["id"], h["score"], h["shard"]) for h in merged] == [("x", 0.9, 1), ("a", 0.3, 0), ("b", 0.2, 1)]
    # Dropping a duplicate does not cost a slot: k results when k distinct ids exist.
    assert [h["id"] for h in merge_topk([[hit("x", 0.9), hit("y", 0.1)], [hit("x", 0.8)]], 2)] == ["x", "y"]


def test_ties_go_to_the_earlier_shard_then_the_earlier_rank():
    a = [hit("a1", 0.5, 0), hit("a2", 0.5, 0)]
    b = [hit("b1", 0.7, 1), hit("b2", 0.5, 1), hit("b3", 0.5, 1)]
    c = [hit("c1", 0.5, 2)]
    assert [h["id"] for h in merge_topk([a, b, c], 10)] == ["b1", "a1", "a2", "b2", "b3", "c1"]
    assert [h["id"] for h in merge_topk([c, b, a], 10)] == ["b1", "c1", "b2", "b3", "a1", "a2"]
    # A tie between two copies of one id keeps the earlier shard's copy.
    tied = merge_topk([[hit("x", 0.5, 0)], [hit("x", 0.5, 1)]], 5)
    assert [(h["id"], h["shard"]) for h in tied] == [("x", 0)]


def test_k_larger_than_everything_empty_shards_and_k_zero():
    a = [hit("a", 0.3)]
    assert [h["id"] for h in merge_topk([[], a, [], [hit("b", 0.2)]], 100)] == ["a", "b"]
    assert merge_topk([], 10) == []
    assert merge_topk([[], []], 10) == []
    assert merge_topk([a], 0) == []
    assert merge_topk([a], -1) == []
