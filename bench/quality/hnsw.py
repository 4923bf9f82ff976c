"""Measurement 5, hnswlib recall: `shared.index.shard_index.ShardIndex` at its defaults against
exact search, on fused vectors of real features replicated with noise."""
from __future__ import annotations

import time

import numpy as np

from bench.datasets import note
from bench.quality import SEED
from bench.quality.features import unit_rows
from shared.encoding.fusion import build_query, fuse


def hnsw_recall(image_feats: np.ndarray, text_vecs: np.ndarray, n_items: int, n_queries: int) -> dict[str, float] | None:
    """recall@10 of ShardIndex at its defaults vs exact inner-product search."""
    try:
        from shared.index.shard_index import ItemRecord, ShardIndex
    except ImportError as exc:
        note(f"shared.index.shard_index is not importable ({exc}); hnswlib recall skipped")
        return None
    rng = np.random.default_rng(SEED + 5)
    image_dim, text_dim = image_feats.shape[1], text_vecs.shape[1]

    def noisy(block: np.ndarray, idx: np.ndarray) -> np.ndarray:
        # per copy a noise level that leaves cos(copy, base) between ~0.6 and ~0.95
        sigma = rng.uniform(0.3, 1.3, size=(len(idx), 1)) / np.sqrt(block.shape[1])
        return unit_rows(block[idx] + sigma * rng.standard_normal((len(idx), block.shape[1])).astype(np.float32))

    base = rng.integers(0, len(image_feats), n_items)
    img, txt = noisy(image_feats, base), noisy(text_vecs, base)
    vectors = np.stack([fuse(i, t, image_dim, text_dim) for i, t in zip(img, txt)]).astype(np.float32)
    ids = [f"item-{i}" for i in range(n_items)]
    index = ShardIndex(image_dim + text_dim, image_dim=image_dim)
    t0 = time.perf_counter()
    for start in range(0, n_items, 1000):
        batch = ids[start:start + 1000]
        index.upsert(batch, vectors[start:start + 1000], [ItemRecord(i) for i in batch])
    build_s = time.perf_counter() - t0
    query_base = rng.integers(0, len(image_feats), n_queries)
    qimg, qtxt = noisy(image_feats, query_base), noisy(text_vecs, query_base)
    kinds = {"image+text": lambda i: build_query(qimg[i], qtxt[i], image_dim, text_dim).vector,
             "text only": lambda i: build_query(None, qtxt[i], image_dim, text_dim).vector,
             "image only": lambda i: build_query(qimg[i], None, image_dim, text_dim).vector}
    out = {"items": float(n_items), "bases": float(len(image_feats)), "build_s": build_s}
    print(f"  {n_items} fused vectors ({image_dim}+{text_dim} dims; noisy copies of {len(image_feats)} real "
          f"items) upserted in {build_s:.1f} s; {n_queries} fresh noisy copies as queries")
    print(f"  {'query':<14}{'recall@10':>10}{'near-tie':>10}{'score loss':>12}{'ms/query':>10}")
    for kind, make in kinds.items():
        recalls, tie_recalls, losses, elapsed = [], [], [], 0.0
        for i in range(n_queries):
            q = make(i)
            scores = vectors @ q
            exact = np.argpartition(-scores, 10)[:10]
            cutoff = scores[exact].min()
            t0 = time.perf_counter()
            hits = index.search(q, 10)
            elapsed += time.perf_counter() - t0
            found = np.asarray([int(h.id.split("-")[1]) for h in hits])
            recalls.append(len(set(found.tolist()) & set(exact.tolist())) / 10)
            tie_recalls.append(float((scores[found] >= cutoff - 0.005).sum()) / 10)
            losses.append(float(scores[exact].mean() - scores[found].mean()))
        out[kind] = float(np.mean(recalls))
        out[f"{kind} near-tie"] = float(np.mean(tie_recalls))
        print(f"  {kind:<14}{out[kind]:>10.3f}{out[f'{kind} near-tie']:>10.3f}{np.mean(losses):>12.5f}"
              f"{1000 * elapsed / n_queries:>10.2f}")
    print("  near-tie: a hit counts when its exact score is within 0.005 of the exact 10th; score loss: "
          "mean exact top-10 score minus mean returned score")
    return out
