"""An image model run as the service runs it, for the benchmarks: `model.streams` calls at once,
each on cores / streams torch threads (what the workers do,
`shared.encoding.image_models.model_streams`), or another number of calls, with torch's threads
set for a block."""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:
    from shared.encoding.image_models import ImageModel


def encode_all(model: "ImageModel", batches: list[list[np.ndarray]], streams: int | None = None) -> None:
    """`model.encode` over the batches, `streams` calls at a time (default: the model's)."""
    streams = streams or model.streams
    if streams == 1:
        for batch in batches:
            model.encode(batch)
        return
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(model.encode, batches))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to `threads` inside the block (process-wide)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

