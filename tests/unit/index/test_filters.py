"""Metadata filters: the shard's MetadataIndex against a brute-force check of every item."""
import random
import threading

import pytest

from shared.index.filters import MetadataIndex

MISSING = object()


def brute_force(items: dict[int, dict], conditions: dict) -> set[int]:
    """What each condition means, item by item (the definition the index must agree with)."""
    def meets(value, condition) -> bool:
        if not isinstance(condition, dict):
            return value is not MISSING and value == condition
        ok = True
        if "in" in condition:
            ok &= value is not MISSING and any(value == v for v in condition["in"])
        bounds = {op: condition[op] for op in ("gt", "gte", "lt", "lte") if op in condition}
        if bounds:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok &= number and all({"gt": value > b, "gte": value >= b, "lt": value < b, "lte": value <= b}[op]
                                 for op, b in bounds.items())
        return ok
    return {label for label, meta in items.items()
            if all(meets(meta.get(key, MISSING), c) for key, c in conditions.items())}


def random_items(rng: random.Random, n: int) -> dict[int, dict]:
    items = {}
    for label in range(n):
        meta = {}
        if rng.random() < 0.9:
            meta["city"] = rng.choice(["paris", "rome", "oslo", "lima", None])
        if rng.random() < 0.8:
            meta["year"] = rng.choice([rng.randint(1990, 2025), float(rng.randint(1990, 2025)) + 0.5])
        if rng.random() < 0.3:
            meta["year"] = rng.choice(["1999", True, [2000]])  # not numbers: never in a range
        if rng.random() < 0.5:
            meta["tags"] = ["a", "b"]  # not a scalar: no scalar condition matches it
        meta["odd"] = label % 2 == 1
        items[label] = meta
    return items


FILTERS = [
    {"city": "paris"},
    {"city": None},
    {"city": "nowhere"},
    {"odd": True},
    {"year": 2000},
    {"year": "1999"},
    {"city": {"in": ["rome", "oslo"]}},
    {"city": {"in": []}},
    {"year": {"gte": 2000, "lt": 2010}},
    {"year": {"gt": 2000.5}},
    {"year": {"lte": 1995}},
    {"year": {"gt": 2030}},
    {"year": {"in": [2001, 2002, "1999"], "gte": 2002}},
    {"city": "lima", "year": {"gte": 2010}, "odd": False},
    {"tags": "a"},
    {"absent": 1},
]


@pytest.mark.parametrize("conditions", FILTERS, ids=[str(f) for f in FILTERS])
def test_every_operator_matches_the_brute_force_check(conditions):
    rng = random.Random(7)
    items = random_items(rng, 3000)
    index = MetadataIndex()
    for label, meta in items.items():
        index.add(label, meta)
    assert index.matching(conditions) == brute_force(items, conditions)


def test_updates_and_deletes_are_followed_by_every_kind_of_condition():
    rng = random.Random(3)
    items = random_items(rng, 2000)
    index = MetadataIndex()
    for label, meta in items.items():
        index.add(label, meta)
    for f in FILTERS:  # build the sorted arrays, so the writes below must drop them
        index.matching(f)
    for label in rng.sample(sorted(items), 700):
        index.remove(label, items[label])
        if rng.random() < 0.5:
            del items[label]
        else:
            items[label] = random_items(rng, 1)[0]
            index.add(label, items[label])
    for f in FILTERS:
        assert index.matching(f) == brute_force(items, f), f


def test_searches_building_the_sorted_arrays_at_once_agree():
    index = MetadataIndex()
    for label in range(20000):
        index.add(label, {"n": label})
    results, wanted = [], set(range(100, 200))

    def search():
        results.append(index.matching({"n": {"gte": 100, "lt": 200}}))
    threads = [threading.Thread(target=search) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [wanted] * 8
