"""Shard workers (the slot's request list): searches of the slot's shards, item look-ups and pages.

`python -m workers shard` takes the lease of every free slot up to `MMSEARCH_SHARD_MAX_SLOTS`
(and of slots whose owner died later on, workers.slot_keeper; `--slot N`: slot N alone), loads
each slot's shards (snapshot + log replay) and then serves it: `concurrency` request threads per
slot pop the slot's requests until SIGTERM or SIGINT, while the slot owner's applier thread keeps
the indexes up to date with the logs.

`python -m workers shard --replica [--slot N]` runs a read replica of a slot (the slot with the
fewest replicas by default): it loads the owner's snapshots from the same `MMSEARCH_DATA_DIR`,
follows the same logs and pops the same requests, so the slot's searches and look-ups are
spread over the owner and its replicas. It never writes a snapshot or trims a log. A search
that asks for read-your-writes (a shard's mark in `min_positions`) waits, up to its deadline,
until the process that took it has applied the log that far, and says whether it got there.

Requests are not Celery messages: a query worker pushes one search request per slot, and the
API one look-up request, onto the list `keys.slot_searches(slot)` (shared.store.replies; what
each asks is its "op", shared.store.queues), and a request thread pops it. Celery's delivery
bookkeeping (an unacknowledged copy written, then deleted, each a synchronous AOF write) and
its task dispatch would cost more than the search itself, and would buy nothing: a request is
only useful before its deadline, so one lost with a killed worker makes that slot late (the
asker reports it unanswered), and one found after its deadline is dropped.

A search request names every shard of the collection that the slot holds; they are searched in
parallel (hnswlib releases the GIL while it searches) and answered with one push,
`{"answers": [one body per shard]}`. Each shard's body carries the log position the shard had
applied when it searched (`position`), so the query worker knows which state of the collection
its merged answer reflects. The answer is pushed and the search histogram recorded in one
pipelined write. A look-up is answered `{"item": record or null}`, an existence check (ids by
shard) `{"present": [the ids held]}`, a page of items (workers.item_pages) `{"page": {"items":
[the first `limit` of the slot's shards after the cursor, in id order], "unserved": [shards not
loaded here]}}`; each is `{"error"}` when it failed here.
"""

from __future__ import annotations

import base64
import functools
import heapq
import itertools
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from shared.store import keys, queues, replies
from shared.runtime import metrics
from shared.encoding.fusion import FusedQuery, build_query
from shared.store.serializers import vector_from_b64
from shared.store.streamids import at_least
from workers.item_pages import shard_page
from workers.resources import redis_client, settings
from workers.slot_follower import SlotFollower

log = logging.getLogger(__name__)

WAIT_POLL_S = 0.01
POP_TIMEOUT_S = 1.0  # a request thread's blocking pop; it sees a stop this late at most
CATCH_UP_SAY_S = 10.0  # a slot's replay in progress is logged this often
SEARCH_THREADS = 4  # per process: the other shards of a slot message are searched on these

_search_pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="shard-search")


def _query_from_message(query: dict[str, Any]) -> FusedQuery:
    """The query of a search request: its unit blocks, their dims and the weights, fused here as
    the query worker fused them."""
    image = vector_from_b64(query["image"]) if query.get("image") else None
    text = vector_from_b64(query["text"]) if query.get("text") else None
    return build_query(image, text, query["image_dim"], query["text_dim"], query.get("weights") or {})


def _reply(reply_to: str | None, body: dict[str, Any], cid: str, role: str,
           timings: list[tuple[int, float]]) -> dict[str, Any]:
    """Hand the answer to the waiting query worker (shared.store.replies) and record the shards'
    search times, in one round trip; return the answer. A metric that cannot be recorded is
    dropped (logged), an answer that cannot be pushed raises."""
    pipe = redis_client().pipeline(transaction=False)
    pushed = replies.queue_push(pipe, reply_to, body) if reply_to else 0
    for shard, seconds in timings:
        metrics.SHARD_SEARCH_HISTOGRAM.observe(pipe, (cid, str(shard), role), seconds)
    results = pipe.execute(raise_on_error=False)
    for result in results[:pushed]:
        if isinstance(result, Exception):
            raise result
    failed = [r for r in results[pushed:] if isinstance(r, Exception)]
    if failed:
        log.debug("shard search metrics not recorded: %s", failed[0])
    return body


