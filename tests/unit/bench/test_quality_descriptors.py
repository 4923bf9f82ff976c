"""bench.quality.descriptors' pieces: GeM between average and max pooling, whitening learned from
the database alone giving unit rows, and the combined edit always mirrored."""
from __future__ import annotations

import numpy as np
import torch

from bench.quality.descriptor_cost import interleaved_cost
from bench.quality.descriptors import avg_pool, gem_pool, pca_whitening, top1, top1_among_distractors, whiten
from bench.quality.edits import make_variant
from shared.encoding.imagedecode import decode_image


def test_gem_lies_between_the_mean_and_the_max() -> None:
    fmap = torch.rand(2, 5, 4, 4)
    avg, gem = avg_pool(fmap), gem_pool(fmap)
    assert gem.shape == avg.shape == (2, 5)
    assert bool((gem >= avg - 1e-6).all()) and bool((gem <= fmap.amax(dim=(2, 3)) + 1e-6).all())
    assert torch.allclose(gem_pool(fmap, p=1.0), avg, atol=1e-6)


def test_whitening_gives_unit_rows_and_keeps_an_exact_copy_first() -> None:
    rng = np.random.default_rng(0)
    database = rng.normal(size=(30, 16)).astype(np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    mean, projection = pca_whitening(database)
    queries = whiten(database[:5] + 0.01 * rng.normal(size=(5, 16)).astype(np.float32), mean, projection)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert top1(queries, whiten(database, mean, projection), np.arange(5)).all()


def test_the_combined_edit_always_mirrors() -> None:
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[:, :150] = 255  # white left half
    for seed in range(5):
        edited = decode_image(make_variant(rgb, np.random.default_rng(seed), combined=True)).astype(float)
        w = edited.shape[1]
        assert edited[:, w // 2:].mean() > edited[:, : w // 2].mean()  # the white half is on the right now


def test_distractors_beat_the_source_only_when_they_come_from_another_photo() -> None:
    gallery = np.eye(3, dtype=np.float32)
    queries = np.asarray([[0.8, 0, 0.6], [1.0, 0, 0], [0.7, 0, 0.71]], np.float32)
    source = np.asarray([0, 0, 2])
    assert top1(queries, gallery, source).all()  # each nearest its own original
    # queries 0 and 2 (other photos) are nearer each other (0.986) than their originals; query 1
    # scores its original 1.0 and query 2 only 0.7 (its sibling, query 0, does not count)
    assert top1_among_distractors(queries, gallery, source).tolist() == [False, True, False]


def test_interleaved_cost_gives_ratios_to_the_baseline() -> None:
    calls: list[str] = []
    options = {"a": lambda imgs: calls.append("a"), "b": lambda imgs: calls.append("b")}
    cost = interleaved_cost(options, [np.zeros(1)] * 4, 4, "a")
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the order rotates
    assert cost["a"]["x_baseline"] == 1.0 and cost["b"]["ms_per_image"] >= 0.0
