"""Shard workers (queue "shard.<slot>" and the slot's search requests): searches of the slot's
shards and item look-ups.

`python -m workers shard [--slot N]` takes the lease of a slot, loads its shards (snapshot +
log replay) and then serves: `concurrency` search threads pop the slot's search requests and a
Celery thread pool consumes `shard.<slot>` (item look-ups); the owner's applier thread keeps the
indexes up to date with the logs meanwhile.

`python -m workers shard --replica [--slot N]` runs a read replica of a slot (the slot with the
fewest replicas by default): it loads the owner's snapshots from the same `MMSEARCH_DATA_DIR`,
follows the same logs, and pops the same requests and consumes the same queue, so the slot's
searches and look-ups are spread over the owner and its replicas. It never writes a snapshot or
trims a log. A search that asks for read-your-writes (a shard's mark in `min_positions`) waits,
up to its deadline, until the process that took it has applied the log that far, and says
whether it got there.

Search requests are not Celery messages: a query worker pushes one JSON request per slot to
the list `keys.slot_searches(slot)`, naming every shard of the collection that the slot holds,
and a search thread pops it (BRPOP). Celery's delivery bookkeeping (an unacknowledged copy
written, then deleted, each a synchronous AOF write) and its task dispatch would cost more
than the search itself, and would buy nothing: a search is only useful before its deadline,
so a request lost with a killed worker makes that slot late (the query worker reports it
unanswered), and one found after its deadline (`expires`) is dropped. The slot's shards are
searched in parallel (hnswlib releases the GIL while it searches) and answered with one push,
`{"answers": [one body per shard]}`. Each shard's body carries the log position the shard had
applied when it searched (`position`), so the query worker knows which state of the collection
its merged answer reflects. The answer is pushed and the search histogram recorded in one
pipelined write. The Celery task `mmsearch.shard_search` still answers what query workers of
earlier versions send (a slot message, or one `shard`), so shard workers are upgraded first.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from shared.store import keys, queues
from shared.runtime import metrics
from shared.encoding.fusion import FusedQuery, build_query
from shared.store.serializers import vector_from_b64
from shared.store.streamids import at_least
from workers.celery_app import app
from workers.resources import redis_client, settings
from workers.shard_owner import ShardOwner

log = logging.getLogger(__name__)

_owner: ShardOwner | None = None
REPLY_TTL_S = 60
WAIT_POLL_S = 0.01
POP_TIMEOUT_S = 1.0  # a search thread's blocking pop; it sees a stop this late at most
SEARCH_THREADS = 4  # per process: the other shards of a slot message are searched on these

_search_pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="shard-search")


def owner() -> ShardOwner:
    if _owner is None:
        raise RuntimeError("this process owns no shard slot (start it with `python -m workers shard`)")
    return _owner


def _query_from_message(query: dict[str, Any]) -> FusedQuery:
    """The query of a search message: its unit blocks, their dims and the weights, fused here as
    the query worker fused them (query workers of earlier versions send the fused vector too)."""
    image = vector_from_b64(query["image"]) if query.get("image") else None
    text = vector_from_b64(query["text"]) if query.get("text") else None
    weights = query.get("weights") or {}
    if "vector" in query:
        return FusedQuery(vector_from_b64(query["vector"]), query["image_dim"], image, text, weights)
    return build_query(image, text, query["image_dim"], query["text_dim"], weights)


def _reply(reply_to: str | None, body: dict[str, Any], cid: str, timings: list[tuple[int, float]]) -> dict[str, Any]:
    """Hand the answer to the waiting query worker (a list it BLPOPs) and record the shards'
    search times, in one round trip; return the answer. A metric that cannot be recorded is
    dropped (logged), an answer that cannot be pushed raises."""
    pipe = redis_client().pipeline(transaction=False)
    if reply_to:
        pipe.rpush(reply_to, json.dumps(body))
        pipe.expire(reply_to, REPLY_TTL_S)
    for shard, seconds in timings:
        metrics.SHARD_SEARCH_HISTOGRAM.observe(pipe, (cid, str(shard)), seconds)
    results = pipe.execute(raise_on_error=False)
    pushed = 2 if reply_to else 0
    for result in results[:pushed]:
        if isinstance(result, Exception):
            raise result
    failed = [r for r in results[pushed:] if isinstance(r, Exception)]
    if failed:
        log.debug("shard search metrics not recorded: %s", failed[0])
    return body


def _wait_applied(own: ShardOwner, key: tuple[str, int], min_position: str | None,
                  wait_until: float | None) -> bool:
    """Until this process has applied shard `key`'s log up to `min_position`, or `wait_until`
    (epoch seconds) has passed; whether it got there."""
    if not min_position:
        return True
    deadline = wait_until if wait_until is not None else time.time()
    while True:
        state = own.shards.get(key)  # a reload may replace the state meanwhile
        if state is not None and at_least(state.position, min_position):
            return True
        if time.time() >= deadline:
            return False
        time.sleep(WAIT_POLL_S)


def _search_shard(own: ShardOwner, cid: str, shard: int, fused: FusedQuery, k: int, filter: dict[str, Any] | None,
                  min_position: str | None, wait_until: float | None) -> tuple[dict[str, Any], float | None]:
    """One shard's body and its index search time (None when it did not search)."""
    state = own.get(cid, shard)
    if state is None:
        refused = own.refused.get((cid, shard))
        if refused:
            return {"shard": shard, "hits": [], "error": refused[0]}, None
        return {"shard": shard, "hits": []}, None
    applied = _wait_applied(own, (cid, shard), min_position, wait_until)
    state = own.shards.get((cid, shard)) or state
    position = state.position  # set only after the entries up to it are in the index
    started = time.perf_counter()
    # Scores by block come with the hits; a zero-weighted block of the query needs the vectors.
    from_blocks = bool(state.index.image_dim) and fused.explained_by_blocks
    try:
        hits = state.index.search(fused.vector, k, filter=filter or None, return_vectors=not from_blocks)
    except Exception as exc:  # answered as not served, not left to the deadline
        log.exception("search of shard %s/%d failed", cid, shard)
        return {"shard": shard, "hits": [], "error": f"search failed: {exc}"}, None
    seconds = time.perf_counter() - started
    body: dict[str, Any] = {"shard": shard, "position": position, "hits": [
        {"id": h.id, "score": float(h.score),
         "scores": fused.block_scores(h.blocks) if from_blocks else fused.score_parts(h.vector),
         "text": h.record.text, "metadata": h.record.metadata}
        for h in hits]}
    if min_position:
        body["applied"] = applied
    if own.replica:
        body["replica"] = True
    return body, seconds


