"""The metadata filters of a search, and the shard's index that answers them without a scan.

A filter maps metadata keys to conditions; an item must meet all of them:
- a scalar (string, number, boolean or null): the item's value equals it (`==`, so 1 equals
  1.0; an item without the key never matches);
- `{"in": [scalars]}`: the item's value equals one of them;
- `{"gt" | "gte" | "lt" | "lte": number, ...}`: the item's value is a number (not a boolean)
  within every bound given.
An operator object may combine `in` with bounds (all must hold).

`MetadataIndex` keeps, per key, the labels of the items by scalar value (equality and `in` are
dict look-ups) and the numeric values in a sorted array built on the first range query after
a write (a range is two binary searches). The shard updates it under its write lock and reads
it under its read lock; the sorted arrays have a lock of their own, since searches build them.
"""
from __future__ import annotations

import threading
from typing import Any, Iterable

import numpy as np

RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
OPERATORS = ("in", *RANGE_OPERATORS)
SCALARS = (str, bool, int, float, type(None))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Sorted:
    """One key's numeric values, sorted, with their labels."""

    def __init__(self, numbers: dict[int, float]) -> None:
        labels = np.fromiter(numbers.keys(), np.int64, len(numbers))
        values = np.fromiter(numbers.values(), np.float64, len(numbers))
        order = np.argsort(values, kind="stable")
        self.values, self.labels = values[order], labels[order]

    def within(self, bounds: dict[str, float]) -> set[int]:
        start, stop = 0, len(self.values)
        if "gte" in bounds:
            start = max(start, int(np.searchsorted(self.values, bounds["gte"], "left")))
        if "gt" in bounds:
            start = max(start, int(np.searchsorted(self.values, bounds["gt"], "right")))
        if "lte" in bounds:
            stop = min(stop, int(np.searchsorted(self.values, bounds["lte"], "right")))
        if "lt" in bounds:
            stop = min(stop, int(np.searchsorted(self.values, bounds["lt"], "left")))
        return set(self.labels[start:stop].tolist()) if start < stop else set()


class MetadataIndex:
    """Labels by metadata key and value, for `matching(filter)`."""

    def __init__(self) -> None:
        self._by_value: dict[str, dict[Any, set[int]]] = {}
        self._numbers: dict[str, dict[int, float]] = {}
        self._sorted: dict[str, _Sorted] = {}  # built on demand, dropped by writes to the key
        self._sorted_lock = threading.Lock()

    def add(self, label: int, metadata: dict[str, Any]) -> None:
        for key, value in metadata.items():
            if isinstance(value, SCALARS):
                self._by_value.setdefault(key, {}).setdefault(value, set()).add(label)
            if _is_number(value):
                self._numbers.setdefault(key, {})[label] = float(value)
                self._sorted.pop(key, None)

    def remove(self, label: int, metadata: dict[str, Any]) -> None:
        for key, value in metadata.items():
            if isinstance(value, SCALARS):
                values = self._by_value.get(key, {})
                labels = values.get(value)
                if labels is not None:
                    labels.discard(label)
                    if not labels:
                        del values[value]
            if _is_number(value):
                self._numbers.get(key, {}).pop(label, None)
                self._sorted.pop(key, None)

    def matching(self, conditions: dict[str, Any]) -> set[int]:
        """The labels of the items that meet every condition of a filter."""
        found: set[int] | None = None
        for candidates in sorted((self._meeting(key, c) for key, c in conditions.items()), key=len):
            found = candidates if found is None else found & candidates
            if not found:
                return set()
        return found if found is not None else set()

    def _meeting(self, key: str, condition: Any) -> set[int]:
        values = self._by_value.get(key, {})
        if not isinstance(condition, dict):
            return set(values.get(condition, ()))
        found: set[int] | None = None
        if "in" in condition:
            found = _union(values.get(v, ()) for v in condition["in"] if isinstance(v, SCALARS))
        bounds = {op: float(condition[op]) for op in RANGE_OPERATORS if op in condition}
        if bounds:
            within = self._sorted_numbers(key).within(bounds)
            found = within if found is None else found & within
        return found if found is not None else set()

    def _sorted_numbers(self, key: str) -> _Sorted:
        with self._sorted_lock:
            built = self._sorted.get(key)
            if built is None:
                built = self._sorted[key] = _Sorted(self._numbers.get(key, {}))
            return built


def _union(groups: Iterable[Iterable[int]]) -> set[int]:
    out: set[int] = set()
    for group in groups:
        out.update(group)
    return out
