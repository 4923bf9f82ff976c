"""Retrieval-quality benchmark: `python -m bench.quality [--quick]` (the quick run takes a few
minutes on 2 CPU cores).

Six measurements, each printed as a table; the last line of output is one JSON object with
the headline figures and the settings chosen. ConSE and SIF take the values of the encoder
setting new collections get (MMSEARCH_ENCODER_SETTING) where a measurement does not vary them.

1. Near-duplicates. Every photo (foolbox, scikit-image, opencv-doc, one size per Plasma
   wallpaper) gets N seeded variants, each a +-8 degree rotation, a 50-85% crop, maybe a
   horizontal flip, a downscale, a text overlay and a JPEG re-encode at quality 30-60. A variant
   queries the originals (top-1: its source comes first) and the originals + all other variants
   (mAP@10, relevant: its source and its siblings). Preprocessing compared: the service's
   whole-image squash resize vs a centre crop, each plain and flip-averaged (the mean of the
   features of the image and its mirror, renormalised).
2. Cross-modal: a word query (text block only) against uncaptioned images (their ConSE
   vectors); precision@10, R-precision and mAP over ~40 words, for ConSE top-k x temperature,
   and for class vectors with and without their WordNet hypernyms (shared.encoding.conse).
3. Captioned images: the same queries against normalise(caption + beta * conse).
4. Paraphrases: 40 caption/paraphrase pairs, precision@1 both ways, for plain mean vs SIF
   pooling, with and without common-component removal.
5. hnswlib: recall@10 of `shared.index.shard_index.ShardIndex` at its defaults against exact search,
   on fused vectors of real features replicated with noise.
6. Captions first: an item's own caption as a text query, and with an edited copy of its photo
   as a fused query (top-1), and word queries (P@10), for caption/ConSE mixes from 0 to 1.0
   and for two text blocks (bench.quality.captions_first, bench.quality.two_blocks).
7. Image descriptors: near-duplicate top-1 over mixed edits and a combined edit (a 3-10 degree
   rotation, crop, mirror, downscale, overlay and JPEG at once), reported apart, against the
   originals and against the originals plus the other photos' copies (hard), for average vs
   GeM pooling, one vs two scales and PCA-whitening learned on the database, with the encode
   cost relative to average pooling, timed interleaved (bench.quality.descriptors).
   `--descriptors` runs this one alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from bench.datasets import cifar_photos, note, opencv_photos, wallpapers
from bench.photos import Photo, foolbox_photos, skimage_photos
from bench.quality import SEED, TEXT_MODEL
from bench.quality.captions_first import captions_first
from bench.quality.crossmodal import crossmodal
from bench.quality.descriptors import descriptors
from bench.quality.features import SIZE, Encoded, encode_images
from bench.quality.hnsw import hnsw_recall
from bench.quality.neardup import neardup
from bench.quality.paraphrase import paraphrases
from shared.encoding.conse import ConSE, imagenet_class_vectors
from shared.encoding.encoder_settings import encoder_setting
from shared.encoding.imagedecode import decode_image, resize_for_model
from shared.encoding.text_encoder import create_text_model
from shared.errors import ModelUnavailableError
from shared.runtime.config import get_settings

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel


def rounded(value: object, digits: int = 4) -> object:
    """`value` with every float in it rounded, for a readable JSON line."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def collect_photos() -> list[tuple[str, Photo]]:
    photos = [("foolbox", p) for p in foolbox_photos()] + [("skimage", p) for p in skimage_photos()]
    photos += [("opencv", p) for p in opencv_photos()] + [("wallpaper", p) for p in wallpapers("hd")]
    return photos


