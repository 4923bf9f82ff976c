"""The shard with image and text blocks that the index tests search, in each layout that
keeps blocks (built once per layout: 8000 items)."""
from __future__ import annotations

import numpy as np
import pytest

from shared.encoding.fusion import build_query
from shared.index.shard_index import ItemRecord, ShardIndex
from tests.unit.index.helpers import DIM, IMAGE_DIM, TEXT_DIM, clustered_blocks, fused_items


@pytest.fixture(scope="package", params=["fused", "blocks"])
def block_shard(request: pytest.FixtureRequest) -> dict:
    """8000 clustered items, 10% without an image and 10% without a text, in a shard of the
    layout `request.param` built in batches as the owner applies them; 150 fresh items of the
    same clusters as queries of each kind (text, image, fused 1:1 and the weighted mixes image
    1 : text 0.25 and 0.25 : 1)."""
    rng = np.random.default_rng(11)
    n, fresh = 8000, 150
    images, texts = clustered_blocks(rng, n + fresh)
    missing = rng.random(n)
    has_image, has_text = missing >= 0.1, (missing < 0.1) | (missing >= 0.2)
    vectors = fused_items(images[:n], texts[:n], has_image, has_text)
    ids = [f"b{j}" for j in range(n)]
    index = ShardIndex(DIM, image_dim=IMAGE_DIM, layout=request.param)
    for start in range(0, n, 1000):
        part = slice(start, start + 1000)
        index.upsert(ids[part], vectors[part], [ItemRecord(i, metadata={"tens": j // 10 % 10}, has_image=bool(h))
                                                for j, (i, h) in enumerate(zip(ids[part], has_image[part]), start)])
    queries = {"text": [build_query(None, t, IMAGE_DIM, TEXT_DIM).vector for t in texts[n:]],
               "image": [build_query(i, None, IMAGE_DIM, TEXT_DIM).vector for i in images[n:]],
               "fused": [build_query(i, t, IMAGE_DIM, TEXT_DIM).vector for i, t in zip(images[n:], texts[n:])],
               "fused 1:0.25": [build_query(i, t, IMAGE_DIM, TEXT_DIM, {"text": 0.25}).vector
                                for i, t in zip(images[n:], texts[n:])],
               "fused 0.25:1": [build_query(i, t, IMAGE_DIM, TEXT_DIM, {"image": 0.25}).vector
                                for i, t in zip(images[n:], texts[n:])]}
    return {"index": index, "ids": ids, "vectors": vectors, "has_image": has_image, "has_text": has_text,
            "queries": {kind: np.stack(q) for kind, q in queries.items()}}
