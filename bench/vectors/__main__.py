"""Real against synthetic benchmark vectors: `python -m bench.vectors [--limit N]`.

Loads (encoding once, `bench.vectors.cache`) the real set: Fashion-MNIST's 70,000 images (the
first `--limit` of them) and the 104 benchmark photos, uncaptioned, with the default models in
the precision a new collection gets here. Then makes synthetic sets of the same count:

- `anchored`: `bench.bulk.synthetic_vectors` with the photos as anchors (1000 centres, each a
  Dirichlet mix of 3 photos, plus noise), the generator `bench.search` used before;
- `derived`: `bench.bulk.derived_vectors` from a random half of the real set (so the check
  covers drawing twice as many items as there are real ones, as `bench.search` does at 100k and
  1M): points between a real item and one of its real neighbours, moved by `--noise` (image
  block; one set per value given) or `--text-noise` (text block) times the difference of two
  other real items.

For each set and each block (image, text, fused), `--queries` items are held out as queries and
the rest indexed in one hnswlib graph with the service's M and ef_construction; printed:
recall@10 at each ef of `--efs`, the smallest of them that reaches 0.99, and the median, 10th
and 90th percentile of the gap between the 10th and the 11th exact neighbour's score (and the
median 10th score). The last line is one JSON object with every figure.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

import numpy as np

from bench.bulk import derived_vectors, neighbour_lists, synthetic_vectors
from bench.datasets import cifar_photos, opencv_photos, wallpapers
from bench.service import table
from bench.vectors import measure
from bench.vectors.cache import RealSet, real_set

K = 10
SEED = 20240611
TARGET = 0.99


def service_graph_settings() -> tuple[int, int]:
    """M and ef_construction of the shards' graphs (ShardIndex's defaults)."""
    from shared.index.shard_index import ShardIndex

    params = inspect.signature(ShardIndex).parameters
    return params["M"].default, params["ef_construction"].default


def synthetic_sets(real: RealSet, noises: list[float], text_noise: float, derive_share: float,
                   names: list[str]) -> dict[str, np.ndarray]:
    """The synthetic sets, each as many items as the real set."""
    n, image_dim = len(real.vectors), real.image_dim
    text_dim = real.vectors.shape[1] - image_dim
    out: dict[str, np.ndarray] = {}
    if "anchored" in names:
        anchor_names = {p.name for p in cifar_photos() + opencv_photos() + wallpapers()}
        rows = [n - real.photos + i for i, name in enumerate(real.names) if name in anchor_names]
        out["anchored"] = synthetic_vectors(n, image_dim, text_dim, seed=SEED, anchors=real.vectors[rows])
    if "derived" in names:
        rng = np.random.default_rng(SEED)
        base = real.vectors[np.sort(rng.choice(n, int(n * derive_share), replace=False))]
        t0 = time.monotonic()
        neighbours = neighbour_lists(base, K)
        print(f"neighbour lists of the {len(base)} base items: {time.monotonic() - t0:.1f} s", file=sys.stderr)
        for noise in noises:
            out[f"derived noise={noise:g}/{text_noise:g}"] = derived_vectors(
                n, base, image_dim, seed=SEED, neighbours=neighbours, noise=noise, text_noise=text_noise)
    return out


def measure_set(name: str, vectors: np.ndarray, image_dim: int, queries: int, efs: list[int],
                M: int, ef_construction: int, threads: int) -> dict[str, dict]:
    """Every figure of one set, per block."""
    base_rows, query_rows = measure.split(len(vectors), queries, SEED)
    out = {}
    for block_name in measure.BLOCKS:
        data = measure.block(vectors, image_dim, block_name)
        base, qs = data[base_rows], data[query_rows]
        _, exact_scores = measure.exact_top(base, qs, K + 1)
        t0 = time.monotonic()
        index = measure.build_graph(base, M, ef_construction, threads)
        build_s = time.monotonic() - t0
        curve = measure.recall_curve(index, base, qs, exact_scores[:, K - 1], efs, K, threads)
        del index
        out[block_name] = {
            "recall": {str(ef): round(r, 4) for ef, r in curve.items()},
            "ef_for_target": measure.ef_for(curve, TARGET),
            "gap": measure.spread(measure.gaps(exact_scores, K)).as_dict(),
            "kth_score": measure.spread(exact_scores[:, K - 1]).as_dict(),
            "build_s": round(build_s, 1),
        }
        print(f"{name} / {block_name}: built in {build_s:.1f} s", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vectors", description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, help="Fashion-MNIST items to use (default all 70,000)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out query items per set")
    parser.add_argument("--efs", default="10,20,40,80,160,320", help="search list sizes")
    parser.add_argument("--sets", default="anchored,derived", help="synthetic sets: anchored, derived")
    parser.add_argument("--noise", default="0.4", help="image-block noise of the derived sets, comma-separated")
    parser.add_argument("--text-noise", type=float, default=0.3, help="text-block noise of the derived sets")
    parser.add_argument("--derive-share", type=float, default=0.5, help="share of the real set the derived sets draw from")
    parser.add_argument("--encode-only", action="store_true", help="fill the cache and stop")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from shared.encoding.precision import resolve_precision
    from shared.runtime.config import get_settings

    settings = get_settings()
    precision = resolve_precision(None, settings.precision)
    real = real_set(settings.image_model, settings.text_model, precision, settings.encoder_setting, args.limit)
    if args.encode_only:
        print(json.dumps({"items": len(real.vectors), "photos": real.photos, "precision": precision}))
        return
    efs = [int(x) for x in args.efs.split(",")]
    M, ef_construction = service_graph_settings()
    threads = os.cpu_count() or 1
    sets = {"real": real.vectors}
    sets.update(synthetic_sets(real, [float(x) for x in args.noise.split(",")], args.text_noise, args.derive_share,
                               [s for s in args.sets.split(",") if s]))
    results = {name: measure_set(name, vectors, real.image_dim, args.queries, efs, M, ef_construction, threads)
               for name, vectors in sets.items()}

    n = len(real.vectors)
    print(f"\n== {n} items each ({n - real.photos} Fashion-MNIST + {real.photos} photos for the real set; "
          f"{settings.image_model} {precision}, uncaptioned), {args.queries} held-out queries, "
          f"hnswlib M {M} ef_construction {ef_construction}, recall@{K} against exact search")
    for block_name in measure.BLOCKS:
        print(f"\n-- {block_name} block")
        print(table(["set"] + [f"ef {ef}" for ef in efs] + [f"ef@{TARGET}", "gap p10", "gap median", "gap p90",
                                                            "10th score"],
                    [[name] + [r[block_name]["recall"][str(ef)] for ef in efs]
                     + [r[block_name]["ef_for_target"]]
                     + [r[block_name]["gap"][p] for p in ("p10", "median", "p90")]
                     + [r[block_name]["kth_score"]["median"]] for name, r in results.items()]))
    print(json.dumps({"items": n, "fashion_mnist": n - real.photos, "photos": real.photos,
                      "image_model": settings.image_model, "text_model": settings.text_model,
                      "precision": precision, "queries": args.queries, "k": K, "M": M,
                      "ef_construction": ef_construction, "efs": efs, "derive_share": args.derive_share,
                      "text_noise": args.text_noise,
                      "sets": results}))


if __name__ == "__main__":
    main()
