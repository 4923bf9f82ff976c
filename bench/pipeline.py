"""The in-process ingest pipeline, the ceiling that `bench.ingest` holds the end-to-end run to.

What an encode worker and the shard workers do to an item, in this one process on the same
cores, with no HTTP, Redis or logs between them: decode + resize for the model (+ thumbnail) in
a pool of one thread per core that runs ahead of the model, the collection encoder's
`encode_items` (image model batched by its model threads as the workers run it, text model,
fuse) on chunks of `MODEL_BATCH` items, `streams` chunks in flight at once so the model's
threads always have the next batch, and an upsert of each chunk into real
`shared.index.shard_index.ShardIndex`es (one per shard, items routed as the service routes them).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Sequence

import numpy as np

from bench.service import Upload
from shared.encoding.imagedecode import decode_image, make_thumbnail
from shared.index.labels import shard_for
from shared.index.records import ItemRecord
from shared.index.shard_index import ShardIndex
from shared.runtime.config import get_settings

if TYPE_CHECKING:
    from shared.encoding.encoders import CollectionEncoder

MODEL_BATCH = 8


def _decoded(encoder: "CollectionEncoder", item: Upload) -> tuple[np.ndarray, bytes]:
    rgb = decode_image(item.image)
    return encoder.prepare_image(rgb), make_thumbnail(rgb)


def pipeline_rate(encoder: "CollectionEncoder", items: Sequence[Upload], shards: int) -> float:
    """Items/s of decode + encode + fuse + index insert over `items`, in this process."""
    indexes = [ShardIndex(encoder.image_dim + encoder.text_dim, image_dim=encoder.image_dim,
                          recall_target=get_settings().recall_target) for _ in range(shards)]
    chunks = [list(items[start:start + MODEL_BATCH]) for start in range(0, len(items), MODEL_BATCH)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="decode") as decoders:
        decoded = [[decoders.submit(_decoded, encoder, item) for item in chunk] for chunk in chunks]

        def insert(n: int) -> None:
            images = [f.result() for f in decoded[n]]
            vectors = encoder.encode_items([model_input for model_input, _ in images],
                                           [item.text for item in chunks[n]])
            for shard, index in enumerate(indexes):
                rows = [row for row, item in enumerate(chunks[n]) if shard_for(item.id, shards) == shard]
                if rows:
                    index.upsert([chunks[n][row].id for row in rows],
                                 np.stack([vectors[row].vector for row in rows]),
                                 [ItemRecord(chunks[n][row].id, chunks[n][row].text, {}, True, images[row][1])
                                  for row in rows])

        with ThreadPoolExecutor(encoder.image_model.streams, thread_name_prefix="pipeline") as runners:
            futures: list[Future[None]] = [runners.submit(insert, n) for n in range(len(chunks))]
            for future in futures:
                future.result()
    return len(items) / (time.perf_counter() - t0)

