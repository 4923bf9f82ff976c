"""A shard's ef self-calibration: the search list size (ef) per query kind, measured against
exact search over the shard's own items, and when to measure it again.

The search list size of a top-k query is a calibrated ef at k = CALIBRATION_K scaled by
k / CALIBRATION_K (`ef_for`), per query kind ("image", "text", "fused"; "vector" for a
one-graph shard). The queries are CALIBRATION_QUERIES of the shard's own stored items that
have the kind's blocks, each turned towards the difference of two other stored items until it
is as close to the item as the item's nearest other item is (like a new item among similar
ones). A kind of two blocks (fused) has CALIBRATION_QUERIES of them per mix of MIX_WEIGHTS,
the weights its queries may give the blocks, in turn (a mix that favours one block is harder
to search than 1:1; calibrated on 1:1 alone, 0.25:1 queries fell short of the target). Exact
top-k comes from a matmul over every live item's block vectors (copied out of the shard's
vector store under the read lock, then computed outside it). `ef` is the smallest rung of
EF_LADDER whose recall@k reaches the `recall_target` on each mix with a margin for the sample
(it may miss only CALIBRATION_MARGIN of what the target allows: 99.5% for 99%), the last rung
if none does; `far_below` is the median exact k-th score of the calibration queries per unit of
`scale` (the sum of their blocks' norms; FAR_QUANTILE; with the lowest one instead, real text
queries only a little farther than the calibration ones stayed at ef, short of the recall
target). A query farther from the items than that (its k-th score below far_below x its scale:
e.g. a text whose words no caption has, or a photo unlike any stored one, whose top k are
near-ties that a graph finds only with a longer list), or whose search went astray, is searched
again with a longer list, the longer the farther it is: its kind's far `bands`, each a k-th score
per unit of scale and the list that queries below it need. They are calibrated the same way on
far queries: the same stored items turned towards random directions (cosine FAR_COSINES with the
item), FAR_BANDS x CALIBRATION_QUERIES of them, those whose exact k-th score is below far_below
sorted by it and cut into FAR_BANDS bands of equal count; each band's list is the smallest rung
from the nearer band's on that reaches the target on its queries, EF_FAR where none does. (With
one far list for all of them, at 1M items every real text query of `bench.search`, only a
little below far_below, was searched again with the list of the farthest ones: 4096 where 1024
reached 0.997.) A kind with fewer than CALIBRATE_MIN items that have each of its blocks keeps
EF_DEFAULT and is never searched again. The searches go through the graphs that a query of the
kind searches (`shared.index.layouts`).

The calibration queries are stored items turned a little; a shard's real queries may be farther
(a photo with words that no item's text block holds): in one in-process shard of 25,000 of
`bench.search`'s items, 50-56 of 60 fused queries (held-out images with their class names) were
below far_below and searched twice. So a shard keeps, per kind, the running share of its
unfiltered searches that needed each list, its own (`ef`) and each band's (`Calibration.saw`, each
search weighing SHARE_WEIGHT), and an unfiltered search starts with the list that makes its
expected cost least (`Calibration.first_ef`: the list plus each longer list times the share that
needed it, the costs taken as proportional to the lists): at once with a band's list while most
of its kind's searches need it.

A shard recalibrates once it reaches CALIBRATE_MIN items and then whenever it has doubled, or
updates and deletes reached RECALIBRATE_CHANGED of its size, since the last calibration
(`Calibration`); and once its writes stop (`ShardIndex.settle`, called by the shard workers
when a shard's log has been quiet a while) as soon as it has grown by SETTLE_SHARE. Without
that, a fill that stops between two doublings is searched with lists measured on as few as half
its items: at 1M items on 4 shards, each shard measured at 160,000 of its 250,000,
`bench.search` found text at recall@10 0.988 and fused 0.25:1 at 0.978 (0.991 and 0.988 once
measured at rest). Searches go on meanwhile; the new ef values replace the old ones at once.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Hashable, Iterator

import numpy as np

from shared.index.graph import Block
from shared.index.vector_store import VectorStore, as_float32

CALIBRATION_K = 10        # the k that ef is calibrated for; other k scale it
EF_DEFAULT = 256          # ef at CALIBRATION_K until a kind is calibrated
EF_LADDER = (CALIBRATION_K, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
EF_FAR = 4096             # a far band's ef (at k = CALIBRATION_K) where no rung of EF_LADDER is enough
FAR_COSINES = (0.1, 0.9)  # far calibration queries: cosine with the stored item they turn away from
FAR_BANDS = 3             # far calibration queries per band: CALIBRATION_QUERIES at most
MIX_WEIGHTS = ((1.0, 1.0), (1.0, 0.25), (0.25, 1.0))  # block weights of a fused kind's queries, in turn
FAR_QUANTILE = 0.5        # far_below: this quantile of the calibration queries' k-th score per norm
CALIBRATION_QUERIES = 64  # stored items used as queries per kind
CALIBRATE_MIN = 1000      # a kind is calibrated once this many items have its blocks
CALIBRATION_MARGIN = 0.5  # calibration queries may miss this share of what the target allows
RECALIBRATE_CHANGED = 0.2  # updated + deleted items, as a share of the size at the last calibration
SETTLE_SHARE = 0.25       # at rest: new items, as a share of the size at the last calibration
SHARE_WEIGHT = 1 / 32     # weight of each search in its kind's running shares of the lists needed
_SCORE_ROWS = 8192        # rows per matmul when scoring a whole block

Search = Callable[[np.ndarray, int, int], list[tuple[int, float]]]
"""(query, k, ef) -> best k (label, score) by hnswlib with list size ef, no filter, in the
graphs that the query's blocks search; raises RuntimeError where hnswlib reached fewer than k
items."""


def ef_for(k: int, ef_at_k10: int = EF_DEFAULT) -> int:
    """The search list size for a top-k query, given the ef calibrated at k = CALIBRATION_K."""
    return max(k, ef_at_k10, -(-ef_at_k10 * k // CALIBRATION_K))


def far_ef_for(k: int, ef_at_k10: int) -> int:
    """The search list size for a top-k query with a far band's ef: as `ef_for`, but at most
    EF_FAR or 2k."""
    return min(ef_for(k, ef_at_k10), max(EF_FAR, 2 * k))


@dataclass(frozen=True)
class Tuning:
    """A query kind's calibrated search (see the module doc); ef values are at k = CALIBRATION_K.

    `bands`: (below, ef) from the nearest band to the farthest, `below` falling and `ef` rising:
    a query whose k-th score per unit of its scale is below a band's `below` needs its `ef`.
    None of them: never searched again. `mixes`: per mix of MIX_WEIGHTS (the first alone for a
    one-block kind), (ef, reached) as measured on the shard's real queries of that mix
    (`sampled`): the list they need and the farthest k-th score per unit of scale among them;
    (0, 0.0) where not measured (see `at`)."""

    ef: int = EF_DEFAULT
    bands: tuple[tuple[float, int], ...] = ()
    mixes: tuple[tuple[int, float], ...] = ()

    @property
    def far_below(self) -> float | None:
        """Where the far queries start (per unit of scale); None: never searched again."""
        return self.bands[0][0] if self.bands else None

    @property
    def far_ef(self) -> int:
        """The farthest band's ef (ef where there is none)."""
        return self.bands[-1][1] if self.bands else self.ef

    def lists(self) -> list[int]:
        """The lists a search of this kind may need, shortest first: ef, then each band's."""
        return [self.ef] + [ef for _, ef in self.bands]

    def needs(self, score: float) -> int:
        """Which of `lists()` a query whose k-th score per unit of its scale is `score` needs."""
        return sum(1 for below, _ in self.bands if score < below)

    def at(self, mix: int) -> Tuning:
        """The tuning of a query of mix `mix`: where that mix was measured on real queries, their
        list, and beyond the farthest of them the bands' longer lists (the band the farthest one
        lies in starting there); this tuning otherwise."""
        if not self.mixes or not self.mixes[mix][0]:
            return self
        ef, reached = self.mixes[mix]
        around = [band_ef for below, band_ef in self.bands if below >= reached]  # bands `reached` lies in
        bands = [(reached, around[-1])] if around and around[-1] > ef else []
        for below, band_ef in self.bands:
            if below < reached and band_ef > max([ef] + [e for _, e in bands]):
                bands.append((below, band_ef))
        return Tuning(ef, tuple(bands))

    @classmethod
    def of(cls, saved: dict) -> Tuning:
        """A tuning as `asdict` saved it; one saved with a single far list (before bands) too."""
        mixes = tuple((int(ef), float(reached)) for ef, reached in saved.get("mixes", ()))
        if "bands" in saved:
            return cls(int(saved["ef"]), tuple((float(b), int(e)) for b, e in saved["bands"]), mixes)
        far_below = saved.get("far_below")
        return cls(int(saved["ef"]), () if far_below is None else ((float(far_below), int(saved["far_ef"])),))


