"""Bearer API keys with optional scopes on every /v1 call, and the per-key rate limit.

With MMSEARCH_API_KEYS unset there is no auth (the API then listens on loopback only). Else
every /v1 call needs `Authorization: Bearer <key>`: 401 `unauthorized` without a known key,
403 `forbidden` when the key lacks the scope the call needs:

- `read`: every GET under /v1, searches, existence checks and exports;
- `write`: ingesting items, deleting items (one, or many by ids or filter), cancelling a job;
- `admin`: creating (importing too) and deleting collections.

A key configured without a scope list (`key`) has all three; `key:read+write` only those.
Scopes do not imply each other. Any /v1 route not listed below needs `read` when it is a GET
and `admin` otherwise, so a new route is closed to narrow keys until it is classified.

Keys are compared in constant time, and every configured key is compared, so neither the
answer time nor the matching key's position tells anything about the keys.
"""
from __future__ import annotations

import hmac

from flask import request

from api import ratelimit
from api.context import services
from api.errors import ApiError
from shared.runtime.config import SCOPES

SCHEME = "bearer "
READ, WRITE, ADMIN = SCOPES
ALL_SCOPES = frozenset(SCOPES)

# Endpoint -> the scope it needs (Flask endpoint names of the nested /v1 blueprints).
ENDPOINT_SCOPES = {
    "v1.collections.list_all": READ,
    "v1.collections.show": READ,
    "v1.collections.create": ADMIN,
    "v1.collections.delete": ADMIN,
    "v1.items.ingest": WRITE,
    "v1.items.show": READ,
    "v1.items.exists": READ,
    "v1.items.thumbnail": READ,
    "v1.items.delete": WRITE,
    "v1.item_deletes.delete_many": WRITE,
    "v1.jobs.show": READ,
    "v1.jobs.cancel": WRITE,
    "v1.search.search": READ,
    "v1.exports.export": READ,
    "v1.exports.download": READ,
    "v1.exports.import_collection": ADMIN,
}


def required_scope(endpoint: str | None, method: str) -> str:
    scope = ENDPOINT_SCOPES.get(endpoint or "")
    if scope is not None:
        return scope
    return READ if method in ("GET", "HEAD") else ADMIN


def _match(presented: bytes, keys: tuple[str, ...]) -> str | None:
    """The configured key equal to `presented`, comparing against every key in constant time."""
    matched = None
    for key in keys:
        if hmac.compare_digest(presented, key.encode()):
            matched = key
    return matched


def require_api_key() -> None:
    """before_request hook of the /v1 blueprint: the key, its scope, then the rate limit."""
    settings = services().settings
    keys = settings.api_keys
    if not keys:
        ratelimit.charge(ratelimit.address_identity())
        return
    header = request.headers.get("Authorization", "")
    key = None
    if header[:len(SCHEME)].lower() == SCHEME:
        key = _match(header[len(SCHEME):].strip().encode(), keys)
    if key is None:
        ratelimit.charge(ratelimit.address_identity())  # guessing keys is throttled too
        if header[:len(SCHEME)].lower() != SCHEME:
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
        raise ApiError(401, "unauthorized", "invalid API key")
    ratelimit.charge(ratelimit.key_identity(key))
    scope = required_scope(request.endpoint, request.method)
    granted = settings.api_key_scopes.get(key, ALL_SCOPES)
    if scope not in granted:
        raise ApiError(403, "forbidden", f"this API key lacks the {scope!r} scope that this call needs",
                       {"required_scope": scope, "key_scopes": sorted(granted)})
