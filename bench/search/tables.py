"""The printed report of a search benchmark run: fill, searches, floor, memory and where a
1-client query's time goes, as plain-text tables; it adds the figures that compare the service
with the floor to the rows."""
from __future__ import annotations

from typing import Any

from bench.search.plan import Results
from bench.search.queries import K, KINDS
from bench.service import table


TARGET_QPS = 1000
TARGET_ITEMS = 10_000_000
CAPACITY_ROLES = ("api", "query", "shard", "redis")


def capacity(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per kind and role: CPU ms per search at 1 client at the largest size measured (the most
    shards there), searches/s per core, and the cores (processes) TARGET_QPS searches/s over
    TARGET_ITEMS items need."""
    ones = [r for r in rows if r["clients"] == 1]
    if not ones:
        return []
    items = max(r["items"] for r in ones)
    shards = max(r["shards"] for r in ones if r["items"] == items)
    out = []
    for r in ones:
        if (r["items"], r["shards"]) != (items, shards):
            continue
        for role in CAPACITY_ROLES:
            ms = r["cpu_ms"].get(role, 0.0) * (TARGET_ITEMS / items if role == "shard" else 1)
            out.append({"kind": r["kind"], "role": role, "items": items, "shards": shards, "cpu_ms": round(ms, 2),
                        "per_core_qps": round(1000 / ms, 1) if ms > 0 else None,
                        "cores": round(TARGET_QPS * ms / 1000, 1)})
    return out


def _minus(total: float | None, part: float | None) -> float | None:
    return None if total is None or part is None else round(total - part, 1)


def report(results: Results, slots: int, load: list[float]) -> None:
    """The tables (the JSON line is printed by main)."""
    floors = results.floors
    for row in results.rows:
        floor = floors.get(row["items"])
        row["x_floor"] = None if row["p50_ms"] is None or floor is None else \
            round(row["p50_ms"] / floor[row["kind"]]["p50_ms"], 1)
    for b in results.breakdown:
        b["index_here_ms"] = floors[b["items"]][b["kind"]]["mean_ms"] if b["items"] in floors else None
    for m in results.memory:
        m["index_bytes_per_item"] = round(results.index_bytes[m["items"]], 1)
        m["ratio"] = round(m["bytes_per_item"] / m["index_bytes_per_item"], 2)
    print(f"\n== fill: bulk vectors + 26 photos through the API, until both jobs are final ({slots} shard workers)")
    print(table(["items", "shards", "seconds", "items/s", "snapshots s"],
                [[f["items"], f["shards"], "found" if f.get("resumed") else f["fill_s"], f["items_per_s"] or "",
                  f["snapshots_s"]] for f in results.fills]))
    print(f"\n== searches through HTTP, k={K}, every query distinct (latency ms without the query's own encoding:\n"
          "   the client's round trip less the query worker's timings.encode_ms; client: the round trip itself;\n"
          "   encode: the query worker's decode + encode; hits: answers from the result cache, with their p50;\n"
          "   qps over all; x floor: p50 / in-process index p50)")
    print(table(["items", "shards", "kind", "clients", "queries", "p50", "p95", "p99", "client p50", "client p95",
                 "encode", "hits", "hit p50", "qps", "recall@10", "top-1", "x floor"],
                [[r["items"], r["shards"], r["kind"], r["clients"], r["queries"], r["p50_ms"], r["p95_ms"],
                  r["p99_ms"], r["client_p50_ms"], r["client_p95_ms"], r["encode_p50_ms"], r["cache_hits"],
                  r["cached_p50_ms"], r["qps"], r["recall_at_10"], r["top1"], r["x_floor"]] for r in results.rows]))
    roles = sorted({role for r in results.rows for role in r["cpu_ms"]})
    print("\n== CPU ms per search by role (process CPU time over the run / searches; shard: all shard workers;\n"
          "   bench: the client threads of this process)")
    print(table(["items", "shards", "kind", "clients"] + roles,
                [[r["items"], r["shards"], r["kind"], r["clients"]] + [r["cpu_ms"].get(role) for role in roles]
                 for r in results.rows]))
    results.capacity = capacity(results.rows)
    print(f"\n== capacity from the 1-client rows of the largest size ({TARGET_QPS} searches/s over "
          f"{TARGET_ITEMS:,} items):\n"
          "   searches/s per core = 1000 / CPU ms per search; cores = target x CPU ms / 1000; the shard\n"
          "   role's CPU per search scaled by target items / measured items (same items per shard, every\n"
          "   shard searched by every query: an upper bound, as a graph search grows slower than its size)")
    print(table(["kind", "role", "CPU ms/search", "searches/s/core", "cores for target"],
                [[c["kind"], c["role"], c["cpu_ms"], c["per_core_qps"], c["cores"]] for c in results.capacity]))
    print("\n== floor: one in-process ShardIndex of the same vectors, one query at a time (ms)")
    print(table(["items", "build s", "kind", "p50", "p95", "recall@10", "top-1", "exact top-1"],
                [[n, f["build_s"], kind, f[kind]["p50_ms"], f[kind]["p95_ms"], f[kind]["recall_at_10"],
                  f[kind]["top1"], f[kind]["exact_top1"]] for n, f in floors.items() for kind in KINDS]))
    print("\n== memory: shard workers' resident memory (VmRSS, all workers; restarted before each collection)\n"
          "   with the collection empty and once filled and searched; bytes/item = growth / items (a collection\n"
          "   found filled in --data-dir is loaded at start: its before is 0, so bytes/item holds the empty workers);\n"
          "   index = vector + graph bytes per item by ShardIndex.stats() of the floor (or its formula);\n"
          "   ratio = bytes/item / index (target <= 1.5)")
    print(table(["items", "shards", "RSS before MB", "RSS after MB", "bytes/item", "index bytes/item", "ratio"],
                [[m["items"], m["shards"], m["rss_before_mb"], m["rss_after_mb"], m["bytes_per_item"],
                  m["index_bytes_per_item"], m["ratio"]] for m in results.memory]))
    print("   the floor index in this process: " + "; ".join(
        f"N={n}: vectors {f['vector_bytes'] / n:.0f} + graph {f['graph_bytes'] / n:.0f} B/item, "
        f"whole index by stats() {f['bytes'] / n:.0f} B/item"
        for n, f in floors.items()))
    for b in results.breakdown:
        b["api_hops_ms"] = _minus(b["api_took_ms"], b["query_worker_ms"])
    print("\n== where a 1-client query's time goes (mean ms). client: HTTP round trip; API took: the API's\n"
          "   own wall time; query worker: its time from decoding the query to the merged answer (the\n"
          "   answers' timings); encode: the query worker's decode + encode of the query; shard search:\n"
          "   one shard's index search as the shard workers' histogram recorded it (the shards of a query\n"
          "   run in parallel); API hops = API took - query worker (request and answer lists, the\n"
          "   collection's reads, API work);\n"
          "   encode / index here: the same query encoding and a search of one index of all items, in this\n"
          "   process (timed apart from the service runs, so under other load)")
    print(table(["items", "shards", "kind", "client", "API took", "API hops", "query worker", "encode",
                 "shard search", "encode here", "index here"],
                [[b["items"], b["shards"], b["kind"], b["client_ms"], b["api_took_ms"], b["api_hops_ms"],
                  b["query_worker_ms"], b["encode_ms"], b["shard_search_ms"], b["encode_here_ms"], b["index_here_ms"]]
                 for b in results.breakdown]))
    print(f"\nload average at the end (other processes share these cores): {load}")
