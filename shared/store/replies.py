"""Reply lists: requests and answers passed through Redis lists, without Celery.

The API, the query workers and the shard workers ask each other for answers this way. A
request is one JSON document pushed onto the list its servers pop (`send`): the request itself,
the list its answer goes to (`reply_to`) and the epoch second after which nobody waits for it
(`expires`). A server pops it (`take`, which drops one past its expiry unanswered; `serve`
takes them in a loop) and pushes
its answer onto `reply_to` (`answer`, or `queue_push` inside a larger pipelined write). The
asker pops the answers (`gather`, `wait_one`) until it has them all or its deadline passed, in
blocking pops of at most `BLPOP_MAX_S` each, below the Redis client's socket timeout.

Lists are first in, first out: pushed on the right, popped on the left. Each push also sets its
list's expiry, so a request nobody serves and an answer nobody pops any more (its asker gave up)
are dropped by Redis after `LIST_TTL_S`.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

log = logging.getLogger(__name__)

BLPOP_MAX_S = 5.0  # one blocking pop at most this long
LIST_TTL_S = 60    # a request or answer list nobody pops is dropped after this long
MIN_POP_S = 0.01   # the shortest blocking pop asked for (0 would mean "forever" to Redis)


@dataclass(frozen=True)
class Request:
    """A request taken from a list: what was asked and where its answer goes."""

    body: dict[str, Any]
    reply_to: str


def queue_push(pipe: redis.client.Pipeline, key: str, document: Any) -> int:
    """Queue the push of `document` (as JSON) onto list `key` and the list's expiry on `pipe`;
    how many commands that queued (their results come first, in this order)."""
    pipe.rpush(key, json.dumps(document))
    pipe.expire(key, LIST_TTL_S)
    return 2


def send(r: redis.Redis, requests: Mapping[str, dict[str, Any]], reply_to: str, expires: float) -> None:
    """Push each request onto its list (list key -> request), all in one pipelined write; each
    names `reply_to` for its answer and is dropped unanswered after `expires` (epoch seconds)."""
    pipe = r.pipeline(transaction=False)
    for key, body in requests.items():
        queue_push(pipe, key, {"request": body, "reply_to": reply_to, "expires": expires})
    pipe.execute()


def take(r: redis.Redis, key: str, timeout_s: float) -> Request | None:
    """The next request on list `key`, waiting up to `timeout_s` (at most BLPOP_MAX_S); None when
    none came, or the one that came is past its expiry or unreadable (dropped, logged)."""
    popped = r.blpop([key], timeout=max(MIN_POP_S, min(timeout_s, BLPOP_MAX_S)))
    if popped is None:
        return None
    try:
        document = json.loads(popped[1])
        request = Request(document["request"], document["reply_to"])
        expires = float(document["expires"])
    except (ValueError, KeyError, TypeError):
        log.warning("%s: dropped a request that is not one: %.200r", key, popped[1])
        return None
    if time.time() > expires:
        log.debug("%s: dropped a request past its deadline", key)
        return None
    return request


def serve(r: redis.Redis, key: str, stop: threading.Event, handle: Callable[[Request], None],
          pop_timeout_s: float, what: str) -> None:
    """Take the requests of list `key` (`take`) and `handle` each, one at a time, until `stop`
    is set (seen within `pop_timeout_s`). Redis away: logged, tried again a second later; a
    request whose handling raised: logged, and the next one served all the same. `what` names
    the list in the log."""
    while not stop.is_set():
        try:
            request = take(r, key, pop_timeout_s)
        except redis.exceptions.RedisError as exc:
            log.warning("%s: requests could not be read (%s)", what, exc)
            stop.wait(1.0)
            continue
        if request is None:
            continue
        try:
            handle(request)
        except Exception:
            log.exception("%s: a request failed", what)


def answer(r: redis.Redis, reply_to: str, body: Any) -> None:
    """Push `body` onto the asker's list `reply_to`."""
    pipe = r.pipeline(transaction=False)
    queue_push(pipe, reply_to, body)
    pipe.execute()


def gather(r: redis.Redis, key: str, expected: int, deadline: float) -> list[Any]:
    """The answers pushed onto `key`, popped until `expected` came or the deadline (a
    time.monotonic() value) passed. The list is gone once its last answer is popped; one that
    comes too late expires with it."""
    answers: list[Any] = []
    while len(answers) < expected:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        popped = r.blpop([key], timeout=max(MIN_POP_S, min(left, BLPOP_MAX_S)))
        if popped is not None:
            answers.append(json.loads(popped[1]))
    return answers


def ask(r: redis.Redis, requests: Mapping[str, dict[str, Any]], reply_to: str, timeout_s: float) -> list[Any]:
    """`send` the requests (list key -> request) and `gather` their answers on `reply_to` for up
    to `timeout_s`: the answers that came (fewer than the requests when some did not)."""
    send(r, requests, reply_to, expires=time.time() + timeout_s)
    return gather(r, reply_to, len(requests), time.monotonic() + timeout_s)


def wait_one(r: redis.Redis, key: str, timeout_s: float) -> Any | None:
    """The one answer pushed onto `key` within `timeout_s`; None when none came (so an answer
    is never JSON null)."""
    answers = gather(r, key, 1, time.monotonic() + timeout_s)
    return answers[0] if answers else None
