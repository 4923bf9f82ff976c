"""The job listing's index: newest first, pages after a cursor that new jobs never shift, ties
of created_at, filters, expired records forgotten."""
import itertools

import pytest

from shared.store import job_listing, jobs, keys
from shared.store.job_listing import Cursor, JobFilter


@pytest.fixture
def clock(monkeypatch):
    """jobs.now() under the test's control: each call gives the next value of `times`."""
    times = {"next": iter(itertools.count(1000.0, 1.0))}
    monkeypatch.setattr(jobs, "now", lambda: next(times["next"]))
    return times


def scan(r, limit, wanted=JobFilter(), scan_max=1000, between=lambda: None):
    seen, after = [], None
    while True:
        page, after = job_listing.list_jobs(r, 60, after, limit, wanted, scan_max)
        seen += page
        if after is None:
            return seen
        between()


def test_pages_go_newest_first_through_ties_and_new_jobs_do_not_shift_them(redis_client, clock):
    r = redis_client
    made = [jobs.create_job(r, "ingest", "photos", "c1", 1) for _ in range(10)]
    clock["next"] = iter([2000.0] * 7)  # seven jobs created in the same instant
    made += [jobs.create_job(r, "delete", "photos", "c1", 1) for _ in range(7)]
    clock["next"] = iter(itertools.count(3000.0, 1.0))
    expected = [j for j in reversed(made[:10])]
    expected = sorted(made[10:], reverse=True) + expected
    newer = []
    seen = scan(r, 3, between=lambda: newer.append(jobs.create_job(r, "search", "photos", "c1", 1)))
    assert [v["id"] for v in seen] == expected  # each once, in order; the newer ones come before the scan
    assert newer and not set(newer) & {v["id"] for v in seen}
    assert set(seen[0]) == {"id", "kind", "collection", "state", "total", "done", "failed", "created_at",
                            "started_at", "finished_at", "cancel_requested"}
    assert str(Cursor.parse(f"{2000.0!r}:{made[12]}")) == f"2000.0:{made[12]}"
    assert Cursor.parse("soon:abc") is None and Cursor.parse("1.5:a b") is None


def test_filters_and_a_bounded_look_and_expired_jobs_are_forgotten(redis_client, clock):
    r = redis_client
    kinds = ["ingest", "delete", "search"] * 5
    made = [jobs.create_job(r, kind, "photos" if n % 2 else "art", "c1", 1) for n, kind in enumerate(kinds)]
    got = scan(r, 100, JobFilter(collection="photos", kind="delete"))
    assert [v["id"] for v in got] == [j for n, j in reversed(list(enumerate(made)))
                                      if n % 2 and kinds[n] == "delete"]
    assert [v["state"] for v in scan(r, 100, JobFilter(state="queued"))] == ["queued"] * 15
    page, after = job_listing.list_jobs(r, 60, None, 5, JobFilter(kind="delete", collection="art"), 6)
    assert len(page) == 1 and after is not None  # looked at 6 jobs only (n = 14..9); more to look at
    r.delete(keys.job(made[-1]), keys.job(made[0]))
    assert len(scan(r, 4)) == 13 and r.zcard(keys.JOBS_BY_TIME) == 13  # met while listing: dropped
    r.delete(keys.job(made[1]))
    assert job_listing.prune_oldest(r) == 1 and r.zcard(keys.JOBS_BY_TIME) == 12
