"""Measurement 6, captions first: does an item's own caption find it, for caption/ConSE mixes
from 0 (the plain SIF caption, the baseline) to 1.0 (encoder setting v1)?

The gallery items are built with the service's code (`shared.encoding.encoders.text_block`,
`shared.encoding.fusion.fuse`) from their features, the shipped setting's ConSE vectors and a
caption of one style of `bench.quality.captions`; queries with `fusion.build_query`. Per mix:

- caption, text only: an item's exact caption as a text query; top-1 (the item strictly
  first), over the items whose caption no other item shares (a shared caption cannot tell its
  items apart by text);
- caption + photo, fused: the caption with an edited copy of the item's photo
  (`bench.quality.edits`), default weights; top-1, over the photos that are not 32-px CIFAR
  samples (an edit leaves nothing of those to see);
- word -> image P@10 (the word queries of measurement 2) over the captioned gallery, and over a
  half-captioned one (every other item uncaptioned: whether words still find uncaptioned
  images through ConSE).

The mix chosen follows the issue's targets: among the mixes whose P@10 (mean of both galleries
and both caption styles) is not below v1's and whose text-only top-1 is not below the plain
caption's, the highest fused top-1, then text-only top-1, then P@10 (rounded to 3 decimals).
The same figures of two text blocks (`bench.quality.two_blocks`) follow the mixes in the table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.photos import Photo
from bench.quality import SEED
from bench.quality.captions import casual_captions, literal_captions
from bench.quality.crossmodal import rank_scores, word_queries
from bench.quality.edits import make_variant
from bench.quality.features import SIZE, Encoded, encode_images
from shared.encoding.conse import ConSE, imagenet_class_vectors
from shared.encoding.encoder_settings import EncoderSetting
from shared.encoding.encoders import text_block
from shared.encoding.fusion import build_query, fuse
from shared.encoding.imagedecode import decode_image, resize_for_model
from shared.encoding.text_encoder import TextEncoder

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel

MIXES = (0.0, 0.1, 0.25, 0.5, 1.0)
V1_MIX = 1.0


@dataclass
class MixScores:
    caption_top1: float
    fused_top1: float
    p10: float       # captioned gallery
    p10_half: float  # every other item uncaptioned

    def as_dict(self) -> dict[str, float]:
        return dict(vars(self))


def edited_features(model: ImageModel, photos: list[Photo]) -> np.ndarray:
    """Features of one seeded edited copy of each photo (the service's whole-image resize)."""
    rng = np.random.default_rng(SEED + 6)
    copies = [decode_image(make_variant(decode_image(p.read_bytes(), target_size=768), rng)) for p in photos]
    return encode_images(model, [resize_for_model(c, SIZE) for c in copies]).features


def top1(item_vectors: np.ndarray, queries: np.ndarray, own: np.ndarray) -> float:
    """Share of queries whose own item scores strictly above every other item."""
    return strict_top1(queries @ item_vectors.T, own)


def strict_top1(scores: np.ndarray, own: np.ndarray) -> float:
    """top1 from a queries x items score matrix."""
    scores = scores.copy()
    own_scores = scores[np.arange(len(own)), own]
    scores[np.arange(len(own)), own] = -np.inf
    return float((own_scores > scores.max(axis=1)).mean())


def own_captions(captions: list[np.ndarray | None]) -> np.ndarray:
    """Which items have a caption vector that no other item shares."""
    keys = [c.tobytes() if c is not None else None for c in captions]
    return np.asarray([k is not None and keys.count(k) == 1 for k in keys])


def scores_at(mix: float, features: np.ndarray, semantic: np.ndarray, captions: list[np.ndarray | None],
              edited: np.ndarray, fused_rows: np.ndarray, words: tuple[dict, dict]) -> MixScores:
    """The four figures of one mix for one caption style."""
    image_dim, text_dim = features.shape[1], semantic.shape[1]
    text_rows = np.flatnonzero(own_captions(captions))

    def gallery(captioned: np.ndarray) -> np.ndarray:
        return np.stack([fuse(f, text_block(c if keep else None, s, mix), image_dim, text_dim)
                         for f, s, c, keep in zip(features, semantic, captions, captioned)])

    items = gallery(np.ones(len(captions), bool))
    half = gallery(np.arange(len(captions)) % 2 == 0)
    text_queries = np.stack([build_query(None, captions[i], image_dim, text_dim).vector for i in text_rows])
    fused_queries = np.stack([build_query(e, captions[i], image_dim, text_dim).vector
                              for e, i in zip(edited, fused_rows)])
    relevant, word_vectors = words
    word_queries_fused = {w: build_query(None, v, image_dim, text_dim).vector for w, v in word_vectors.items()}
    return MixScores(top1(items, text_queries, text_rows), top1(items, fused_queries, fused_rows),
                     rank_scores(items, relevant, word_queries_fused).p10,
                     rank_scores(half, relevant, word_queries_fused).p10)


def choose(rows: dict[float, MixScores]) -> float:
    """The mix by the module's rule (v1's when no other meets the targets)."""
    r = {m: MixScores(*(round(v, 3) for v in vars(s).values())) for m, s in rows.items()}
    allowed = [m for m in r if (r[m].p10 + r[m].p10_half >= r[V1_MIX].p10 + r[V1_MIX].p10_half
                                and r[m].caption_top1 >= r[0.0].caption_top1)]
    return max(allowed, key=lambda m: (r[m].fused_top1, r[m].caption_top1, r[m].p10 + r[m].p10_half),
               default=V1_MIX)


def captions_first(model: ImageModel, items: list[Photo], gallery: Encoded, text: TextEncoder,
                   shipped: EncoderSetting) -> dict[str, Any]:
    """Measurement 6 on the gallery `items` (their encoding `gallery`): prints its table; returns
    its figures per caption style and mix or two-block scheme, their means, and the mix chosen."""
    from bench.quality.two_blocks import scheme_scores, schemes  # it builds on this module

    conse = ConSE(imagenet_class_vectors(text, shipped), shipped.conse_top_k, shipped.conse_temperature)
    semantic = conse.vectors(gallery.probs)
    fused_rows = np.asarray([i for i, p in enumerate(items) if not p.name.startswith("cifar")])
    edited = edited_features(model, [items[i] for i in fused_rows])
    words = word_queries(items, text)
    per_style: dict[str, dict[str, MixScores]] = {}
    counts = {}
    for style, table in (("literal", literal_captions()), ("casual", casual_captions())):
        captions = [text.encode(table[p.name]) for p in items]
        counts[style] = int(own_captions(captions).sum())
        per_style[style] = {f"{m:g}": scores_at(m, gallery.features, semantic, captions, edited, fused_rows, words)
                            for m in MIXES}
        per_style[style].update({f"two blocks, {name}": scheme_scores(scheme, gallery.features, semantic, captions,
                                                                      edited, fused_rows, words)
                                 for name, scheme in schemes().items()})
    labels = list(per_style["literal"])
    mean = {k: MixScores(*np.mean([list(vars(per_style[st][k]).values()) for st in per_style], axis=0).tolist())
            for k in labels}
    chosen = choose({m: mean[f"{m:g}"] for m in MIXES})

    print(f"  gallery {len(items)} captioned items; text-only queries: the items with a caption of their own "
          f"({', '.join(f'{st} {n}' for st, n in counts.items())}); fused queries: {len(fused_rows)} edited photos "
          f"+ their captions; P@10: {len(words[0])} word queries")
    print(f"  {'':<24}" + "".join(f"{st + ' captions':^30}" for st in per_style) + f"{'mean':^30}")
    print(f"  {'mix or scheme':<24}" + f"{'caption':>8}{'fused':>7}{'p@10':>7}{'half':>7} " * (len(per_style) + 1))
    for k in labels:
        label = {"0": "0 (plain SIF)", f"{V1_MIX:g}": f"{V1_MIX:g} (v1)"}.get(k, k)
        cells = [per_style[st][k] for st in per_style] + [mean[k]]
        print(f"  {label:<24}" + "".join(f"{s.caption_top1:>8.3f}{s.fused_top1:>7.3f}{s.p10:>7.3f}{s.p10_half:>7.3f} "
                                         for s in cells))
    print("  caption: text-only top-1 of an item's own caption; fused: caption + edited photo top-1; p@10: word "
          "queries over the captioned gallery; half: over the half-captioned one; two blocks: "
          "bench.quality.two_blocks")
    print(f"  chosen: mix={chosen:g} (P@10 not below v1's, caption top-1 not below the plain caption's; then the "
          "highest fused top-1, caption top-1, P@10)")
    return {"mixes": {k: {"mean": mean[k].as_dict(), **{st: per_style[st][k].as_dict() for st in per_style}}
                      for k in labels},
            "chosen_mix": chosen, "queries": counts, "fused_queries": len(fused_rows)}
