"""Benchmark-only photos: what `make bench-data` extracts from Debian packages, plus foolbox's
CIFAR-10 samples and a hand-written account of what each benchmark photo shows.

`make bench-data` runs `apt-get download opencv-doc plasma-workspace-wallpapers` and extracts
both with `dpkg-deb -x` into `bench/data/root` (override with the environment variable
`MMSEARCH_BENCH_DATA`). Nothing here is needed by the tests; a missing file or package is skipped
with one printed note, so the benchmarks still run on what is there.

- `opencv_photos()`: the natural photos among opencv-doc's examples/data (no calibration
  boards, stereo pairs' second views, logos, text or synthetic renders);
- `wallpapers()`: one JPEG per Plasma wallpaper (the PNG-only ones are abstract renders);
- `cifar_photos()`: foolbox's 20 CIFAR-10 and 20 CIFAR-100 test images (32x32), labelled;
- `PHOTO_TAGS`: what each benchmark photo shows, in the words of `bench.quality.crossmodal`'s
  relevance map (written by looking at every photo).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from bench.photos import Photo, _package_dir

REPO_ROOT = Path(__file__).resolve().parent.parent
OPENCV_DATA = Path("usr/share/doc/opencv-doc/examples/data")
WALLPAPERS = Path("usr/share/wallpapers")

# opencv-doc photos of real scenes (HappyFish is a drawing, starry_night a painting: kept, as
# users upload those too). Left out: aloeR/left*/right*/leuvenB/rubberwhale2/graf3/basketball2
# (second views of a kept scene), calibration boards, logos, text, renders, shape drawings.
OPENCV_NATURAL = (
    "aero1.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg",
    "butterfly.jpg", "ela_original.jpg", "fruits.jpg", "graf1.png", "HappyFish.jpg", "home.jpg",
    "leuvenA.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg", "rubberwhale1.png",
    "smarties.png", "squirrel_cls.jpg", "starry_night.jpg",
)

CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR100_LABELS = (  # fine labels, in label-id order
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trolley", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# What each photo shows, as tags (one word each; bench.quality.crossmodal maps queries onto them).
# Keys are Photo.name values.
PHOTO_TAGS: dict[str, tuple[str, ...]] = {
    # foolbox ImageNet photos (class id in the comment)
    "imagenet_00": ("dog",),                 # 243 bull mastiff, on a lead in a park
    "imagenet_01": ("chair",),               # 559 folding chair, red deck chairs in a circle
    "imagenet_02": ("glass",),               # 438 beaker, liquid poured into lab glassware
    "imagenet_03": ("plant",),               # 990 buckeye, horse chestnuts in their husks
    "imagenet_04": ("fruit",),               # 949 strawberry, strawberries on a table
    "imagenet_05": ("house",),               # 853 thatch, thatched cottage by a green
    "imagenet_06": ("car",),                 # 609 jeep, SUV on gravel
    "imagenet_07": ("car",),                 # 609 jeep, blue Range Rover on rocks
    "imagenet_08": ("tent",),                # 915 yurt, yurts among pine trees
    "imagenet_09": ("bottle",),              # 455 bottlecap, a red beer cap
    "imagenet_10": ("drum",),                # 541 drum, a red snare drum
    "imagenet_11": ("shoe",),                # 630 Loafer, a black leather shoe
    "imagenet_12": ("window",),              # 741 prayer rug, stained-glass windows
    "imagenet_13": ("cannon",),              # 471 cannon, an old field gun
    "imagenet_14": ("bird",),                # 129 spoonbill, birds on a wire
    "imagenet_15": ("bird",),                # 99 goose, geese on grass
    "imagenet_16": ("dog",),                 # 251 dalmatian
    "imagenet_17": ("bird",),                # 22 bald eagle in flight
    "imagenet_18": ("insect",),              # 317 leafhopper on a leaf
    "imagenet_19": ("insect",),              # 305 dung beetle
    # scikit-image
    "chelsea": ("cat",),
    "coffee": ("coffee", "cup"),
    "astronaut": ("person",),
    "rocket": ("rocket",),
    "motorcycle_left": ("motorcycle",),
    "retina": (),
    # opencv-doc
    "aero1": ("city",),
    "aloeL": ("plant",),
    "apple": ("fruit",),
    "baboon": ("monkey",),
    "board": ("electronics",),
    "building": ("house",),
    "butterfly": ("insect", "butterfly"),
    "ela_original": ("book",),
    "fruits": ("fruit",),
    "graf1": ("painting",),
    "HappyFish": ("fish",),
    "home": ("house",),
    "leuvenA": ("house",),
    "licenseplate_motion": ("car",),
    "messi5": ("person", "football"),
    "orange": ("fruit",),
    "rubberwhale1": ("toy",),
    "smarties": ("candy",),
    "squirrel_cls": ("squirrel",),
    "starry_night": ("painting",),
    # Plasma wallpapers with a JPEG
    "Autumn": ("painting", "tree"),
    "BytheWater": ("water",),
    "ColdRipple": ("water",),
    "ColorfulCups": ("cup",),
    "DarkestHour": ("water",),
    "EveningGlow": ("boat", "water"),
    "FallenLeaf": ("plant",),
    "Flow": (),
    "Grey": (),
    "Honeywave": (),
    "Kite": ("kite", "sky"),
    "OneStandsOut": ("tree",),
    "PastelHills": (),
    "Path": ("tree",),
    "SafeLanding": ("painting",),
    "Shell": (),
    "Volna": ("water",),
    "summer_1am": ("water",),
}
# CIFAR label -> tags, for the labels of foolbox's samples (checked by looking at each).
CIFAR_TAGS = {"airplane": ("airplane",), "automobile": ("car",), "cat": ("cat",), "dog": ("dog",),
              "frog": ("frog",), "horse": ("horse",), "ship": ("boat",), "truck": ("truck",),
              "apple": ("fruit",), "butterfly": ("insect", "butterfly"), "camel": ("camel",),
              "cloud": ("sky",), "forest": ("tree",), "lamp": ("lamp",), "lion": ("lion",),
              "mountain": ("mountain",), "mushroom": ("mushroom",), "orange": ("fruit",),
              "rocket": ("rocket",), "rose": ("flower",), "sea": ("water",), "seal": ("seal",),
              "skunk": ("skunk",), "streetcar": ("tram",), "tulip": ("flower",), "wolf": ("wolf",)}

_noted: set[str] = set()


def note(message: str) -> None:
    """Print a note about skipped data once per message (to stderr, so tables stay clean)."""
    if message not in _noted:
        _noted.add(message)
        print(f"note: {message}", file=sys.stderr)


def bench_data_root() -> Path:
    """Where `make bench-data` extracted the Debian packages."""
    configured = os.environ.get("MMSEARCH_BENCH_DATA")
    return Path(configured) if configured else REPO_ROOT / "bench" / "data" / "root"


def opencv_photos() -> list[Photo]:
    """opencv-doc's natural photos that are present (none without `make bench-data`)."""
    folder = bench_data_root() / OPENCV_DATA
    if not folder.is_dir():
        note(f"no opencv-doc photos at {folder} (run `make bench-data`); skipped")
        return []
    out = []
    for name in OPENCV_NATURAL:
        path = folder / name
        if path.is_file():
            out.append(Photo(Path(name).stem, path, None))
        else:
            note(f"opencv-doc photo {path} is missing; skipped")
    return out