@app.task(name=queues.SHARD_SEARCH)
def shard_search(cid: str, shard: int | None, query: dict[str, Any], k: int,
                 filter: dict[str, Any] | None = None, reply_to: str | None = None,
                 min_position: str | None = None, wait_until: float | None = None,
                 shards: list[int] | None = None, min_positions: dict[str, str] | None = None) -> dict[str, Any]:
    """Top-k of each of `shards` (`min_positions`: shard -> read-your-writes mark), answered as
    {"answers": [body, ...]}; or of the one `shard` (`min_position`), answered with its body.

    A shard's body: {"shard", "position", "hits": [{"id", "score", "scores", "text", "metadata"}]},
    plus "applied" (whether its mark was reached) when it had one, or "error" (and no position)
    when the shard cannot answer."""
    own = owner()  # fails the task at once in a process that owns no slot
    if shards is None:
        if shard is None:
            raise ValueError("a shard search names `shards` or `shard`")
        body, seconds = _search_shard(own, cid, shard, _query_from_message(query), k, filter, min_position,
                                      wait_until)
        return _reply(reply_to, body, cid, [] if seconds is None else [(shard, seconds)])
    return search_slot(own, cid=cid, shards=shards, query=query, k=k, filter=filter, reply_to=reply_to,
                       wait_until=wait_until, min_positions=min_positions)


