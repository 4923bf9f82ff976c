"""shared.store.replies on a real Redis: requests taken in order, dropped past their expiry or
unreadable; served in a loop; answers gathered until a count or a deadline, in bounded blocking
pops."""
from __future__ import annotations

import threading
import time

from shared.store import replies


def test_requests_are_taken_in_the_order_sent_with_their_reply_list(redis_client):
    replies.send(redis_client, {"requests:a": {"n": 1}, "requests:b": {"n": 2}}, "reply:1", expires=time.time() + 30)
    replies.send(redis_client, {"requests:a": {"n": 3}}, "reply:2", expires=time.time() + 30)
    assert 0 < redis_client.ttl("requests:a") <= replies.LIST_TTL_S
    assert replies.take(redis_client, "requests:a", 1) == replies.Request({"n": 1}, "reply:1")
    assert replies.take(redis_client, "requests:a", 1) == replies.Request({"n": 3}, "reply:2")
    assert replies.take(redis_client, "requests:b", 1) == replies.Request({"n": 2}, "reply:1")
    started = time.monotonic()
    assert replies.take(redis_client, "requests:a", 0.2) is None  # nothing came
    assert time.monotonic() - started >= 0.15


def test_a_request_past_its_expiry_or_unreadable_is_dropped(redis_client):
    replies.send(redis_client, {"requests": {"n": 1}}, "reply:late", expires=time.time() - 1)
    redis_client.rpush("requests", b"not json", b'{"request": {}}')
    replies.send(redis_client, {"requests": {"n": 2}}, "reply:fresh", expires=time.time() + 30)
    taken = [replies.take(redis_client, "requests", 1) for _ in range(4)]
    assert taken == [None, None, None, replies.Request({"n": 2}, "reply:fresh")]
    assert not redis_client.exists("requests", "reply:late")


def test_answers_are_gathered_until_all_came(redis_client):
    for n in range(3):
        replies.answer(redis_client, "reply", {"n": n})
    assert 0 < redis_client.ttl("reply") <= replies.LIST_TTL_S
    assert replies.gather(redis_client, "reply", 3, time.monotonic() + 5) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert not redis_client.exists("reply")  # popped: nothing left behind


def test_gathering_stops_at_the_deadline_in_bounded_pops(redis_client, monkeypatch):
    monkeypatch.setattr(replies, "BLPOP_MAX_S", 0.1)
    timeouts: list[float] = []
    blpop = redis_client.blpop

    def recorded(keys, timeout):
        timeouts.append(timeout)
        return blpop(keys, timeout=timeout)

    monkeypatch.setattr(redis_client, "blpop", recorded)
    replies.answer(redis_client, "reply", {"n": 1})
    started = time.monotonic()
    assert replies.gather(redis_client, "reply", 2, started + 0.6) == [{"n": 1}]  # the second never came
    assert time.monotonic() - started >= 0.55  # it waited for the second until the deadline
    assert len(timeouts) >= 2 and max(timeouts) <= 0.1  # in pops no longer than BLPOP_MAX_S
    assert replies.wait_one(redis_client, "reply", 0.2) is None
    replies.answer(redis_client, "reply", {"n": 2})
    assert replies.wait_one(redis_client, "reply", 1) == {"n": 2}


def test_serve_handles_each_request_in_turn_past_a_failing_one_until_stopped(redis_client):
    stop, handled = threading.Event(), []

    def handle(request: replies.Request) -> None:
        handled.append(request.body["n"])
        if request.body["n"] == 1:
            raise ValueError("this one fails")
        if request.body["n"] == 3:
            stop.set()

    for n in range(1, 5):
        replies.send(redis_client, {"requests": {"n": n}}, "reply", expires=time.time() + 30)
    server = threading.Thread(target=replies.serve, args=(redis_client, "requests", stop, handle, 0.1, "test"))
    server.start()
    server.join(10)
    assert not server.is_alive() and handled == [1, 2, 3]
    assert redis_client.llen("requests") == 1  # left for whoever serves the list next
