"""Rate limiting of /v1 calls: a fixed-window counter per API key (or client address) in Redis.

`MMSEARCH_RATE_LIMIT="N/S"` allows N requests per S-second window to each identity; unset or 0
turns it off (the default). The identity is a hash of the API key a request authenticated
with (the key itself is never stored), or the client's address when no keys are configured.
Requests that fail authentication count against their client address, so guessing keys is
throttled too. Over the limit: 429 `rate_limited` with `Retry-After` (seconds until the window
ends). Every limited answer, refused or not, carries `X-RateLimit-Limit`,
`X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds).

The counter is `INCR` + `EXPIRE` on a key named after the identity and the window number, so
all API processes share it and it costs one round trip per request. The client address is
the TCP peer (`request.remote_addr`); behind a reverse proxy that is the proxy, so limit per
key there.
"""
from __future__ import annotations

import hashlib
import math
import time

from flask import Response, after_this_request, request

from api.context import services
from api.errors import ApiError

PREFIX = "mms:ratelimit"


def key_identity(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]


def address_identity() -> str:
    return "addr:" + (request.remote_addr or "unknown")


def charge(identity: str) -> None:
    """Count one request of `identity`; raise 429 once it is over the limit of this window."""
    settings = services().settings
    limit, window = settings.rate_limit, settings.rate_limit_window_s
    if limit <= 0:
        return
    now = time.time()
    number = int(now // window)
    counter = f"{PREFIX}:{identity}:{number}"
    pipe = services().redis.pipeline(transaction=True)
    pipe.incr(counter)
    pipe.expire(counter, window + 1)
    used = int(pipe.execute()[0])
    reset = max(1, math.ceil((number + 1) * window - now))

    @after_this_request
    def _headers(response: Response) -> Response:
        response.headers["X-RateLimit-Limit"] = str(limit)
        response.headers["X-RateLimit-Remaining"] = str(max(0, limit - used))
        response.headers["X-RateLimit-Reset"] = str(reset)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(reset)
        return response

    if used > limit:
        raise ApiError(429, "rate_limited",
                       f"more than {limit} requests in {window} s; retry in {reset} s",
                       {"limit": limit, "window_s": window, "retry_after_s": reset})
