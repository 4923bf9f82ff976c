"""Captions of the gallery photos, in two styles, for the captioned-gallery measurement.

Literal: what the photo shows, plainly (ImageNet's short class name for foolbox's photos, the
label for CIFAR's). Casual: what users write; some name the thing, some describe it in other
words, some say nothing about it (file names, jokes). Both are hand-written in captions.tsv, one
row per photo (`photo`, `literal`, `casual`); the literal column is empty where the class name
is the caption.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from bench.datasets import cifar_label, cifar_photos
from bench.photos import foolbox_photos

CAPTIONS_FILE = Path(__file__).resolve().parent / "captions.tsv"


@lru_cache(maxsize=None)
def _rows() -> tuple[dict[str, str], ...]:
    with CAPTIONS_FILE.open(newline="", encoding="utf-8") as f:
        return tuple(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def casual_captions() -> dict[str, str]:
    """Photo name -> casual caption."""
    return {row["photo"]: row["casual"] for row in _rows()}


def literal_captions() -> dict[str, str]:
    """Photo name -> literal caption: the written ones plus the class names of the ImageNet and
    CIFAR photos."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    captions = {row["photo"]: row["literal"] for row in _rows() if row["literal"]}
    for photo in foolbox_photos():
        captions[photo.name] = _IMAGENET_CATEGORIES[photo.imagenet_class]
    for photo in cifar_photos():
        captions[photo.name] = cifar_label(photo).replace("_", " ")
    return captions