def _wait_applied(own: SlotFollower, key: tuple[str, int], min_position: str | None,
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


def _search_shard(own: SlotFollower, cid: str, shard: int, fused: FusedQuery, k: int, filter: dict[str, Any] | None,
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


def search_slot(own: SlotFollower, cid: str, shards: list[int], query: dict[str, Any], k: int,
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
    return _reply(reply_to, {"answers": [body for body, _ in done]}, cid, own.role, timings)


def look_up(own: SlotFollower, cid: str, shard: int, item_id: str, thumbnail: bool) -> dict[str, Any] | None:
    """`own`'s record of an item (with its thumbnail, base64, when asked and stored); None when
    the shard does not hold it."""
    state = own.get(cid, shard)
    record = state.index.get(item_id) if state is not None else None
    if record is None:
        return None
    return {"id": record.id, "text": record.text, "metadata": record.metadata,
            "has_image": record.has_image, "shard": shard,
            "thumbnail_b64": base64.b64encode(record.thumbnail).decode()
            if thumbnail and record.thumbnail else None}


def present(own: SlotFollower, cid: str, ids: dict[str, list[str]]) -> list[str]:
    """Which of the ids (by shard) `own`'s shards hold."""
    out = []
    for shard, wanted in ids.items():
        state = own.get(cid, int(shard))
        if state is not None:
            out += [item_id for item_id in wanted if item_id in state.index]
    return out


def list_page(own: SlotFollower, cid: str, shards: list[int], after: str | None, limit: int,
              filter: dict[str, Any] | None, fields: list[str]) -> dict[str, Any]:
    """The first `limit` items of `shards` (of `own`'s slot) with ids after `after`, in id
    order, and the shards that are not loaded here (a page without them would skip items)."""
    pages, unserved = [], []
    for shard in shards:
        state = own.get(cid, shard)
        if state is None:
            unserved.append(shard)
            continue
        pages.append(shard_page(state.index, state.position, shard, after, limit, filter, tuple(fields)))
    merged = heapq.merge(*pages, key=lambda item: item["id"])
    return {"items": list(itertools.islice(merged, limit)), "unserved": unserved}


def _answer(own: SlotFollower, request: replies.Request, field: str, what: str,
            compute: Callable[..., Any]) -> None:
    """Answer a request with {field: compute(own, **its body)}, or {"error"} when that failed."""
    try:
        body: dict[str, Any] = {field: compute(own, **request.body)}
    except Exception:
        log.exception("slot %d: %s failed", own.slot, what)
        body = {"error": f"{what} failed"}
    replies.answer(redis_client(), request.reply_to, body)


def _serve(own: SlotFollower, request: replies.Request) -> None:
    """Do what one request of the slot's list asks (its "op", shared.store.queues)."""
    op = request.body.pop("op", None)
    if op == queues.SLOT_SEARCH:
        search_slot(own, reply_to=request.reply_to, **request.body)
    elif op == queues.SLOT_ITEM:
        _answer(own, request, "item", "look-up", look_up)
    elif op == queues.SLOT_EXISTS:
        _answer(own, request, "present", "existence check", present)
    elif op == queues.SLOT_LIST:
        _answer(own, request, "page", "listing", list_page)
    else:
        log.warning("slot %d: dropped a request of unknown op %r", own.slot, op)


def serve_slot_requests(own: SlotFollower, stop: threading.Event) -> None:
    """Answer the requests of `own`'s slot (keys.slot_searches, shared.store.replies: searches
    and item look-ups) until `stop` is set, one at a time. A request whose asker has given up
    (past its expiry) is dropped unanswered."""
    replies.serve(redis_client(), keys.slot_searches(own.slot), stop, functools.partial(_serve, own),
                  POP_TIMEOUT_S, f"slot {own.slot}")


def serve_slot(own: SlotFollower, stop: threading.Event, concurrency: int) -> None:
    """Once `own` has replayed the logs to their end (so that no search sees a half-loaded
    shard), answer its slot's requests on `concurrency` threads until `stop` is set; an owner
    then marks its slot served."""
    started = time.monotonic()
    while not own.caught_up.wait(CATCH_UP_SAY_S):
        if stop.is_set():
            return
        log.info("slot %d: still replaying the logs (%.0f s)", own.slot, time.monotonic() - started)
    log.info("slot %d: caught up with the logs in %.1f s", own.slot, time.monotonic() - started)
    for i in range(concurrency):
        threading.Thread(target=serve_slot_requests, args=(own, stop), daemon=True,
                         name=f"slot-{own.slot}-requests-{i}").start()
    if own.lease is not None and not own.replica:
        own.lease.serve()  # /readyz waits for this (shared.store.slots)


def _until_signalled() -> None:
    """Return on SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def run(slot: int | None, concurrency: int, replica: bool = False) -> None:
    """Own every free slot up to the cap (`--slot N`: slot N; workers.slot_keeper), or hold a
    replica lease on one slot; serve until SIGTERM or SIGINT."""
    from workers.lease import claim_replica
    from workers.shard_replica import ShardReplica
    from workers.slot_keeper import SlotKeeper

    cfg = settings()
    serve = functools.partial(serve_slot, concurrency=concurrency)
    if not replica:
        keeper = SlotKeeper(redis_client(), cfg, serve, slot)
        keeper.start()
        try:
            _until_signalled()
        finally:
            keeper.stop()
        return
    lease = claim_replica(redis_client(), cfg.shard_slots, slot)
    log.info("read replica of shard slot %d of %d (%s)", lease.slot, cfg.shard_slots, lease.key)
    own = ShardReplica(lease.slot, cfg, redis_client(), lease=lease)
    own.start()
    stop = threading.Event()  # the replica's request threads
    serve(own, stop)
    try:
        _until_signalled()
    finally:
        stop.set()
        own.stop()
        lease.release()
