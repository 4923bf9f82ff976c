"""Measurement 1, near-duplicates: seeded edited copies of every photo query the originals
(top-1) and the originals plus all other copies (mAP@10), for each preprocessing setting."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from bench.photos import Photo
from bench.quality import SEED
from bench.quality.edits import make_variant
from bench.quality.features import Encoded, encode_variants
from shared.encoding.imagedecode import decode_image

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel


def average_precision_at(ranked_relevance: np.ndarray, n_relevant: int, k: int) -> float:
    """AP@k of one ranking (relevance flags in rank order), normalised by min(R, k)."""
    top = ranked_relevance[:k].astype(np.float64)
    if n_relevant == 0:
        return 0.0
    precision = np.cumsum(top) / np.arange(1, len(top) + 1)
    return float((precision * top).sum() / min(n_relevant, k))


def neardup(model: ImageModel, photos: list[tuple[str, Photo]], variants_per_photo: int) -> tuple[dict[str, dict[str, float]], Encoded]:
    """Near-duplicate scores per preprocessing setting, and the pipeline encoding of the variants."""
    rng = np.random.default_rng(SEED)
    originals, queries, source, group_of = [], [], [], []
    for group, photo in photos:
        data = photo.read_bytes()
        originals.append(decode_image(data))
        big = decode_image(data, target_size=768)  # the camera-side copy the edits start from
        for _ in range(variants_per_photo):
            queries.append(decode_image(make_variant(big, rng)))
            source.append(len(originals) - 1)
        group_of.append(group)
    source_arr = np.asarray(source)
    n_orig, n_var = len(originals), len(queries)
    t0 = time.perf_counter()
    gallery_feats, _ = encode_variants(model, originals)
    query_feats, query_pipeline = encode_variants(model, queries)
    print(f"  encoded {n_orig} originals + {n_var} variants x 4 settings in {time.perf_counter() - t0:.0f} s")

    results: dict[str, dict[str, float]] = {}
    misses: dict[str, list[str]] = {}
    for setting in gallery_feats:
        g, q = gallery_feats[setting], query_feats[setting]
        sims = q @ g.T
        top1 = sims.argmax(axis=1) == source_arr
        # mAP@10 over originals + the other variants
        everything = np.concatenate([g, q])
        owner = np.concatenate([np.arange(n_orig), source_arr])
        full = q @ everything.T
        full[np.arange(n_var), n_orig + np.arange(n_var)] = -np.inf  # the query itself
        order = np.argsort(-full, axis=1, kind="stable")[:, :10]
        aps = [average_precision_at(owner[order[i]] == source_arr[i], variants_per_photo, 10)
               for i in range(n_var)]
        own = sims[np.arange(n_var), source_arr]
        results[setting] = {"top1": float(top1.mean()), "map10": float(np.mean(aps)),
                            "cos_to_source": float(own.mean())}
        for grp in sorted(set(group_of)):
            mask = np.asarray([group_of[s] == grp for s in source])
            results[setting][f"top1_{grp}"] = float(top1[mask].mean())
        misses[setting] = [f"{photos[source[i]][1].name}->{photos[int(sims[i].argmax())][1].name}"
                           for i in np.flatnonzero(~top1)]

    groups = sorted(set(group_of))
    header = f"  {'setting':<24}{'top-1':>7}{'mAP@10':>8}{'cos(src)':>10}" + "".join(f"{g:>11}" for g in groups)
    print(header)
    for setting, r in results.items():
        print(f"  {setting:<24}{r['top1']:>7.3f}{r['map10']:>8.3f}{r['cos_to_source']:>10.3f}"
              + "".join(f"{r[f'top1_{g}']:>11.3f}" for g in groups))
    counts = {g: group_of.count(g) for g in groups}
    print(f"  photos per group: {counts}; {variants_per_photo} variants each; top-1 columns per group")
    for setting in ("resize", "resize+flip-avg"):
        if misses[setting]:
            print(f"  misses ({setting}): {', '.join(misses[setting])}")
    return results, query_pipeline
