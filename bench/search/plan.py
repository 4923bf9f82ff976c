"""What one search benchmark run measures (`Plan`), what it found (`Results`), and how long a
size would take at the rates found so far."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    sizes: list[int]
    shard_counts: list[int]
    client_counts: list[int]
    min_queries: int  # a run sends max(min_queries, clients x per_client) distinct queries
    per_client: int
    repeats: int      # passes over the queries when timing the floor
    max_minutes: float  # a size whose fills and floor would take longer at the previous rates is skipped
    warm_up: int = 2  # queries sent before each kind's runs
    taught: int = 128  # unfiltered queries per kind sent before any run, for the shards' sampled lists
    floor: bool = True  # build and search the in-process floor of each size
    keep: bool = False  # keep the collections (and reuse those the data dir holds): --data-dir

    def run_size(self, clients: int) -> int:
        return max(self.min_queries, clients * self.per_client)

    def per_kind(self) -> int:
        """Distinct queries each kind needs: the warm-up, every run and the taught ones."""
        return self.warm_up + sum(self.run_size(c) for c in self.client_counts) + self.taught

    def slices(self) -> Iterator[slice]:
        """Where in a kind's queries the warm-up lies, then each client count's run."""
        start = 0
        for size in [self.warm_up] + [self.run_size(c) for c in self.client_counts]:
            yield slice(start, start + size)
            start += size

    def taught_slice(self) -> slice:
        """Where in a kind's queries the taught ones lie: after every run's."""
        return slice(self.per_kind() - self.taught, self.per_kind())


@dataclass
class Results:
    """Every figure of a run, as the JSON line reports them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    breakdown: list[dict[str, Any]] = field(default_factory=list)
    fills: list[dict[str, Any]] = field(default_factory=list)
    floors: dict[int, dict[str, Any]] = field(default_factory=dict)
    memory: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    capacity: list[dict[str, Any]] = field(default_factory=list)  # filled by tables.report
    index_bytes: dict[int, float] = field(default_factory=dict)  # vector + graph bytes per item, by size


def estimated_minutes(n: int, collections: int, results: Results) -> float | None:
    """Minutes to fill `collections` collections of `n` items and build the floor (when one was
    built) at the slowest fill rate and the floor build rate of the largest size measured so far
    (None: nothing yet)."""
    if not results.fills:
        return None
    last = max(f["items"] for f in results.fills)
    rates = [f["items_per_s"] for f in results.fills if f["items"] == last and f["items_per_s"]]
    if not rates:  # only collections found filled: no rate
        return None
    fill_rate = min(rates)
    floor_s = n / (last / max(results.floors[last]["build_s"], 0.1)) if last in results.floors else 0.0
    return (collections * n / fill_rate + floor_s) / 60
