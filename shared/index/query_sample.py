"""A shard's sample of the real queries it was sent, per query kind and mix, that its search
lists are measured on once it holds enough of them (`shared.index.calibration.sampled`).

The calibration's own queries are stored items turned a little (`shared.index.calibration`);
real queries may lie otherwise. At 1M items on 4 shards, 80 held-out photos of `bench.search`
reached recall@10 0.995 per shard with lists of 192-256 where the stored items asked for
512-2048, and text-heavy fused queries (0.25:1) needed 768-1536 where they asked for 256. So
each unfiltered search leaves a copy of its query here, in a ring of the SAMPLE_QUERIES latest
of its kind and mix (`mix_of`: the MIX_WEIGHTS mix nearest to its blocks' weights; one mix for
a one-block kind). A kind's lists are measured on its sample once a mix holds SAMPLE_MIN
queries and the kind's queries seen reach the next of SAMPLE_MIN, twice that, four times, ...
up to SAMPLE_EVERY, then each multiple of SAMPLE_EVERY (`next_measurement`: fixed counts, so a
client that sends a known number of queries knows when the lists are measured); and at each
calibration of the shard's items. Searches only append to a ring;
the measuring runs where the shard is at rest (`ShardIndex.settle`). The sample is not kept in
snapshots: the tuning measured on it is.
"""
from __future__ import annotations

import threading
from collections import deque

import numpy as np

from shared.index.calibration import MIX_WEIGHTS
from shared.index.graph import Block

SAMPLE_QUERIES = 128  # queries kept per kind and mix: the latest ones
SAMPLE_MIN = 64       # a mix is measured on its sample once it holds this many
SAMPLE_EVERY = 8192   # a kind's sample is measured again at least this many of its queries later


def next_measurement(measured: int) -> int:
    """The count of a kind's queries seen at which its sample is next measured, after a
    measurement at `measured` seen (0: never): the next of SAMPLE_MIN x 2^i up to SAMPLE_EVERY,
    then of the multiples of SAMPLE_EVERY."""
    threshold = SAMPLE_MIN
    while threshold <= measured and threshold < SAMPLE_EVERY:
        threshold *= 2
    return threshold if threshold > measured else (measured // SAMPLE_EVERY + 1) * SAMPLE_EVERY


def mix_of(parts: list[Block], query: np.ndarray) -> int:
    """Which of MIX_WEIGHTS a query of blocks `parts` is nearest to, by the share of its first
    block in the sum of its blocks' norms (0 for a one-block kind)."""
    if len(parts) < 2:
        return 0
    norms = [float(np.linalg.norm(part.part(query))) for part in parts]
    share = norms[0] / max(sum(norms), 1e-12)
    return int(np.argmin([abs(share - w[0] / sum(w)) for w in MIX_WEIGHTS]))


class QuerySample:
    """The latest queries per kind and mix, and when a kind's are due to be measured."""

    def __init__(self, kinds: tuple[str, ...]) -> None:
        self._rings = {kind: [deque(maxlen=SAMPLE_QUERIES) for _ in MIX_WEIGHTS] for kind in kinds}
        self._seen = dict.fromkeys(kinds, 0)      # queries added per kind
        self._measured = dict.fromkeys(kinds, 0)  # `_seen` at the kind's last measurement (0: never)
        self._lock = threading.Lock()

    def add(self, kind: str, mix: int, query: np.ndarray) -> None:
        """Keep a copy of an unfiltered query of `kind` and mix `mix`."""
        with self._lock:
            self._rings[kind][mix].append(np.array(query, np.float32))
            self._seen[kind] += 1

    def due(self, kind: str | None = None) -> bool:
        """Whether `kind` (None: some kind) has a mix of SAMPLE_MIN queries and has seen
        `next_measurement`'s count since it was last measured."""
        with self._lock:
            return any(self._due(one) for one in ([kind] if kind else self._seen))

    def take(self, kind: str, *, only_due: bool = False) -> list[np.ndarray | None]:
        """Per mix, the queries of `kind` to measure on (None: fewer than SAMPLE_MIN), counting
        the kind as measured now; all None if no mix has enough (or, with `only_due`, if the
        kind is not due)."""
        with self._lock:
            if not (self._due(kind) if only_due else self._ready(kind)):
                return [None] * len(MIX_WEIGHTS)
            self._measured[kind] = self._seen[kind]
            return [np.stack(ring) if len(ring) >= SAMPLE_MIN else None for ring in self._rings[kind]]

    def _due(self, kind: str) -> bool:
        return self._ready(kind) and self._seen[kind] >= next_measurement(self._measured[kind])

    def _ready(self, kind: str) -> bool:
        return any(len(ring) >= SAMPLE_MIN for ring in self._rings[kind])
