"""Measurement 7, image descriptors for instance retrieval: the near-duplicate top-1 (all edits
and the combined edit apart) of pooling options of efficientnet_lite0's last feature map
(average as today, GeM, 1x + 1/sqrt(2) multi-scale, PCA-whitening learned on the database
side), each with its encode cost relative to average pooling, timed interleaved in the same run
(bench.quality.descriptor_cost).

Top-1 is asked twice: against the originals alone (the gallery of measurement 1), and against
the originals plus every other photo's edited copies as distractors (`hard`: copies that share
the query's overlay texts and JPEG artefacts but not its content; the query's own siblings are
left out, as they are neither right nor wrong). Whitening is learned from the database alone:
the originals, and for `hard` the originals and those distractors, once per source photo.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from bench.photos import Photo
from bench.quality import SEED
from bench.quality.descriptor_cost import interleaved_cost
from bench.quality.edits import make_variant
from bench.quality.features import BATCH, SIZE, unit_rows
from shared.encoding.imagedecode import decode_image, resize_for_model

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel

GEM_P = 3.0
SMALL = round(SIZE / 2 ** 0.5)  # the second scale of the multi-scale descriptor


def avg_pool(fmap: torch.Tensor) -> torch.Tensor:
    """Mean over the spatial axes of an n x c x h x w feature map (today's pooling)."""
    return fmap.float().mean(dim=(2, 3))


def gem_pool(fmap: torch.Tensor, p: float = GEM_P) -> torch.Tensor:
    """Generalised mean over the spatial axes: (mean of x^p)^(1/p), x clamped above 0."""
    return fmap.float().clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"avg": avg_pool, f"gem{GEM_P:g}": gem_pool}


def feature_maps(model: ImageModel, images: list[np.ndarray]) -> list[torch.Tensor]:
    """The trunk's last feature map of each batch of square RGB images (any side)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), BATCH):
            x = torch.from_numpy(np.stack(images[start:start + BATCH])).permute(0, 3, 1, 2).float()
            x = ((x - model._mean) / model._std).contiguous(memory_format=torch.channels_last)
            out.append(model.trunk.forward_features(x))
    return out


def pooled(model: ImageModel, rgbs: list[np.ndarray], pool: str, scales: tuple[int, ...]) -> np.ndarray:
    """Unit descriptors of `rgbs`: the sum of the unit descriptors at each input side in
    `scales`, renormalised."""
    total = np.zeros((len(rgbs), 0), np.float32)
    for side in scales:
        maps = feature_maps(model, [resize_for_model(rgb, side) for rgb in rgbs])
        one = unit_rows(torch.cat([POOLS[pool](m) for m in maps]).numpy())
        total = one if total.shape[1] == 0 else total + one
    return unit_rows(total)


def pca_whitening(database: np.ndarray, shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection) of PCA-whitening learned from unit database rows: every component of
    the centred rows scaled by 1 / sqrt(its variance + shrink * the mean variance)."""
    mean = database.mean(axis=0)
    _, s, vt = np.linalg.svd(database - mean, full_matrices=False)
    var = s ** 2 / max(1, len(database) - 1)
    return mean, (vt.T / np.sqrt(var + shrink * var.mean())).astype(np.float32)


