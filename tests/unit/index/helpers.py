"""Items and shards the shard-index tests share: random unit vectors, clustered per-block items,
and small filled shards."""
from __future__ import annotations

import numpy as np

from shared.encoding.fusion import fuse
from shared.index import layouts
from shared.index.shard_index import ItemRecord, ShardIndex
from shared.index.vector_store import span_dtype

IMAGE_DIM, TEXT_DIM = 96, 24
DIM = IMAGE_DIM + TEXT_DIM
STORED_ABS = 2e-4  # how far a score read from the float16 vector store may be from the float32 one


def as_stored(vectors: np.ndarray, image_dim: int = IMAGE_DIM) -> np.ndarray:
    """`vectors` as the vector store of a shard of them gives them back (float16 by default): a
    block as its store span keeps it (`span_dtype`: the narrow text block, or a narrow whole
    vector, as it was). Vectors no wider than `image_dim` are a one-block shard's."""
    out = np.array(vectors, np.float32)
    width = out.shape[-1]
    for block in layouts.blocks(width, image_dim if width > image_dim else 0):
        out[..., block.start:block.stop] = block.part(out).astype(span_dtype(block.stop - block.start, "float16"))
    return out


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records_for(ids: list[str], **kwargs) -> list[ItemRecord]:
    return [ItemRecord(i, **kwargs) for i in ids]


def filled(n: int = 50, dim: int = 16, seed: int = 0, **kwargs) -> tuple[ShardIndex, list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [f"item-{j}" for j in range(n)]
    vectors = unit(rng, n, dim)
    index = ShardIndex(dim, **kwargs)
    index.upsert(ids, vectors, [ItemRecord(i, text=f"text {j}", metadata={"parity": j % 2, "tens": j // 10},
                                           has_image=j % 3 == 0, thumbnail=bytes([j % 256]) * (j % 5) or None)
                                for j, i in enumerate(ids)])
    return index, ids, vectors


def all_ids(index: ShardIndex, dim: int) -> list[str]:
    return [h.id for h in index.search(np.ones(dim, dtype=np.float32), 10**6)]


def clustered_blocks(rng: np.random.Generator, n: int, clusters: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Image blocks (non-negative, like pooled CNN features) and text blocks (sharing a common
    direction, like GloVe) around `clusters` centres; an item's text centre goes with its image one."""
    image_centres = np.maximum(rng.standard_normal((clusters, IMAGE_DIM)), 0)
    text_centres = rng.standard_normal(TEXT_DIM) + rng.standard_normal((clusters, TEXT_DIM))
    image_centres /= np.linalg.norm(image_centres, axis=1, keepdims=True)
    text_centres /= np.linalg.norm(text_centres, axis=1, keepdims=True)
    which = rng.integers(0, clusters, n)
    images = np.maximum(image_centres[which] + 0.8 / np.sqrt(IMAGE_DIM) * rng.standard_normal((n, IMAGE_DIM)), 0)
    texts = text_centres[which] + 0.8 / np.sqrt(TEXT_DIM) * rng.standard_normal((n, TEXT_DIM))
    return images.astype(np.float32), texts.astype(np.float32)


def fused_items(images: np.ndarray, texts: np.ndarray, has_image: np.ndarray, has_text: np.ndarray) -> np.ndarray:
    return np.stack([fuse(i if hi else None, t if ht else None, IMAGE_DIM, TEXT_DIM)
                     for i, t, hi, ht in zip(images, texts, has_image, has_text)]).astype(np.float32)


def items_missing_blocks(seed: int, n: int, every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """n clustered items of which every `every`-th has no image and the one after it no text:
    image blocks, text blocks, has_image, has_text and the fused vectors."""
    images, texts = clustered_blocks(np.random.default_rng(seed), n)
    has_image, has_text = np.arange(n) % every != 0, np.arange(n) % every != 1
    return images, texts, has_image, has_text, fused_items(images, texts, has_image, has_text)


WIDE_IMAGE_DIM = 600  # image blocks wide enough for the default projection (`shared.index.projection`)


def wide_items(rng: np.random.Generator, n: int, rank: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Image blocks of WIDE_IMAGE_DIM dims whose energy lies mostly in `rank` directions (as CNN
    features' does in a few hundred), and clustered TEXT_DIM text blocks; unit norm each."""
    basis = unit(rng, rank, WIDE_IMAGE_DIM)
    weights = rng.standard_normal((n, rank)) * np.linspace(1.0, 0.3, rank)
    images = weights @ basis + 0.02 * rng.standard_normal((n, WIDE_IMAGE_DIM))
    _, texts = clustered_blocks(rng, n)
    return (images / np.linalg.norm(images, axis=1, keepdims=True)).astype(np.float32), texts
