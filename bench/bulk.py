"""Bulk vectors straight into the shard logs: a benchmark/test-only path for large collections.

`bulk_insert` bypasses the API and the encoders. It takes fused vectors the caller already has
(`synthetic_vectors`, or vectors encoded in-process) and appends one upsert entry per item to its
shard's write log with `shardlog.log_item`, under an ordinary ingest job. The shard workers then
index them like any other items, and the job goes final (`GET /v1/jobs/<id>`) once every shard
has applied its entries. Nothing checks that the vectors came from the collection's models, and
no thumbnails are stored: never use it for user data.

`log_item` is queued on a Redis pipeline (a `Pipeline` is a `Redis`), a chunk of items per round
trip; its return value is then meaningless and the script's replies come from `execute()`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import redis

from shared.store import jobs, keys, shardlog
from shared.store.catalog import Collection
from shared.encoding.fusion import SQRT2, fuse
from shared.index.labels import shard_for

CHUNK = 500          # items per pipelined round trip
_ROWS = 10_000       # synthetic rows generated per step (bounds temporary memory)

# Failure replies of shardlog's script (0: already counted; otherwise the appended entry's id).
_JOB_GONE, _COLLECTION_GONE = -1, -2


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def synthetic_vectors(n: int, image_dim: int, text_dim: int, seed: int = 0, *,
                      anchors: np.ndarray | None = None, clusters: int = 1000, spread: float = 0.5,
                      mix: int = 3, out: np.ndarray | None = None) -> np.ndarray:
    """`n` fused item vectors (float32, n x (image_dim + text_dim)) drawn around `clusters`
    centres, each block unit-normalised and fused with `shared.encoding.fusion.fuse`; written into `out`
    (an array of that shape, e.g. a memory-mapped file) when given.

    With `anchors` (fused vectors of real items, e.g. photos encoded with the collection's
    models), each centre mixes `mix` random anchors (Dirichlet weights), both blocks with the
    same weights, so the items lie where real features lie and real items inserted among them
    are reachable the way they would be among real photos. Without anchors the centres are
    random: image blocks non-negative like pooled CNN features after a ReLU, text blocks sharing
    a common direction like GloVe vectors; real items are then far outliers among them.
    Image blocks stay non-negative; `spread` is the norm of the noise added to each unit centre
    block (larger: clusters overlap more). An item's text centre belongs to its image centre,
    as ConSE derives an uncaptioned image's text block from its image.
    """
    rng = np.random.default_rng(seed)
    if anchors is None:
        image_centres = np.maximum(rng.standard_normal((clusters, image_dim), np.float32), 0)
        text_centres = rng.standard_normal(text_dim, np.float32) + rng.standard_normal((clusters, text_dim), np.float32)
    else:
        anchors = np.asarray(anchors, dtype=np.float32)
        if anchors.ndim != 2 or anchors.shape[1] != image_dim + text_dim:
            raise ValueError(f"anchors must have shape (m, {image_dim + text_dim}), got {anchors.shape}")
        picks = rng.integers(0, len(anchors), (clusters, mix))
        weights = rng.dirichlet(np.full(mix, 0.5), clusters).astype(np.float32)
        mixed = np.einsum("ck,ckd->cd", weights, anchors[picks])
        image_centres, text_centres = mixed[:, :image_dim], mixed[:, image_dim:]
    image_centres, text_centres = _unit_rows(image_centres), _unit_rows(text_centres)
    if out is None:
        out = np.empty((n, image_dim + text_dim), np.float32)
    elif out.shape != (n, image_dim + text_dim):
        raise ValueError(f"out must have shape ({n}, {image_dim + text_dim}), got {out.shape}")
    for start in range(0, n, _ROWS):
        rows = min(_ROWS, n - start)
        which = rng.integers(0, clusters, rows)
        images = np.maximum(image_centres[which] + spread / np.sqrt(image_dim)
                            * rng.standard_normal((rows, image_dim), np.float32), 0)
        texts = text_centres[which] + spread / np.sqrt(text_dim) * rng.standard_normal((rows, text_dim), np.float32)
        for row in range(rows):
            out[start + row] = fuse(images[row], texts[row], image_dim, text_dim)
    return out


def neighbour_lists(vectors: np.ndarray, k: int, threads: int = -1, seed: int = 0) -> np.ndarray:
    """Each row's `k` nearest other rows by inner product (n x k row numbers), from an hnswlib
    graph (approximate, which a generator can afford: M 16, ef_construction 100, ef 2k). The
    graph is built on one thread: built on several, it differs from run to run, and so would
    the items derived from it (a run that resumes a fill must derive the same items)."""
    import hnswlib

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    if not 0 < k < n:
        raise ValueError(f"need 0 < k < {n} rows, got k={k}")
    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=n, M=16, ef_construction=100, random_seed=seed)
    index.add_items(vectors, np.arange(n), num_threads=1)
    index.set_ef(max(2 * (k + 1), 20))
    found, _ = index.knn_query(vectors, k=k + 1, num_threads=threads)
    out = np.empty((n, k), np.int64)
    for row, labels in enumerate(found.astype(np.int64)):
        others = labels[labels != row]  # itself, or one of its exact duplicates, comes first
        out[row] = others[:k]
    return out


def derived_vectors(n: int, base: np.ndarray, image_dim: int, seed: int = 0, *,
                    neighbours: np.ndarray | None = None, k: int = 10, noise: float = 0.4,
                    text_noise: float = 0.3, out: np.ndarray | None = None) -> np.ndarray:
    """`n` fused item vectors derived from `base`, fused vectors of real items (e.g.
    `bench.vectors.cache.real_set`). Each is a random point on the segment between a random
    base item `a` and one of its `k` nearest base items `b` (`neighbours`, m x k rows, computed
    with `neighbour_lists` when not given), moved by `noise` times the difference of two other
    random base items `c - d`:

        item = (1 - t) * a + t * b + noise * (c - d),   t uniform in [0, 1)

    per block (image and text at the same t, a, b, c, d; the text block with `text_noise`
    instead of `noise`), each block then unit-normalised and fused as
    `shared.encoding.fusion.fuse` does; written into `out` when given. Image blocks stay
    non-negative where the base's are (pooled CNN features after a ReLU): negative entries are
    clipped to 0.

    The items so fill in the real items' own neighbourhoods, and the noise, drawn from the real
    items' own spread rather than isotropic, keeps them from crowding onto the segments: with
    `noise` 0.4 and `text_noise` 0.3 the recall-vs-ef curve of an hnswlib graph, the 10th
    neighbour's score and the gap to the 11th come close to those of the real vectors (`python
    -m bench.vectors`, README, Benchmarks), where mixes of a few anchors plus isotropic noise
    (`synthetic_vectors`) give image blocks much easier to search than real features and text
    blocks harder.
    """
    base = np.asarray(base, dtype=np.float32)
    if base.ndim != 2 or not 0 < image_dim < base.shape[1]:
        raise ValueError(f"base must be m x (image_dim + text_dim) with image_dim={image_dim}, got {base.shape}")
    dim = base.shape[1]
    if neighbours is None:
        neighbours = neighbour_lists(base, min(k, len(base) - 1), seed=seed)
    if neighbours.shape[0] != len(base):
        raise ValueError(f"neighbours has {neighbours.shape[0]} rows for {len(base)} base items")
    image, text = _unit_rows(base[:, :image_dim]), _unit_rows(base[:, image_dim:])
    non_negative = bool((image >= 0).all())
    if out is None:
        out = np.empty((n, dim), np.float32)
    elif out.shape != (n, dim):
        raise ValueError(f"out must have shape ({n}, {dim}), got {out.shape}")
    rng = np.random.default_rng(seed)
    for start in range(0, n, _ROWS):
        rows = min(_ROWS, n - start)
        a = rng.integers(0, len(base), rows)
        b = neighbours[a, rng.integers(0, neighbours.shape[1], rows)]
        c, d = rng.integers(0, len(base), rows), rng.integers(0, len(base), rows)
        t = rng.random((rows, 1), np.float32)
        for block, (lo, hi), scale in ((image, (0, image_dim), noise), (text, (image_dim, dim), text_noise)):
            mixed = (1 - t) * block[a] + t * block[b] + scale * (block[c] - block[d])
            if non_negative and lo == 0:
                np.maximum(mixed, 0, out=mixed)
            out[start:start + rows, lo:hi] = _unit_rows(mixed) / SQRT2
    return out


def bulk_insert(r: redis.Redis, coll: Collection, vectors: np.ndarray, ids: Sequence[str],
                texts: Sequence[str | None] | None = None,
                metadata: Sequence[dict[str, Any]] | None = None, *,
                job_id: str | None = None, chunk: int = CHUNK) -> str:
    """Append an upsert of every item to its shard's log under one ingest job; the job id.

    Item `i` is the job's item `i`. Given the `job_id` of an existing job, items it already
    counted are skipped before anything is sent (so an interrupted insert can be re-run, and
    goes on where it stopped); an unknown `job_id` names the new job.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n, image_dim = len(ids), coll.dims["image"]
    dim = image_dim + coll.dims["text"]
    if vectors.shape != (n, dim):
        raise ValueError(f"vectors must have shape ({n}, {dim}) for {n} ids, got {vectors.shape}")
    for name, values in (("texts", texts), ("metadata", metadata)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} ids")
    if job_id is None or not r.exists(keys.job(job_id)):
        job_id = jobs.create_job(r, "ingest", coll.name, coll.cid, n, job_id=job_id)
        todo = list(range(n))
    else:
        counted = jobs.counted(r, job_id)
        todo = [i for i in range(n) if i not in counted]
    for start in range(0, len(todo), chunk):
        pipe = r.pipeline(transaction=False)
        for i in todo[start:start + chunk]:
            entry = shardlog.LogEntry("upsert", ids[i], vectors[i], texts[i] if texts is not None else None,
                                      metadata[i] if metadata is not None else {},
                                      has_image=bool(vectors[i, :image_dim].any()))
            shardlog.log_item(pipe, coll.cid, shard_for(ids[i], coll.shards), job_id, i, entry)
        for reply in pipe.execute():
            if reply == _JOB_GONE:
                raise RuntimeError(f"job {job_id} disappeared during the bulk insert")
            if reply == _COLLECTION_GONE:
                raise RuntimeError(f"collection {coll.name!r} was deleted during the bulk insert")
    return job_id
