"""Fetching the bytes of an item's or a query's image from where the request put them.

Sources are `{"staged": key}` (uploaded, in Redis), `{"inline": base64}` (a synchronous
search's uploaded image, in its request), `{"url": ...}` and `{"path": ...}` (read by
shared.encoding.path_reader). Every failure is a `SourceError` whose `code` and message go into
the job's errors (messages name the URL or the path relative to the ingest root, never an
internal path).

URLs (`fetch_url`), checked at every hop, redirects included:
- the URL and every address its host resolves to are checked first, under the policy of
  shared.encoding.url_policy (http/https only, no credentials, public addresses unless
  MMSEARCH_URL_ALLOW_PRIVATE allows others);
- the connection then goes to the checked address itself (the host name is not resolved a
  second time, so DNS rebinding cannot swap in another address); TLS still verifies the
  certificate against the host name; no proxy from the environment is used;
- at most MAX_REDIRECTS redirects, each target checked like the first URL;
- connect and per-read timeouts of MMSEARCH_URL_TIMEOUT_S, and a deadline of
  MMSEARCH_URL_TOTAL_TIMEOUT_S for the whole fetch (a server trickling bytes forever is cut
  off there);
- at most MMSEARCH_MAX_IMAGE_BYTES, checked on Content-Length and while streaming; no
  compressed transfer encodings are asked for.
"""
from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import redis

from shared.encoding.path_reader import read_path
from shared.encoding.source_errors import SourceError
from shared.encoding.url_policy import check_url_syntax, resolve_checked
from shared.store import staging
from shared.runtime.config import Settings

MAX_REDIRECTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
USER_AGENT = "mmsearch-image-fetcher/1"
URL_SAFE = "/%?=&;:@!$'()*+,~-._[]"  # kept as sent; anything else (non-ASCII) is percent-encoded


# Fetching URLs ---------------------------------------------------------------------------

def _shown(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "..."


def open_socket(family: int, sockaddr: tuple[Any, ...], timeout: float) -> socket.socket:
    """The one place a URL fetch connects (tests replace it to watch every connection)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_any(addrs: list[tuple[int, tuple[Any, ...]]], timeout: float) -> socket.socket:
    error: OSError | None = None
    for family, sockaddr in addrs:
        try:
            return open_socket(family, sockaddr, timeout)
        except OSError as exc:
            error = exc
    raise error or OSError("no address to connect to")


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to an address checked beforehand; `host` only names the Host header."""

    def __init__(self, host: str, port: int, addrs: list[tuple[int, tuple[Any, ...]]], timeout: float,
                 watchdog: "_Watchdog") -> None:
        super().__init__(host, port, timeout=timeout)
        self._addrs = addrs
        self._watchdog = watchdog

    def _raw_socket(self) -> socket.socket:
        sock = _connect_any(self._addrs, self.timeout)
        self._watchdog.attach(sock)
        return sock

    def connect(self) -> None:
        self.sock = self._raw_socket()


class _PinnedHTTPS(_PinnedHTTP, http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand; the certificate must match `host`."""

    def __init__(self, host: str, port: int, addrs: list[tuple[int, tuple[Any, ...]]], timeout: float,
                 watchdog: "_Watchdog") -> None:
        http.client.HTTPSConnection.__init__(self, host, port, timeout=timeout, context=_tls_context())
        self._addrs = addrs
        self._watchdog = watchdog

    def connect(self) -> None:
        sock = self._raw_socket()
        try:
            self.sock = self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


class _Watchdog:
    """Cuts the sockets of a fetch at its deadline, whatever call is blocked on them (a read
    timeout alone never ends a server that sends one byte just before each timeout)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    @staticmethod
    def _cut(sock: socket.socket) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
        except OSError:
            pass

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.fired:
                self._cut(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._sockets:
                self._cut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _read_body(resp: http.client.HTTPResponse, url: str, settings: Settings) -> bytes:
    limit = settings.max_image_bytes
    length = resp.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise SourceError("payload_too_large", f"image at {_shown(url)} is {int(length)} bytes; "
                                               f"at most {limit} allowed")
    body = bytearray()
    while True:
        chunk = resp.read1(CHUNK_BYTES)
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > limit:
            raise SourceError("payload_too_large", f"image at {_shown(url)} is larger than {limit} bytes")


def _get_once(url: str, settings: Settings, watchdog: _Watchdog) -> tuple[str | None, bytes]:
    """One hop: (the redirect target, b"") or (None, the body)."""
    scheme, host, port = check_url_syntax(url)
    addrs = resolve_checked(host, port, settings)  # before any connection: refused -> no packet sent
    if time.monotonic() >= watchdog.deadline:
        raise TimeoutError
    parts = urlsplit(url)
    target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe=URL_SAFE)
    cls = _PinnedHTTPS if scheme == "https" else _PinnedHTTP
    conn = cls(host, port, addrs, settings.url_timeout_s, watchdog)
    try:
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*, */*;q=0.5",
                                             "Accept-Encoding": "identity", "Connection": "close"})
        resp = conn.getresponse()
        if resp.status in REDIRECT_STATUSES:
            location = resp.getheader("Location")
            if not location:
                raise SourceError("fetch_failed", f"GET {_shown(url)} answered {resp.status} without a Location")
            return urljoin(url, location.strip()), b""
        if resp.status != 200:
            raise SourceError("fetch_failed", f"GET {_shown(url)} answered {resp.status}")
        try:
            return None, _read_body(resp, url, settings)
        finally:
            resp.close()
    finally:
        conn.close()


def fetch_url(url: str, settings: Settings) -> bytes:
    """The bytes at an http(s) URL, under the checks in this module's docstring."""
    watchdog = _Watchdog(time.monotonic() + settings.url_total_timeout_s)
    try:
        return _follow(url, settings, watchdog)
    finally:
        watchdog.cancel()


def _follow(url: str, settings: Settings, watchdog: _Watchdog) -> bytes:
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            location, body = _get_once(current, settings, watchdog)
        except SourceError:
            raise
        except (TimeoutError, socket.timeout) as exc:
            raise SourceError("fetch_failed", f"GET {_shown(current)} timed out") from exc
        except (OSError, http.client.HTTPException, ssl.SSLError, ValueError) as exc:
            if watchdog.fired:
                raise SourceError("fetch_failed", f"GET {_shown(current)} took longer than "
                                                  f"{settings.url_total_timeout_s:g} s") from exc
            raise SourceError("fetch_failed", f"GET {_shown(current)} failed: {type(exc).__name__}") from exc
        if watchdog.fired:
            raise SourceError("fetch_failed", f"GET {_shown(current)} took longer than "
                                              f"{settings.url_total_timeout_s:g} s")
        if location is None:
            return body
        current = location
    raise SourceError("fetch_failed", f"more than {MAX_REDIRECTS} redirects from {_shown(url)}")


# Any source -------------------------------------------------------------------------------

def load_image_bytes(source: dict[str, Any], r: redis.Redis, settings: Settings) -> bytes:
    """The raw bytes of one image source; SourceError when they cannot be had."""
    if not isinstance(source, dict):
        raise SourceError("invalid_item", "unknown image source")
    if "inline" in source:  # a synchronous search's uploaded image, base64 in its request
        return base64.b64decode(source["inline"])
    if "staged" in source:
        data = staging.fetch(r, source["staged"])
        if data is None:
            raise SourceError("expired", "the uploaded bytes are no longer staged (expired or deleted)")
        return data
    if "url" in source:
        return fetch_url(str(source["url"]), settings)
    if "path" in source:
        return read_path(str(source["path"]), settings)
    raise SourceError("invalid_item", "unknown image source")
