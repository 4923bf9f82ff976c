"""The exceptions of the mmsearch client: one `ApiError` subclass per error code of docs/api.md.

`error_from_response` turns an error answer (the API's error body, or whatever a proxy sent
instead) into the matching exception.
"""
from __future__ import annotations

from typing import Any, Mapping

import requests


class ApiError(Exception):
    """An error answer of the API: HTTP status, docs/api.md code, message and details."""

    status_code: int = 0
    code: str = "error"

    def __init__(self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})" if self.status else self.message


class InvalidRequest(ApiError): status_code, code = 400, "invalid_request"
class Unauthorized(ApiError): status_code, code = 401, "unauthorized"
class NotFound(ApiError): status_code, code = 404, "not_found"
class MethodNotAllowed(ApiError): status_code, code = 405, "method_not_allowed"
class Conflict(ApiError): status_code, code = 409, "conflict"
class PayloadTooLarge(ApiError): status_code, code = 413, "payload_too_large"
class UnsupportedMediaType(ApiError): status_code, code = 415, "unsupported_media_type"
class InvalidItem(ApiError): status_code, code = 422, "invalid_item"
class RateLimited(ApiError): status_code, code = 429, "rate_limited"
class Internal(ApiError): status_code, code = 500, "internal"
class Unavailable(ApiError): status_code, code = 503, "unavailable"


class ConnectionFailed(ApiError):
    """The API did not answer at all (after the retries); status 0."""

    code = "connection_failed"


ERRORS_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls for cls in (InvalidRequest, Unauthorized, NotFound, MethodNotAllowed, Conflict,
                              PayloadTooLarge, UnsupportedMediaType, InvalidItem, RateLimited,
                              Internal, Unavailable)}
ERRORS_BY_STATUS: dict[int, type[ApiError]] = {cls.status_code: cls for cls in ERRORS_BY_CODE.values()}


def error_from_response(resp: requests.Response) -> ApiError:
    """The exception for an error answer (the API's error body, or whatever came instead)."""
    try:
        err = resp.json()["error"]
        code, message, details = str(err["code"]), str(err["message"]), err.get("details") or {}
    except (ValueError, KeyError, TypeError):
        cls = ERRORS_BY_STATUS.get(resp.status_code, ApiError)
        text = " ".join(resp.text.split())[:200] or resp.reason or "no body"
        return cls(resp.status_code, cls.code if cls is not ApiError else f"http_{resp.status_code}",
                   f"HTTP {resp.status_code}: {text}")
    cls = ERRORS_BY_CODE.get(code) or ERRORS_BY_STATUS.get(resp.status_code, ApiError)
    return cls(resp.status_code, code, message, details if isinstance(details, dict) else {"details": details})
