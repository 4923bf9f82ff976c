"""Retrieval-quality benchmark: `python -m bench.quality [--quick]` (the quick run takes a few
minutes on 2 CPU cores).

Five measurements, each printed as a table; the last line of output is one JSON object with
the headline figures and the settings chosen.

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
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import cv2
import numpy as np

from bench.datasets import cifar_label, cifar_photos, note, opencv_photos, tags_of, wallpapers
from bench.photos import Photo, foolbox_photos, skimage_photos
from shared.encoding.conse import (HYPERNYM_LEVELS, HYPERNYM_WEIGHT, ConSE, class_vectors, imagenet_class_names,
                          imagenet_hypernyms)
from shared.errors import ModelUnavailableError
from shared.encoding.fusion import build_query, fuse
from shared.encoding.imagedecode import decode_image, resize_for_model
from shared.encoding.text_encoder import TextEncoder, create_text_model, load_glove

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel

TEXT_MODEL = "glove-6b-50d"
SIZE = 224
BATCH = 8
SEED = 20240611

# ---------------------------------------------------------------------------------------------
# images -> features


def centre_crop(rgb: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Shorter side scaled to `size`, then the central size x size square."""
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interpolation = cv2.INTER_AREA if scale < 0.5 else cv2.INTER_LINEAR
    img = cv2.resize(rgb, (nw, nh), interpolation=interpolation)
    y, x = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(img[y:y + size, x:x + size])


PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "resize": lambda rgb: resize_for_model(rgb, SIZE),  # the service's pipeline
    "centre-crop": centre_crop,
}


def unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


@dataclass
class Encoded:
    features: np.ndarray  # n x dim, unit rows
    probs: np.ndarray     # n x 1000


def encode_images(model: ImageModel, images: list[np.ndarray]) -> Encoded:
    """Features and class probabilities of 224x224 RGB images, in batches of BATCH."""
    feats, probs = [], []
    for start in range(0, len(images), BATCH):
        enc = model.encode(images[start:start + BATCH])
        feats.append(enc.features)
        probs.append(enc.probs)
    return Encoded(np.concatenate(feats), np.concatenate(probs))


def encode_variants(model: ImageModel, rgbs: list[np.ndarray]) -> tuple[dict[str, np.ndarray], Encoded]:
    """Features for each preprocessing, plain and flip-averaged ({"resize": ..., "resize+flip-avg":
    ...}), and the plain encoding of the service's pipeline (resize)."""
    out, pipeline = {}, None
    for name, prep in PREPROCESS.items():
        imgs = [prep(rgb) for rgb in rgbs]
        plain = encode_images(model, imgs)
        mirrored = encode_images(model, [np.ascontiguousarray(i[:, ::-1]) for i in imgs]).features
        out[name] = plain.features
        out[f"{name}+flip-avg"] = unit_rows(plain.features + mirrored)
        pipeline = pipeline or plain
    assert pipeline is not None
    return out, pipeline


# ---------------------------------------------------------------------------------------------
# 1. near-duplicates

OVERLAY_TEXTS = ("@holiday_pics", "SALE -50%", "(c) 2019 J. Smith", "best day ever!!", "#tbt",
                 "Photo: Reuters", "lol", "Summer 2021", "www.example.com", "DO NOT COPY")


