"""bench.quality.captions reads its hand-written table whole: one row of three columns per
photo, a casual caption for each gallery photo and a literal one where no class name gives it."""
from __future__ import annotations

from bench.datasets import cifar_photos
from bench.photos import foolbox_photos, skimage_photos
from bench.quality import captions


def test_every_row_has_three_columns() -> None:
    lines = captions.CAPTIONS_FILE.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["photo", "literal", "casual"]
    assert all(len(line.split("\t")) == 3 for line in lines[1:])


def test_every_gallery_photo_has_both_captions() -> None:
    casual, literal = captions.casual_captions(), captions.literal_captions()
    names = [p.name for p in foolbox_photos() + skimage_photos() + cifar_photos()]
    assert all(casual[name] for name in names)
    assert all(literal[name] for name in names if name != "retina")
    assert all(name in casual for name in literal)
