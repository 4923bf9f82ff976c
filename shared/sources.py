"""Fetching the bytes of an item's or a query's image from where the request put them.

Sources are `{"staged": key}` (uploaded, in Redis), `{"url": ...}` (http/https, streamed with a
size cap and timeouts, private addresses refused unless allowed) and `{"path": ...}` (a file
inside MMSEARCH_INGEST_ROOT, already resolved by the API and checked again here).
"""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from shared import staging
from shared.config import Settings
from shared.errors import MMSearchError

MAX_REDIRECTS = 3


class SourceError(MMSearchError):
    """The image of one item could not be fetched; `code` goes into the job's errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _check_host(host: str, settings: Settings) -> None:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise SourceError("fetch_failed", f"cannot resolve host {host!r}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not settings.url_allow_private and not addr.is_global:
            raise SourceError("forbidden_url", f"{host} resolves to a non-public address")


def fetch_url(url: str, settings: Settings) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError("forbidden_url", "only http and https URLs are allowed")
        _check_host(parts.hostname, settings)
        try:
            with requests.get(url, stream=True, allow_redirects=False,
                              timeout=(settings.url_timeout_s, settings.url_timeout_s)) as resp:
                if resp.is_redirect and resp.headers.get("location"):
                    url = requests.compat.urljoin(url, resp.headers["location"])
                    continue
                if resp.status_code != 200:
                    raise SourceError("fetch_failed", f"GET {url} answered {resp.status_code}")
                body = bytearray()
                for chunk in resp.iter_content(64 * 1024):
                    body += chunk
                    if len(body) > settings.max_image_bytes:
                        raise SourceError("payload_too_large",
                                          f"image at {url} is larger than {settings.max_image_bytes} bytes")
                return bytes(body)
        except requests.RequestException as exc:
            raise SourceError("fetch_failed", f"GET {url} failed: {type(exc).__name__}") from exc
    raise SourceError("fetch_failed", f"more than {MAX_REDIRECTS} redirects")


def read_path(path: str, settings: Settings) -> bytes:
    if settings.ingest_root is None:
        raise SourceError("forbidden_path", "path images need MMSEARCH_INGEST_ROOT")
    root = settings.ingest_root.resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(root):
        raise SourceError("forbidden_path", "path is outside the ingest root")
    if not target.is_file():
        raise SourceError("not_found", f"no file {target.relative_to(root)} in the ingest root")
    if target.stat().st_size > settings.max_image_bytes:
        raise SourceError("payload_too_large", f"file is larger than {settings.max_image_bytes} bytes")
    return target.read_bytes()


def load_image_bytes(source: dict[str, Any], r: redis.Redis, settings: Settings) -> bytes:
    """The raw bytes of one image source; SourceError when they cannot be had."""
    if "staged" in source:
        data = staging.fetch(r, source["staged"])
        if data is None:
            raise SourceError("expired", "the uploaded bytes are no longer staged (expired or deleted)")
        return data
    if "url" in source:
        return fetch_url(source["url"], settings)
    if "path" in source:
        return read_path(source["path"], settings)
    raise SourceError("invalid_item", "unknown image source")