class Calibration:
    """A shard's tuning per query kind and the writes since it was measured.

    `tuning` is replaced whole, so searches read it without a lock; `calibrated_at` and the
    write counts change under `lock`; `running` lets one calibration run at a time.
    """

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self.tuning: dict[str, Tuning] = {kind: Tuning() for kind in kinds}
        self.calibrated_at = 0  # live items at the last calibration (0: never)
        self._inserted = 0      # new items since then
        self._changed = 0       # updated and deleted items since then
        self.lock = threading.Lock()
        self.running = threading.Lock()
        # Per kind and mix, the running share of unfiltered searches that needed each of its
        # tuning's `lists()`; updates may race (a lost one changes nothing that matters), so no lock.
        self.shares: dict[Hashable, list[float]] = {}

    def first_ef(self, key: Hashable, tuning: Tuning) -> int:
        """The list an unfiltered search of `key` (its kind and mix) with `tuning` starts with: the
        one of `tuning.lists()` whose search, plus a search with each longer list times the share
        of recent searches that needed it, costs least (the costs taken as proportional to the
        lists; the shorter on a tie)."""
        lists, shares = tuning.lists(), self.shares.get(key, [0.0])
        if len(shares) != len(lists):  # a new tuning: no share yet
            return lists[0]
        costs = [ef + sum(share * longer for share, longer in zip(shares[i + 1:], lists[i + 1:]))
                 for i, ef in enumerate(lists)]
        return lists[costs.index(min(costs))]

    def saw(self, key: Hashable, tuning: Tuning, needed: int) -> None:
        """Count an unfiltered search of `key` that needed the list `tuning.lists()[needed]`."""
        shares = self.shares.get(key, [])
        if len(shares) != len(tuning.bands) + 1:
            shares = [0.0] * (len(tuning.bands) + 1)
        self.shares[key] = [share + SHARE_WEIGHT * (float(i == needed) - share) for i, share in enumerate(shares)]

    def wrote(self, inserted: int, changed: int) -> None:
        """Count a batch of writes: new items, and updated or deleted ones."""
        with self.lock:
            self._inserted += inserted
            self._changed += changed

    def due(self, count: int, *, at_rest: bool = False) -> bool:
        """Whether a shard of `count` live items should be calibrated now; `at_rest`: once its
        writes have stopped, when it has grown by SETTLE_SHARE instead of doubled."""
        grown = SETTLE_SHARE if at_rest else 1.0
        with self.lock:
            if count < CALIBRATE_MIN:
                return False
            return (not self.calibrated_at or self._inserted >= grown * self.calibrated_at
                    or self._changed >= RECALIBRATE_CHANGED * self.calibrated_at)

    def pending(self) -> tuple[int, int]:
        """The writes counted so far, to be passed to `calibrated` by the calibration that
        starts now (writes counted meanwhile stay for the next one)."""
        with self.lock:
            return self._inserted, self._changed

    def calibrated(self, count: int, pending: tuple[int, int],
                   measured: dict[str, Tuning | None]) -> dict[str, Tuning]:
        """Take the tuning measured on `count` items (None: a kind keeps its own); returns it all."""
        with self.lock:
            self.calibrated_at = count
            self._inserted -= pending[0]
            self._changed -= pending[1]
        return self.retuned(measured)

    def retuned(self, measured: dict[str, Tuning | None]) -> dict[str, Tuning]:
        """Take a new tuning of some kinds (None: a kind keeps its own); returns it all."""
        chosen = dict(self.tuning)
        chosen.update((kind, tuning) for kind, tuning in measured.items() if tuning is not None)
        with self.lock:
            self.tuning = chosen
        return dict(chosen)


