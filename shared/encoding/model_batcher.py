"""Model threads per image model, batching the images of concurrent callers.

Encode tasks and image queries run in worker threads; each hands its images to the model's
`BatchingImageModel` and waits. A model thread takes whatever requests are queued, up to the
model's batch size, and runs them as one batch, so the model sees full batches whenever work
piles up (several small encode tasks, many image queries at once) and a lone request is never
held back waiting for company. There are as many model threads as the model has `streams` (one
per core on the CPU, each call single-threaded; one on CUDA), all taking from the same queue.
While they run, the callers' threads decode and resize their next images, which overlaps
decoding with the model.
"""
from __future__ import annotations

import functools
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageEncoding, ImageModel


@dataclass(eq=False)
class _Request:
    images: list[np.ndarray]
    done: threading.Event = field(default_factory=threading.Event)
    result: "ImageEncoding | None" = None
    error: BaseException | None = None
    abandoned: bool = False


class BatchingImageModel:
    """Thread-safe front of one ImageModel: `encode` calls from many threads share batches."""

    def __init__(self, model: "ImageModel", max_batch: int | None = None, streams: int | None = None) -> None:
        self.model = model
        self.max_batch = max_batch or model.batch
        self.streams = streams or getattr(model, "streams", 1)
        self._queue: deque[_Request] = deque()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.batches = 0  # model calls made, for tests and benchmarks (counted under _ready)

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @property
    def dim(self) -> int:
        return self.model.dim

    def warm_up(self, progress: Callable[[str], None] | None = None) -> None:
        self.model.warm_up(progress)

    def encode(self, images: list[np.ndarray], timeout: float | None = None) -> "ImageEncoding":
        """Features and class probabilities of `images`; TimeoutError when the model has not
        answered within `timeout` seconds (the request is then dropped, not run later)."""
        if not images:
            return self.model.encode([])
        request = _Request(list(images))
        with self._ready:
            self._start()
            self._queue.append(request)
            self._ready.notify()
        if not request.done.wait(timeout):
            with self._ready:
                request.abandoned = True
            if not request.done.is_set():
                raise TimeoutError(f"the {self.model.name} model did not answer within {timeout:g} s")
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _start(self) -> None:
        """Start the model threads that are not running (caller holds _ready)."""
        self._threads = [t for t in self._threads if t.is_alive()]
        while len(self._threads) < self.streams:
            thread = threading.Thread(target=self._run, name=f"model-{self.model.name}-{len(self._threads)}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _next_batch(self) -> list[_Request]:
        """Queued requests up to `max_batch` images (at least one request, however large)."""
        with self._ready:
            while not self._queue:
                self._ready.wait()
            batch: list[_Request] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0].images) <= self.max_batch):
                request = self._queue.popleft()
                if request.abandoned:
                    continue
                batch.append(request)
                size += len(request.images)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                continue
            images = [img for request in batch for img in request.images]
            try:
                encoded = self.model.encode(images)
            except BaseException as exc:  # every waiting caller gets the model's error
                for request in batch:
                    request.error = exc
                    request.done.set()
                continue
            with self._ready:
                self.batches += 1
            start = 0
            for request in batch:
                stop = start + len(request.images)
                request.result = type(encoded)(encoded.features[start:stop], encoded.probs[start:stop])
                request.done.set()
                start = stop


@functools.lru_cache(maxsize=None)
def batching(model: "ImageModel") -> BatchingImageModel:
    """The one batching front of `model` in this process."""
    return BatchingImageModel(model)
