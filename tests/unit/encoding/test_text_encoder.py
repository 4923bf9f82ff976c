"""Text encoder: GloVe loading (package and text file), tokenization, SIF pooling, registry."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shared.runtime import config
from shared.errors import ModelUnavailableError
from shared.encoding.encoder_settings import V1
from shared.encoding.text_encoder import (
    DEFAULT_TEXT_MODEL,
    TextEncoder,
    create_text_model,
    load_glove,
    text_model_dim,
    tokenize,
)

REPO = Path(__file__).resolve().parents[3]

TINY_GLOVE = """alpha 1 0 0 0
beta 0 1 0 0
gamma 0 0 1 0
delta-x 0 0 0 1
epsilon 1 1 0 0
"""


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    return create_text_model(DEFAULT_TEXT_MODEL, V1.sif_a)


def cos(enc: TextEncoder, a: str, b: str) -> float:
    va, vb = enc.encode(a), enc.encode(b)
    assert va is not None and vb is not None
    return float(va @ vb)


def test_default_model_is_memory_mapped_and_loads_fast() -> None:
    load_glove(DEFAULT_TEXT_MODEL)  # writes the vocabulary cache on a first run
    t0 = time.perf_counter()
    glove = load_glove(DEFAULT_TEXT_MODEL)
    elapsed = time.perf_counter() - t0
    print(f"glove-6b-50d load: {elapsed * 1000:.0f} ms")
    assert isinstance(glove.matrix, np.memmap)
    assert glove.matrix.shape == (400_000, 50) and glove.matrix.dtype == np.float32
    assert len(glove.words) == 400_000 and glove.words[0] == "the"
    assert glove.vocab["the"] == 0 and glove.vocab["cat"] == glove.words.index("cat")


def test_vectors_are_unit_float32_of_model_dim(enc: TextEncoder) -> None:
    assert enc.name == DEFAULT_TEXT_MODEL and enc.dim == 50
    texts = ["a cat sleeping on a sofa", "Stock market report", "dog", "sun-drenched T-shirts"]
    for v in enc.encode_many(texts):
        assert v is not None
        assert v.dtype == np.float32 and v.shape == (50,)
        assert np.all(np.isfinite(v))
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    many = enc.encode_many(texts)
    for text, v in zip(texts, many):
        np.testing.assert_array_equal(v, enc.encode(text))


@pytest.mark.parametrize("text", ["", "   \n\t", "?!... ,; --", "qzxv wkpt", "“ ” ’"])
def test_nothing_to_encode_gives_none(enc: TextEncoder, text: str) -> None:
    assert enc.encode(text) is None
    assert enc.phrase_vector(text) is None


def test_case_and_quote_insensitive(enc: TextEncoder) -> None:
    np.testing.assert_array_equal(enc.encode("A CAT On The Sofa"), enc.encode("a cat on the sofa"))
    np.testing.assert_array_equal(enc.encode("Don’t stop"), enc.encode("don't stop"))


def test_tokenize_follows_glove_conventions(enc: TextEncoder) -> None:
    assert tokenize("The cat's T-shirt, isn’t it?") == [
        "the", "cat", "'s", "t-shirt", "is", "n't", "it"]
    assert tokenize("... !!! --") == []
    # A known hyphenated word keeps its own vector; an unknown one falls back to its parts.
    _, rows = enc.word_vectors(["t-shirt"])
    assert rows.tolist() == [enc.vectors.vocab["t-shirt"]]
    assert "sun-drenched" not in enc.vectors.vocab
    matrix, rows = enc.word_vectors(["sun-drenched", "qzxv"])
    assert rows.tolist() == [enc.vectors.vocab["sun"], enc.vectors.vocab["drenched"]]
    assert matrix.shape == (2, 50) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[0], enc.vectors.matrix[enc.vectors.vocab["sun"]])


def test_semantic_sanity(enc: TextEncoder) -> None:
    query = "a cat sleeping on a sofa"
    assert cos(enc, query, "a kitten on the couch") > cos(enc, query, "stock market report")


def test_paraphrase_is_nearest_among_distractors(enc: TextEncoder) -> None:
    query = "dog running on the beach"
    candidates = [
        "a puppy runs along the shore",
        "stock market report",
        "a plate of pasta with tomato sauce",
        "an airplane taking off from the runway",
        "a woman talking on her mobile phone",
        "a city skyline at night",
    ]
    scores = [cos(enc, query, c) for c in candidates]
    assert int(np.argmax(scores)) == 0, dict(zip(candidates, scores))


def test_sif_downweights_frequent_words(enc: TextEncoder) -> None:
    sif = TextEncoder(enc.vectors, weighting="sif", remove_common_component=False)
    mean = TextEncoder(enc.vectors, weighting="mean", remove_common_component=False)
    assert cos(sif, "the cat", "cat") > 0.95
    assert cos(sif, "the cat", "cat") > cos(mean, "the cat", "cat") + 0.05


def test_common_component_is_removed(enc: TextEncoder) -> None:
    u = enc.common_component
    assert u is not None and u.shape == (50,)
    assert abs(float(np.linalg.norm(u)) - 1.0) < 1e-9
    for text in ("a cat sleeping on a sofa", "the of and", "economy"):
        v = enc.encode(text)
        assert v is not None and abs(float(v @ u)) < 1e-5
    plain = TextEncoder(enc.vectors, remove_common_component=False)
    assert plain.common_component is None
    v_plain = plain.encode("the of and")
    assert v_plain is not None and abs(float(v_plain @ u)) > 0.1
    with pytest.raises(ValueError):
        TextEncoder(enc.vectors, weighting="tfidf")  # type: ignore[arg-type]


def test_phrase_vector_is_plain_mean_of_words(enc: TextEncoder) -> None:
    plain = TextEncoder(enc.vectors, remove_common_component=False)
    matrix, _ = plain.word_vectors(tokenize("tiger cat"))
    expected = matrix.astype(np.float64).mean(0)
    v = plain.phrase_vector("Tiger cat")
    assert v is not None
    np.testing.assert_allclose(v, expected / np.linalg.norm(expected), atol=1e-6)
    names = ["German shepherd, German shepherd dog", "tiger cat", "airliner", "espresso"]
    vectors = [enc.phrase_vector(n) for n in names]
    assert all(v is not None for v in vectors)
    matrix = np.stack(vectors)  # type: ignore[arg-type]
    for query, expected in [("a cup of coffee", "espresso"), ("a plane in the sky", "airliner"),
                            ("a cat sleeping", "tiger cat")]:
        q = enc.encode(query)
        assert q is not None
        assert names[int(np.argmax(matrix @ q))] == expected, query

def test_glove_text_file_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_GLOVE, encoding="utf-8")
    monkeypatch.setattr(config, "_settings",
                        config.Settings.from_env({"MMSEARCH_DATA_DIR": str(tmp_path / "data")}))
    assert text_model_dim(str(path)) == 4 and text_model_dim(DEFAULT_TEXT_MODEL) == 50  # read, not loaded
    model = create_text_model(str(path), V1.sif_a)
    assert model.name == str(path) and model.dim == 4
    v = model.encode("Alpha epsilon!")
    assert v is not None and v.dtype == np.float32
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert model.encode("zeta") is None
    assert create_text_model(str(path), V1.sif_a) is model  # one instance per process, name and SIF a

    plain = TextEncoder(load_glove(str(path)), weighting="mean", remove_common_component=False)
    np.testing.assert_allclose(plain.encode("alpha beta"), [2**-0.5, 2**-0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(plain.encode("delta-x"), [0, 0, 0, 1], atol=1e-6)


def test_zero_vectors_and_duplicate_words(tmp_path: Path) -> None:
    path = tmp_path / "odd.txt"
    path.write_text(TINY_GLOVE + "zero 0 0 0 0\nalpha 0 0 9 9\n", encoding="utf-8")
    glove = load_glove(str(path), tmp_path / "cache")
    assert glove.vocab["alpha"] == 0  # a repeated word keeps its first, more frequent row
    for ccr in (True, False):
        model = TextEncoder(glove, remove_common_component=ccr)
        assert model.encode("zero") is None  # an all-zero word vector is never a NaN vector


def test_glove_text_file_is_converted_once_and_cached(tmp_path: Path) -> None:
    path = tmp_path / "vectors.txt"
    path.write_text("5 4\n" + TINY_GLOVE, encoding="utf-8")  # word2vec-style header
    cache = tmp_path / "cache"
    first = load_glove(str(path), cache)
    assert first.words == ["alpha", "beta", "gamma", "delta-x", "epsilon"]
    entries = list(cache.iterdir())
    assert len(entries) == 1
    assert sorted(p.name for p in entries[0].iterdir()) == ["emb.npy", "words.txt"]
    second = load_glove(str(path), cache)
    assert isinstance(second.matrix, np.memmap)
    np.testing.assert_array_equal(second.matrix, first.matrix)
    # A changed file gets a new cache entry instead of stale vectors.
    path.write_text(TINY_GLOVE.replace("alpha 1 0 0 0", "alpha 0 0 0 2"), encoding="utf-8")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_glove(str(path), cache)
    np.testing.assert_array_equal(third.matrix[0], [0, 0, 0, 2])
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("text", [
    "alpha 1 0 0 0\nbeta 0 1\n", "alpha 1 0 x 0\n", "alpha 1  0 0 0\n", "", "alpha\n"])
def test_malformed_glove_file_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ModelUnavailableError, match="bad.txt"):
        load_glove(str(path), tmp_path / "cache")


@pytest.mark.parametrize("name", ["glove-6b-300d", "/no/such/glove.txt"])
def test_unknown_model_raises(name: str) -> None:
    with pytest.raises(ModelUnavailableError, match="glove-6b-50d") as info:
        create_text_model(name, V1.sif_a)
    assert name in str(info.value)


def test_module_does_not_import_torch() -> None:
    code = "import sys, shared.encoding.text_encoder; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120)
    assert done.returncode == 0
