"""The one error body of the API and the handlers that make every failure use it.

Every error leaves as `{"error": {"code", "message", "details"}}` (docs/api.md): our own
`ApiError`s, Werkzeug's HTTP errors (unknown route, wrong method, body over
MAX_CONTENT_LENGTH...), Redis or broker outages (503 `unavailable`) and unexpected exceptions
(500 `internal`, logged with their traceback, never sent one).
"""
from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, jsonify
from kombu.exceptions import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# Error code of each HTTP status Werkzeug may raise by itself; others use Werkzeug's name.
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 409: "conflict", 413: "payload_too_large",
              415: "unsupported_media_type", 422: "invalid_item", 429: "rate_limited",
              500: "internal", 503: "unavailable"}


class ApiError(Exception):
    """An error answer: HTTP status, docs/api.md code, human message and structured details."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    return response


def _api_error(exc: ApiError) -> Response:
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mmsearch"'
    return response


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = HTTP_CODES.get(status, (exc.name or "error").lower().replace(" ", "_"))
    response = error_response(status, code, exc.description or exc.name)
    if status == 405 and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def _unavailable(exc: Exception) -> Response:
    log.warning("backend unavailable: %s: %s", type(exc).__name__, exc)
    return error_response(503, "unavailable", "Redis or the task broker is not reachable",
                          {"reason": type(exc).__name__})


def _internal(exc: Exception) -> Response:
    log.exception("unhandled error")
    return error_response(500, "internal", "internal server error")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(redis.exceptions.ConnectionError, _unavailable)
    app.register_error_handler(redis.exceptions.TimeoutError, _unavailable)
    app.register_error_handler(OperationalError, _unavailable)
    app.register_error_handler(Exception, _internal)
