"""Metadata filters: the shard's MetadataIndex against a brute-force check of every item."""
import random
import threading

import pytest

from shared.index.filters import MetadataIndex

MISSING = object()


def _elements(value):
    if isinstance(value, list):
        return [v for v in value if not isinstance(v, (list, dict))]
    return [] if value is MISSING or isinstance(value, dict) else [value]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def meets(value, condition) -> bool:
    """What a condition means for one item's value (the definition the index must agree with)."""
    if not isinstance(condition, dict):
        return any(v == condition for v in _elements(value))
    tests = {
        "$eq": lambda a: any(v == a for v in _elements(value)),
        "$ne": lambda a: not any(v == a for v in _elements(value)),
        "$in": lambda a: any(v == x for v in _elements(value) for x in a),
        "$nin": lambda a: not any(v == x for v in _elements(value) for x in a),
        "$gt": lambda a: any(_number(v) and v > a for v in _elements(value)),
        "$gte": lambda a: any(_number(v) and v >= a for v in _elements(value)),
        "$lt": lambda a: any(_number(v) and v < a for v in _elements(value)),
        "$lte": lambda a: any(_number(v) and v <= a for v in _elements(value)),
        "$exists": lambda a: (value is not MISSING) == a,
    }
    return all(tests[op](arg) for op, arg in condition.items())


def brute_force(items: dict[int, dict], conditions: dict) -> set[int]:
    def holds(meta, f) -> bool:
        for key, c in f.items():
            if key == "$and" and not all(holds(meta, g) for g in c):
                return False
            if key == "$or" and not any(holds(meta, g) for g in c):
                return False
            if key not in ("$and", "$or") and not meets(meta.get(key, MISSING), c):
                return False
        return True
    return {label for label, meta in items.items() if holds(meta, conditions)}


def random_items(rng: random.Random, n: int) -> dict[int, dict]:
    items = {}
    for label in range(n):
        meta = {}
        if rng.random() < 0.9:
            meta["city"] = rng.choice(["paris", "rome", "oslo", "lima", None])
        if rng.random() < 0.8:
            meta["year"] = rng.choice([rng.randint(1990, 2025), float(rng.randint(1990, 2025)) + 0.5])
        if rng.random() < 0.3:
            meta["year"] = rng.choice(["1999", True, [2000, 2010], {"y": 2000}])
        if rng.random() < 0.5:
            meta["tags"] = rng.sample(["red", "blue", "green", 3], rng.randint(0, 3))
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
    {"tags": "red"},
    {"tags": 3},
    {"city": {"$in": ["rome", "oslo"]}},
    {"city": {"$in": []}},
    {"city": {"$nin": ["rome", None]}},
    {"city": {"$ne": "paris"}},
    {"city": {"$eq": "lima"}},
    {"tags": {"$ne": "red"}},
    {"tags": {"$nin": ["red", "blue"]}},
    {"city": {"$exists": True}},
    {"year": {"$exists": False}},
    {"year": {"$gte": 2000, "$lt": 2010}},
    {"year": {"$gt": 2000.5}},
    {"year": {"$lte": 1995}},
    {"year": {"$gt": 2030}},
    {"year": {"$gt": 2005, "$lt": 2005.5}},  # no one number between: only lists like [2000, 2010]
    {"year": {"$in": [2001, 2002, "1999"], "$gte": 2002}},
    {"city": "lima", "year": {"$gte": 2010}, "odd": False},
    {"$or": [{"city": "paris"}, {"year": {"$lt": 1995}}]},
    {"$and": [{"tags": "red"}, {"$or": [{"odd": True}, {"city": {"$exists": False}}]}]},
    {"$and": []},
    {"absent": 1},
    {"absent": {"$ne": 1}},
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
        results.append(index.matching({"n": {"$gte": 100, "$lt": 200}}))
    threads = [threading.Thread(target=search) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [wanted] * 8
