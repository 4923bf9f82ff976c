"""Encoding throughput benchmark: `python -m bench.encode [--quick]`.

Images per second, for each image model that loads here, on two sets of JPEGs held in memory:
the Plasma wallpapers at their largest size (2560x1600 to 5120x2880; `make bench-data`) and
"500-px photos" (foolbox's and opencv-doc's photos scaled to 500 px on the long side and
re-encoded at JPEG quality 90, repeated to 520 items). Stages timed:

- decode: `decode_image` + `resize_for_model` only, in one thread and in a 2-thread pool;
- model: `model.encode` on pre-decoded 224x224 images, batch 8, the model's own precision
  (fp32 on the CPU), as the workers run it (`model.streams` calls at once, each on cores /
  streams torch threads: one single-threaded call per core on a CPU);
- decode, then model: each batch of 8 decoded by the 2-thread pool and then encoded, one after
  the other (what `workers/encode.py` does within a task);
- decode || model: a decode pool running ahead of one model call at a time (decode threads x
  torch threads).

Before the stages, the precision modes a collection may use (`shared.encoding.precision`) are compared on
the model alone, each eager and compiled (as the workers compile it: an AOTInductor package per batch shape on the CPU): images/s at the
model batch, the compile time of both batch shapes, and the cosine of each mode's features with
eager fp32's on the real photos (mean and worst photo). The stage table then runs the mode the
service would use on this host (`MMSEARCH_PRECISION` resolved, compiled unless MMSEARCH_COMPILE=false).

Stages run in interleaved rounds; the table gives each stage's best and median round, and
"x model", the best throughput divided by the best model-only one (1.0: decoding fully hidden
behind the model). Other processes on a shared machine slow single rounds down, so compare
figures of one run only. The last line of output is one JSON object with every figure.

Like the workers (`python -m workers`), this sets OMP_WAIT_POLICY=PASSIVE before torch is
loaded, so idle OpenMP threads sleep instead of spinning against the decode threads.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable

import cv2
import numpy as np

from bench.datasets import note, opencv_photos, wallpapers
from bench.photos import foolbox_photos, skimage_photos
from bench.modelrun import encode_all, torch_threads
from shared.errors import ModelUnavailableError
from shared.encoding.imagedecode import decode_image, resize_for_model

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch first loads (in main)

BATCH = 8
PHOTOS_500 = 520
CORES = os.cpu_count() or 1


def photos_500() -> list[bytes]:
    """foolbox + opencv-doc photos at 500 px on the long side, JPEG quality 90, repeated to 520."""
    encoded = []
    for photo in foolbox_photos() + opencv_photos():
        bgr = cv2.imdecode(np.frombuffer(photo.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        scale = 500 / max(bgr.shape[:2])
        bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        encoded.append(buf.tobytes())
    return [encoded[i % len(encoded)] for i in range(PHOTOS_500)]


def large_wallpapers(count: int) -> list[bytes]:
    """The largest JPEG of each Plasma wallpaper, repeated to `count` items."""
    files = [p.read_bytes() for p in wallpapers("largest")]
    return [files[i % len(files)] for i in range(count)] if files else []


def prepare(data: bytes, size: int) -> np.ndarray:
    return resize_for_model(decode_image(data), size)


def stages(model: "ImageModel", items: list[bytes]) -> dict[str, Callable[[], None]]:
    """The timed stages on `items` (encoded images); each runs over all of them once."""
    size, n = model.input_size, len(items)
    images = [prepare(d, size) for d in items]
    model.encode(images[:BATCH])  # warm-up

    def decode_pool(threads: int) -> Callable[[], None]:
        def run() -> None:
            if threads == 1:
                for data in items:
                    prepare(data, size)
                return
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda d: prepare(d, size), items))
        return run

    def model_only() -> None:
        encode_all(model, [images[start:start + BATCH] for start in range(0, n, BATCH)])

    def decode_then_model() -> None:
        with ThreadPoolExecutor(2) as pool:
            for start in range(0, n, BATCH):
                model.encode(list(pool.map(lambda d: prepare(d, size), items[start:start + BATCH])))

    def overlapped(decode_threads: int, threads: int) -> Callable[[], None]:
        def run() -> None:
            with torch_threads(threads), ThreadPoolExecutor(decode_threads) as pool:
                batch: list[np.ndarray] = []
                for img in pool.map(lambda d: prepare(d, size), items):
                    batch.append(img)
                    if len(batch) == BATCH:
                        model.encode(batch)
                        batch = []
                if batch:
                    model.encode(batch)
        return run

    out = {"decode 1 thread": decode_pool(1), "decode 2 threads": decode_pool(2), "model": model_only,
           "decode(2), then model": decode_then_model}
    from shared.encoding.image_models import usable_cores

    cores = usable_cores()
    for decode_threads, threads in ((1, cores), (2, cores), (1, 1)):
        out[f"decode({decode_threads}) || model({threads} threads)"] = overlapped(decode_threads, threads)
    return out


def compare_modes(model_name: str, photos: list[np.ndarray], rounds: int) -> dict[str, dict[str, float]]:
    """Model-only images/s (best of interleaved rounds), compile seconds, and cosine with eager
    fp32 features (mean, min over `photos`) of every precision, eager and compiled."""
    from shared.encoding.image_models import create_image_model
    from shared.encoding.precision import PRECISIONS

    reference = create_image_model(model_name, "fp32", compile=False).encode(photos).features
    models, out = {}, {}
    for precision in PRECISIONS:
        for compiled in (False, True):
            name = f"{precision} {'compiled' if compiled else 'eager'}"
            t0 = time.perf_counter()
            model = create_image_model(model_name, precision, compile=compiled)
            model.warm_up()
            cosine = np.sum(model.encode(photos).features * reference, axis=1)
            models[name] = model
            out[name] = {"warm_up_s": round(time.perf_counter() - t0, 1), "compiled": model.compiled,
                         "cosine_mean": round(float(cosine.mean()), 5), "cosine_min": round(float(cosine.min()), 5)}
    batch = (photos * (-(-4 * BATCH // len(photos))))[: 4 * BATCH]
    runs: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            t0 = time.perf_counter()
            encode_all(model, [batch[start:start + BATCH] for start in range(0, len(batch), BATCH)])
            runs[name].append(len(batch) / (time.perf_counter() - t0))
    for name, rates in runs.items():
        out[name]["images_per_s"] = round(max(rates), 1)
    return out


def measure(model: "ImageModel", items: list[bytes], rounds: int) -> dict[str, dict[str, float]]:
    """Best and median images/s of each stage over `rounds` interleaved rounds (other processes
    on the machine slow single runs down; the best run is the least disturbed one)."""
    timed = stages(model, items)
    runs: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, run in timed.items():
            t0 = time.perf_counter()
            run()
            runs[name].append(len(items) / (time.perf_counter() - t0))
    return {name: {"best": round(max(r), 1), "median": round(float(np.median(r)), 1)} for name, r in runs.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.encode", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer items and rounds (2-3 minutes on 2 idle cores)")
    args = parser.parse_args(argv)
    import torch

    from shared.encoding.image_models import create_image_model

    datasets = {"wallpapers": large_wallpapers(36 if args.quick else 90), "photos500": photos_500()}
    rounds = 2 if args.quick else 5
    for name in [k for k, v in datasets.items() if not v]:
        note(f"data set {name} is empty; skipped")
        del datasets[name]
    summary: dict[str, object] = {"quick": args.quick, "rounds": rounds, "cores": CORES, "torch_threads": torch.get_num_threads(),
                                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "batch": BATCH}
    results: dict[str, dict[str, dict[str, float]]] = {}
    from shared.runtime.config import get_settings
    from shared.encoding.precision import resolve_precision

    settings = get_settings()
    service_precision = resolve_precision(None, settings.precision)
    photos = [prepare(p.read_bytes(), 224) for p in foolbox_photos() + skimage_photos()]
    modes: dict[str, dict[str, dict[str, float]]] = {}
    for model_name in ("efficientnet_lite0", "resnet50"):
        try:
            model = create_image_model(model_name, service_precision)
        except ModelUnavailableError as exc:
            note(f"image model {model_name} skipped: {exc}")
            continue
        modes[model_name] = compare_modes(model_name, photos, rounds + 1)
        print(f"\n== {model_name} precision modes, model only, batch {BATCH} ({len(photos)} real photos; "
              f"cosine with eager fp32 features)")
        print(f"  {'mode':<16}{'img/s':>8}{'x fp32':>8}{'compile s':>11}{'cos mean':>10}{'cos min':>9}")
        base = modes[model_name]["fp32 eager"]["images_per_s"]
        for mode, f in modes[model_name].items():
            print(f"  {mode:<16}{f['images_per_s']:>8.1f}{f['images_per_s'] / base:>8.2f}{f['warm_up_s']:>11.1f}"
                  f"{f['cosine_mean']:>10.4f}{f['cosine_min']:>9.4f}" + ("" if f["compiled"] or "eager" in mode
                                                                        else "  (compile failed: eager)"))
        results[model_name] = {}
        for set_name, items in datasets.items():
            figures = measure(model, items, rounds)
            results[model_name][set_name] = figures
            model_best = figures["model"]["best"]
            print(f"\n== {model_name} ({model.precision}, {model.device}), {set_name}: {len(items)} images, "
                  f"torch threads {torch.get_num_threads()}, {CORES} cores, {rounds} rounds")
            print(f"  {'stage':<34}{'best':>8}{'median':>8}{'x model':>9}   (img/s; x model: best / best)")
            for stage, value in figures.items():
                print(f"  {stage:<34}{value['best']:>8.1f}{value['median']:>8.1f}{value['best'] / model_best:>9.2f}")
    summary["modes"] = modes
    summary["service_mode"] = {"precision": service_precision, "compiled": settings.compile_models}
    summary["results"] = results
    together = f"decode(2) || model({summary['torch_threads']} threads)"
    summary["ratio_together_over_model"] = {
        m: {s: round(f[together]["best"] / f["model"]["best"], 3) for s, f in sets.items()} for m, sets in results.items()}
    summary["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average (other processes share these cores): {summary['load_average']}")
    sys.stdout.flush()
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