_SIZE = re.compile(r"(\d+)x(\d+)\.jpg")


def wallpapers(size: str = "largest") -> list[Photo]:
    """One JPEG per Plasma wallpaper: its `largest` size, or the `smallest` one at least
    1920 px wide (`hd`, else its largest). Wallpapers offered only as PNG are skipped."""
    folder = bench_data_root() / WALLPAPERS
    if not folder.is_dir():
        note(f"no Plasma wallpapers at {folder} (run `make bench-data`); skipped")
        return []
    out = []
    for theme in sorted(p for p in folder.iterdir() if p.is_dir()):
        sizes = []
        for path in (theme / "contents" / "images").glob("*.jpg"):
            match = _SIZE.fullmatch(path.name)
            if match:
                sizes.append((int(match[1]) * int(match[2]), int(match[1]), path))
        if not sizes:
            continue
        sizes.sort()
        if size == "largest":
            chosen = sizes[-1][2]
        elif size == "hd":
            chosen = next((p for _, w, p in sizes if w >= 1920), sizes[-1][2])
        else:
            raise ValueError(f"size must be 'largest' or 'hd', got {size!r}")
        out.append(Photo(theme.name, chosen, None))
    if not out:
        note(f"no wallpaper JPEGs under {folder}; skipped")
    return out


def cifar_photos() -> list[Photo]:
    """foolbox's 20 CIFAR-10 and 20 CIFAR-100 samples (32x32 PNG, cifar10[0]_NN_LABEL.png)."""
    folder = _package_dir("foolbox") / "data"
    return [Photo(p.stem.rsplit("_", 1)[0], p, None)
            for pattern in ("cifar10_*.png", "cifar100_*.png") for p in sorted(folder.glob(pattern))]


def cifar_label(photo: Photo) -> str:
    """The label name of one of `cifar_photos()`."""
    labels = CIFAR100_LABELS if photo.name.startswith("cifar100_") else CIFAR10_LABELS
    return labels[int(photo.path.stem.rsplit("_", 1)[1])]


def tags_of(photo: Photo) -> tuple[str, ...]:
    """What a benchmark photo shows (empty when nothing we query for)."""
    if photo.name.startswith("cifar"):
        return CIFAR_TAGS[cifar_label(photo)]
    return PHOTO_TAGS.get(photo.name, ())
