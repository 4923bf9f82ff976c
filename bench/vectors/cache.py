"""Real items encoded once with a collection's models, cached under `bench/data/vectors/`.

Two sets, both uncaptioned (text block = the image's ConSE vector, as the encode workers store
an image that comes without a caption):

- Fashion-MNIST's 70,000 images (`bench.vectors.fashion`), in the package's order (training
  items, then test items), with their class labels;
- the benchmark photos: foolbox's 20 ImageNet photos and 40 CIFAR samples, scikit-image's
  photos, opencv-doc's natural photos and the Plasma wallpapers (what is present of them).

Fashion-MNIST has no captions of its own; its class name as a caption would give the whole set
ten caption vectors, a text block far more clustered than users' captions, so the cache holds
what an uncaptioned upload gets.

The folder is named by the model setting, `<image model>-<text model>-<precision>`, followed
by `-<encoder setting>` for a setting other than v1 (folders from before settings existed hold
v1's vectors); the fused vectors are float32 `.npy` files. Fashion-MNIST is encoded in order into a memory-mapped file
whose count of finished rows is kept beside it (`fashion-mnist.done`), so an interrupted or
partial run (`limit`) is resumed where it stopped, and a finished one is never encoded again.
Progress (items/s, ETA) goes to stderr.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import REPO_ROOT, cifar_photos, note, opencv_photos, wallpapers
from bench.photos import Photo, foolbox_photos, skimage_photos
from bench.vectors import fashion
from shared.encoding.encoder_settings import LEGACY_ENCODER_SETTING
from shared.encoding.imagedecode import decode_image

CACHE_ROOT = REPO_ROOT / "bench" / "data" / "vectors"
CHUNK = 512          # items written (and counted as done) at a time
REPORT_S = 10.0      # seconds between progress lines


@dataclass(frozen=True)
class RealSet:
    """Fused vectors of real items with what each one is."""

    vectors: np.ndarray  # n x (image_dim + text_dim) float32
    labels: np.ndarray   # n int: Fashion-MNIST class 0-9, or -1 for a photo
    names: list[str]     # the photos' names (rows n - len(names) ... n - 1)
    image_dim: int

    @property
    def photos(self) -> int:
        return len(self.names)


def cache_dir(image_model: str, text_model: str, precision: str, setting: str) -> Path:
    safe = text_model.replace("/", "_")
    suffix = "" if setting == LEGACY_ENCODER_SETTING else f"-{setting}"
    return CACHE_ROOT / f"{image_model}-{safe}-{precision}{suffix}"


def benchmark_photos() -> list[Photo]:
    return foolbox_photos() + skimage_photos() + cifar_photos() + opencv_photos() + wallpapers()


class Progress:
    """Items/s since the last line (the ETA assumes it holds) and overall, on stderr every
    REPORT_S seconds and at the end."""

    def __init__(self, what: str, total: int, start: int = 0) -> None:
        self.what, self.total, self.start = what, total, start
        self.t0 = self.last = time.monotonic()
        self.last_done = start

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < REPORT_S:
            return
        rate = (done - self.last_done) / max(now - self.last, 1e-9)
        overall = (done - self.start) / max(now - self.t0, 1e-9)
        self.last, self.last_done = now, done
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(f"{self.what}: {done}/{self.total} items, {rate:.1f} items/s ({overall:.1f} overall), "
              f"ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)


def _encode_batch(encoder: Any, uploads: list[bytes]) -> np.ndarray:
    items = encoder.encode_items([decode_image(data) for data in uploads], [None] * len(uploads))
    return np.stack([item.vector for item in items])


def fashion_vectors(encoder: Any, folder: Path, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `limit` (default all) Fashion-MNIST items' vectors and labels, encoding what the
    cache lacks."""
    images, labels = fashion.load()
    n = len(images) if limit is None else min(limit, len(images))
    dim = encoder.image_dim + encoder.text_dim
    path, done_file = folder / "fashion-mnist.npy", folder / "fashion-mnist.done"
    folder.mkdir(parents=True, exist_ok=True)
    done = int(done_file.read_text()) if done_file.exists() and path.exists() else 0
    if done == 0:
        vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(images), dim))
        np.save(folder / "fashion-mnist-labels.npy", labels.astype(np.int16))
    else:
        vectors = np.load(path, mmap_mode="r+")
        if vectors.shape != (len(images), dim):
            raise RuntimeError(f"{path} has shape {vectors.shape}, expected {(len(images), dim)}: delete it")
    if done < n:
        batch = encoder.image_model.model.batch
        # Enough callers that every model stream always has a full batch queued.
        threads = 2 * encoder.image_model.streams
        progress = Progress("Fashion-MNIST", n, done)
        with ThreadPoolExecutor(threads) as pool:
            while done < n:
                stop = min(done + CHUNK, n)
                uploads = [fashion.as_upload(img) for img in images[done:stop]]
                parts = pool.map(lambda i: _encode_batch(encoder, uploads[i:i + batch]), range(0, len(uploads), batch))
                vectors[done:stop] = np.concatenate(list(parts))
                vectors.flush()
                done = stop
                done_file.write_text(str(done))
                progress.update(done, final=done == n)
    return np.asarray(vectors[:n]), labels[:n]


def photo_vectors(encoder: Any, folder: Path) -> tuple[np.ndarray, list[str]]:
    """The benchmark photos' vectors and names (encoded once; again when the photos present change)."""
    photos = benchmark_photos()
    names = [p.name for p in photos]
    path, names_file = folder / "photos.npy", folder / "photos.json"
    if path.exists() and names_file.exists() and json.loads(names_file.read_text()) == names:
        return np.load(path), names
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    vectors = np.concatenate([_encode_batch(encoder, [p.read_bytes() for p in photos[i:i + 8]])
                              for i in range(0, len(photos), 8)])
    print(f"photos: {len(photos)} encoded in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    np.save(path, vectors)
    names_file.write_text(json.dumps(names))
    return vectors, names


def real_set(image_model: str, text_model: str, precision: str, setting: str, limit: int | None = None) -> RealSet:
    """Fashion-MNIST (the first `limit` items) then the photos, from the cache or encoded now."""
    from shared.encoding.encoders import collection_encoder

    encoder = collection_encoder(image_model, text_model, precision, setting)
    folder = cache_dir(image_model, text_model, precision, setting)
    fm, labels = fashion_vectors(encoder, folder, limit)
    photos, names = photo_vectors(encoder, folder)
    return RealSet(np.concatenate([fm, photos]), np.concatenate([labels, np.full(len(photos), -1)]),
                   names, encoder.image_dim)


def real_base(image_model: str, text_model: str, precision: str, setting: str, leave_out: set[str],
              held_out: int = 0) -> np.ndarray | None:
    """The real set's vectors less the photos named in `leave_out` (a benchmark's own items)
    and the last `held_out` Fashion-MNIST items (its queries, `fashion.held_out`), for
    `bench.bulk.derived_vectors`; None, with a note, when Fashion-MNIST is not extracted."""
    if not fashion.folder().is_dir():
        note(f"no Fashion-MNIST at {fashion.folder()} (run `make bench-data`)")
        return None
    real = real_set(image_model, text_model, precision, setting)
    start = len(real.vectors) - real.photos
    keep = [start + i for i, name in enumerate(real.names) if name not in leave_out]
    return np.concatenate([real.vectors[:start - held_out], real.vectors[keep]])