@dataclass
class Dump:
    """A copy of one stored block of the items that have it: their labels and rows."""

    labels: np.ndarray   # uint64, one per row
    vectors: np.ndarray  # rows as the store keeps them (float16 or float32)


def copy_vectors(part: Block, block: int, store: VectorStore, blocks: dict[int, int]) -> Dump:
    """Copy a block of the items that have it (span `block` of the store); `blocks`: label ->
    block bits of every live item. The caller holds the shard's lock."""
    labels = [label for label, bits in blocks.items() if bits & part.bit]
    return Dump(np.asarray(labels, np.uint64), store.part(block, labels))


def measure(parts: list[Block], dumps: dict[str, Dump], dim: int, recall_target: float,
            search: Search, rng: np.random.Generator) -> Tuning | None:
    """The tuning of the query kind whose queries have the blocks `parts` (see the module doc),
    None when it has too few items to measure; `dumps` by block name, `dim` of the fused vectors."""
    labels = [dumps[part.name].labels for part in parts]
    if min(len(x) for x in labels) < CALIBRATE_MIN:
        return None
    # Queries near stored items that have every searched block.
    candidates = labels[0]
    for more in labels[1:]:
        candidates = np.intersect1d(candidates, more)
    if len(candidates) < 3 * CALIBRATION_K:
        return None
    mixes = len(MIX_WEIGHTS) if len(parts) > 1 else 1
    count = min(mixes * CALIBRATION_QUERIES, len(candidates) // 3)
    picks = rng.choice(candidates, size=3 * count, replace=False)
    chosen = _stored(parts, dumps, picks, dim)
    picks, stored = picks[:count], chosen[:count]
    universe = np.unique(np.concatenate(labels))
    nearest = _nearest_other(parts, dumps, universe, stored, np.searchsorted(universe, picks))
    queries = _weighted(parts, _off_node(stored, nearest, chosen[count:2 * count] - chosen[2 * count:]))
    top, scores = _exact_top(parts, dumps, universe, queries)
    far_below = float(np.quantile(scores.min(axis=0) / scale(parts, queries), FAR_QUANTILE))
    needed = (1.0 - (1.0 - recall_target) * CALIBRATION_MARGIN) * CALIBRATION_K
    ef = _smallest_ef(search, queries, universe[top], needed, EF_LADDER[0], EF_LADDER[-1], groups=mixes)
    # Far queries: stored items turned towards random directions, those that end up far.
    far_count = FAR_BANDS * CALIBRATION_QUERIES
    turned = _stored(parts, dumps, rng.choice(candidates, size=far_count, replace=len(candidates) < far_count), dim)
    directions = np.zeros_like(turned)
    for part in parts:
        directions[:, part.start:part.stop] = rng.standard_normal((far_count, part.stop - part.start))
    cosines = rng.uniform(*FAR_COSINES, far_count)
    far = _weighted(parts, _off_node(turned, cosines * np.einsum("ij,ij->i", turned, turned), directions))
    far_top, far_scores = _exact_top(parts, dumps, universe, far)
    distance = far_scores.min(axis=0) / scale(parts, far)
    beyond = np.flatnonzero(distance < far_below)
    beyond = beyond[np.argsort(-distance[beyond], kind="stable")]  # nearest first
    bands, below, start = [], far_below, ef
    for band in np.array_split(beyond, min(FAR_BANDS, len(beyond))) if len(beyond) else []:
        start = _smallest_ef(search, far[band], universe[far_top[:, band]], needed, start, EF_FAR)
        if not bands or start > bands[-1][1]:  # a band whose list is the nearer one's adds nothing
            bands.append((below, start))
        below = float(distance[band[-1]])
    return Tuning(ef, tuple(bands) if bands else ((far_below, ef),))


def sampled(parts: list[Block], dumps: dict[str, Dump], groups: list[np.ndarray | None], recall_target: float,
            search: Search, tuning: Tuning) -> Tuning:
    """`tuning` with the mixes measured on the shard's real queries (`groups`: per mix of
    MIX_WEIGHTS, the sampled queries; None keeps the mix's): each mix's list is the smallest rung
    of EF_LADDER at which they reach the target as `measure`'s do, and `reached` their farthest
    exact k-th score per unit of scale. Unchanged when the kind has too few items."""
    labels = [dumps[part.name].labels for part in parts]
    if min(len(x) for x in labels) < CALIBRATE_MIN:
        return tuning
    universe = np.unique(np.concatenate(labels))
    needed = (1.0 - (1.0 - recall_target) * CALIBRATION_MARGIN) * CALIBRATION_K
    mixes = list(tuning.mixes) or [(0, 0.0)] * len(MIX_WEIGHTS)
    for mix, queries in enumerate(groups):
        if queries is not None:
            top, scores = _exact_top(parts, dumps, universe, queries)
            reached = float(np.min(scores.min(axis=0) / scale(parts, queries)))
            mixes[mix] = (_smallest_ef(search, queries, universe[top], needed, EF_LADDER[0], EF_LADDER[-1]), reached)
    return replace(tuning, mixes=tuple(mixes))


def scale(parts: list[Block], queries: np.ndarray) -> np.ndarray:
    """The sum of the norms of each query's blocks (`parts`): what `far_below` is per
    unit of. Unlike the whole norm it does not change with the weights of a query's blocks
    (`build_query` gives them norms in proportion to weights that sum to one), so a query
    weighted 1:0.25 is as near or as far as at 1:1."""
    return sum(np.linalg.norm(part.part(queries), axis=-1) for part in parts)


def _weighted(parts: list[Block], queries: np.ndarray) -> np.ndarray:
    """Queries of a kind with several blocks weighted in turn as MIX_WEIGHTS (the weights a
    query may give its blocks: the mixes that favour one block are the harder ones)."""
    if len(parts) > 1:
        for i, weights in enumerate(MIX_WEIGHTS):
            for part, weight in zip(parts, weights):
                queries[i::len(MIX_WEIGHTS), part.start:part.stop] *= weight
    return queries


def _off_node(stored: np.ndarray, nearest: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Calibration queries: each stored vector turned towards a direction (the difference of two
    other stored vectors: one along which the items themselves vary) until it is as close to it
    as its nearest other item is, so that it lies between stored items like a new item would.
    A query that sits on a stored item would be answered by that item's own links, at a list
    size far too small for any other query."""
    noise = directions.astype(np.float32)
    norms2 = np.einsum("ij,ij->i", stored, stored)[:, None]
    noise -= np.einsum("ij,ij->i", noise, stored)[:, None] / norms2 * stored
    length = np.linalg.norm(noise, axis=1, keepdims=True)  # 0 where the two items were equal
    noise *= np.divide(np.sqrt(norms2), length, out=np.zeros_like(length), where=length > 1e-12)
    cosine = np.clip(nearest[:, None] / norms2, 0.0, 0.999)
    return (cosine * stored + np.sqrt(1.0 - cosine ** 2) * noise).astype(np.float32)


def _exact_top(parts: list[Block], dumps: dict[str, Dump], universe: np.ndarray,
               queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows (into `universe`) of each query's exact top CALIBRATION_K, one column per query,
    and their scores."""
    tops, best = [], []
    for _, scores in _exact_chunks(parts, dumps, universe, queries):
        top = np.argpartition(-scores, CALIBRATION_K - 1, axis=0)[:CALIBRATION_K]
        tops.append(top)
        best.append(scores[top, np.arange(scores.shape[1])])
    return np.concatenate(tops, axis=1), np.concatenate(best, axis=1)


def _nearest_other(parts: list[Block], dumps: dict[str, Dump], universe: np.ndarray,
                   stored: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Each stored vector's best score with another item (`rows`: its own row in `universe`)."""
    nearest = []
    for s, scores in _exact_chunks(parts, dumps, universe, stored):
        scores[rows[s:s + scores.shape[1]], np.arange(scores.shape[1])] = -np.inf
        nearest.append(scores.max(axis=0))
    return np.concatenate(nearest)


def _exact_chunks(parts: list[Block], dumps: dict[str, Dump], universe: np.ndarray,
                  queries: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """`_exact_scores` of CALIBRATION_QUERIES queries at a time, each with the index of its first
    query (its rows of every item are the memory a calibration takes: 64 MB a chunk at 250,000
    items)."""
    for s in range(0, len(queries), CALIBRATION_QUERIES):
        yield s, _exact_scores(parts, dumps, universe, queries[s:s + CALIBRATION_QUERIES])


def _smallest_ef(search: Search, queries: np.ndarray, top: np.ndarray, needed: float,
                 start: int, otherwise: int, groups: int = 1) -> int:
    """The smallest rung of EF_LADDER from `start` on where `search` finds at least `needed` of
    each query's exact top CALIBRATION_K (labels `top`, one column per query) on average, in
    each of `groups` (every groups-th query from the first, the second, ...); `otherwise` if none
    does (the ladder's last rung for `ef`, EF_FAR for a far band's)."""
    truth = [set(column.tolist()) for column in top.T]
    for ef in (rung for rung in EF_LADDER if rung >= start):
        found = np.zeros(len(queries))
        for i, (query, expected) in enumerate(zip(queries, truth)):
            try:
                ranked = search(query, CALIBRATION_K, ef)
            except RuntimeError:  # hnswlib reached too few items: a search answers exactly
                found[i] = CALIBRATION_K
                continue
            found[i] = len(expected.intersection(label for label, _ in ranked))
        if all(found[group::groups].mean() >= needed for group in range(groups)):
            return ef
    return otherwise


def _stored(parts: list[Block], dumps: dict[str, Dump], labels: np.ndarray, dim: int) -> np.ndarray:
    """The stored vectors of `labels` from the dumps; each label has every block of `parts`."""
    vectors = np.zeros((len(labels), dim), np.float32)
    for part in parts:
        dump = dumps[part.name]
        order = np.argsort(dump.labels)
        vectors[:, part.start:part.stop] = dump.vectors[order[np.searchsorted(dump.labels[order], labels)]]
    return vectors


def _exact_scores(parts: list[Block], dumps: dict[str, Dump], universe: np.ndarray,
                  queries: np.ndarray) -> np.ndarray:
    """Inner products (one row per label of `universe`, one column per query) of the
    queries with the dumped vectors of the items in `parts` (a missing block counts 0)."""
    scores = np.zeros((len(universe), len(queries)), np.float32)
    for part in parts:
        dump = dumps[part.name]
        where = np.searchsorted(universe, dump.labels)
        columns = np.ascontiguousarray(part.part(queries).T)
        for s in range(0, len(where), _SCORE_ROWS):
            scores[where[s:s + _SCORE_ROWS]] += as_float32(dump.vectors[s:s + _SCORE_ROWS]) @ columns
    return scores
