"""The batching front of an image model: concurrent callers share batches and get their own rows."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared.encoding import image_models
from shared.encoding.image_models import ImageEncoding
from shared.encoding.imagedecode import decode_image, resize_for_model
from shared.encoding.model_batcher import BatchingImageModel
from bench.photos import skimage_photos


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [resize_for_model(decode_image(p.read_bytes())) for p in skimage_photos()]


def test_concurrent_callers_share_batches_and_get_their_own_features(photos):
    model = image_models.create_image_model("efficientnet_lite0", compile=False)
    expected = model.encode(photos).features
    front = BatchingImageModel(model)
    requests = [[i] for i in range(len(photos))] + [[0, 1, 2], [3, 4]]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        results = list(pool.map(lambda rows: front.encode([photos[i] for i in rows]).features, requests))
    for rows, features in zip(requests, results):
        assert np.allclose(features, expected[rows], atol=1e-4)
    assert front.batches < len(requests)  # some requests rode in the same model batch


class GatedModel:
    """Stands in for the image model: each call waits until the test opens the gate; it fails on
    an image whose first pixel is 255."""

    name, input_size, dim, batch = "gated", 4, 2, 8

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[int] = []
        self.inside = 0  # calls waiting at the gate now
        self.lock = threading.Lock()

    def encode(self, images: list[np.ndarray]) -> ImageEncoding:
        with self.lock:
            self.inside += 1
        self.entered.set()
        assert self.gate.wait(30)
        with self.lock:
            self.inside -= 1
        self.calls.append(len(images))
        if any(img[0, 0, 0] == 255 for img in images):
            raise ValueError("bad pixel")
        rows = np.array([[float(img[0, 0, 0]), 1.0] for img in images], np.float32)
        return ImageEncoding(rows, rows)


def _img(value: int) -> np.ndarray:
    return np.full((4, 4, 3), value, np.uint8)


def _wait_queued(front: BatchingImageModel, n: int) -> None:
    deadline = time.monotonic() + 30
    while len(front._queue) < n:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_requests_queued_while_the_model_runs_go_in_one_batch_up_to_its_size():
    model = GatedModel()
    front = BatchingImageModel(model, max_batch=4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(front.encode, [_img(1)])
        assert model.entered.wait(30)  # the first call is in the model; the next three queue
        outs = [pool.submit(front.encode, [_img(v), _img(v)]) for v in (2, 3, 4)]
        _wait_queued(front, 3)
        model.gate.set()
        first.result()
        values = [o.result().features[:, 0].tolist() for o in outs]
    assert model.calls == [1, 4, 2]  # 2+2 fit in a batch of 4, the third request waits
    assert values == [[2, 2], [3, 3], [4, 4]]


def test_each_stream_runs_its_own_batch_at_the_same_time():
    model = GatedModel()
    front = BatchingImageModel(model, max_batch=2, streams=2)
    with ThreadPoolExecutor(max_workers=3) as pool:
        outs = [pool.submit(front.encode, [_img(v), _img(v)]) for v in (1, 2, 3)]
        deadline = time.monotonic() + 30
        while model.inside < 2:  # two batches in the model at once; the third request queues
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _wait_queued(front, 1)
        model.gate.set()
        values = [o.result().features[:, 0].tolist() for o in outs]
    assert values == [[1, 1], [2, 2], [3, 3]] and model.calls == [2, 2, 2]


def test_a_model_error_reaches_its_callers_and_the_front_keeps_serving():
    model = GatedModel()
    model.gate.set()
    front = BatchingImageModel(model)
    with pytest.raises(ValueError, match="bad pixel"):
        front.encode([_img(255)])
    assert front.encode([_img(7)]).features[0, 0] == 7


def test_a_caller_that_times_out_gets_timeout_error_and_its_request_is_dropped():
    model = GatedModel()
    front = BatchingImageModel(model)
    with ThreadPoolExecutor(max_workers=1) as pool:
        blocker = pool.submit(front.encode, [_img(1)])
        assert model.entered.wait(30)
        with pytest.raises(TimeoutError):
            front.encode([_img(2)], timeout=0.1)  # queued behind the first when it gives up
        model.gate.set()
        blocker.result()
    assert front.encode([_img(3)]).features[0, 0] == 3
    assert model.calls == [1, 1]  # the abandoned request never ran
