"""Fetching the bytes of an item's or a query's image from where the request put them.

Sources are `{"staged": key}` (uploaded, in Redis), `{"url": ...}` and `{"path": ...}`. Every
failure is a `SourceError` whose `code` and message go into the job's errors (messages name
the URL or the path relative to the ingest root, never an internal path).

URLs (`fetch_url`), checked at every hop, redirects included:
- only http and https; no credentials in the URL;
- the host is resolved first and EVERY address it resolves to is checked before any
  connection is made: loopback, private, link-local (169.254.0.0/16, cloud metadata),
  carrier-grade NAT, multicast, reserved and unspecified addresses are refused, as are IPv6
  forms that embed such an IPv4 address (mapped, 6to4, Teredo, NAT64), unless
  MMSEARCH_URL_ALLOW_PRIVATE allows them (`true`: all; or a comma list of CIDRs such as
  `127.0.0.0/8`, which allows those networks only);
- the connection then goes to the checked address itself (the host name is not resolved a
  second time, so DNS rebinding cannot swap in another address); TLS still verifies the
  certificate against the host name; no proxy from the environment is used;
- at most MAX_REDIRECTS redirects, each target checked like the first URL;
- connect and per-read timeouts of MMSEARCH_URL_TIMEOUT_S, and a deadline of
  MMSEARCH_URL_TOTAL_TIMEOUT_S for the whole fetch (a server trickling bytes forever is cut
  off there);
- at most MMSEARCH_MAX_IMAGE_BYTES, checked on Content-Length and while streaming; no
  compressed transfer encodings are asked for.

Paths (`read_path`): resolved again inside MMSEARCH_INGEST_ROOT (the API already did), and
only regular files are read: the file is checked with stat before it is opened, opened
non-blocking without following a final symlink, and checked again on the open descriptor,
so a FIFO or a device node never blocks or feeds a worker.
"""
from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from pathlib import Path
from typing import Any, Union
from urllib.parse import quote, urljoin, urlsplit

import redis

from shared.store import staging
from shared.runtime.config import Settings
from shared.errors import MMSearchError

