"""Fusion and scoring follow docs/design.md: score = weighted mean of the two block cosines."""
import math

import numpy as np
import pytest

from shared.encoding.fusion import SQRT2, build_query, fuse

DI, DT = 8, 4
rng = np.random.default_rng(0)


def unit(n):
    v = rng.normal(size=n).astype(np.float32)
    return v / np.linalg.norm(v)


def test_stored_vector_layout_and_norm():
    a, t = unit(DI), unit(DT)
    x = fuse(a * 3, t * 0.5, DI, DT)  # blocks are normalised first
    assert np.allclose(x[:DI], a / SQRT2, atol=1e-6) and np.allclose(x[DI:], t / SQRT2, atol=1e-6)
    assert math.isclose(float(np.linalg.norm(x)), 1.0, rel_tol=1e-5)
    only_image = fuse(a, None, DI, DT)
    assert not only_image[DI:].any() and math.isclose(float(np.linalg.norm(only_image)), 1 / SQRT2, rel_tol=1e-5)
    with pytest.raises(ValueError):
        fuse(None, None, DI, DT)


@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 0.5)])
def test_weighted_scores_match_design(weights):
    a, t = unit(DI), unit(DT)
    qa, qt = unit(DI), unit(DT)
    x = fuse(a, t, DI, DT)
    q = build_query(qa, qt, DI, DT, {"image": weights[0], "text": weights[1]})
    cos_i, cos_t = float(a @ qa), float(t @ qt)
    expected = (weights[0] * cos_i + weights[1] * cos_t) / (weights[0] + weights[1])
    assert math.isclose(float(x @ q.vector), expected, abs_tol=1e-5)
    parts = q.score_parts(x)
    if weights[0] > 0:
        assert math.isclose(parts["image"], cos_i, abs_tol=1e-5)
    if weights[1] > 0:
        assert math.isclose(parts["text"], cos_t, abs_tol=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 1.0), (2.0, 0.5), (0.0, 1.0)])
def test_block_scores_give_the_cosines_from_the_blocks_inner_products(weights):
    a, t = unit(DI), unit(DT)
    x = fuse(a, t, DI, DT)
    q = build_query(unit(DI), unit(DT), DI, DT, {"image": weights[0], "text": weights[1]})
    blocks = {"image": float(x[:DI] @ q.vector[:DI]), "text": float(x[DI:] @ q.vector[DI:])}
    # A block weighted 0 is all zeros in the query vector: its cosine needs the stored vector.
    assert q.explained_by_blocks == (0.0 not in weights)
    if q.explained_by_blocks:
        assert q.block_scores(blocks) == pytest.approx(q.score_parts(x), abs=1e-5)
    text_only = build_query(None, unit(DT), DI, DT)
    assert text_only.explained_by_blocks
    assert text_only.block_scores({"image": 0.0, "text": float(x[DI:] @ text_only.vector[DI:])}) == \
        pytest.approx(text_only.score_parts(x), abs=1e-5)


def test_text_only_query_scores_by_text_cosine_only():
    a, t, qt = unit(DI), unit(DT), unit(DT)
    q = build_query(None, qt, DI, DT)
    x = fuse(a, t, DI, DT)
    assert math.isclose(float(x @ q.vector), float(t @ qt), abs_tol=1e-5)
    assert q.score_parts(x)["image"] is None


def test_bad_weights_and_empty_queries_are_refused():
    with pytest.raises(ValueError):
        build_query(unit(DI), None, DI, DT, {"image": float("nan")})
    with pytest.raises(ValueError):
        build_query(unit(DI), None, DI, DT, {"image": -1})
    with pytest.raises(ValueError):
        build_query(unit(DI), None, DI, DT, {"image": 0.0, "text": 1.0})  # only block weighted 0
    with pytest.raises(ValueError):
        build_query(None, np.zeros(DT, np.float32), DI, DT)