def whiten(x: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Unit rows of `x` centred and projected by a learned whitening."""
    return unit_rows((x - mean) @ projection)


def top1(queries: np.ndarray, gallery: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Whether each query's nearest gallery row (cosine) is its source."""
    return (queries @ gallery.T).argmax(axis=1) == source


def top1_among_distractors(queries: np.ndarray, gallery: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Whether each query's source scores strictly above every other original and every query
    row of another source (the distractors; rows of its own source are left out)."""
    scores = queries @ gallery.T
    own = scores[np.arange(len(source)), source]
    scores[np.arange(len(source)), source] = -np.inf
    others = queries @ queries.T
    others[source[:, None] == source[None, :]] = -np.inf
    return own > np.maximum(scores.max(axis=1), others.max(axis=1))


OPTIONS = {"avg (today)": ("avg", (SIZE,)), f"gem p={GEM_P:g}": (f"gem{GEM_P:g}", (SIZE,)),
           "avg 1x+1/sqrt2": ("avg", (SIZE, SMALL)), f"gem p={GEM_P:g} 1x+1/sqrt2": (f"gem{GEM_P:g}", (SIZE, SMALL))}
TIMED_IMAGES, TIMING_ROUNDS = 32, 5


def descriptors(model: ImageModel, photos: list[tuple[str, Photo]], variants_per_photo: int) -> dict[str, dict[str, float]]:
    """Top-1 over all variants and over the combined edit, against the originals and among
    distractors, and the encode cost relative to today's, per descriptor."""
    rng = np.random.default_rng(SEED + 7)
    originals, queries, source, combined = [], [], [], []
    for _, photo in photos:
        data = photo.read_bytes()
        originals.append(decode_image(data))
        big = decode_image(data, target_size=768)
        for v in range(variants_per_photo + 1):  # the last one is the combined edit
            queries.append(decode_image(make_variant(big, rng, combined=v == variants_per_photo)))
            source.append(len(originals) - 1)
            combined.append(v == variants_per_photo)
    source_arr, combined_arr = np.asarray(source), np.asarray(combined)
    feature_maps(model, [resize_for_model(originals[0], SIZE)])  # warm-up, outside every timing
    cost = interleaved_cost({name: (lambda imgs, o=o: pooled(model, imgs, *o)) for name, o in OPTIONS.items()},
                            queries[:TIMED_IMAGES], TIMING_ROUNDS, "avg (today)")
    results: dict[str, dict[str, float]] = {}
    for name, (pool, scales) in OPTIONS.items():
        gallery, query = pooled(model, originals, pool, scales), pooled(model, queries, pool, scales)
        for label, (g, q) in {name: (gallery, query), f"{name} + whitening": _whitened(gallery, query)}.items():
            hit = top1(q, g, source_arr)
            hard = (top1_among_distractors(q, g, source_arr) if label == name
                    else _hard_whitened(gallery, query, source_arr))
            results[label] = {"top1": float(hit.mean()), "top1_combined": float(hit[combined_arr].mean()),
                              "top1_other": float(hit[~combined_arr].mean()), "hard_top1": float(hard.mean()),
                              "hard_top1_combined": float(hard[combined_arr].mean()), **cost[name]}
    print(f"  {len(originals)} photos, {variants_per_photo} mixed edits + 1 combined edit each; hard: among the "
          f"originals and the other photos' {len(queries) - variants_per_photo - 1} copies; whitening learned from "
          f"the database only (the originals; for hard those copies too, per source photo); cost: interleaved, "
          f"{TIMING_ROUNDS} rounds of {TIMED_IMAGES} copies, median ratio (whitening adds one matrix product)")
    print(f"  {'descriptor':<34}{'top-1':>7}{'mixed':>7}{'combined':>10}{'hard':>7}{'hard comb':>11}"
          f"{'ms/img':>8}{'x today':>9}")
    for label, r in results.items():
        print(f"  {label:<34}{r['top1']:>7.3f}{r['top1_other']:>7.3f}{r['top1_combined']:>10.3f}"
              f"{r['hard_top1']:>7.3f}{r['hard_top1_combined']:>11.3f}{r['ms_per_image']:>8.1f}{r['x_baseline']:>9.2f}")
    return results


def _hard_whitened(gallery: np.ndarray, query: np.ndarray, source: np.ndarray) -> np.ndarray:
    """`top1_among_distractors` with whitening learned, for each source photo, from its database:
    the originals and the copies of every other photo (never from the query or its siblings)."""
    hit = np.zeros(len(source), bool)
    for s in np.unique(source):
        mine = source == s
        mean, projection = pca_whitening(np.concatenate([gallery, query[~mine]]))
        g, q = whiten(gallery, mean, projection), whiten(query, mean, projection)
        hit[mine] = top1_among_distractors(q, g, source)[mine]
    return hit


def _whitened(gallery: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gallery and queries whitened by PCA learned from the gallery alone."""
    mean, projection = pca_whitening(gallery)
    return whiten(gallery, mean, projection), whiten(query, mean, projection)