def image_models() -> Iterator[tuple[str, ImageModel]]:
    from shared.encoding.image_models import create_image_model

    for name in ("efficientnet_lite0", "resnet50"):
        try:
            yield name, create_image_model(name)
        except ModelUnavailableError as exc:
            note(f"image model {name} skipped: {exc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer variants and index items (a few minutes)")
    parser.add_argument("--descriptors", action="store_true", help="measurement 7 alone")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    variants = 4 if args.quick else 10
    if args.descriptors:
        from shared.encoding.image_models import create_image_model

        print("\n== 7. image descriptors, efficientnet_lite0")
        print(json.dumps(rounded(descriptors(create_image_model("efficientnet_lite0"), collect_photos(), variants))))
        return
    n_items, n_queries = (20_000, 200) if args.quick else (20_000, 1000)
    photos = collect_photos()
    setting_name = get_settings().encoder_setting
    shipped = encoder_setting(setting_name)
    summary: dict[str, Any] = {"quick": args.quick, "encoder_setting": setting_name}

    neardup_by_model: dict[str, dict[str, dict[str, float]]] = {}
    lite0: ImageModel | None = None
    variant_encodings: list[Encoded] = []
    for name, model in image_models():
        print(f"\n== 1. near-duplicates, {name} ({model.precision})")
        neardup_by_model[name], variant_encoding = neardup(model, photos, variants)
        if lite0 is None:
            lite0 = model
            variant_encodings.append(variant_encoding)
    assert lite0 is not None, "efficientnet_lite0 is needed"
    pipeline = neardup_by_model["efficientnet_lite0"]["resize"]
    summary.update(neardup_top1=pipeline["top1"], neardup_map10=pipeline["map10"],
                   neardup=neardup_by_model)

    print("\n== 2. cross-modal: word -> uncaptioned image (efficientnet_lite0 + ConSE)")
    items = [p for _, p in photos if p.name != "retina"] + cifar_photos()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        rgbs = list(pool.map(lambda p: resize_for_model(decode_image(p.read_bytes()), SIZE), items))
    rng = np.random.default_rng(SEED + 1)
    order = rng.permutation(len(items))  # ties in a ranking are broken by this order
    items, rgbs = [items[i] for i in order], [rgbs[i] for i in order]
    encoded = encode_images(lite0, rgbs)
    print(f"  encoded {len(items)} gallery images in {time.perf_counter() - t0:.0f} s")
    text = create_text_model(TEXT_MODEL, shipped.sif_a)
    cross = crossmodal(items, encoded.probs, text, shipped)
    summary.update(crossmodal_p10=cross["p10"], crossmodal_map=cross["map"],
                   crossmodal_r_precision=cross["r_precision"], crossmodal_p10_cap=cross["p10_cap"],
                   conse_top_k=cross["chosen_top_k"], conse_temperature=cross["chosen_temperature"],
                   caption_conse_mix=cross["chosen_mix"], crossmodal=cross)

    print("\n== 4. paraphrase retrieval (GloVe 6B 50d)")
    para = paraphrases()
    summary.update(paraphrase_p1=para["sif + common-component removal"]["p1"], paraphrase=para)

    print("\n== 5. hnswlib recall@10 of ShardIndex at its defaults vs exact search")
    conse = ConSE(imagenet_class_vectors(text, shipped), cross["chosen_top_k"], cross["chosen_temperature"])
    bases = [encoded] + variant_encodings  # gallery photos and the near-duplicate variants
    recall = hnsw_recall(np.concatenate([b.features for b in bases]),
                         conse.vectors(np.concatenate([b.probs for b in bases])), n_items, n_queries)
    if recall is not None:
        summary.update(hnsw_recall10=recall["image+text"], hnsw=recall)

    print(f"\n== 6. captions first: caption/ConSE mixes (efficientnet_lite0, ConSE and SIF of {setting_name})")
    first = captions_first(lite0, items, encoded, text, shipped)
    at_shipped = first["mixes"].get(f"{shipped.caption_conse_mix:g}", {}).get("mean", {})
    summary.update(captions_first_mix=first["chosen_mix"], caption_top1=at_shipped.get("caption_top1"),
                   fused_top1=at_shipped.get("fused_top1"), captions_first=first)

    print("\n== 7. image descriptors, efficientnet_lite0")
    summary.update(descriptors=descriptors(lite0, photos, variants))

    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {summary['seconds']} s")
    sys.stdout.flush()
    print(json.dumps(rounded(summary), sort_keys=True))


if __name__ == "__main__":
    main()
