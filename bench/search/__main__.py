"""Search latency, throughput and recall of the real stack: `python -m bench.search [--quick]`.

Starts the whole stack (`bench.service.running_stack`, 2 shard workers by default) and, for each
size N and shard count, creates a collection holding N items: N - 26 synthetic fused vectors
(`bench.bulk.derived_vectors`, appended with `bench.bulk.bulk_insert`) plus the 26 photos of
foolbox and scikit-image ingested through the API without captions. The synthetic vectors are
derived from real ones (`bench.vectors.cache`: Fashion-MNIST's 70,000 images and the other
benchmark photos, encoded once into bench/data/vectors; the first run encodes them; `make
bench-data` fetches Fashion-MNIST): points between a real item and one of its real neighbours
plus noise drawn from the real items' spread, whose recall-vs-ef curves and neighbour score
gaps match the real vectors' (`python -m bench.vectors`, README). The last 400 Fashion-MNIST
test images are left out of that base: they are the near queries.

Once filled, the bench waits until every shard has snapshotted all it applied and the shard
workers have gone quiet (when the writes stop they write those snapshots, and a shard that grew
since its last calibration measures its tuning again first; "snapshots s" in the fill table,
write_results), so the searches measure the service at rest, not sharing the disk and cores
with the snapshot writers or a calibration. Then it sends --taught (128) unfiltered queries of
each kind, one of each kind in turn, none of them timed ones, and waits for the quiet again
("taught s"): the shards measure their lists on the queries they are sent
(`shared.index.query_sample`); 128 of each kind leave the next such measurement past the 1-client
runs.

Queries, k=10, through HTTP by 1, 8 (and 32 in the full run) client threads, each with its own
`requests.Session` (`bench.search.queries`). Near kinds (the headline), from the held-out
Fashion-MNIST images and their class names: text only (JSON), image (PNG upload, multipart),
fused 1:1, the weighted mixes image 1 : text 0.25 and 0.25 : 1, and fused 1:1 with a metadata
filter that 1% or 0.01% of the items meet (the synthetic items carry a `bucket`). Far kinds,
unlike every item: phrases about other things, and crops of the 26 photos alone and with a word
(the photo should come first: top-1). Every query of a run is distinct (other images, crops,
phrasings), so none is answered from the query workers' result cache (a hit would be counted
apart). Per row: p50/p95/p99 of the search without the query's own encoding (the round trip
less the `timings.encode_ms` the query worker reports), the round trip itself, the query worker's encode p50, queries/s,
recall@10 against exact search over the same vectors and filter (query vectors computed here
with `shared.encoding.encoders.collection_encoder` in the precision the service gives the
collections, whose models are deterministic), the top-1 rate, and the CPU milliseconds each
role's processes spent per search (/proc, over the run). From the 1-client rows of the largest
size, a capacity table: searches/s per core for each role, and the cores 1,000 searches/s over
10M items would take.

The floor: the same vectors in one in-process `ShardIndex` (the collection's image dim, so one
graph per block as the shard workers build them), searched with the same query vectors one at a
time (with its top-1 and exact search's); "x floor" is the service's p50 over that p50.

Memory: before each collection the shard workers are restarted (memory the previous, deleted
collection left with the allocator would otherwise be reused and hide growth), the empty
collection is created and searched once (code paths warm), and the resident memory (VmRSS) of
each shard worker is read; again once the collection was filled and searched. The growth summed
over the shard workers, over N, is the service's bytes per item. Next to it the index's own
estimate of vector + graph bytes per item (`ShardIndex.stats()` of the floor: float32 vectors,
level-0 links, labels, upper levels) and the ratio of the two (target: at most 1.5).

Where a 1-client query's time goes: the client's round trip, the API's `took_ms`, the query
worker's time from the query's decoding to the merged answer (the answers' `timings`) and the mean index search of one shard
(from the shard workers' search histogram), next to the query encoding and the index search timed
here.

Defaults: --quick: N = 10k; 1 and 4 shards; 1 and 8 clients. Full: N = 10k,
100k and 1M; 1, 2 and 4 shards; 1, 8 and 32 clients. A size is skipped with a note when its
copies would not fit in memory, or when filling its collections and building its floor would
take longer than --max-minutes at the previous size's rates (a lower bound: graph inserts slow
down as the graph grows). The last line of output is one JSON object: the headline row (text
queries, 1 client, the largest size, 4 shards) with that collection's memory figures
(`bytes_per_item`, `index_bytes_per_item`, `memory_ratio`), `per_kind` (per size, each kind's
recall@10, p50 and p95 at the fewest clients and the headline shard count), `capacity`, and
every row; the same object is
written to --json (default bench/results/search-<UTC time>.json), which `bench.report` plots.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from bench.search.plan import Plan, parse_ints
from bench.search.run import HELD_OUT, run
from bench.search.tables import report
from bench.service import running_stack, write_results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k items, 1 and 4 shards, 1 and 8 clients")
    parser.add_argument("--sizes", type=parse_ints, help="collection sizes (default: 10000 quick; 10000,100000,1000000)")
    parser.add_argument("--shards", type=parse_ints, help="shard counts (default: 1,4 quick; 1,2,4)")
    parser.add_argument("--clients", type=parse_ints, help="concurrent clients (default: 1,8 quick; 1,8,32)")
    parser.add_argument("--slots", type=int, default=2, help="shard worker processes (MMSEARCH_SHARDS)")
    parser.add_argument("--taught", type=int, default=128,
                        help="unfiltered queries of each kind sent before the timed runs, in turn, for the shards to "
                             "measure their lists on (shared.index.query_sample); at most what the held-out images "
                             "leave; 0: lists measured on the items alone")
    parser.add_argument("--max-minutes", type=float, default=20.0,
                        help="skip a size whose fills and floor would take longer (estimated from the previous size)")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the in-process floor (at 1M it takes as long as the fills here)")
    parser.add_argument("--data-dir", type=Path,
                        help="the stack's data dir, kept: collections stay, and one found there from an earlier "
                             "run (done, or stopped while filling) is not filled again (default: a temporary dir)")
    parser.add_argument("--json", type=Path, help="where to write the result JSON "
                        "(default: bench/results/search-<UTC time>.json)")
    args = parser.parse_args(argv)
    plan = Plan(sizes=args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000]),
                shard_counts=args.shards or ([1, 4] if args.quick else [1, 2, 4]),
                client_counts=args.clients or ([1, 8] if args.quick else [1, 8, 32]),
                min_queries=32 if args.quick else 64, per_client=8, repeats=3 if args.quick else 5,
                max_minutes=args.max_minutes, floor=not args.no_floor, keep=args.data_dir is not None, taught=0)
    plan = replace(plan, taught=max(0, min(args.taught, HELD_OUT - plan.per_kind())))
    with running_stack(slots=args.slots, data_dir=args.data_dir) as svc:
        results = run(svc, plan)
        load = [round(x, 2) for x in os.getloadavg()]
    report(results, args.slots, load)

    rows = results.rows
    if not rows:
        raise SystemExit("no size was measured")
    largest = max(r["items"] for r in rows)
    headline_shards = 4 if 4 in plan.shard_counts else max(plan.shard_counts)
    head = next(r for r in rows if (r["items"], r["shards"], r["kind"], r["clients"]) ==
                (largest, headline_shards, "text", 1))
    memory = next(m for m in results.memory if (m["items"], m["shards"]) == (largest, headline_shards))
    summary = {"p50_ms": head["p50_ms"], "p95_ms": head["p95_ms"], "qps": head["qps"],
               "recall_at_10": head["recall_at_10"], "items": largest, "shards": headline_shards,
               "bytes_per_item": memory["bytes_per_item"], "index_bytes_per_item": memory["index_bytes_per_item"],
               "memory_ratio": memory["ratio"],
               "quick": args.quick, "slots": args.slots, "cores": os.cpu_count(), "load_average": load,
               "rows": rows, "floor": results.floors, "fill": results.fills, "breakdown": results.breakdown,
               "memory": results.memory, "skipped": results.skipped,
               "capacity": results.capacity,
               "per_kind": {str(r["items"]): {} for r in rows}}
    for r in rows:
        if r["shards"] == headline_shards and r["clients"] == min(plan.client_counts):
            summary["per_kind"][str(r["items"])][r["kind"]] = {
                "recall_at_10": r["recall_at_10"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"]}
    write_results(summary, "search", args.json)


if __name__ == "__main__":
    main()
