"""Bearer API keys on every /v1 call (MMSEARCH_API_KEYS); no keys configured -> no auth.

Keys are compared in constant time, and every configured key is compared, so neither the
answer time nor the matching key's position tells anything about the keys.
"""
from __future__ import annotations

import hmac

from flask import request

from api.context import services
from api.errors import ApiError

SCHEME = "bearer "


def _matches(presented: bytes, keys: tuple[str, ...]) -> bool:
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key.encode())
    return matched


def require_api_key() -> None:
    """before_request hook of the /v1 blueprint: 401 unless the request carries a known key."""
    keys = services().settings.api_keys
    if not keys:
        return
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith(SCHEME):
        raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'")
    if not _matches(header[len(SCHEME):].strip().encode(), keys):
        raise ApiError(401, "unauthorized", "invalid API key")