def make_variant(rgb: np.ndarray, rng: np.random.Generator) -> bytes:
    """JPEG bytes of an edited copy: rotate, crop, maybe mirror, downscale, caption, re-encode."""
    h, w = rgb.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-8, 8)), 1.0)
    img = cv2.warpAffine(rgb, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    fx, fy = rng.uniform(0.5, 0.85, size=2)
    cw, ch = max(16, int(w * fx)), max(16, int(h * fy))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = img[y0:y0 + ch, x0:x0 + cw]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    long_side = int(rng.integers(256, 641))
    scale = min(1.0, long_side / max(img.shape[:2]))
    if scale < 1.0:
        img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(img)
    text = OVERLAY_TEXTS[int(rng.integers(len(OVERLAY_TEXTS)))]
    ih, iw = img.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, _), _ = cv2.getTextSize(text, font, 1.0, 2)
    font_scale = float(rng.uniform(0.35, 0.7)) * iw / tw  # text spans 35-70% of the width
    thickness = max(1, round(2 * font_scale))
    (tw, th), _ = cv2.getTextSize(text, font, font_scale, thickness)
    org = (int(rng.integers(0, max(1, iw - tw))), int(rng.integers(th, max(th + 1, ih))))
    cv2.putText(img, text, org, font, font_scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, font, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    quality = int(rng.integers(30, 61))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


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


# ---------------------------------------------------------------------------------------------
# 2./3. cross-modal words; captions

# ConSE grid: the issue asks for k in {1,3,5,10,20} x T in {0.5,1,2}; k=50 and T in {3,5} show
# whether the best setting lies inside that grid.
TOP_KS = (1, 3, 5, 10, 20, 50)
TEMPERATURES = (0.5, 1.0, 2.0, 3.0, 5.0)
ANIMALS = {"dog", "cat", "bird", "horse", "frog", "insect", "butterfly", "monkey", "squirrel", "fish",
           "camel", "lion", "seal", "skunk", "wolf"}
VEHICLES = {"car", "truck", "boat", "airplane", "motorcycle", "tram"}
# query word -> the photo tags that make an item relevant to it
QUERIES: dict[str, set[str]] = {
    "dog": {"dog"}, "cat": {"cat"}, "bird": {"bird"}, "horse": {"horse"}, "frog": {"frog"},
    "insect": {"insect"}, "butterfly": {"butterfly"}, "monkey": {"monkey"}, "squirrel": {"squirrel"},
    "fish": {"fish"}, "animal": ANIMALS, "car": {"car"}, "truck": {"truck"}, "boat": {"boat"},
    "ship": {"boat"}, "airplane": {"airplane"}, "motorcycle": {"motorcycle"}, "vehicle": VEHICLES,
    "fruit": {"fruit"}, "coffee": {"coffee"}, "cup": {"cup", "coffee"}, "tent": {"tent"},
    "chair": {"chair"}, "drum": {"drum"}, "shoe": {"shoe"}, "cannon": {"cannon"},
    "house": {"house"}, "tree": {"tree"}, "water": {"water"}, "painting": {"painting"},
    "person": {"person"}, "flower": {"flower"}, "mountain": {"mountain"}, "rocket": {"rocket"},
    "lion": {"lion"}, "wolf": {"wolf"}, "lamp": {"lamp"}, "sky": {"sky"},
}

# Two caption styles for the gallery photos. Literal: what the photo shows, plainly (ImageNet's
# short class name for foolbox's photos, the label for CIFAR's). Casual: what users write; some
# name the thing, some describe it in other words, some say nothing about it (file names, jokes).
LITERAL_CAPTIONS: dict[str, str] = {
    "chelsea": "tabby cat", "coffee": "cup of espresso", "astronaut": "astronaut in an orange suit",
    "rocket": "rocket on the launch pad", "motorcycle_left": "red motorcycle",
    "aero1": "aerial photo of a city", "aloeL": "aloe plant in a pot", "apple": "red apple",
    "baboon": "mandrill", "board": "circuit board", "building": "hotel building",
    "butterfly": "swallowtail butterfly", "ela_original": "black notebook",
    "fruits": "oranges, lemons and kiwis", "graf1": "graffiti", "HappyFish": "cartoon fish",
    "home": "palace with towers", "leuvenA": "old brick houses on a street",
    "licenseplate_motion": "back of a silver car", "messi5": "footballer kicking a ball",
    "orange": "orange", "rubberwhale1": "toys", "smarties": "sweets", "squirrel_cls": "squirrel on a branch",
    "starry_night": "The Starry Night by Van Gogh", "Autumn": "painting of an autumn tree",
    "BytheWater": "wooden jetty on a lake", "ColdRipple": "pier in the fog",
    "ColorfulCups": "colourful plastic cups", "DarkestHour": "misty lake at dusk",
    "EveningGlow": "rowing boats on a lake at sunset", "FallenLeaf": "fallen maple leaf",
    "Flow": "abstract coloured shapes", "Grey": "curved grey facade", "Honeywave": "abstract waves",
    "Kite": "kite in a blue sky", "OneStandsOut": "forest seen from above",
    "PastelHills": "pastel abstract hills", "Path": "path through a forest",
    "SafeLanding": "cartoon landing pod", "Shell": "abstract purple shell",
    "Volna": "waves on a sandy beach", "summer_1am": "lake at night",
}


def literal_captions() -> dict[str, str]:
    """LITERAL_CAPTIONS plus the class names of the ImageNet and CIFAR photos."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    captions = dict(LITERAL_CAPTIONS)
    for photo in foolbox_photos():
        captions[photo.name] = _IMAGENET_CATEGORIES[photo.imagenet_class]
    for photo in cifar_photos():
        captions[photo.name] = cifar_label(photo).replace("_", " ")
    return captions


CASUAL_CAPTIONS: dict[str, str] = {
    "imagenet_00": "Bruno on his morning walk", "imagenet_01": "red deck chairs set out on the terrace",
    "imagenet_02": "chemistry class experiment", "imagenet_03": "conkers falling in october",
    "imagenet_04": "fresh strawberries from the market", "imagenet_05": "our cottage in the village",
    "imagenet_06": "off-road trip", "imagenet_07": "new range rover on the rocks",
    "imagenet_08": "glamping weekend in the woods", "imagenet_09": "Bavik beer cap collection",
    "imagenet_10": "my old snare", "imagenet_11": "black leather loafers for the wedding",
    "imagenet_12": "stained glass in the mosque", "imagenet_13": "civil war artillery at the fort",
    "imagenet_14": "two of them resting on the power line", "imagenet_15": "geese on the lawn",
    "imagenet_16": "dalmatian sniffing around", "imagenet_17": "soaring over the canyon",
    "imagenet_18": "tiny bug on a leaf", "imagenet_19": "found this in the garden",
    "chelsea": "Chelsea, our tabby", "coffee": "morning espresso", "astronaut": "official NASA portrait",
    "rocket": "launch pad at night", "motorcycle_left": "my bike in the garage",
    "retina": "scan from the eye doctor",
    "cifar10_00": "sleepy kitty", "cifar10_01": "cruise leaving port", "cifar10_02": "in the harbour",
    "cifar10_03": "concorde at the museum", "cifar10_04": "toad in the grass", "cifar10_05": "IMG_2231",
    "cifar10_06": "white hatchback", "cifar10_07": "little green guy in the pond",
    "cifar10_08": "IMG_0457", "cifar10_09": "my new SUV", "cifar10_10": "fighter jet at the air show",
    "cifar10_11": "delivery lorry", "cifar10_12": "the neighbours' beagle", "cifar10_13": "white stallion",
    "cifar10_14": "big rig at the depot", "cifar10_15": "speedboat racing", "cifar10_16": "puppy!!",
    "cifar10_17": "pony at the farm", "cifar10_18": "fishing trawler", "cifar10_19": "DSC_0091",
    "cifar100_00": "volcano hike", "cifar100_01": "walk in the woods with grandpa",
    "cifar100_02": "sunbathing on the rocks", "cifar100_03": "found while foraging",
    "cifar100_04": "sunset over the ocean", "cifar100_05": "from the garden", "cifar100_06": "at the zoo",
    "cifar100_07": "IMG_3390", "cifar100_08": "sky this evening", "cifar100_09": "granny smith and gala",
    "cifar100_10": "view from the cliff path", "cifar100_11": "smelly visitor", "cifar100_12": "the old tram",
    "cifar100_13": "liftoff!", "cifar100_14": "rooster lamp from the flea market",
    "cifar100_15": "king of the savanna", "cifar100_16": "tulips in spring", "cifar100_17": "lone wolf",
    "cifar100_18": "a rose for valentine's", "cifar100_19": "juicy",
    "aero1": "view from the plane window", "aloeL": "aloe vera on the windowsill",
    "apple": "an apple a day", "baboon": "mandrill at the zoo", "board": "motherboard repair",
    "building": "hotel where we stayed", "butterfly": "swallowtail in the meadow",
    "ela_original": "my new notebook", "fruits": "citrus and kiwi for breakfast",
    "graf1": "street art downtown", "HappyFish": "clip art for the kids' party",
    "home": "palace in the sun", "leuvenA": "old town street in Leuven",
    "licenseplate_motion": "blurry plate", "messi5": "Messi scores", "orange": "IMG_8812",
    "rubberwhale1": "on the playroom floor", "smarties": "sweets",
    "squirrel_cls": "visitor in the park eating a nut", "starry_night": "Van Gogh print",
    "Autumn": "autumn", "BytheWater": "by the water", "ColdRipple": "cold ripple",
    "ColorfulCups": "colorful cups", "DarkestHour": "darkest hour", "EveningGlow": "evening glow",
    "FallenLeaf": "fallen leaf", "Flow": "flow", "Grey": "grey", "Honeywave": "honeywave",
    "Kite": "kite", "OneStandsOut": "one stands out", "PastelHills": "pastel hills", "Path": "path",
    "SafeLanding": "safe landing", "Shell": "shell", "Volna": "volna", "summer_1am": "summer 1am",
}


@dataclass
class RankScores:
    p10: float
    r_precision: float
    map: float
    per_query: dict[str, float]


def rank_scores(item_vectors: np.ndarray, relevant: dict[str, np.ndarray], query_vectors: dict[str, np.ndarray]) -> RankScores:
    """precision@10, R-precision and mAP (whole ranking) of word queries over the items."""
    p10, rprec, aps, per_query = [], [], [], {}
    for word, rel in relevant.items():
        order = np.argsort(-(item_vectors @ query_vectors[word]), kind="stable")
        hits = rel[order]
        n_rel = int(rel.sum())
        p10.append(hits[:10].mean())
        rprec.append(hits[:n_rel].mean())
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / n_rel))
        per_query[word] = aps[-1]
    return RankScores(float(np.mean(p10)), float(np.mean(rprec)), float(np.mean(aps)), per_query)


def paired_bootstrap(a: dict[str, float], b: dict[str, float], rounds: int = 2000) -> tuple[float, float, float]:
    """5th and 95th percentile of mean(a - b) over queries resampled with replacement, and the
    share of resamples where a is ahead."""
    diff = np.asarray([a[w] - b[w] for w in a])
    rng = np.random.default_rng(SEED + 2)
    means = diff[rng.integers(0, len(diff), (rounds, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 5)), float(np.percentile(means, 95)), float((means > 0).mean())


def crossmodal(items: list[Photo], probs: np.ndarray, text: TextEncoder) -> dict[str, Any]:
    relevant = {w: np.asarray([bool(set(tags_of(p)) & tags) for p in items]) for w, tags in QUERIES.items()}
    relevant = {w: r for w, r in relevant.items() if r.any()}
    query_vectors = {w: text.encode(w) for w in relevant}
    counts = {w: int(r.sum()) for w, r in relevant.items()}
    cap = float(np.mean([min(c, 10) / 10 for c in counts.values()]))
    print(f"  gallery {len(items)} images, {len(relevant)} word queries; relevant items per query: "
          + ", ".join(f"{w} {c}" for w, c in counts.items()))
    print(f"  p@10 can reach at most {cap:.3f} here (most words have fewer than 10 relevant items); "
          "R-precision and mAP are not capped")
    names, hypernyms = imagenet_class_names(), imagenet_hypernyms()
    production = class_vectors(text, names, hypernyms)

    def row(label: str, conse: ConSE) -> RankScores:
        s = rank_scores(conse.vectors(probs), relevant, query_vectors)
        print(f"  {label:<34}{s.p10:>7.3f}{s.r_precision:>8.3f}{s.map:>7.3f}")
        return s

    print(f"  class vectors as shipped: name + {HYPERNYM_LEVELS} WordNet hypernym levels, weight {HYPERNYM_WEIGHT:g}")
    print(f"  {'ConSE setting':<34}{'p@10':>7}{'R-prec':>8}{'mAP':>7}")
    grid: dict[tuple[int, float], RankScores] = {}
    for k in TOP_KS:
        for temp in TEMPERATURES:
            label = "top-1 class (plain ConSE)" if (k, temp) == (1, 1.0) else f"top-{k}, T={temp:g}"
            grid[(k, temp)] = row(label, ConSE(production, k, temp))
    best_k, best_t = max(grid, key=lambda kt: (round(grid[kt].map, 3), grid[kt].p10, -kt[0]))
    best = grid[(best_k, best_t)]
    print(f"  chosen: top_k={best_k}, temperature={best_t:g} (highest mAP; ties -> higher p@10, "
          "then smaller k)")
    for other in ((1, 1.0), (10, 1.0)):
        low, high, share = paired_bootstrap(best.per_query, grid[other].per_query)
        print(f"  chosen vs top-{other[0]}, T={other[1]:g}: mAP difference 90% interval [{low:+.3f}, {high:+.3f}] "
              f"over resampled queries, chosen ahead in {share:.0%}")
    worst_words = sorted(best.per_query.items(), key=lambda kv: kv[1])[:6]
    print("  lowest AP at the chosen setting: " + ", ".join(f"{w} {ap:.2f}" for w, ap in worst_words))

    print(f"\n  WordNet hypernyms in the class vectors, at top-{best_k}, T={best_t:g}:")
    hyper_rows: dict[str, dict[str, float]] = {}
    for levels, weight in ((0, 0.0), (1, 1.0), (2, 1.0), (3, 0.5), (3, 1.0), (5, 0.5), (5, 1.0)):
        label = "class names only" if levels == 0 else f"+ {levels} levels, weight {weight:g}"
        vectors = class_vectors(text, names, hypernyms if levels else None, levels, weight)
        s = row(label + (" (shipped)" if (levels, weight) == (HYPERNYM_LEVELS, HYPERNYM_WEIGHT) else ""),
                ConSE(vectors, best_k, best_t))
        hyper_rows[label] = {"p10": s.p10, "r_precision": s.r_precision, "map": s.map}
    no_hyper = ConSE(class_vectors(text, names, None), 1, 1.0)
    s = row("names only, top-1 class (T=1)", no_hyper)
    hyper_rows["names only, top-1 class"] = {"p10": s.p10, "r_precision": s.r_precision, "map": s.map}

    # 3. captioned gallery: caption + beta * ConSE, for both caption styles
    semantic = ConSE(production, best_k, best_t).vectors(probs)
    betas = (0.0, 0.25, 0.5, 1.0, 2.0)
    mix: dict[str, dict[float, RankScores]] = {}
    print(f"\n== 3. captioned gallery: word -> text = normalise(caption + beta * conse), conse at top-{best_k}, "
          f"T={best_t:g}")
    print(f"  {'':<14}{'literal captions':^22}{'casual captions':^22}")
    print(f"  {'beta':<14}" + f"{'p@10':>7}{'R-prec':>8}{'mAP':>7}" * 2)
    for style, captions in (("literal", literal_captions()), ("casual", CASUAL_CAPTIONS)):
        caption_vecs = [text.encode(captions[p.name]) for p in items]
        mix[style] = {}
        for beta in betas:
            vecs = np.stack([semantic[i] if c is None else c + beta * semantic[i] for i, c in enumerate(caption_vecs)])
            mix[style][beta] = rank_scores(unit_rows(vecs), relevant, query_vectors)
    alone = rank_scores(semantic, relevant, query_vectors)
    for beta in betas:
        cells = "".join(f"{m.p10:>7.3f}{m.r_precision:>8.3f}{m.map:>7.3f}" for m in (mix[st][beta] for st in mix))
        print(f"  {('caption only' if beta == 0 else f'beta={beta:g}'):<14}{cells}")
    print(f"  {'conse only':<14}" + f"{alone.p10:>7.3f}{alone.r_precision:>8.3f}{alone.map:>7.3f}" * 2)
    mean_map = {b: float(np.mean([mix[st][b].map for st in mix])) for b in betas}
    best_beta = max(betas, key=lambda b: round(mean_map[b], 3))
    print(f"  chosen: beta={best_beta:g} (highest mAP averaged over both caption styles: "
          + ", ".join(f"{b:g} {m:.3f}" for b, m in mean_map.items()) + ")")
    return {
        "grid": {f"top{k}_T{t:g}": {"p10": s.p10, "r_precision": s.r_precision, "map": s.map} for (k, t), s in grid.items()},
        "chosen_top_k": best_k, "chosen_temperature": best_t,
        "p10": best.p10, "r_precision": best.r_precision, "map": best.map,
        "plain_top1": {"p10": grid[(1, 1.0)].p10, "map": grid[(1, 1.0)].map},
        "p10_cap": cap, "hypernyms": hyper_rows,
        "mix": {st: {f"{b:g}": {"p10": m.p10, "r_precision": m.r_precision, "map": m.map} for b, m in rows.items()}
                for st, rows in mix.items()},
        "conse_only_map": alone.map, "chosen_mix": best_beta,
    }


# ---------------------------------------------------------------------------------------------
# 4. paraphrases

PARAPHRASES: tuple[tuple[str, str], ...] = (
    ("a dog running on the beach", "a puppy plays by the sea"),
    ("a cat sleeping on a sofa", "a kitten naps on the couch"),
    ("a man riding a bicycle down the street", "a guy cycling along the road"),
    ("children playing football in the park", "kids kicking a ball on the grass"),
    ("a plate of pasta with tomato sauce", "spaghetti with marinara on a dish"),
    ("snow covered mountains at sunrise", "snowy peaks in the early morning light"),
    ("a red car parked outside a house", "a crimson automobile in front of a home"),
    ("an old woman reading a book", "an elderly lady with a novel"),
    ("a boat sailing on a calm lake", "a sailboat on still water"),
    ("a bird perched on a branch", "a small songbird sitting in a tree"),
    ("a busy city street at night", "crowded downtown road after dark"),
    ("a cup of coffee on a wooden table", "a mug of espresso on a desk"),
    ("a plane taking off from the airport", "an airliner departing the runway"),
    ("a horse grazing in a field", "a pony eating grass in a meadow"),
    ("a baby laughing in the bath", "an infant giggling in the tub"),
    ("fresh vegetables at a market stall", "produce for sale at the farmers market"),
    ("a train crossing a bridge", "a locomotive going over a viaduct"),
    ("people dancing at a wedding", "guests on the dance floor at the reception"),
    ("a man playing guitar on stage", "a musician performing with his guitar at a concert"),
    ("waves crashing on rocks", "the surf breaking against the cliffs"),
    ("a chef cooking in a restaurant kitchen", "a cook preparing food in a kitchen"),
    ("students sitting in a classroom", "pupils at their desks in school"),
    ("a birthday cake with candles", "a cake lit up for someone's birthday party"),
    ("a laptop on a desk next to a lamp", "a notebook computer beside a desk light"),
    ("a fisherman on a pier", "a man fishing from the dock"),
    ("a tiger walking through the jungle", "a big cat prowling in the rainforest"),
    ("a firefighter spraying water on a burning house", "a fireman putting out a house fire"),
    ("a couple walking hand in hand", "two lovers strolling together"),
    ("a bowl of soup and bread", "hot soup served with a loaf"),
    ("an empty road through the desert", "a deserted highway across the sand"),
    ("a doctor talking to a patient", "a physician examining someone in the hospital"),
    ("a kid eating ice cream", "a child with an ice cream cone"),
    ("rain on the window", "raindrops on the glass pane"),
    ("a soldier in uniform", "a military officer dressed for duty"),
    ("a church with a tall tower", "a cathedral steeple"),
    ("a woman jogging in the morning", "a lady running at dawn"),
    ("flowers in a vase", "a bouquet on the table"),
    ("a truck on the highway", "a lorry driving along the motorway"),
    ("skiers on a snowy slope", "people skiing down the mountain"),
    ("a cow in a barn", "cattle in the stable"),
)


def paraphrase_p1(encoder: TextEncoder) -> tuple[float, float]:
    """(precision@1, MRR): each side of a pair retrieves its partner among the other side."""
    a = np.stack([encoder.encode(x) for x, _ in PARAPHRASES])
    b = np.stack([encoder.encode(y) for _, y in PARAPHRASES])
    sims = a @ b.T
    hits, rr = [], []
    for s in (sims, sims.T):
        ranks = (s > s.diagonal()[:, None]).sum(axis=1)
        hits.extend(ranks == 0)
        rr.extend(1.0 / (ranks + 1))
    return float(np.mean(hits)), float(np.mean(rr))


def paraphrases() -> dict[str, dict[str, float]]:
    glove = load_glove(TEXT_MODEL)
    out = {}
    print(f"  {'pooling':<30}{'p@1':>7}{'MRR':>7}   ({len(PARAPHRASES)} pairs, both directions)")
    for weighting, ccr in (("mean", False), ("mean", True), ("sif", False), ("sif", True)):
        label = f"{weighting}{' + common-component removal' if ccr else ''}"
        p1, mrr = paraphrase_p1(TextEncoder(glove, weighting=weighting, remove_common_component=ccr))
        out[label] = {"p1": p1, "mrr": mrr}
        print(f"  {label:<30}{p1:>7.3f}{mrr:>7.3f}")
    return out


# ---------------------------------------------------------------------------------------------
# 5. hnswlib recall


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


# ---------------------------------------------------------------------------------------------


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
    args = parser.parse_args(argv)
    started = time.perf_counter()
    variants = 4 if args.quick else 10
    n_items, n_queries = (20_000, 200) if args.quick else (20_000, 1000)
    photos = collect_photos()
    summary: dict[str, Any] = {"quick": args.quick}

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
    text = create_text_model(TEXT_MODEL)
    cross = crossmodal(items, encoded.probs, text)
    summary.update(crossmodal_p10=cross["p10"], crossmodal_map=cross["map"],
                   crossmodal_r_precision=cross["r_precision"], crossmodal_p10_cap=cross["p10_cap"],
                   conse_top_k=cross["chosen_top_k"], conse_temperature=cross["chosen_temperature"],
                   caption_conse_mix=cross["chosen_mix"], crossmodal=cross)

    print("\n== 4. paraphrase retrieval (GloVe 6B 50d)")
    para = paraphrases()
    summary.update(paraphrase_p1=para["sif + common-component removal"]["p1"], paraphrase=para)

    print("\n== 5. hnswlib recall@10 of ShardIndex at its defaults vs exact search")
    conse = ConSE(class_vectors(text, imagenet_class_names(), imagenet_hypernyms()),
                  cross["chosen_top_k"], cross["chosen_temperature"])
    bases = [encoded] + variant_encodings  # gallery photos and the near-duplicate variants
    recall = hnsw_recall(np.concatenate([b.features for b in bases]),
                         conse.vectors(np.concatenate([b.probs for b in bases])), n_items, n_queries)
    if recall is not None:
        summary.update(hnsw_recall10=recall["image+text"], hnsw=recall)

    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(f"\ntotal {summary['seconds']} s")
    sys.stdout.flush()
    print(json.dumps(rounded(summary), sort_keys=True))


if __name__ == "__main__":
    main()