def search_slot(own: ShardOwner, cid: str, shards: list[int], query: dict[str, Any], k: int,
                filter: dict[str, Any] | None, reply_to: str | None, wait_until: float | None,
                min_positions: dict[str, str] | None) -> dict[str, Any]:
    """Search `shards` of `own`'s slot in parallel and push {"answers": [one body per shard]} to
    `reply_to`; return that answer."""
    fused = _query_from_message(query)
    marks = min_positions or {}

    def one(s: int) -> tuple[dict[str, Any], float | None]:
        return _search_shard(own, cid, s, fused, k, filter, marks.get(str(s)), wait_until)

    others = [_search_pool.submit(one, s) for s in shards[1:]]
    done = ([one(shards[0])] if shards else []) + [f.result() for f in others]
    timings = [(body["shard"], seconds) for body, seconds in done if seconds is not None]
    return _reply(reply_to, {"answers": [body for body, _ in done]}, cid, timings)


def serve_slot_searches(own: ShardOwner, stop: threading.Event) -> None:
    """Answer the search requests of `own`'s slot (keys.slot_searches: JSON of search_slot's
    arguments plus `expires`, epoch seconds) until `stop` is set, one at a time. A request whose
    query worker has given up (past `expires`) is dropped unanswered."""
    r, slot = redis_client(), own.slot
    key = keys.slot_searches(slot)
    while not stop.is_set():
        try:
            popped = r.brpop([key], timeout=POP_TIMEOUT_S)
        except redis.exceptions.RedisError as exc:
            log.warning("slot %d: search requests could not be read (%s)", slot, exc)
            stop.wait(1.0)
            continue
        if popped is None:
            continue
        try:
            request = json.loads(popped[1])
            if time.time() > request.pop("expires"):
                log.debug("slot %d: dropped a search request past its deadline", slot)
                continue
            search_slot(own, **request)
        except Exception:  # one bad request must not stop the slot's searches
            log.exception("slot %d: a search request failed", slot)


@app.task(name=queues.GET_ITEM)
def get_item(cid: str, shard: int, item_id: str, thumbnail: bool = False) -> dict[str, Any] | None:
    state = owner().get(cid, shard)
    record = state.index.get(item_id) if state is not None else None
    if record is None:
        return None
    return {"id": record.id, "text": record.text, "metadata": record.metadata,
            "has_image": record.has_image, "shard": shard,
            "thumbnail_b64": base64.b64encode(record.thumbnail).decode()
            if thumbnail and record.thumbnail else None}


def run(slot: int | None, concurrency: int, replica: bool = False) -> None:
    """Claim a slot (or a replica lease on one), load its shards, then serve its queue until stopped."""
    from workers.lease import claim_replica, claim_slot

    global _owner
    cfg = settings()
    if replica:
        lease = claim_replica(redis_client(), cfg.shard_slots, slot)
        log.info("read replica of shard slot %d of %d (%s)", lease.slot, cfg.shard_slots, lease.key)
    else:
        lease = claim_slot(redis_client(), cfg.shard_slots, slot)
        log.info("owning shard slot %d of %d", lease.slot, cfg.shard_slots)
    _owner = ShardOwner(lease.slot, cfg, redis_client(), replica=replica, lease=lease)
    _owner.start()
    # Serve only once the logs were replayed to their end, so no search sees a half-loaded shard.
    started = time.monotonic()
    while not _owner.caught_up.wait(10):
        log.info("slot %d: still replaying the logs (%.0f s)", lease.slot, time.monotonic() - started)
    log.info("slot %d: caught up with the logs in %.1f s", lease.slot, time.monotonic() - started)
    name = f"shard{lease.slot}{'r' if replica else ''}-{os.getpid()}@%h"
    stop = threading.Event()
    for i in range(concurrency):
        threading.Thread(target=serve_slot_searches, args=(_owner, stop), daemon=True,
                         name=f"slot-searches-{i}").start()
    try:
        app.worker_main(["worker", "-Q", queues.shard_queue(lease.slot), "-P", "threads",
                         "-c", str(concurrency), "-n", name,
                         "--without-gossip", "--without-mingle", "-l", cfg.log_level])
    finally:
        stop.set()
        _owner.stop()
        lease.release()
