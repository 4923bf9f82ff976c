"""bench.vectors and bench.bulk's derived generator: the pure logic, on tiny arrays."""
from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest

from bench.bulk import derived_vectors, neighbour_lists
from bench.vectors import measure
from bench.vectors.fashion import as_upload, read_idx
from shared.encoding.imagedecode import decode_image

IMAGE_DIM, TEXT_DIM = 24, 6


def fused_rows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.maximum(rng.standard_normal((n, IMAGE_DIM)), 0) + 0.01
    text = rng.standard_normal((n, TEXT_DIM))
    return np.concatenate([measure.unit_rows(image), measure.unit_rows(text)], axis=1) / math.sqrt(2)


def test_read_idx_reads_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = struct.pack(">I3I", 0x803, 2, 3, 4) + images.tobytes()
    np.testing.assert_array_equal(read_idx(gzip.decompress(gzip.compress(data))), images)
    np.testing.assert_array_equal(read_idx(struct.pack(">II", 0x801, 3) + bytes([7, 1, 9])), [7, 1, 9])
    with pytest.raises(ValueError, match="bytes for shape"):
        read_idx(struct.pack(">II", 0x801, 4) + bytes([7, 1, 9]))
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(struct.pack(">II", 0xD01, 1) + bytes(4))


def test_a_grayscale_upload_decodes_to_the_same_gray_in_three_channels():
    gray = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    rgb = decode_image(as_upload(gray))
    assert rgb.shape == (28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[..., channel], gray)


def test_blocks_are_unit_rows_and_fused_is_the_vector_itself():
    vectors = fused_rows(5)
    for name in ("image", "text"):
        np.testing.assert_allclose(np.linalg.norm(measure.block(vectors, IMAGE_DIM, name), axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(measure.block(vectors, IMAGE_DIM, "fused"), vectors.astype(np.float32))
    with pytest.raises(ValueError):
        measure.block(vectors, IMAGE_DIM, "audio")


def test_split_holds_out_distinct_queries_and_is_seeded():
    base, queries = measure.split(50, 7, seed=3)
    assert len(queries) == 7 and len(base) == 43
    assert sorted(np.concatenate([base, queries]).tolist()) == list(range(50))
    np.testing.assert_array_equal(queries, measure.split(50, 7, seed=3)[1])
    with pytest.raises(ValueError):
        measure.split(5, 5, seed=0)


def test_exact_top_is_sorted_and_matches_a_full_sort():
    rng = np.random.default_rng(2)
    base, queries = rng.standard_normal((40, 8)).astype(np.float32), rng.standard_normal((9, 8)).astype(np.float32)
    rows, scores = measure.exact_top(base, queries, 4, chunk=2)
    full = queries @ base.T
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1)[:, :4])
    np.testing.assert_allclose(scores, -np.sort(-full, axis=1)[:, :4], rtol=1e-6)


def test_gaps_and_spread():
    scores = np.array([[0.9, 0.8, 0.5], [0.7, 0.6, 0.6]], np.float32)
    np.testing.assert_allclose(measure.gaps(scores, k=2), [0.3, 0.0], atol=1e-6)
    with pytest.raises(ValueError):
        measure.gaps(scores, k=3)
    s = measure.spread(np.arange(101))
    assert (s.p10, s.median, s.p90) == (10, 50, 90)


def test_recall_counts_ties_with_the_kth_score_and_missing_answers():
    base = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0.6, 0.8]], np.float32)
    queries = np.array([[1.0, 0]], np.float32)
    kth = np.array([1.0], np.float32)  # exact top-2: rows 0 and 1 (a duplicate pair)
    assert measure.recall(base, queries, np.array([[1, 0]]), kth) == 1.0
    assert measure.recall(base, queries, np.array([[0, 3]]), kth) == 0.5
    assert measure.recall(base, queries, np.array([[0, -1]]), kth) == 0.5


def test_recall_curve_of_a_small_graph_reaches_exact_search():
    rng = np.random.default_rng(4)
    data = measure.unit_rows(rng.standard_normal((300, 16)))
    base, queries = data[:280], data[280:]
    _, exact = measure.exact_top(base, queries, 5)
    index = measure.build_graph(base, M=16, ef_construction=100, threads=1)
    curve = measure.recall_curve(index, base, queries, exact[:, 3], [4, 200], k=4, threads=1)
    assert curve[200] == 1.0 and 0 < curve[4] <= 1.0
    assert measure.ef_for(curve, 0.99) == (4 if curve[4] >= 0.99 else 200)
    assert measure.ef_for({10: 0.5}, 0.99) is None


def test_neighbour_lists_leave_out_the_row_itself():
    vectors = fused_rows(60)
    nb = neighbour_lists(vectors, 3, threads=1)
    assert nb.shape == (60, 3)
    assert not (nb == np.arange(60)[:, None]).any()
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_array_equal(nb[:, 0], sims.argmax(axis=1))


def test_neighbour_lists_are_the_same_on_every_run_whatever_the_threads():
    # A resumed fill derives its items again: they must be the ones the first run logged.
    vectors = fused_rows(3000)
    first = neighbour_lists(vectors, 10)
    for _ in range(3):
        np.testing.assert_array_equal(neighbour_lists(vectors, 10), first)


def test_derived_vectors_are_fused_unit_blocks_between_real_neighbours():
    base = fused_rows(40)
    nb = neighbour_lists(base, 3, threads=1)
    out = derived_vectors(200, base, IMAGE_DIM, seed=5, neighbours=nb, noise=0.0)
    assert out.shape == (200, IMAGE_DIM + TEXT_DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out[:, :IMAGE_DIM], axis=1), 1 / math.sqrt(2), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out[:, IMAGE_DIM:], axis=1), 1 / math.sqrt(2), rtol=1e-5)
    assert (out[:, :IMAGE_DIM] >= 0).all()
    np.testing.assert_array_equal(out, derived_vectors(200, base, IMAGE_DIM, seed=5, neighbours=nb, noise=0.0))
    # Without noise each item lies on a segment between two base items: within the span of its
    # two nearest base items, and at least as close to the nearer one as the two are to each other.
    best = np.sort(out @ base.T, axis=1)[:, -1]
    assert (best > (base @ base.T)[np.arange(40), nb[:, 2]].min() - 1e-5).all()
    noisy = derived_vectors(200, base, IMAGE_DIM, seed=5, neighbours=nb, noise=1.0)
    assert np.median(np.sort(noisy @ base.T, axis=1)[:, -1]) < np.median(best)
    written = np.zeros((200, IMAGE_DIM + TEXT_DIM), np.float32)
    assert derived_vectors(200, base, IMAGE_DIM, seed=5, neighbours=nb, noise=0.0, out=written) is written
    with pytest.raises(ValueError, match="neighbours"):
        derived_vectors(5, base, IMAGE_DIM, neighbours=nb[:10])
    with pytest.raises(ValueError, match="out"):
        derived_vectors(5, base, IMAGE_DIM, neighbours=nb, out=written)
