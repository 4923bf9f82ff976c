"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (`make bench-data` extracts it
under `bench/data/root/usr/share/datasets/fashion-mnist/`): 60,000 training and 10,000 test
images, 28x28 grayscale, labelled with one of ten clothing classes.

Each image reaches the model the way the service would see it: as a grayscale PNG upload, which
`shared.encoding.imagedecode.decode_image` turns into RGB (gray copied to three channels) and the
encoder resizes to the model input (224 x 224, INTER_LINEAR: an 8x enlargement).
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import cv2
import numpy as np

from bench.datasets import bench_data_root

FOLDER = Path("usr/share/datasets/fashion-mnist")
PARTS = ("train", "t10k")  # training set first: item i < 60000 is training item i
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle boot")
_IDX_IMAGES, _IDX_LABELS = 0x803, 0x801  # idx magic: unsigned bytes, 3 or 1 dimensions


def folder() -> Path:
    return bench_data_root() / FOLDER


def read_idx(data: bytes) -> np.ndarray:
    """The array of an idx file (unsigned-byte data, any number of dimensions)."""
    magic, = struct.unpack(">I", data[:4])
    if magic >> 8 != 0x08:
        raise ValueError(f"not an unsigned-byte idx file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"idx file holds {body.size} bytes for shape {shape}")
    return body.reshape(shape)


def load() -> tuple[np.ndarray, np.ndarray]:
    """(images n x 28 x 28 uint8, labels n int64), training then test items; FileNotFoundError
    naming `make bench-data` when the package was not extracted."""
    base = folder()
    if not base.is_dir():
        raise FileNotFoundError(f"no Fashion-MNIST at {base}: run `make bench-data`")
    images, labels = [], []
    for part in PARTS:
        images.append(read_idx(gzip.decompress((base / f"{part}-images-idx3-ubyte.gz").read_bytes())))
        labels.append(read_idx(gzip.decompress((base / f"{part}-labels-idx1-ubyte.gz").read_bytes())))
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def as_upload(image: np.ndarray) -> bytes:
    """A grayscale image as the PNG bytes a client would upload."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError("OpenCV could not encode the PNG")
    return buf.tobytes()


def held_out(count: int) -> tuple[list[bytes], np.ndarray]:
    """The last `count` items (test images) as uploads, with their labels: queries that a base
    without them (`cache.real_base(..., held_out=count)`) has never seen."""
    images, labels = load()
    return [as_upload(image) for image in images[-count:]], labels[-count:]
