"""The metadata filters of a search, and the shard's index that answers them without a scan.

A filter is a JSON object whose entries must all hold (docs/api.md):
- `"key": value` (a string, number, boolean or null): the item's value equals it (`==`, so 1
  equals 1.0);
- `"key": {"$op": argument, ...}`, every operator holding: `$eq` / `$ne` a value, `$in` /
  `$nin` a list of values, `$gt` / `$gte` / `$lt` / `$lte` a number (the item's value must be
  a number, not a boolean), `$exists` a boolean;
- `"$and": [filters]`, `"$or": [filters]`.
A metadata value that is a list matches by element (`{"tags": "red"}` matches `["red",
"blue"]`; `$ne` and `$nin` hold when no element matches). An item without the key meets `$ne`,
`$nin` and `$exists: false`, and no other condition. Objects inside metadata match nothing.

`MetadataIndex` keeps, per key, the labels of the items by scalar value (equality and `$in` are
dict look-ups), the labels that have the key, and the numeric values in a sorted array built on
the first range query after a write (a range is two binary searches); negations are taken
from the set of every label. The shard updates it under its write lock and reads it under its
read lock; the sorted arrays have a lock of their own, since searches build them.
"""
from __future__ import annotations

import operator
import threading
from typing import Any, Iterable, Iterator

import numpy as np

RANGE_OPERATORS = ("$gt", "$gte", "$lt", "$lte")
VALUE_OPERATORS = ("$eq", "$ne")
LIST_OPERATORS = ("$in", "$nin")
OPERATORS = (*VALUE_OPERATORS, *LIST_OPERATORS, *RANGE_OPERATORS, "$exists")
LOGICAL = ("$and", "$or")
SCALARS = (str, bool, int, float, type(None))
_COMPARE = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _elements(value: Any) -> Iterator[Any]:
    """The scalars a metadata value matches by: itself, or a list's scalar elements."""
    if isinstance(value, list):
        yield from (v for v in value if isinstance(v, SCALARS))
    elif isinstance(value, SCALARS):
        yield value


class _Sorted:
    """One key's numeric values, sorted, with their labels (a label once per value it holds)."""

    def __init__(self, numbers: dict[int, tuple[float, ...]]) -> None:
        pairs = [(v, label) for label, values in numbers.items() for v in values]
        values = np.fromiter((v for v, _ in pairs), np.float64, len(pairs))
        labels = np.fromiter((label for _, label in pairs), np.int64, len(pairs))
        order = np.argsort(values, kind="stable")
        self.values, self.labels = values[order], labels[order]
        self.lists = {label: values for label, values in numbers.items() if len(values) > 1}

    def within(self, bounds: dict[str, float]) -> set[int]:
        start, stop = 0, len(self.values)
        if "$gte" in bounds:
            start = max(start, int(np.searchsorted(self.values, bounds["$gte"], "left")))
        if "$gt" in bounds:
            start = max(start, int(np.searchsorted(self.values, bounds["$gt"], "right")))
        if "$lte" in bounds:
            stop = min(stop, int(np.searchsorted(self.values, bounds["$lte"], "right")))
        if "$lt" in bounds:
            stop = min(stop, int(np.searchsorted(self.values, bounds["$lt"], "left")))
        found = set(self.labels[start:stop].tolist()) if start < stop else set()
        if len(bounds) > 1:  # a list meets each bound by any of its numbers, not one number all
            found.update(label for label, values in self.lists.items()
                         if all(any(_COMPARE[op](v, b) for v in values) for op, b in bounds.items()))
        return found


class MetadataIndex:
    """Labels by metadata key and value, for `matching(filter)`."""

    def __init__(self) -> None:
        self._all: set[int] = set()
        self._has_key: dict[str, set[int]] = {}
        self._by_value: dict[str, dict[Any, set[int]]] = {}
        self._numbers: dict[str, dict[int, tuple[float, ...]]] = {}
        self._sorted: dict[str, _Sorted] = {}  # built on demand, dropped by writes to the key
        self._sorted_lock = threading.Lock()

    def add(self, label: int, metadata: dict[str, Any]) -> None:
        self._all.add(label)
        for key, value in metadata.items():
            self._has_key.setdefault(key, set()).add(label)
            for element in _elements(value):
                self._by_value.setdefault(key, {}).setdefault(element, set()).add(label)
            numbers = tuple(float(v) for v in _elements(value) if is_number(v))
            if numbers:
                self._numbers.setdefault(key, {})[label] = numbers
                self._sorted.pop(key, None)

    def remove(self, label: int, metadata: dict[str, Any]) -> None:
        self._all.discard(label)
        for key, value in metadata.items():
            self._has_key.get(key, set()).discard(label)
            values = self._by_value.get(key, {})
            for element in _elements(value):
                labels = values.get(element)
                if labels is not None:
                    labels.discard(label)
                    if not labels:
                        del values[element]
            if self._numbers.get(key, {}).pop(label, None) is not None:
                self._sorted.pop(key, None)

    def matching(self, conditions: dict[str, Any]) -> set[int]:
        """The labels of the items that meet a filter (every entry of it)."""
        return _intersection(self._entry(key, c) for key, c in conditions.items()) or set()

    def _entry(self, key: str, condition: Any) -> set[int]:
        if key == "$and":
            return self._and(condition)
        if key == "$or":
            return _union(self.matching(f) for f in condition)
        if not isinstance(condition, dict):
            return self._equal(key, condition)
        # Every range bound of a condition in one pass over the sorted numbers, not a set per bound.
        bounds = {op: float(arg) for op, arg in condition.items() if op in RANGE_OPERATORS}
        ranged = [self._sorted_numbers(key).within(bounds)] if bounds else []
        others = (self._operator(key, op, arg) for op, arg in condition.items() if op not in RANGE_OPERATORS)
        return _intersection([*ranged, *others]) or set()

    def _and(self, filters: list[dict[str, Any]]) -> set[int]:
        found = _intersection(self.matching(f) for f in filters)
        return set(self._all) if found is None else found  # `$and: []` holds for every item

    def _operator(self, key: str, op: str, arg: Any) -> set[int]:
        if op == "$eq":
            return self._equal(key, arg)
        if op == "$ne":
            return self._all - self._equal(key, arg)
        if op == "$in":
            return _union(self._equal(key, v) for v in arg)
        if op == "$nin":
            return self._all - _union(self._equal(key, v) for v in arg)
        present = self._has_key.get(key, set())  # op is $exists
        return set(present) if arg else self._all - present

    def _equal(self, key: str, value: Any) -> set[int]:
        return set(self._by_value.get(key, {}).get(value, ())) if isinstance(value, SCALARS) else set()

    def _sorted_numbers(self, key: str) -> _Sorted:
        with self._sorted_lock:
            built = self._sorted.get(key)
            if built is None:
                built = self._sorted[key] = _Sorted(self._numbers.get(key, {}))
            return built


def _intersection(groups: Iterable[set[int]]) -> set[int] | None:
    """The labels in every group (None when there is no group); stops at the first empty one."""
    found: set[int] | None = None
    for group in groups:
        found = group if found is None else found & group
        if not found:
            return set()
    return found


def _union(groups: Iterable[set[int]]) -> set[int]:
    out: set[int] = set()
    for group in groups:
        out |= group
    return out
