"""Real photos that pip packages ship, for tests and benchmarks (nothing is downloaded).

- foolbox: 20 ImageNet validation photos named imagenet_NN_CLASSID.jpg (the class id is the label);
- scikit-image: a handful of named photos (chelsea the cat, coffee, astronaut, rocket...).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    imagenet_class: int | None  # ImageNet-1k class id where the source gives one

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name!r} is not installed (make install installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def foolbox_photos() -> list[Photo]:
    """The 20 ImageNet photos that foolbox ships, with their class ids."""
    out = []
    for path in sorted((_package_dir("foolbox") / "data").glob("imagenet_*.jpg")):
        _, idx, cls = path.stem.split("_")
        out.append(Photo(f"imagenet_{idx}", path, int(cls)))
    return out


SKIMAGE_PHOTOS = {
    # name -> ImageNet class id of what the photo shows (None: no single fitting class)
    "chelsea.png": 282,     # tiger cat
    "coffee.png": 967,      # espresso
    "astronaut.png": None,
    "rocket.jpg": None,
    "motorcycle_left.png": None,
    "retina.jpg": None,
}


def skimage_photos() -> list[Photo]:
    """Named colour photos from scikit-image's bundled data."""
    root = _package_dir("skimage") / "data"
    return [Photo(Path(n).stem, root / n, cls) for n, cls in SKIMAGE_PHOTOS.items() if (root / n).exists()]


def all_photos() -> list[Photo]:
    return foolbox_photos() + skimage_photos()