MAX_REDIRECTS = 3
MAX_URL_CHARS = 8192
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
USER_AGENT = "mmsearch-image-fetcher/1"
URL_SAFE = "/%?=&;:@!$'()*+,~-._[]"  # kept as sent; anything else (non-ASCII) is percent-encoded

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class SourceError(MMSearchError):
    """The image of one item could not be fetched; `code` goes into the job's errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# Address policy ---------------------------------------------------------------------------

def _shown(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "..."


def _embedded_ipv4(addr: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address leads to (mapped, 6to4, Teredo, NAT64)."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return []
    found = [a for a in (addr.ipv4_mapped, addr.sixtofour) if a is not None]
    if addr.teredo:
        found.extend(addr.teredo)
    if any(addr in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def _is_public(addr: IPAddress) -> bool:
    return (addr.is_global and not addr.is_multicast and not addr.is_reserved
            and not addr.is_unspecified and not (addr.version == 4 and addr in _CGNAT))


def _private_allowed(addr: IPAddress, settings: Settings) -> bool:
    if settings.url_allow_private:
        return True
    return any(addr in ipaddress.ip_network(net) for net in settings.url_allow_networks)


def address_allowed(addr: IPAddress | str, settings: Settings) -> bool:
    """May a URL image be fetched from this address? Public unicast addresses always; any
    other only as MMSEARCH_URL_ALLOW_PRIVATE allows. An IPv6 address is judged with every
    IPv4 address it embeds (an IPv4-mapped one as that IPv4 address alone)."""
    addr = ipaddress.ip_address(addr) if isinstance(addr, str) else addr
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return all(_is_public(a) or _private_allowed(a, settings) for a in (addr, *_embedded_ipv4(addr)))


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally (`10.0.0.1`, `::1`), else None."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def check_url_syntax(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an acceptable URL; SourceError("forbidden_url") otherwise.

    The API calls this too, so a bad URL is a 400 there and never reaches a worker."""
    if len(url) > MAX_URL_CHARS:
        raise SourceError("forbidden_url", f"the URL is longer than {MAX_URL_CHARS} characters")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise SourceError("forbidden_url", "the URL holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise SourceError("forbidden_url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise SourceError("forbidden_url", "only http and https URLs with a host are allowed")
    if parts.username is not None or parts.password is not None:
        raise SourceError("forbidden_url", "URLs with credentials (user@host) are not allowed")
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


def resolve_checked(host: str, port: int, settings: Settings) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, sockaddr) of every address of `host`, each checked against the policy: one
    forbidden address refuses the whole host. Nothing is connected to here."""
    literal = literal_address(host)
    if literal is not None:
        candidates = [literal]
        infos = [(socket.AF_INET6 if literal.version == 6 else socket.AF_INET,
                  (str(literal), port) if literal.version == 4 else (str(literal), port, 0, 0))]
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError, ValueError) as exc:
            raise SourceError("fetch_failed", f"cannot resolve host {host[:100]!r}") from exc
        infos = [(family, sockaddr) for family, _, _, _, sockaddr in found
                 if family in (socket.AF_INET, socket.AF_INET6)]
        candidates = [ipaddress.ip_address(sockaddr[0].split("%", 1)[0]) for _, sockaddr in infos]
        if not infos:
            raise SourceError("fetch_failed", f"host {host[:100]!r} has no IP address")
    for addr in candidates:
        if not address_allowed(addr, settings):
            raise SourceError("forbidden_url", f"{host[:100]} resolves to a non-public address ({addr}); "
                                               "such URLs are refused")
    return infos


# Fetching ---------------------------------------------------------------------------------

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


# Paths ------------------------------------------------------------------------------------

def _descriptor_path(fd: int) -> Path | None:
    """Where an open descriptor really points (Linux /proc), or None where unknown."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def read_path(path: str, settings: Settings) -> bytes:
    """The bytes of a regular file inside the ingest root (see the module docstring)."""
    if settings.ingest_root is None:
        raise SourceError("forbidden_path", "path images need MMSEARCH_INGEST_ROOT")
    root = settings.ingest_root.resolve()
    try:
        target = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        raise SourceError("forbidden_path", "the path cannot be resolved") from None
    if target == root or not target.is_relative_to(root):
        raise SourceError("forbidden_path", "path is outside the ingest root")
    shown = str(target.relative_to(root))[:200]
    try:
        if not stat.S_ISREG(os.stat(target).st_mode):
            raise SourceError("forbidden_path", f"{shown} is not a regular file")
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NOCTTY", 0)
        fd = os.open(target, flags)
    except FileNotFoundError:
        raise SourceError("not_found", f"no file {shown} in the ingest root") from None
    except OSError as exc:
        raise SourceError("forbidden_path", f"cannot open {shown}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        real = _descriptor_path(fd)
        if not stat.S_ISREG(info.st_mode) or (real is not None and not real.is_relative_to(root)):
            raise SourceError("forbidden_path", f"{shown} is not a regular file inside the ingest root")
        limit = settings.max_image_bytes
        if info.st_size > limit:
            raise SourceError("payload_too_large", f"{shown} is {info.st_size} bytes; at most {limit} allowed")
        data = bytearray()
        while len(data) <= limit:
            chunk = os.read(fd, min(CHUNK_BYTES * 16, limit + 1 - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise SourceError("payload_too_large", f"{shown} is larger than {limit} bytes")
        return bytes(data)
    except OSError as exc:
        raise SourceError("fetch_failed", f"cannot read {shown}: {exc.strerror}") from None
    finally:
        os.close(fd)


def load_image_bytes(source: dict[str, Any], r: redis.Redis, settings: Settings) -> bytes:
    """The raw bytes of one image source; SourceError when they cannot be had."""
    if not isinstance(source, dict):
        raise SourceError("invalid_item", "unknown image source")
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
