"""bench.search's report adds the figures that compare the service with its floor to the rows
and prints every table; a size's duration is estimated from the largest size measured."""
from __future__ import annotations

import numpy as np
import pytest

from bench.search.plan import Results, estimated_minutes, parse_ints
from bench.search.queries import KINDS
from bench.search.run import index_bytes_per_item
from bench.search.tables import report
from bench.search.timing import query_worker_ms
from shared.index.shard_index import ItemRecord, ShardIndex


def measured(items: int) -> Results:
    floor = {kind: {"p50_ms": 2.0, "p95_ms": 3.0, "mean_ms": 2.5, "recall_at_10": 1.0, "top1": None,
                    "exact_top1": None} for kind in KINDS}
    return Results(
        rows=[{"items": items, "shards": 1, "kind": "text", "clients": 1, "queries": 32, "p50_ms": 10.0,
               "p95_ms": 12.0, "p99_ms": 13.0, "mean_ms": 10.5, "qps": 90.0, "cache_hits": 0,
               "cached_p50_ms": None, "recall_at_10": 0.99, "top1": None, "client_p50_ms": 11.0,
               "client_p95_ms": 13.0, "encode_p50_ms": 1.0,
               "cpu_ms": {"api": 2.0, "query": 4.0, "shard": 5.0, "redis": 0.5, "bench": 1.0}}],
        breakdown=[{"items": items, "shards": 1, "kind": "text", "client_ms": 10.5, "api_took_ms": 9.0,
                    "encode_ms": 1.0, "encode_here_ms": 1.0, "query_worker_ms": 7.5, "shard_search_ms": 2.0}],
        fills=[{"items": items, "shards": 1, "fill_s": 50.0, "items_per_s": items / 50, "snapshots_s": 1.0}],
        floors={items: {"build_s": 20.0, "vector_bytes": 3000 * items, "graph_bytes": 1000 * items,
                        "bytes": 4200 * items, **floor}},
        memory=[{"items": items, "shards": 1, "rss_before_mb": 100.0, "rss_after_mb": 150.0,
                 "bytes_per_item": 6000.0, "workers": {}}],
        index_bytes={items: 4000.0})


def test_report_compares_with_the_floor(capsys: pytest.CaptureFixture[str]) -> None:
    results = measured(10_000)

    report(results, slots=2, load=[1.0, 1.0, 1.0])

    assert results.rows[0]["x_floor"] == 5.0
    assert results.breakdown[0]["index_here_ms"] == 2.5
    assert results.breakdown[0]["api_hops_ms"] == 1.5
    assert results.memory[0]["index_bytes_per_item"] == 4000.0
    assert results.memory[0]["ratio"] == 1.5
    # 1000 searches/s over 10M items: api 2 ms -> 2 cores; shard 5 ms at 10k items -> 5000 ms at 10M
    by_role = {c["role"]: c for c in results.capacity}
    assert by_role["api"]["per_core_qps"] == 500.0 and by_role["api"]["cores"] == 2.0
    assert by_role["shard"]["cpu_ms"] == 5000.0 and by_role["shard"]["cores"] == 5000.0
    printed = capsys.readouterr().out
    for heading in ("== fill", "== searches", "== CPU ms per search", "== capacity", "== floor", "== memory",
                    "== where a 1-client query's time goes"):
        assert heading in printed


def test_estimated_minutes_from_the_largest_size() -> None:
    assert estimated_minutes(100_000, 2, Results()) is None
    # fills at 200 items/s, the floor at 500 items/s: 2 x 500 s + 200 s
    assert estimated_minutes(100_000, 2, measured(10_000)) == pytest.approx(20.0)


def test_parse_ints() -> None:
    assert parse_ints("1,8, 32,") == [1, 8, 32]


def test_report_without_a_floor(capsys: pytest.CaptureFixture[str]) -> None:
    results = measured(10_000)
    results.floors = {}

    report(results, slots=2, load=[1.0, 1.0, 1.0])

    assert results.rows[0]["x_floor"] is None and results.breakdown[0]["index_here_ms"] is None
    assert results.memory[0]["ratio"] == 1.5
    assert "== memory" in capsys.readouterr().out


def test_index_bytes_without_a_floor_are_what_stats_counts() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.random((300, 40), dtype=np.float32)
    ids = [f"i{j}" for j in range(len(vectors))]
    index = ShardIndex(40, image_dim=32)
    index.upsert(ids, vectors, [ItemRecord(i) for i in ids])
    stats = index.stats()
    assert index_bytes_per_item(32, 8) == pytest.approx((stats["vector_bytes"] + stats["graph_bytes"]) / 300, rel=1e-3)


def test_the_query_workers_time_is_its_answers_encoding_plus_search():
    bodies = [{"timings": {"encode_ms": 1.0, "search_ms": 4.0}}, {"timings": {"encode_ms": 2.0, "search_ms": 5.0}},
              {"error": {"code": "not_found"}}]
    assert query_worker_ms(bodies) == 6.0 and query_worker_ms([]) is None
