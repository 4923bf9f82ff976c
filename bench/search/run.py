"""One search benchmark run against a running stack: per size the vectors and exact answers,
then per shard count a collection filled, searched, measured and deleted; then the floor.

With `Plan.keep` (`--data-dir`) collections are kept, and one that the stack's data dir already
holds (from an earlier run, finished or killed while filling) is not filled again: the shard
workers load it from their snapshots and logs, what its bulk job had not logged yet is logged,
and the run waits until it is whole. A 1M fill
can so be spread over several runs."""
from __future__ import annotations

import numpy as np

from bench.bulk import derived_vectors, neighbour_lists
from bench.datasets import note
from bench.photos import foolbox_photos, skimage_photos
from bench.search.collection import fill, fits_in_memory, memory_row, resume, settle
from bench.search.floor import floor
from bench.search.plan import Plan, Results, estimated_minutes
from bench.search.queries import (CLASS_WORDS, K, KIND_SPECS, HeldOut, bucket_metadata, build_queries, encode_photos,
                                  exact_top, filter_rows)
from bench.search.timing import measure_collection, teach
from bench.service import Service
from bench.vectors import fashion
from bench.vectors.cache import real_base

SEED = 20240611
HELD_OUT = 400  # the last Fashion-MNIST test images: the near queries, left out of the synthetic items' base


def index_bytes_per_item(image_dim: int, text_dim: int) -> float:
    """What `ShardIndex.stats()` counts per item that has both blocks: its float32 vector and
    its graphs' links and bookkeeping (without building an index)."""
    from shared.index.graph import estimated_bytes
    from shared.index.layouts import DEFAULT_LAYOUT, graphs

    one = {"count": 1, "capacity": 1, "deleted": 0}
    kept = graphs(DEFAULT_LAYOUT, image_dim + text_dim, image_dim)
    graph_bytes, _ = estimated_bytes(16, [{**one, "dim": g.stop - g.start, "graph_dim": g.stop - g.start} for g in kept])
    return float((image_dim + text_dim) * 4 + graph_bytes)


