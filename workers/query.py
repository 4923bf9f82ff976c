"""Query workers: encode a search, fan it out to the shard slots, merge the top-k.

Synchronous searches are requests on the list keys.SEARCH_REQUESTS (shared.store.replies; the
API waits for the answer), popped by the process's request threads (`serve_requests`);
asynchronous ones are Celery tasks on the queue "query", whose answer goes into their job.
Both run `run`.

A search (`_search`) reads the collection's state (workers.search_reads: is it live, which slots are, the
shard logs' ends or the marks of `after_job`), encodes the query (workers.query_message: text
with GloVe, no torch; an image with the collection's image model), asks every live slot for its
shards' top-k and merges what they answered by the shard deadline (workers.fanout). A step that
refuses the search (workers.search_refused) makes its error the answer.

The result is pushed to the list the synchronous caller (the API) named in its request's
`reply_to`, or stored in the search's job when it is asynchronous. A search that
fails unexpectedly answers an `internal` error there before it fails, so nobody waits for it
until a timeout.

Result cache (`workers.search_cache`): an answer that every shard gave from a state at least as
new as the end of its log is kept in this process and served again (`cached: true`) for the
same encoded query, k and filter while every log still ends there and every slot of the
collection is live. Searches with `after_job` neither use nor fill it.

Read-your-writes: with `after_job`, each slot request carries, per shard, the highest log
position that job wrote there (its marks), and the process that takes it (owner or replica)
waits, within the deadline, until it has applied that far. The answer's `consistency` says
whether the job had counted all its items when the search started and whether every shard got
that far.
"""
from __future__ import annotations

import threading
import time
from typing import Any

from shared.runtime import logs
from shared.store import jobs, keys, queues, replies
from shared.store.streamids import at_least
from workers import fanout, query_message, search_cache, search_reads
from workers.celery_app import app
from workers.resources import redis_client, settings
from workers.search_refused import SearchRefused

POP_TIMEOUT_S = 1.0  # a request thread's blocking pop; it sees a stop this late at most

_cache = search_cache.ResultCache()


def _finish(job_id: str | None, reply_to: str | None, body: dict[str, Any]) -> dict[str, Any]:
    """Hand the outcome to whoever waits for it: an async search's job, a sync caller's list."""
    r = redis_client()
    if job_id:
        error = body.get("error")
        jobs.set_search_result(r, job_id, None if error else body, error, settings().job_ttl_s)
    if reply_to:
        replies.answer(r, reply_to, body)
    return body


@app.task(name=queues.SEARCH, bind=True)
def search(self, collection: str, cid: str, text: str | None, image: dict[str, Any] | None, k: int,
           weights: dict[str, float] | None, filter: dict[str, Any] | None, job_id: str | None = None,
           after_job: str | None = None, reply_to: str | None = None, offset: int = 0):
    """An asynchronous search (its job's id in `job_id`)."""
    return run(self.request.id or jobs.new_job_id(), collection, cid, text, image, k, weights, filter, job_id,
               after_job, reply_to, offset)


def run(search_id: str, collection: str, cid: str, text: str | None, image: dict[str, Any] | None, k: int,
        weights: dict[str, float] | None, filter: dict[str, Any] | None, job_id: str | None = None,
        after_job: str | None = None, reply_to: str | None = None, offset: int = 0) -> dict[str, Any]:
    """Answer one search (hits `offset`..`offset + k - 1`) to its job and/or `reply_to`; return the body."""
    logs.bind(job_id=job_id)  # async searches have a job; sync ones unbind the previous one's
    try:
        body = _search(search_id, collection, cid, text, image, offset + k, weights, filter, after_job)
        body = body if body.get("error") else fanout.page_of(body, offset, k)
    except Exception:
        _finish(job_id, reply_to, SearchRefused("internal", "search failed").body())
        raise
    return _finish(job_id, reply_to, body)


def serve_requests(stop: threading.Event) -> None:
    """Answer the synchronous searches of keys.SEARCH_REQUESTS, one at a time, until `stop` is
    set; a request past its deadline is dropped unanswered (shared.store.replies)."""
    # A search that fails has answered `internal` already (`run`); the next is served all the same.
    replies.serve(redis_client(), keys.SEARCH_REQUESTS, stop,
                  lambda request: run(reply_to=request.reply_to, **request.body), POP_TIMEOUT_S, "search requests")


def start_request_threads(count: int, stop: threading.Event) -> list[threading.Thread]:
    """`count` started threads that run `serve_requests` until `stop` is set."""
    threads = [threading.Thread(target=serve_requests, args=(stop,), daemon=True, name=f"search-requests-{i}")
               for i in range(count)]
    for thread in threads:
        thread.start()
    return threads


def _timings(encoding: float, encoded: float) -> dict[str, float]:
    """The answer's `timings`: the query's own decoding and encoding, and what followed it
    (the shards' searches and the merge, or the cache look-up), in ms (perf_counter marks)."""
    return {"encode_ms": round((encoded - encoding) * 1000, 2),
            "search_ms": round((time.perf_counter() - encoded) * 1000, 2)}


def _search(search_id: str, collection: str, cid: str, text: str | None, image: dict[str, Any] | None,
            k: int, weights: dict[str, float] | None, filter: dict[str, Any] | None,
            after_job: str | None) -> dict[str, Any]:
    """The search's answer: the merged hits, or the error of the step that refused it."""
    started = time.time()
    r, cfg = redis_client(), settings()
    try:
        coll = search_reads.known_collection(r, collection, cid)
        state = search_reads.read_state(r, coll, cfg.shard_slots, after_job)
        encoding = time.perf_counter()
        rgb = query_message.decode_image(image, r, cfg) if image else None
        message = query_message.encode(coll, rgb, text, weights)
        encoded = time.perf_counter()
    except SearchRefused as refused:
        return refused.body()
    cache_key = search_cache.entry_key(cid, message, k, filter) if state.ends is not None else None
    if cache_key is not None and state.all_live:
        cached = _cache.get(cache_key, state.ends)
        if cached is not None:
            return {**cached, "took_ms": round((time.time() - started) * 1000, 2), "cached": True,
                    "timings": _timings(encoding, encoded)}

    result = fanout.ask_slots(r, search_id, cid, state.targets(), message, k, filter, state.marks,
                              cfg.shard_timeout_s)
    body = fanout.merged_body(result, k, coll.shards, started, cfg.shard_timeout_s)
    body["timings"] = _timings(encoding, encoded)
    complete = len(result.answered) == coll.shards
    if after_job:
        applied = all(a.get("applied", True) for a in result.answered)
        body["consistency"] = {"after_job": after_job, "counted": state.counted, "applied": applied,
                               "met": state.counted and applied and complete}
    elif cache_key is not None and complete and \
            all(at_least(a.get("position"), state.ends[a["shard"]]) for a in result.answered):
        _cache.put(cache_key, state.ends, body)
    return body
