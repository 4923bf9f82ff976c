"""The shard's graph layouts (`shared.index.layouts`) compared in one in-process `ShardIndex`:
`python -m bench.layouts [--items N] [--fashion M] [--per-kind Q] [--layouts fused,blocks]`.

The items are `bench.search`'s: N fused vectors derived from real ones
(`bench.bulk.derived_vectors`) plus the benchmark photos, the real base being the first M
Fashion-MNIST items (default 12,000; encoded once into `bench/data/vectors`, `make bench-data`
first) and the photos. The queries are `bench.search`'s too, Q per kind: held-out Fashion-MNIST
images with their class names (image, fused 1:1, 1:0.25, 0.25:1, filtered), class-name phrases
(text) and far ones (crops of the photos, phrases no item has). For each layout in turn the
same items are indexed as the owner applies them (`bench.search.floor`) and each query kind
searched one query at a time: recall@10 against exact search, top-1 where a query has an
expected item, p50/p95 ms, build seconds and bytes per item (`stats()`). The last line is
JSON of all of it.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from bench.bulk import derived_vectors, neighbour_lists
from bench.datasets import note
from bench.photos import foolbox_photos, skimage_photos
from bench.search.floor import floor
from bench.search.queries import (CLASS_WORDS, KIND_SPECS, HeldOut, bucket_metadata, build_queries, encode_photos,
                                  exact_top, filter_rows)
from bench.search.run import HELD_OUT, SEED
from bench.vectors import fashion
from bench.vectors.cache import real_set
from shared.encoding.encoders import collection_encoder
from shared.encoding.precision import resolve_precision
from shared.index.layouts import LAYOUTS
from shared.runtime.config import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--fashion", type=int, default=12_000, help="Fashion-MNIST items in the real base")
    parser.add_argument("--per-kind", type=int, default=100)
    parser.add_argument("--layouts", default="fused,blocks")
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    if unknown := set(layouts) - set(LAYOUTS):
        parser.error(f"unknown layouts {sorted(unknown)}; choose from {LAYOUTS}")
    if not fashion.folder().is_dir():
        raise SystemExit(f"no Fashion-MNIST at {fashion.folder()}: run `make bench-data`")
    settings = get_settings()
    precision = resolve_precision(None, settings.precision)
    model = (settings.image_model, settings.text_model, precision, settings.encoder_setting)
    encoder = collection_encoder(*model)
    photos = foolbox_photos() + skimage_photos()
    real = real_set(*model, limit=args.fashion)
    first_photo = len(real.vectors) - real.photos
    own = {photo.name for photo in photos}
    base = np.concatenate([real.vectors[:first_photo],
                           real.vectors[[first_photo + i for i, name in enumerate(real.names) if name not in own]]])
    uploads, labels = fashion.held_out(HELD_OUT)
    queries, encode_ms = build_queries(encoder, photos, HeldOut(uploads, [CLASS_WORDS[i] for i in labels]),
                                       args.per_kind)
    synthetic = derived_vectors(args.items - len(photos), base, real.image_dim, seed=SEED,
                                neighbours=neighbour_lists(base, 10))
    vectors = np.concatenate([synthetic, encode_photos(encoder, photos)])
    ids = [f"syn-{i}" for i in range(len(synthetic))] + [photo.name for photo in photos]
    metadata = bucket_metadata(len(synthetic))
    exact = {kind.name: exact_top(vectors, ids, queries[kind.name], filter_rows(kind.filter, len(synthetic)))
             for kind in KIND_SPECS}
    note(f"{args.items:,} items from a base of {len(base):,} real ones; query encoding ms {encode_ms}")
    results = {}
    for layout in layouts:
        found = floor(vectors, ids, metadata, 0 if layout == "whole" else real.image_dim, queries, exact, 1, layout)
        results[layout] = found
        print(f"{layout}: build {found['build_s']} s, {found['bytes'] / args.items:,.0f} bytes per item")
        for kind in KIND_SPECS:
            row = found[kind.name]
            print(f"  {kind.name:20s} recall@10 {row['recall_at_10']:.4f}  top-1 {row['top1']}  "
                  f"p50 {row['p50_ms']} ms  p95 {row['p95_ms']} ms")
    print(json.dumps({"items": args.items, "fashion": args.fashion, "per_kind": args.per_kind, **results}))


if __name__ == "__main__":
    main()