def run(svc: Service, plan: Plan) -> Results:
    """Fill, query and delete each collection; the floor of each size."""
    from shared.store.catalog import check_models
    from shared.encoding.encoders import collection_encoder
    from shared.encoding.precision import resolve_precision

    settings = svc.stack.settings
    dims = check_models(settings, settings.image_model, settings.text_model)
    # As the API resolves it for a new collection; fp32 queries would not match bf16 items' scores.
    precision = resolve_precision(None, settings.precision)
    setting = settings.encoder_setting  # as the API gives a new collection
    encoder = collection_encoder(settings.image_model, settings.text_model, precision, setting)
    photos = foolbox_photos() + skimage_photos()
    base = real_base(settings.image_model, settings.text_model, precision, setting, {p.name for p in photos}, HELD_OUT)
    if base is None:
        raise SystemExit("bench.search derives its items and near queries from Fashion-MNIST: run `make bench-data`")
    uploads, labels = fashion.held_out(HELD_OUT)
    queries, encode_ms = build_queries(encoder, photos, HeldOut(uploads, [CLASS_WORDS[i] for i in labels]),
                                       plan.per_kind())
    photo_vectors = encode_photos(encoder, photos)
    neighbours = neighbour_lists(base, 10)
    results = Results()
    for n in plan.sizes:
        # Collections kept in --data-dir are in the shard workers' memory already (loaded at start).
        kept = plan.keep and all(svc.find_collection(f"n{n}-s{shards}") for shards in plan.shard_counts)
        if not kept and not fits_in_memory(n, dims["image"] + dims["text"]):
            note(f"N={n}: a collection of {n} vectors would not fit in memory; skipped")
            results.skipped.append({"items": n, "reason": "memory"})
            continue
        minutes = estimated_minutes(n, len(plan.shard_counts), results)
        if minutes is not None and minutes > plan.max_minutes:
            note(f"N={n}: filling {len(plan.shard_counts)} collections and building the floor would take at least "
                 f"{minutes:.0f} min at the rates measured at N={results.fills[-1]['items']} "
                 f"(limit --max-minutes {plan.max_minutes:g}); skipped")
            results.skipped.append({"items": n, "reason": "time", "estimated_min": round(minutes, 1)})
            continue
        vectors_file = svc.data_dir / f"vectors-{n}.npy"
        vectors = np.lib.format.open_memmap(vectors_file, mode="w+", dtype=np.float32,
                                            shape=(n, dims["image"] + dims["text"]))
        synthetic = derived_vectors(n - len(photos), base, dims["image"], seed=SEED, neighbours=neighbours,
                                    out=vectors[:n - len(photos)])
        vectors[n - len(photos):] = photo_vectors
        syn_ids = [f"syn-{i}" for i in range(len(synthetic))]
        ids = syn_ids + [p.name for p in photos]
        metadata = bucket_metadata(len(synthetic))
        exact = {kind.name: exact_top(vectors, ids, queries[kind.name], filter_rows(kind.filter, len(synthetic)))
                 for kind in KIND_SPECS}
        for shards in plan.shard_counts:
            name = f"n{n}-s{shards}"
            svc.restart_shard_workers()
            found = svc.find_collection(name)
            if found is None:
                created = svc.create_collection(name, shards)
                got = (created.get("precision"), created.get("encoder_setting"))
                if got != (precision, setting):
                    raise RuntimeError(f"{name} got precision and encoder setting {got}, the queries here use "
                                       f"{(precision, setting)}")
                svc.search(svc.session, name, text=CLASS_WORDS[0], k=K)
                rss_before = svc.shard_rss()
                fill_s = fill(svc, name, synthetic, syn_ids, metadata, photos, plan.max_minutes * 60, note)
                filled = {"fill_s": round(fill_s, 1), "items_per_s": round(n / fill_s, 1)}
            else:
                got = (found["shards"], found.get("precision"), found.get("encoder_setting"))
                if got != (shards, precision, setting):
                    raise RuntimeError(f"{name} in the data dir has shards, precision and encoder setting {got}, "
                                       f"not {(shards, precision, setting)}")
                note(f"{name}: found in the data dir with {found['count']:,} of {n:,} items; not filled again")
                rss_before = {worker: 0 for worker in svc.shard_rss()}  # loaded at start: no empty figure
                resume(svc, name, synthetic, syn_ids, metadata, photos, plan.max_minutes * 60, note)
                filled = {"fill_s": None, "items_per_s": None, "resumed": True}
            settle_s = settle(svc, name)
            teach(svc, name, queries, plan)
            taught_s = settle(svc, name)
            results.fills.append({"items": n, "shards": shards, **filled, "snapshots_s": round(settle_s, 1),
                                  "taught_s": round(taught_s, 1)})
            measure_collection(svc, name, queries, exact, encode_ms, plan, {"items": n, "shards": shards}, results)
            results.memory.append(memory_row(n, shards, rss_before, svc.shard_rss()))
            if not plan.keep:
                svc.session.delete(f"{svc.url}/collections/{name}", timeout=60)
        svc.restart_shard_workers()  # the deleted collections' memory back before the floor's
        if plan.floor:
            first_run = list(plan.slices())[1]
            results.floors[n] = floor(vectors, ids, metadata, dims["image"],
                                      {kind: qs[first_run] for kind, qs in queries.items()},
                                      {kind: e[first_run] for kind, e in exact.items()}, plan.repeats)
            results.index_bytes[n] = (results.floors[n]["vector_bytes"] + results.floors[n]["graph_bytes"]) / n
        else:
            results.index_bytes[n] = index_bytes_per_item(dims["image"], dims["text"])
        del synthetic, vectors
        vectors_file.unlink()
    return results
