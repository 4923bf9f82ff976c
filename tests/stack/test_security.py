"""Security and hostile input (issue 5).

Two parts:
- In-process checks of the pieces: settings parsing, scopes and the rate limit on the Flask
  app, the URL policy (every connection watched: a forbidden address is refused before any
  socket is opened), the total download deadline, paths that are FIFOs, Celery's JSON-only
  configuration, Redis URLs with a password and TLS.
- A hostile-input suite against the RUNNING stack (embedded Redis, gunicorn API, Celery
  workers as processes) with scoped API keys, an ingest root holding a real photo, a symlink
  leading out, a FIFO, a directory and a sparse oversize file, and a URL policy that allows
  only 127.0.0.2 (where this module's image server listens; 127.0.0.1, the API's and
  Redis's address, stays forbidden). Real photos are ingested first; then well over a hundred
  hostile requests, each expecting its documented 4xx, and hostile batches whose items must
  each fail with a reason in the job's errors. One test sends every one of those cases again
  by itself (so it holds alone and in any order); after them every process must still be
  alive and the collection must still hold and find exactly its items.

That test prints the figures (cases per category, 500s, worker crashes, items lost):
    .venv/bin/python -m pytest tests/stack/test_security.py -q -k intact
No traffic leaves loopback: private and metadata addresses are only ever refused (at the API
for literal addresses; in-process tests replace the socket opener to prove it is not called).
"""
from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import random
import socket
import ssl
import struct
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import redis
import requests

from api import create_app
from bench.photos import all_photos
from shared.encoding import sources
from shared.runtime.config import Settings
from tests.support.stack import running_stack
from shared.runtime.stack import Stack

ADMIN = "adm-7c1f0e2a9b"         # no scope list: every scope
READER = "rdr-3d94b1c6e0"        # read
WRITER = "wrt-a5e8f27d41"        # read+write
ADMIN_ONLY = "own-0b6c3e9f58"    # admin
KEYS_ENV = f"{ADMIN},{READER}:read,{WRITER}:read+write,{ADMIN_ONLY}:admin"
IMAGE_HOST = "127.0.0.2"         # the only address the stack's URL policy allows
MAX_IMAGE_BYTES = 4 * 2**20
URL_TIMEOUT_S, URL_TOTAL_S = 1.5, 3.0
TEN_MB = 10 * 2**20

PHOTOS = {p.name: p for p in all_photos()}
SEEDS = {"cat": "chelsea", "coffee": "coffee", "berries": "imagenet_04"}  # id -> photo
HOSTILE_TEXT = "<script>alert('x')</script> {{7*7}} ${jndi:ldap://x/a} '; DROP TABLE items; --"
HOSTILE_METADATA = {"__proto__": {"polluted": True}, "$where": "sleep(1000)", "constructor": {"prototype": 1},
                    "html": "<img src=x onerror=alert(1)>", "nested": {"a": [1, {"b": None}], "n": -0.5},
                    "unicode": "\u00fc\u202e\u0000\U0001f600", "big": 10**30}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Hand-made hostile images -----------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, idat: bytes, color_type: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def zero_png(side: int) -> bytes:
    """A real, complete side x side grayscale PNG of zeros (a decompression bomb)."""
    z = zlib.compressobj(9)
    row = bytes(side + 1)
    out = [z.compress(row) for _ in range(side)]
    out.append(z.flush())
    return png(side, side, b"".join(out))


def jpeg_claiming(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + bytes.fromhex("011100021100031100")
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 32 + b"\xff\xd9"


def bmp_claiming(width: int, height: int) -> bytes:
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + struct.pack("<IiiHHI", 40, width, height, 1, 24, 0) + bytes(24)


def webp_claiming(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


BOMBS = {  # all over MMSEARCH_MAX_IMAGE_PIXELS (1e8): refused on the header, never decoded
    "png-header-30000x30000": png(30000, 30000, zlib.compress(bytes(64))),
    "png-real-12000x12000-zeros": zero_png(12000),
    "gif-65535x65535": b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\xf7\x00\x00" + bytes(32),
    "jpeg-sof-65000x65000": jpeg_claiming(65000, 65000),
    "bmp-50000x50000": bmp_claiming(50000, 50000),
    "webp-vp8x-16384x16384": webp_claiming(16384, 16384),
}


def corrupt_files() -> dict[str, bytes]:
    photo = PHOTOS["imagenet_00"].read_bytes()
    rng = random.Random(5)
    return {
        "jpeg-truncated-half": photo[:len(photo) // 2],
        "random-bytes": rng.randbytes(4096),
        "html": b"<!doctype html><html><body><script>alert(1)</script></body></html>",
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        "tiff": b"II*\x00\x08\x00\x00\x00" + bytes(64),
        "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
        "png-0x0": png(0, 0, zlib.compress(b"")),
        "png-garbage-idat": png(64, 64, rng.randbytes(300)),
        "gif-header-only": b"GIF89a" + struct.pack("<HH", 16, 16),
        "jpeg-soi-only": b"\xff\xd8\xff",
    }


# A local image server on 127.0.0.2 ------------------------------------------------------

class _ImageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    stopping: threading.Event
    routes: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]]
    hits: Counter


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _ImageServer

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.hits[path] += 1
        route = self.server.routes.get(path)
        if route is None:
            self.send_error(404)
            return
        try:
            route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _send(h: http.server.BaseHTTPRequestHandler, status: int, body: bytes = b"",
          headers: dict[str, str] | None = None) -> None:
    h.send_response(status)
    for name, value in (headers or {}).items():
        h.send_header(name, value)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


def _redirect(location: str) -> Callable[[http.server.BaseHTTPRequestHandler], None]:
    return lambda h: _send(h, 302, headers={"Location": location})


def _trickle(h: http.server.BaseHTTPRequestHandler) -> None:
    """A body that never ends: one byte every 0.2 s (bounded at 60 s, or until stopped)."""
    h.send_response(200)
    h.send_header("Content-Type", "image/jpeg")
    h.send_header("Content-Length", str(2**20))  # under the cap: only the deadline can stop it
    h.end_headers()
    deadline = time.monotonic() + 60
    while not h.server.stopping.is_set() and time.monotonic() < deadline:
        h.wfile.write(b"\xff")
        h.wfile.flush()
        time.sleep(0.2)


def _endless_chunked(h: http.server.BaseHTTPRequestHandler) -> None:
    """Chunked 64 KiB chunks with no Content-Length, past any cap (bounded at 64 MiB)."""
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    chunk = bytes(65536)
    for _ in range(1024):
        if h.server.stopping.is_set():
            return
        h.wfile.write(b"10000\r\n" + chunk + b"\r\n")


@pytest.fixture(scope="module")
def image_server():
    srv = _ImageServer((IMAGE_HOST, 0), _Handler)
    srv.stopping, srv.hits = threading.Event(), Counter()
    base = f"http://{IMAGE_HOST}:{srv.server_address[1]}"
    photo = PHOTOS[SEEDS["cat"]].read_bytes()
    srv.routes = {
        "/photo.png": lambda h: _send(h, 200, photo, {"Content-Type": "image/png"}),
        "/caf%C3%A9-%E2%98%83.png": lambda h: _send(h, 200, photo, {"Content-Type": "image/png"}),
        "/redirect-private": _redirect("http://10.0.0.1/x.jpg"),
        "/redirect-metadata": _redirect("http://169.254.169.254/latest/meta-data/iam/"),
        "/redirect-loopback": _redirect("http://127.0.0.1:1/healthz"),
        "/redirect-localhost": _redirect("http://localhost:1/"),
        "/redirect-file": _redirect("file:///etc/passwd"),
        "/redirect-gopher": _redirect("gopher://127.0.0.1:6379/_FLUSHALL"),
        "/redirect-loop": _redirect("/redirect-loop"),
        "/slow": _trickle,
        "/big": lambda h: _send(h, 200, bytes(MAX_IMAGE_BYTES + 1), {"Content-Type": "image/png"}),
        "/big-chunked": _endless_chunked,
        "/bomb.png": lambda h: _send(h, 200, BOMBS["png-header-30000x30000"], {"Content-Type": "image/png"}),
        "/page.html": lambda h: _send(h, 200, b"<html>hi</html>", {"Content-Type": "text/html"}),
        "/error": lambda h: _send(h, 500, b"boom"),
    }
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = base
    yield srv
    srv.stopping.set()
    srv.shutdown()
    srv.server_close()


# In-process: settings, scopes, rate limit ------------------------------------------------

def test_settings_parse_scopes_rate_limit_and_allowed_networks():
    s = Settings.from_env({"MMSEARCH_API_KEYS": " a:read , b:read+write,c , d:ADMIN", "MMSEARCH_RATE_LIMIT": "100/60",
                           "MMSEARCH_URL_ALLOW_PRIVATE": "127.0.0.0/8, ::1"})
    assert s.api_keys == ("a", "b", "c", "d")
    assert s.api_key_scopes == {"a": {"read"}, "b": {"read", "write"}, "d": {"admin"}}
    assert (s.rate_limit, s.rate_limit_window_s) == (100, 60)
    assert s.url_allow_networks == ("127.0.0.0/8", "::1/128") and s.url_allow_private is False
    default = Settings.from_env({})
    assert default.rate_limit == 0 and default.url_allow_networks == () and not default.url_allow_private
    assert Settings.from_env({"MMSEARCH_URL_ALLOW_PRIVATE": "true"}).url_allow_private
    assert Settings.from_env({"MMSEARCH_RATE_LIMIT": "0"}).rate_limit == 0
    for env in ({"MMSEARCH_API_KEYS": "SECRETKEY:read+delete"}, {"MMSEARCH_API_KEYS": ":read"},
                {"MMSEARCH_API_KEYS": "good,SECRETKEY:"}, {"MMSEARCH_RATE_LIMIT": "fast"},
                {"MMSEARCH_RATE_LIMIT": "10/0"}, {"MMSEARCH_URL_ALLOW_PRIVATE": "intranet"}):
        with pytest.raises(ValueError) as err:
            Settings.from_env(env)
        assert "SECRETKEY" not in str(err.value)  # a bad entry is named by position, never by its key


@pytest.fixture
def make_app(redis_server, redis_client, tmp_path):
    def make(**overrides: Any):
        app = create_app({"redis_url": redis_server, "data_dir": tmp_path, "search_timeout_s": 0.2,
                          "shard_timeout_s": 0.2, "ingest_root": None, **overrides})
        app.testing = True
        return app.test_client()
    return make


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_scopes_in_process(make_app):
    client = make_app(api_keys=("all", "r", "rw", "adm"),
                      api_key_scopes={"r": frozenset({"read"}), "rw": frozenset({"read", "write"}),
                                      "adm": frozenset({"admin"})})
    calls = {  # (method, path, json) -> scope needed
        ("POST", "/v1/collections", '{"name": "p"}'): "admin",
        ("GET", "/v1/collections", None): "read",
        ("GET", "/v1/collections/p", None): "read",
        ("POST", "/v1/collections/p/items", '{"items": [{"text": "a"}]}'): "write",
        ("GET", "/v1/collections/p/items/x", None): "read",
        ("DELETE", "/v1/collections/p/items/x", None): "write",
        ("POST", "/v1/collections/p/items/exists", '{"ids": ["x"]}'): "read",
        ("GET", "/v1/collections/p/items?limit=5", None): "read",
        ("POST", "/v1/collections/p/items/delete", '{"ids": ["x"]}'): "write",
        ("POST", "/v1/collections/p/export", None): "read",
        ("GET", "/v1/jobs/abc/archive", None): "read",
        ("POST", "/v1/collections/import", None): "admin",
        ("POST", "/v1/collections/p/search?async=1", '{"text": "a"}'): "read",
        ("GET", "/v1/jobs/abc", None): "read",
        ("DELETE", "/v1/jobs/abc", None): "write",
        ("DELETE", "/v1/collections/p", None): "admin",
    }
    granted = {"all": {"read", "write", "admin"}, "r": {"read"}, "rw": {"read", "write"}, "adm": {"admin"}}
    for key in ("all", "r", "rw", "adm"):
        for (method, path, body), scope in calls.items():
            resp = client.open(path, method=method, data=body, content_type="application/json", headers=bearer(key))
            if scope in granted[key]:
                assert resp.status_code not in (401, 403), (key, method, path, resp.json)
            else:
                assert resp.status_code == 403, (key, method, path, resp.status_code)
                assert resp.json["error"]["code"] == "forbidden"
                assert resp.json["error"]["details"]["required_scope"] == scope
    for headers in ({}, bearer("r2"), bearer("R"), {"Authorization": "Basic cjpy"}, {"X-API-Key": "r"}):
        assert client.get("/v1/collections", headers=headers).status_code == 401
    assert client.get("/v1/collections", headers={"Authorization": "bearer  r "}).status_code == 200


def test_rate_limit_per_key_and_per_address(make_app, redis_client):
    client = make_app(api_keys=("k1", "k2"), rate_limit=3, rate_limit_window_s=60)
    for _ in range(3):
        resp = client.get("/v1/collections", headers=bearer("k1"))
        assert resp.status_code == 200 and resp.headers["X-RateLimit-Limit"] == "3"
    resp = client.get("/v1/collections", headers=bearer("k1"))
    assert resp.status_code == 429 and resp.json["error"]["code"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 61 and resp.headers["X-RateLimit-Remaining"] == "0"
    assert client.get("/v1/collections", headers=bearer("k2")).status_code == 200  # its own budget
    assert client.get("/healthz").status_code == 200  # only /v1 is limited
    # Guessing keys is throttled per client address.
    codes = [client.get("/v1/collections", headers=bearer(f"guess{i}")).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]
    assert not any(b"k1" in k for k in redis_client.keys("mms:ratelimit:*"))  # keys stored hashed only
    # No keys configured: per address; off by default.
    open_client = make_app(rate_limit=2, rate_limit_window_s=60)
    redis_client.flushdb()
    assert [open_client.get("/v1/collections").status_code for _ in range(3)] == [200, 200, 429]
    unlimited = make_app()
    assert all(unlimited.get("/v1/collections").status_code == 200 for _ in range(20))
    assert "X-RateLimit-Limit" not in unlimited.get("/v1/collections").headers


def test_openapi_lists_forbidden_and_rate_limited(make_app):
    spec = make_app(api_keys=("k",), rate_limit=10).get("/openapi.json").json
    op = spec["paths"]["/v1/collections"]["post"]
    assert {"401", "403", "429"} <= set(op["responses"])
    assert "scopes" in spec["components"]["securitySchemes"]["bearerAuth"]["description"]


# In-process: URL policy, deadlines, paths -------------------------------------------------

@pytest.fixture
def watched_sockets(monkeypatch):
    """Every connection a fetch opens; one to a non-loopback address fails the test before
    any packet is sent."""
    opened: list[str] = []
    real = sources.open_socket

    def guarded(family, sockaddr, timeout):
        opened.append(sockaddr[0])
        assert sockaddr[0].startswith("127.") or sockaddr[0] in ("::1", "::ffff:127.0.0.2"), \
            f"a fetch tried to connect to {sockaddr[0]}"
        return real(family, sockaddr, timeout)
    monkeypatch.setattr(sources, "open_socket", guarded)
    return opened


LOOPBACK_ONLY = Settings(url_allow_networks=(f"{IMAGE_HOST}/32",), url_timeout_s=URL_TIMEOUT_S,
                         url_total_timeout_s=URL_TOTAL_S, max_image_bytes=MAX_IMAGE_BYTES)


@pytest.mark.parametrize("url, code", [
    ("http://10.0.0.1/a.jpg", "forbidden_url"),
    ("http://169.254.169.254/latest/meta-data/", "forbidden_url"),
    ("http://127.0.0.1:1/", "forbidden_url"),
    ("http://localhost:1/", "forbidden_url"),
    ("http://127.1:1/", "forbidden_url"),
    ("http://2130706433:1/", "forbidden_url"),
    ("http://0x7f.0.0.1:1/", "forbidden_url"),
    ("http://0.0.0.0:1/", "forbidden_url"),
    ("http://[::1]:1/", "forbidden_url"),
    ("http://[::ffff:10.0.0.1]/", "forbidden_url"),
    ("http://[64:ff9b::a9fe:a9fe]/", "forbidden_url"),   # NAT64 of 169.254.169.254
    ("http://[2002:a00:1::1]/", "forbidden_url"),        # 6to4 of 10.0.0.1
    ("http://100.64.0.1/", "forbidden_url"),
    ("http://224.0.0.1/", "forbidden_url"),
    ("file:///etc/passwd", "forbidden_url"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "forbidden_url"),
    ("http://user:pw@127.0.0.2/", "forbidden_url"),
    ("http://127.0.0.2:99999/", "forbidden_url"),
])
def test_forbidden_urls_are_refused_before_connecting(watched_sockets, url, code):
    with pytest.raises(sources.SourceError) as err:
        sources.fetch_url(url, LOOPBACK_ONLY)
    assert err.value.code == code
    assert watched_sockets == []  # resolve-and-check comes first: not even a SYN was sent


@pytest.mark.parametrize("path, code", [
    ("/redirect-private", "forbidden_url"), ("/redirect-metadata", "forbidden_url"),
    ("/redirect-loopback", "forbidden_url"), ("/redirect-localhost", "forbidden_url"),
    ("/redirect-file", "forbidden_url"), ("/redirect-gopher", "forbidden_url"),
    ("/redirect-loop", "fetch_failed"), ("/big", "payload_too_large"), ("/big-chunked", "payload_too_large"),
    ("/error", "fetch_failed"), ("/nothing", "fetch_failed"),
])
def test_redirects_and_oversize_bodies(watched_sockets, image_server, path, code):
    with pytest.raises(sources.SourceError) as err:
        sources.fetch_url(image_server.base + path, LOOPBACK_ONLY)
    assert err.value.code == code, str(err.value)
    assert set(watched_sockets) == {IMAGE_HOST}  # only the allowed test server, never the redirect target


def test_allowed_url_is_fetched_from_the_checked_address(watched_sockets, image_server):
    data = sources.fetch_url(image_server.base + "/photo.png", LOOPBACK_ONLY)
    assert data == PHOTOS[SEEDS["cat"]].read_bytes() and watched_sockets == [IMAGE_HOST]
    assert sources.fetch_url(image_server.base + "/caf\u00e9-\u2603.png", LOOPBACK_ONLY) == data  # sent quoted


def test_dns_is_asked_once_and_the_checked_address_is_used(monkeypatch, watched_sockets, image_server):
    """DNS rebinding: a name that resolves to an allowed address, then to a forbidden one,
    is connected to at the address that was checked."""
    answers = iter([IMAGE_HOST, "10.0.0.1", "10.0.0.1"])
    real = socket.getaddrinfo

    def rebinding(host, port, *args, **kw):
        if host == "rebind.test":
            return real(next(answers), port, *args, **kw)
        return real(host, port, *args, **kw)
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = image_server.server_address[1]
    assert sources.fetch_url(f"http://rebind.test:{port}/photo.png", LOOPBACK_ONLY)
    assert watched_sockets == [IMAGE_HOST]


def test_a_slow_endless_response_is_cut_at_the_total_deadline(watched_sockets, image_server):
    started = time.monotonic()
    with pytest.raises(sources.SourceError) as err:
        sources.fetch_url(image_server.base + "/slow", LOOPBACK_ONLY)
    took = time.monotonic() - started
    assert err.value.code == "fetch_failed" and "longer than" in str(err.value)
    assert URL_TOTAL_S - 0.1 <= took < URL_TOTAL_S + 1.5  # each byte came well within the read timeout


def test_read_path_refuses_fifos_devices_and_escapes_without_blocking(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "fifo")
    (root / "fifo-link").symlink_to(root / "fifo")
    (root / "ok.jpg").write_bytes(b"data")
    (tmp_path / "outside.jpg").write_bytes(b"secret")
    (root / "out.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "zero").symlink_to("/dev/zero")
    (root / "dir").mkdir()
    settings = Settings(ingest_root=root, max_image_bytes=1024)
    with open(root / "huge.bin", "wb") as f:
        f.truncate(1025)
    expected = {"fifo": "forbidden_path", "fifo-link": "forbidden_path", "out.jpg": "forbidden_path",
                "zero": "forbidden_path", "dir": "forbidden_path", "missing.jpg": "not_found",
                "huge.bin": "payload_too_large", ".": "forbidden_path", "a\x00b": "forbidden_path"}
    outcome: dict[str, str] = {}

    def run() -> None:
        for name in expected:
            try:
                sources.read_path(str(root / name), settings)
                outcome[name] = "read"
            except sources.SourceError as exc:
                outcome[name] = exc.code
                assert str(tmp_path) not in str(exc)  # messages name paths relative to the root
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "read_path blocked (a FIFO was opened for reading?)"
    assert outcome == expected
    assert sources.read_path(str(root / "ok.jpg"), settings) == b"data"


# In-process: Redis and Celery -------------------------------------------------------------

def test_celery_is_json_only_everywhere(redis_server):
    from shared.runtime.celery_config import make_celery
    from workers.celery_app import app as worker_app

    for conf in (worker_app.conf, make_celery(Settings(redis_url=redis_server)).conf):
        assert conf.task_serializer == "json" and conf.result_serializer == "json"
        assert list(conf.accept_content) == ["json"] and list(conf.result_accept_content) == ["json"]
        assert conf.event_serializer == "json"


def test_redis_urls_with_password_and_tls():
    from shared.runtime.celery_config import make_celery
    from shared.runtime.redis_conn import connect

    url = "rediss://:s3cret@redis.internal:6380/2?ssl_cert_reqs=required"
    client = connect(Settings(redis_url=url))  # nothing is connected until a command is sent
    kwargs = client.connection_pool.connection_kwargs
    assert client.connection_pool.connection_class is redis.SSLConnection
    assert (kwargs["password"], kwargs["host"], kwargs["port"], kwargs["db"]) == ("s3cret", "redis.internal", 6380, 2)
    celery = make_celery(Settings(redis_url=url))
    assert celery.conf.broker_url == url
    broker = celery.connection_for_write()  # parses the URL; nothing is connected yet
    assert (broker.transport_cls, broker.password, broker.hostname, broker.port) == ("rediss", "s3cret", "redis.internal", 6380)
    assert broker.ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def test_embedded_redis_binds_loopback_only(tmp_path):
    from shared.runtime.embedded_redis import server_command

    cmd = server_command(tmp_path, 6399)
    assert cmd[cmd.index("--bind") + 1] == "127.0.0.1" and cmd.count("--bind") == 1
    assert cmd[cmd.index("--protected-mode") + 1] == "yes"


# The running stack ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ingest_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    (root / "sub").mkdir(parents=True)
    (root / "good.jpg").write_bytes(PHOTOS[SEEDS["berries"]].read_bytes())
    (root / "corrupt.jpg").write_bytes(PHOTOS["imagenet_00"].read_bytes()[:5000])
    (root / "bomb.png").write_bytes(BOMBS["png-real-12000x12000-zeros"])
    (base / "secret.jpg").write_bytes(PHOTOS["imagenet_01"].read_bytes())
    (root / "escape.jpg").symlink_to(base / "secret.jpg")
    (root / "sub" / "deep-escape.jpg").symlink_to("../../secret.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    (root / "dev-zero").symlink_to("/dev/zero")
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    (root / "fifo-link.jpg").symlink_to(root / "fifo")
    with open(root / "huge.jpg", "wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: over the byte cap without using the disk
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory, ingest_root):
    data_dir = tmp_path_factory.mktemp("security-data")
    with running_stack(data_dir, MMSEARCH_SHARDS="1", MMSEARCH_DEFAULT_COLLECTION_SHARDS="2",
                       MMSEARCH_API_KEYS=KEYS_ENV, MMSEARCH_INGEST_ROOT=str(ingest_root),
                       MMSEARCH_URL_ALLOW_PRIVATE=f"{IMAGE_HOST}/32", MMSEARCH_URL_TIMEOUT_S=str(URL_TIMEOUT_S),
                       MMSEARCH_URL_TOTAL_TIMEOUT_S=str(URL_TOTAL_S), MMSEARCH_MAX_IMAGE_BYTES=str(MAX_IMAGE_BYTES),
                       MMSEARCH_RATE_LIMIT="", MMSEARCH_LOG_LEVEL="WARNING") as st:
        yield st


class Api:
    def __init__(self, stack: Stack, leaks: tuple[str, ...]) -> None:
        self.base = f"{stack.api_url}/v1"
        self.leaks = leaks
        self.session = requests.Session()
        self.session.trust_env = False
        self.figures: Counter = Counter()   # hostile cases sent through this client, per category
        self.server_errors: list[str] = []  # every 5xx it got (must stay empty)

    def call(self, method: str, path: str, key: str | None = ADMIN, headers: dict[str, str] | None = None,
             **kw: Any) -> requests.Response:
        h = {"Authorization": f"Bearer {key}"} if key else {}
        h.update(headers or {})
        resp = self.session.request(method, self.base + path, headers=h, timeout=60, **kw)
        if resp.status_code >= 500:
            self.server_errors.append(f"{method} {path[:80]} -> {resp.status_code} {resp.text[:200]}")
        return resp

    def check_error(self, category: str, resp: requests.Response, status: int, code: str | None) -> dict[str, Any]:
        """One hostile case: its documented status and error code, a small clean error body."""
        self.figures[category] += 1
        assert resp.status_code == status, (resp.status_code, resp.text[:300])
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert len(resp.content) < 16384, "an error body echoed what the client sent"
        body = resp.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
        if code is not None:
            assert body["error"]["code"] == code
        for leak in self.leaks:
            assert leak not in resp.text, f"the error body shows {leak!r}"
        return body["error"]

    def wait_job(self, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = self.call("GET", f"/jobs/{job_id}").json()
            if body["state"] in ("succeeded", "completed_with_errors", "failed", "cancelled"):
                return body
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not final: {body}")


def new_api(stack: Stack, ingest_root: Path) -> Api:
    leaks = ("Traceback", 'File "', str(ingest_root), str(ingest_root.parent), str(Path(__file__).resolve().parents[2]))
    return Api(stack, leaks)


@pytest.fixture(scope="module")
def api(stack, ingest_root) -> Api:
    return new_api(stack, ingest_root)


@pytest.fixture(scope="module")
def seeded(api) -> dict[str, Any]:
    """Real photos ingested three ways (base64 JSON, multipart, path), plus an item whose
    caption and metadata are hostile strings: all must come back exactly as given."""
    assert api.call("POST", "/collections", json={"name": "photos"}).status_code == 201
    resp = api.call("POST", "/collections/photos/items", json={"items": [
        {"id": "cat", "image": {"base64": b64(PHOTOS[SEEDS["cat"]].read_bytes())}, "metadata": {"via": "json"}},
        {"id": "berries", "image": {"path": "good.jpg"}, "metadata": {"via": "path"}},
        {"id": "hostile-meta", "image": {"base64": b64(PHOTOS["imagenet_13"].read_bytes())},
         "text": HOSTILE_TEXT, "metadata": HOSTILE_METADATA},
    ]})
    assert resp.status_code == 202, resp.text
    jobs = [resp.json()["job_id"]]
    resp = api.call("POST", "/collections/photos/items", data={"items": json.dumps([{"id": "coffee"}])},
                    files=[("image", ("coffee.png", PHOTOS[SEEDS["coffee"]].read_bytes(), "image/png"))])
    assert resp.status_code == 202, resp.text
    jobs.append(resp.json()["job_id"])
    for job_id in jobs:
        job = api.wait_job(job_id)
        assert job["state"] == "succeeded", job
    count = api.call("GET", "/collections/photos").json()["count"]
    assert count == 4
    return {"count": count, "ids": ["cat", "berries", "coffee", "hostile-meta"]}


def test_seeded_items_are_stored_as_given(api, seeded):
    item = api.call("GET", "/collections/photos/items/hostile-meta").json()
    assert item["text"] == HOSTILE_TEXT and item["metadata"] == HOSTILE_METADATA


# Auth: missing, wrong and other-scope keys ---------------------------------------------

ITEMS_BODY = {"items": [{"id": "x", "text": "never stored"}]}
ENDPOINTS = [  # method, path, json body, scope
    ("GET", "/collections", None, "read"),
    ("POST", "/collections", {"name": "intruder"}, "admin"),
    ("GET", "/collections/photos", None, "read"),
    ("DELETE", "/collections/photos", None, "admin"),
    ("POST", "/collections/photos/items", ITEMS_BODY, "write"),
    ("GET", "/collections/photos/items/cat", None, "read"),
    ("GET", "/collections/photos/items/cat/thumbnail", None, "read"),
    ("DELETE", "/collections/photos/items/cat", None, "write"),
    ("POST", "/collections/photos/search", {"text": "cat"}, "read"),
    ("GET", "/jobs/0123456789abcdef", None, "read"),
    ("DELETE", "/jobs/0123456789abcdef", None, "write"),
]
BAD_AUTH = {
    "none": {},
    "empty bearer": {"Authorization": "Bearer "},
    "wrong key": {"Authorization": "Bearer nope"},
    "key prefix": {"Authorization": f"Bearer {ADMIN[:-1]}"},
    "key plus a char": {"Authorization": f"Bearer {ADMIN}x"},
    "key upper-cased": {"Authorization": f"Bearer {ADMIN.upper()}"},
    "no scheme": {"Authorization": ADMIN},
    "basic scheme": {"Authorization": "Basic " + b64(f"{ADMIN}:".encode())},
    "token scheme": {"Authorization": f"Token {ADMIN}"},
    "two keys": {"Authorization": f"Bearer {READER},{ADMIN}"},
    "x-api-key header": {"X-API-Key": ADMIN},
    "non-ascii key": {"Authorization": "Bearer kl\u00e9".encode("utf-8").decode("latin-1")},
}


def send_bad_auth(api: Api, how: str) -> None:
    for method, path, body, _ in ENDPOINTS:
        resp = api.call(method, path, key=None, headers=BAD_AUTH[how], json=body)
        api.check_error("auth", resp, 401, "unauthorized")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = api.call("GET", f"/collections?api_key={ADMIN}&access_token={ADMIN}", key=None, headers=BAD_AUTH[how])
    api.check_error("auth", resp, 401, "unauthorized")


@pytest.mark.parametrize("how", list(BAD_AUTH))
def test_missing_or_wrong_key_is_401_everywhere(api, seeded, how):
    send_bad_auth(api, how)


SCOPED_KEYS = [(READER, {"read"}), (WRITER, {"read", "write"}), (ADMIN_ONLY, {"admin"})]


def send_without_scope(api: Api, key: str, granted: set[str]) -> None:
    for method, path, body, scope in ENDPOINTS:
        if scope in granted:
            continue  # (the allowed calls are made by other tests; here nothing may change)
        resp = api.call(method, path, key=key, json=body)
        error = api.check_error("auth", resp, 403, "forbidden")
        assert error["details"]["required_scope"] == scope
    # The reader can read and search; the writer's write passes the scope check (and then
    # fails validation on purpose, so nothing is stored).
    assert api.call("GET", "/collections/photos", key=READER).status_code == 200
    assert api.call("POST", "/collections/photos/search", key=READER, json={"text": "cat", "k": 2}).status_code == 200
    bad_write = api.call("POST", "/collections/photos/items", key=WRITER, json={"items": []})
    api.check_error("auth", bad_write, 400, "invalid_request")


@pytest.mark.parametrize("key, granted", SCOPED_KEYS)
def test_a_key_without_the_scope_is_403(api, seeded, key, granted):
    send_without_scope(api, key, granted)


# 4xx for malformed requests ----------------------------------------------------------------

def raw(body: str | bytes, content_type: str | None = "application/json") -> dict[str, Any]:
    kw: dict[str, Any] = {"data": body if isinstance(body, bytes) else body.encode()}
    kw["headers"] = {"Content-Type": content_type} if content_type else {}
    return kw


def js(value: Any) -> dict[str, Any]:
    return {"json": value}


def items(*values: Any) -> dict[str, Any]:
    return {"json": {"items": list(values)}}


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def multipart_body(parts: list[tuple[str, str | None, bytes]], boundary: str = "xBOUNDARYx",
                   closing: bool = True) -> dict[str, Any]:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    if closing:
        out += f"--{boundary}--\r\n".encode()
    return raw(out, f"multipart/form-data; boundary={boundary}")


ITEMS, SEARCH, COLLS = "/collections/photos/items", "/collections/photos/search", "/collections"
PHOTO = PHOTOS["imagenet_02"].read_bytes()
BIG = "x" * TEN_MB

# (category, id, method, path, request kwargs, status, code)
REFUSED = [
    # bad JSON
    ("bad_json", "truncated", "POST", ITEMS, raw('{"items": ['), 400, "invalid_request"),
    ("bad_json", "trailing garbage", "POST", ITEMS, raw('{"items": []} trailing'), 400, "invalid_request"),
    ("bad_json", "single quotes", "POST", ITEMS, raw("{'items': []}"), 400, "invalid_request"),
    ("bad_json", "empty body", "POST", ITEMS, raw(""), 400, "invalid_request"),
    ("bad_json", "null", "POST", ITEMS, raw("null"), 400, "invalid_request"),
    ("bad_json", "utf-8 BOM", "POST", SEARCH, raw(b'\xef\xbb\xbf{"text": "cat"}'), 400, "invalid_request"),
    ("bad_json", "trailing comma", "POST", SEARCH, raw('{"text": "cat",}'), 400, "invalid_request"),
    ("bad_json", "array body", "POST", SEARCH, raw('["cat"]'), 400, "invalid_request"),
    ("bad_json", "string body", "POST", SEARCH, raw('"cat"'), 400, "invalid_request"),
    ("bad_json", "collection truncated", "POST", COLLS, raw('{"name": '), 400, "invalid_request"),
    ("bad_json", "comment", "POST", SEARCH, raw('{"text": "cat" /* k */}'), 400, "invalid_request"),
    # wrong types
    ("wrong_types", "items a string", "POST", ITEMS, js({"items": "a.jpg"}), 400, "invalid_request"),
    ("wrong_types", "items an object", "POST", ITEMS, js({"items": {"a": 1}}), 400, "invalid_request"),
    ("wrong_types", "item a number", "POST", ITEMS, items(42), 400, "invalid_request"),
    ("wrong_types", "text a number", "POST", ITEMS, items({"text": 5}), 400, "invalid_request"),
    ("wrong_types", "text a list", "POST", ITEMS, items({"text": ["a"]}), 400, "invalid_request"),
    ("wrong_types", "metadata a list", "POST", ITEMS, items({"text": "a", "metadata": [1]}), 400, "invalid_request"),
    ("wrong_types", "metadata a string", "POST", ITEMS, items({"text": "a", "metadata": "x"}), 400, "invalid_request"),
    ("wrong_types", "id a number", "POST", ITEMS, items({"id": 7, "text": "a"}), 400, "invalid_request"),
    ("wrong_types", "id an object", "POST", ITEMS, items({"id": {"a": 1}, "text": "a"}), 400, "invalid_request"),
    ("wrong_types", "image a string", "POST", ITEMS, items({"image": "http://x.org/a.jpg"}), 400, "invalid_request"),
    ("wrong_types", "image a list", "POST", ITEMS, items({"image": []}), 400, "invalid_request"),
    ("wrong_types", "base64 a number", "POST", ITEMS, items({"image": {"base64": 5}}), 400, "invalid_request"),
    ("wrong_types", "url a list", "POST", ITEMS, items({"image": {"url": ["a"]}}), 400, "invalid_request"),
    ("wrong_types", "two sources", "POST", ITEMS, items({"image": {"base64": b64(PHOTO), "path": "good.jpg"}}),
     400, "invalid_request"),
    ("wrong_types", "bad base64", "POST", ITEMS, items({"image": {"base64": "not base64!"}}), 400, "invalid_request"),
    ("wrong_types", "unknown field", "POST", ITEMS, js({"items": [{"text": "a"}], "replace": True}), 400,
     "invalid_request"),
    ("wrong_types", "search text a number", "POST", SEARCH, js({"text": 5}), 400, "invalid_request"),
    ("wrong_types", "weights a list", "POST", SEARCH, js({"text": "a", "weights": [1, 1]}), 400, "invalid_request"),
    ("wrong_types", "weight a string", "POST", SEARCH, js({"text": "a", "weights": {"text": "1"}}), 400,
     "invalid_request"),
    ("wrong_types", "filter a string", "POST", SEARCH, js({"text": "a", "filter": "a=b"}), 400, "invalid_request"),
    ("wrong_types", "filter unknown operator", "POST", SEARCH,
     js({"text": "a", "filter": {"a": {"$where": "sleep(1000)"}}}), 400, "invalid_request"),
    ("wrong_types", "filter bound a string", "POST", SEARCH, js({"text": "a", "filter": {"a": {"$gt": "1"}}}), 400,
     "invalid_request"),
    ("wrong_types", "unknown search field", "POST", SEARCH, js({"text": "a", "limit": 5}), 400, "invalid_request"),
    ("wrong_types", "name a number", "POST", COLLS, js({"name": 5}), 400, "invalid_request"),
    ("wrong_types", "shards a string", "POST", COLLS, js({"name": "p2", "shards": "2"}), 400, "invalid_request"),
    ("wrong_types", "thumbnails a string", "POST", COLLS, js({"name": "p2", "store_thumbnails": "yes"}), 400,
     "invalid_request"),
    # huge or bad k
    ("huge_k", "k=1001", "POST", SEARCH, js({"text": "a", "k": 1001}), 400, "invalid_request"),
    ("huge_k", "k=10**12", "POST", SEARCH, js({"text": "a", "k": 10**12}), 400, "invalid_request"),
    ("huge_k", "k=10**400", "POST", SEARCH, raw('{"text": "a", "k": 1' + "0" * 400 + "}"), 400, "invalid_request"),
    ("huge_k", "k=-1", "POST", SEARCH, js({"text": "a", "k": -1}), 400, "invalid_request"),
    ("huge_k", "k=0", "POST", SEARCH, js({"text": "a", "k": 0}), 400, "invalid_request"),
    ("huge_k", "k=1e3", "POST", SEARCH, raw('{"text": "a", "k": 1e3}'), 400, "invalid_request"),
    ("huge_k", "k=true", "POST", SEARCH, js({"text": "a", "k": True}), 400, "invalid_request"),
    ("huge_k", "k a list", "POST", SEARCH, js({"text": "a", "k": [5]}), 400, "invalid_request"),
    ("huge_k", "multipart k huge", "POST", SEARCH, {"files": {"text": (None, "a"), "k": (None, "9" * 40)}}, 400,
     "invalid_request"),
    ("huge_k", "multipart k negative", "POST", SEARCH, {"files": {"text": (None, "a"), "k": (None, "-5")}}, 400,
     "invalid_request"),
    # NaN and other bad weights
    ("nan_weights", "NaN", "POST", SEARCH, raw('{"text": "a", "weights": {"text": NaN}}'), 400, "invalid_request"),
    ("nan_weights", "Infinity", "POST", SEARCH, raw('{"text": "a", "weights": {"text": Infinity}}'), 400,
     "invalid_request"),
    ("nan_weights", "-Infinity", "POST", SEARCH, raw('{"text": "a", "weights": {"text": -Infinity}}'), 400,
     "invalid_request"),
    ("nan_weights", "1e400", "POST", SEARCH, raw('{"text": "a", "weights": {"text": 1e400}}'), 400,
     "invalid_request"),
    ("nan_weights", "10**400 int", "POST", SEARCH, raw('{"text": "a", "weights": {"text": 1' + "0" * 400 + "}}"),
     400, "invalid_request"),
    ("nan_weights", "'NaN' string", "POST", SEARCH, js({"text": "a", "weights": {"text": "NaN"}}), 400,
     "invalid_request"),
    ("nan_weights", "negative", "POST", SEARCH, js({"text": "a", "weights": {"text": -1}}), 400, "invalid_request"),
    ("nan_weights", "all zero", "POST", SEARCH, js({"text": "a", "weights": {"text": 0, "image": 0}}), 400,
     "invalid_request"),
    ("nan_weights", "unknown block", "POST", SEARCH, js({"text": "a", "weights": {"audio": 1}}), 400,
     "invalid_request"),
    ("nan_weights", "multipart NaN", "POST", SEARCH,
     {"files": {"text": (None, "a"), "weights": (None, '{"text": NaN}')}}, 400, "invalid_request"),
    ("nan_weights", "NaN in filter", "POST", SEARCH, raw('{"text": "a", "filter": {"x": NaN}}'), 400,
     "invalid_request"),
    ("nan_weights", "NaN in metadata", "POST", ITEMS, raw('{"items": [{"text": "a", "metadata": {"x": NaN}}]}'),
     400, "invalid_request"),
    # deep nesting
    ("deep_nesting", "metadata 40 deep", "POST", ITEMS, items({"text": "a", "metadata": nested(40)}), 400,
     "invalid_request"),
    ("deep_nesting", "100000 [", "POST", ITEMS, raw("[" * 100_000), 400, "invalid_request"),
    ("deep_nesting", "50000 objects", "POST", SEARCH, raw('{"a":' * 50_000), 400, "invalid_request"),
    ("deep_nesting", "100000 closed", "POST", SEARCH, raw("[" * 100_000 + "]" * 100_000), 400, "invalid_request"),
    ("deep_nesting", "filter 40 deep", "POST", SEARCH, js({"text": "a", "filter": nested(40)}), 400,
     "invalid_request"),
    ("deep_nesting", "collection body", "POST", COLLS, js({"name": "p3", "x": nested(200)}), 400, "invalid_request"),
    ("deep_nesting", "multipart items part", "POST", ITEMS,
     {"files": [("image", ("a.jpg", PHOTO)), ("items", (None, "[" * 5000 + "]" * 5000))]}, 400, "invalid_request"),
    # 10 MB strings (under the 64 MiB body cap, so the string caps answer)
    ("huge_strings", "text", "POST", ITEMS, items({"text": BIG}), 400, "invalid_request"),
    ("huge_strings", "metadata value", "POST", ITEMS, items({"text": "a", "metadata": {"v": BIG}}), 400,
     "invalid_request"),
    ("huge_strings", "metadata key", "POST", ITEMS, items({"text": "a", "metadata": {BIG: 1}}), 400,
     "invalid_request"),
    ("huge_strings", "id", "POST", ITEMS, items({"id": BIG, "text": "a"}), 400, "invalid_request"),
    ("huge_strings", "unknown field name", "POST", ITEMS, items({BIG: 1, "text": "a"}), 400, "invalid_request"),
    ("huge_strings", "url", "POST", ITEMS, items({"image": {"url": "http://example.com/" + BIG}}), 400,
     "invalid_request"),
    ("huge_strings", "path", "POST", ITEMS, items({"image": {"path": BIG}}), 400, "invalid_request"),
    ("huge_strings", "collection name", "POST", COLLS, js({"name": BIG}), 400, "invalid_request"),
    ("huge_strings", "search text", "POST", SEARCH, js({"text": BIG}), 400, "invalid_request"),
    ("huge_strings", "filter key", "POST", SEARCH, js({"text": "a", "filter": {BIG: 1}}), 400, "invalid_request"),
    ("huge_strings", "base64 over the image cap", "POST", ITEMS, items({"image": {"base64": "A" * TEN_MB}}), 413,
     "payload_too_large"),
    ("huge_strings", "multipart text", "POST", SEARCH, {"files": {"text": (None, BIG)}}, 400, "invalid_request"),
    # non-UTF-8
    ("non_utf8", "0xff byte", "POST", SEARCH, raw(b'{"text": "\xff"}'), 400, "invalid_request"),
    ("non_utf8", "latin-1 text", "POST", ITEMS, raw('{"items": [{"text": "caf\u00e9"}]}'.encode("latin-1")), 400,
     "invalid_request"),
    ("non_utf8", "utf-16 body", "POST", SEARCH, raw('{"text": "cat"}'.encode("utf-16")), 400, "invalid_request"),
    ("non_utf8", "overlong /", "POST", SEARCH, raw(b'{"text": "\xc0\xaf"}'), 400, "invalid_request"),
    ("non_utf8", "encoded surrogate", "POST", SEARCH, raw(b'{"text": "\xed\xa0\x80"}'), 400, "invalid_request"),
    ("non_utf8", "lone surrogate escape in text", "POST", ITEMS, raw('{"items": [{"text": "a\\ud800"}]}'), 400,
     "invalid_request"),
    ("non_utf8", "lone surrogate in a metadata key", "POST", ITEMS,
     raw('{"items": [{"text": "a", "metadata": {"\\udfff": 1}}]}'), 400, "invalid_request"),
    ("non_utf8", "lone surrogate in search", "POST", SEARCH, raw('{"text": "\\ud83d"}'), 400, "invalid_request"),
    ("non_utf8", "charset latin-1", "POST", SEARCH, raw('{"text": "cat"}', "application/json; charset=latin-1"),
     415, "unsupported_media_type"),
    ("non_utf8", "charset utf-16", "POST", ITEMS, raw('{"items": []}', "application/json; charset=utf-16"), 415,
     "unsupported_media_type"),
    ("non_utf8", "multipart items part", "POST", ITEMS,
     {"files": [("image", ("a.jpg", PHOTO)), ("items", ("items.json", b'[{"text": "\xff"}]'))]}, 400,
     "invalid_request"),
    # content types
    ("content_type", "text/plain", "POST", SEARCH, raw('{"text": "cat"}', "text/plain"), 415,
     "unsupported_media_type"),
    ("content_type", "form-urlencoded", "POST", ITEMS, raw("items=1", "application/x-www-form-urlencoded"), 415,
     "unsupported_media_type"),
    ("content_type", "xml", "POST", SEARCH, raw("<text>cat</text>", "application/xml"), 415,
     "unsupported_media_type"),
    ("content_type", "none", "POST", ITEMS, raw('{"items": []}', None), 415, "unsupported_media_type"),
    ("content_type", "raw jpeg", "POST", ITEMS, raw(PHOTO, "image/jpeg"), 415, "unsupported_media_type"),
    ("content_type", "multipart/mixed", "POST", ITEMS, raw(b"--x--", "multipart/mixed; boundary=x"), 415,
     "unsupported_media_type"),
    ("content_type", "multipart collection", "POST", COLLS, {"files": {"name": (None, "p4")}}, 415,
     "unsupported_media_type"),
    ("content_type", "json type, form body", "POST", ITEMS, raw("--x\r\n\r\n", "application/json"), 400,
     "invalid_request"),
    # empty and malformed multipart
    ("multipart", "no parts", "POST", ITEMS, multipart_body([]), 400, "invalid_request"),
    ("multipart", "no boundary", "POST", ITEMS, raw(b"", "multipart/form-data"), 400, "invalid_request"),
    ("multipart", "only an empty items part", "POST", ITEMS, multipart_body([("items", None, b"[]")]), 400,
     "invalid_request"),
    ("multipart", "empty image part", "POST", ITEMS, multipart_body([("image", "a.jpg", b"")]), 400,
     "invalid_request"),
    ("multipart", "items not JSON", "POST", ITEMS, multipart_body([("image", "a.jpg", PHOTO), ("items", None, b"[{")]),
     400, "invalid_request"),
    ("multipart", "unknown part", "POST", ITEMS, multipart_body([("image", "a.jpg", PHOTO), ("caption", None, b"a")]),
     400, "invalid_request"),
    ("multipart", "two items parts", "POST", ITEMS,
     multipart_body([("image", "a.jpg", PHOTO), ("items", None, b"[]"), ("items", None, b"[]")]), 400,
     "invalid_request"),
    ("multipart", "garbage body", "POST", ITEMS, raw(os.urandom(0) + b"\x00garbage\r\n--", "multipart/form-data; boundary=q"),
     400, "invalid_request"),
    ("multipart", "no closing boundary", "POST", ITEMS, multipart_body([("image", "a.jpg", PHOTO)], closing=False),
     400, "invalid_request"),
    ("multipart", "search two images", "POST", SEARCH,
     multipart_body([("image", "a.jpg", PHOTO), ("image", "b.jpg", PHOTO)]), 400, "invalid_request"),
    ("multipart", "search nothing", "POST", SEARCH, multipart_body([]), 400, "invalid_request"),
    ("multipart", "search empty image", "POST", SEARCH, multipart_body([("image", "q.jpg", b"")]), 400,
     "invalid_request"),
    # paths: refused at the API
    ("path_traversal", "../", "POST", ITEMS, items({"image": {"path": "../secret.jpg"}}), 400, "invalid_request"),
    ("path_traversal", "sub/../../", "POST", ITEMS, items({"image": {"path": "sub/../../secret.jpg"}}), 400,
     "invalid_request"),
    ("path_traversal", "./../", "POST", ITEMS, items({"image": {"path": "./../secret.jpg"}}), 400, "invalid_request"),
    ("path_traversal", "many ../", "POST", ITEMS, items({"image": {"path": "sub/" + "../" * 12 + "etc/passwd"}}),
     400, "invalid_request"),
    ("path_traversal", "absolute", "POST", ITEMS, items({"image": {"path": "/etc/passwd"}}), 400, "invalid_request"),
    ("path_traversal", "absolute /dev/zero", "POST", ITEMS, items({"image": {"path": "/dev/zero"}}), 400,
     "invalid_request"),
    ("path_traversal", "symlink out", "POST", ITEMS, items({"image": {"path": "escape.jpg"}}), 400,
     "invalid_request"),
    ("path_traversal", "relative symlink out", "POST", ITEMS, items({"image": {"path": "sub/deep-escape.jpg"}}),
     400, "invalid_request"),
    ("path_traversal", "symlink to /dev/zero", "POST", ITEMS, items({"image": {"path": "dev-zero"}}), 400,
     "invalid_request"),
    ("path_traversal", "symlink loop", "POST", ITEMS, items({"image": {"path": "loop.jpg"}}), 400, "invalid_request"),
    ("path_traversal", "FIFO", "POST", ITEMS, items({"image": {"path": "fifo"}}), 400, "invalid_request"),
    ("path_traversal", "symlink to a FIFO", "POST", ITEMS, items({"image": {"path": "fifo-link.jpg"}}), 400,
     "invalid_request"),
    ("path_traversal", "directory", "POST", ITEMS, items({"image": {"path": "dir"}}), 400, "invalid_request"),
    ("path_traversal", "the root itself", "POST", ITEMS, items({"image": {"path": "."}}), 400, "invalid_request"),
    ("path_traversal", "NUL byte", "POST", ITEMS, items({"image": {"path": "good.jpg\u0000.png"}}), 400,
     "invalid_request"),
    ("path_traversal", "empty", "POST", ITEMS, items({"image": {"path": ""}}), 400, "invalid_request"),
    ("path_traversal", "name too long", "POST", ITEMS, items({"image": {"path": "a" * 5000}}), 400,
     "invalid_request"),
    ("path_traversal", "sparse file over the cap", "POST", ITEMS, items({"image": {"path": "huge.jpg"}}), 413,
     "payload_too_large"),
    ("path_traversal", "search ../", "POST", SEARCH, js({"image": {"path": "../secret.jpg"}}), 400,
     "invalid_request"),
    ("path_traversal", "search FIFO", "POST", SEARCH, js({"image": {"path": "fifo"}}), 400, "invalid_request"),
    # URLs refused at the API (schemes, syntax, literal non-public addresses: no packet sent)
    ("urls", "file://", "POST", ITEMS, items({"image": {"url": "file:///etc/passwd"}}), 400, "invalid_request"),
    ("urls", "gopher:// to redis", "POST", ITEMS, items({"image": {"url": "gopher://127.0.0.1:6379/_FLUSHALL"}}),
     400, "invalid_request"),
    ("urls", "ftp://", "POST", ITEMS, items({"image": {"url": "ftp://example.com/a.jpg"}}), 400, "invalid_request"),
    ("urls", "dict://", "POST", ITEMS, items({"image": {"url": "dict://127.0.0.1:6379/info"}}), 400,
     "invalid_request"),
    ("urls", "data:", "POST", ITEMS, items({"image": {"url": "data:image/png;base64,iVBORw0KGgo="}}), 400,
     "invalid_request"),
    ("urls", "javascript:", "POST", ITEMS, items({"image": {"url": "javascript:alert(1)"}}), 400, "invalid_request"),
    ("urls", "no host", "POST", ITEMS, items({"image": {"url": "http:///a.jpg"}}), 400, "invalid_request"),
    ("urls", "127.0.0.1", "POST", ITEMS, items({"image": {"url": "http://127.0.0.1:6379/"}}), 400, "invalid_request"),
    ("urls", "169.254.169.254", "POST", ITEMS, items({"image": {"url": "http://169.254.169.254/latest/meta-data/"}}),
     400, "invalid_request"),
    ("urls", "10.0.0.1", "POST", ITEMS, items({"image": {"url": "http://10.0.0.1/a.jpg"}}), 400, "invalid_request"),
    ("urls", "HTTP://10.0.0.1", "POST", ITEMS, items({"image": {"url": "HTTP://10.0.0.1/a.jpg"}}), 400,
     "invalid_request"),
    ("urls", "192.168.1.1", "POST", ITEMS, items({"image": {"url": "http://192.168.1.1/"}}), 400, "invalid_request"),
    ("urls", "172.16.0.1", "POST", ITEMS, items({"image": {"url": "https://172.16.0.1/"}}), 400, "invalid_request"),
    ("urls", "100.64.0.1 (CGNAT)", "POST", ITEMS, items({"image": {"url": "http://100.64.0.1/"}}), 400,
     "invalid_request"),
    ("urls", "0.0.0.0", "POST", ITEMS, items({"image": {"url": "http://0.0.0.0:8000/"}}), 400, "invalid_request"),
    ("urls", "[::1]", "POST", ITEMS, items({"image": {"url": "http://[::1]/"}}), 400, "invalid_request"),
    ("urls", "[::ffff:10.0.0.1]", "POST", ITEMS, items({"image": {"url": "http://[::ffff:10.0.0.1]/"}}), 400,
     "invalid_request"),
    ("urls", "[fe80::1]", "POST", ITEMS, items({"image": {"url": "http://[fe80::1]/"}}), 400, "invalid_request"),
    ("urls", "NAT64 metadata", "POST", ITEMS, items({"image": {"url": "http://[64:ff9b::a9fe:a9fe]/"}}), 400,
     "invalid_request"),
    ("urls", "multicast", "POST", ITEMS, items({"image": {"url": "http://224.0.0.1/"}}), 400, "invalid_request"),
    ("urls", "credentials", "POST", ITEMS, items({"image": {"url": "http://user:pw@example.com/a.jpg"}}), 400,
     "invalid_request"),
    ("urls", "port out of range", "POST", ITEMS, items({"image": {"url": "http://example.com:99999/"}}), 400,
     "invalid_request"),
    ("urls", "CRLF injection", "POST", ITEMS, items({"image": {"url": "http://example.com/a\r\nX-Evil: 1"}}), 400,
     "invalid_request"),
    ("urls", "space", "POST", ITEMS, items({"image": {"url": "http://example.com/a b.jpg"}}), 400,
     "invalid_request"),
    ("urls", "9000 characters", "POST", ITEMS, items({"image": {"url": "http://example.com/" + "a" * 9000}}), 400,
     "invalid_request"),
    ("urls", "search metadata URL", "POST", SEARCH, js({"image": {"url": "http://169.254.169.254/"}}), 400,
     "invalid_request"),
    # names and ids
    ("names_ids", "collection ../", "GET", "/collections/..%2F..%2Fetc", {}, 404, "not_found"),
    ("names_ids", "collection name ../x", "POST", COLLS, js({"name": "../x"}), 400, "invalid_request"),
    ("names_ids", "collection name upper", "POST", COLLS, js({"name": "Photos"}), 400, "invalid_request"),
    ("names_ids", "collection name 64", "POST", COLLS, js({"name": "a" * 64}), 400, "invalid_request"),
    ("names_ids", "collection name newline", "POST", COLLS, js({"name": "photos\n"}), 400, "invalid_request"),
    ("names_ids", "collection name unicode", "POST", COLLS, js({"name": "ph\u00f6tos"}), 400, "invalid_request"),
    ("names_ids", "collection exists", "POST", COLLS, js({"name": "photos"}), 409, "conflict"),
    ("names_ids", "job ..", "GET", "/jobs/%2e%2e", {}, 404, "not_found"),
    ("names_ids", "job *", "GET", "/jobs/*", {}, 404, "not_found"),
    ("names_ids", "job 3000 chars", "GET", "/jobs/" + "a" * 3000, {}, 404, "not_found"),
    ("names_ids", "item %00", "GET", "/collections/photos/items/%00", {}, 404, "not_found"),
    ("names_ids", "item id with a newline", "POST", ITEMS, items({"id": "a\nb", "text": "a"}), 400, "invalid_request"),
    ("names_ids", "item id 257", "POST", ITEMS, items({"id": "a" * 257, "text": "a"}), 400, "invalid_request"),
    ("names_ids", "item id RTL override", "POST", ITEMS, items({"id": "a\u202eb", "text": "a"}), 400,
     "invalid_request"),
    ("names_ids", "duplicate ids", "POST", ITEMS, items({"id": "d", "text": "a"}, {"id": "d", "text": "b"}), 400,
     "invalid_request"),
    ("names_ids", "unknown collection", "POST", "/collections/nope/items", items({"text": "a"}), 404, "not_found"),
    ("names_ids", "async=maybe", "POST", SEARCH + "?async=maybe", js({"text": "a"}), 400, "invalid_request"),
    ("names_ids", "PUT", "PUT", COLLS, js({"name": "p"}), 405, "method_not_allowed"),
    # size limits
    ("size_limits", "1001 items", "POST", ITEMS, items(*({"text": "t"} for _ in range(1001))), 413,
     "payload_too_large"),
    ("size_limits", "base64 image over 4 MiB", "POST", ITEMS, items({"image": {"base64": b64(bytes(MAX_IMAGE_BYTES + 1))}}),
     413, "payload_too_large"),
    ("size_limits", "multipart image over 4 MiB", "POST", ITEMS, {"files": {"image": ("a.jpg", bytes(MAX_IMAGE_BYTES + 1))}},
     413, "payload_too_large"),
    ("size_limits", "search image over 4 MiB", "POST", SEARCH, js({"image": {"base64": b64(bytes(MAX_IMAGE_BYTES + 1))}}),
     413, "payload_too_large"),
    ("size_limits", "1001 image parts", "POST", ITEMS, {"files": [("image", (f"{i}.jpg", b"x")) for i in range(1001)]},
     413, "payload_too_large"),
]


@pytest.mark.parametrize("category, method, path, kw, status, code", [c[:1] + c[2:] for c in REFUSED],
                         ids=[f"{c[0]}:{c[1]}" for c in REFUSED])
def test_malformed_requests_get_their_4xx(api, seeded, category, method, path, kw, status, code):
    api.check_error(category, api.call(method, path, **kw), status, code)


def send_oversize_body(api: Api, stack: Stack) -> None:
    """A client that announces 100 MB (over the 64 MiB cap) gets 413 without sending it."""
    host, port = stack.settings.host, stack.settings.port
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.putrequest("POST", "/v1" + ITEMS)
    for name, value in (("Authorization", f"Bearer {ADMIN}"), ("Content-Type", "application/json"),
                        ("Content-Length", str(100 * 2**20))):
        conn.putheader(name, value)
    conn.endheaders(b'{"items": [')
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    api.figures["size_limits"] += 1
    assert resp.status == 413 and json.loads(body)["error"]["code"] == "payload_too_large"


def test_a_body_over_the_request_cap_is_413_before_it_is_read(api, stack, seeded):
    send_oversize_body(api, stack)


# Items that fail alone, with a reason, in the job's errors ----------------------------------

def run_batch(api: Api, category: str, batch: list[tuple[dict[str, Any], str | None]],
              multipart: bool = False) -> dict[str, Any]:
    """Ingest a batch of (item, expected error code or None for success); check each outcome."""
    if multipart:
        files = [("image", (f"{i}.bin", item.pop("_bytes"))) for i, (item, _) in enumerate(batch)]
        resp = api.call("POST", ITEMS, files=files, data={"items": json.dumps([item for item, _ in batch])})
    else:
        resp = api.call("POST", ITEMS, json={"items": [item for item, _ in batch]})
    assert resp.status_code == 202, resp.text
    job = api.wait_job(resp.json()["job_id"])
    failures = {e["id"]: e for e in job["errors"]}
    assert job["done"] + job["failed"] == job["total"] == len(batch)
    for item, code in batch:
        api.figures[category] += code is not None
        if code is None:
            assert item["id"] not in failures, failures.get(item["id"])
        else:
            assert item["id"] in failures, (item["id"], "was not refused")
            error = failures[item["id"]]
            assert error["code"] == code and error["message"], (item["id"], error)
            for leak in api.leaks:
                assert leak not in error["message"]
    return job


def send_url_batch(api: Api, image_server: _ImageServer, stack: Stack) -> None:
    base = image_server.base
    api_port = stack.settings.port
    batch = [
        ({"id": "u-localhost", "image": {"url": f"http://localhost:{api_port}/healthz"}}, "forbidden_url"),
        ({"id": "u-127.1", "image": {"url": f"http://127.1:{api_port}/healthz"}}, "forbidden_url"),
        ({"id": "u-decimal", "image": {"url": f"http://2130706433:{api_port}/healthz"}}, "forbidden_url"),
        ({"id": "u-hex", "image": {"url": f"http://0x7f000001:{api_port}/healthz"}}, "forbidden_url"),
        ({"id": "u-redirect-10", "image": {"url": base + "/redirect-private"}}, "forbidden_url"),
        ({"id": "u-redirect-metadata", "image": {"url": base + "/redirect-metadata"}}, "forbidden_url"),
        ({"id": "u-redirect-loopback", "image": {"url": base + "/redirect-loopback"}}, "forbidden_url"),
        ({"id": "u-redirect-localhost", "image": {"url": base + "/redirect-localhost"}}, "forbidden_url"),
        ({"id": "u-redirect-file", "image": {"url": base + "/redirect-file"}}, "forbidden_url"),
        ({"id": "u-redirect-gopher", "image": {"url": base + "/redirect-gopher"}}, "forbidden_url"),
        ({"id": "u-redirect-loop", "image": {"url": base + "/redirect-loop"}}, "fetch_failed"),
        ({"id": "u-slow-endless", "image": {"url": base + "/slow"}}, "fetch_failed"),
        ({"id": "u-too-big", "image": {"url": base + "/big"}}, "payload_too_large"),
        ({"id": "u-endless-chunked", "image": {"url": base + "/big-chunked"}}, "payload_too_large"),
        ({"id": "u-bomb", "image": {"url": base + "/bomb.png"}}, "payload_too_large"),
        ({"id": "u-html", "image": {"url": base + "/page.html"}}, "invalid_item"),
        ({"id": "u-404", "image": {"url": base + "/missing.jpg"}}, "fetch_failed"),
        ({"id": "u-500", "image": {"url": base + "/error"}}, "fetch_failed"),
        ({"id": "u-closed-port", "image": {"url": f"http://{IMAGE_HOST}:1/a.jpg"}}, "fetch_failed"),
        # control: the allowed server's photo, re-ingested under its own id (an upsert)
        ({"id": "cat", "image": {"url": base + "/photo.png"}, "metadata": {"via": "json"}}, None),
    ]
    started, hits_before = time.monotonic(), Counter(image_server.hits)
    job = run_batch(api, "urls", batch)
    assert job["state"] == "completed_with_errors"
    assert time.monotonic() - started < 60
    slow = next(e for e in job["errors"] if e["id"] == "u-slow-endless")
    assert "longer than" in slow["message"]
    hits = image_server.hits - hits_before
    assert hits["/slow"] == 1 and hits["/photo.png"] == 1 and hits["/redirect-loop"] == 4


def test_url_items_fail_alone_with_a_reason(api, seeded, image_server, stack):
    send_url_batch(api, image_server, stack)


def send_path_batch(api: Api) -> None:
    batch = [
        ({"id": "p-missing", "image": {"path": "missing.jpg"}}, "not_found"),
        ({"id": "p-percent-dots", "image": {"path": "%2e%2e/secret.jpg"}}, "not_found"),
        ({"id": "p-backslashes", "image": {"path": "..\\secret.jpg"}}, "not_found"),
        ({"id": "p-tilde", "image": {"path": "~/.ssh/id_rsa"}}, "not_found"),
        ({"id": "p-four-dots", "image": {"path": "....//....//secret.jpg"}}, "not_found"),
        ({"id": "p-corrupt", "image": {"path": "corrupt.jpg"}}, "invalid_item"),
        ({"id": "p-bomb", "image": {"path": "bomb.png"}}, "payload_too_large"),
        ({"id": "berries", "image": {"path": "sub/../good.jpg"}, "metadata": {"via": "path"}}, None),  # control upsert
    ]
    run_batch(api, "path_traversal", batch)


def test_path_items_fail_alone_with_a_reason(api, seeded):
    send_path_batch(api)


def send_image_batches(api: Api) -> None:
    bad = {**{f"bomb-{k}": (v, "payload_too_large") for k, v in BOMBS.items()},
           **{f"corrupt-{k}": (v, "invalid_item") for k, v in corrupt_files().items()}}
    batch = [({"id": name, "image": {"base64": b64(data)}}, code) for name, (data, code) in bad.items()]
    batch.append(({"id": "coffee", "image": {"base64": b64(PHOTOS[SEEDS["coffee"]].read_bytes())}}, None))
    run_batch(api, "images", batch)
    # The same files as multipart uploads, in one batch with a good photo.
    upload = [({"id": f"mp-{name}", "_bytes": data}, code) for name, (data, code) in bad.items()]
    upload.append(({"id": "cat", "_bytes": PHOTOS[SEEDS["cat"]].read_bytes(), "metadata": {"via": "json"}}, None))
    run_batch(api, "images", upload, multipart=True)


def test_image_bombs_and_corrupt_files_fail_alone(api, seeded):
    send_image_batches(api)


def send_bad_query_image(api: Api, name: str) -> None:
    data = {**BOMBS, **corrupt_files()}[name]
    resp = api.call("POST", SEARCH, files={"image": ("q.png", data)}, data={"text": "cat"})
    api.check_error("images", resp, 422, "invalid_item")


@pytest.mark.parametrize("name", [*BOMBS, *corrupt_files()])
def test_bombs_and_corrupt_files_as_query_images_are_422(api, seeded, name):
    send_bad_query_image(api, name)


def test_embedded_redis_of_the_stack_listens_on_loopback_only(stack):
    port = int(stack.env["MMSEARCH_REDIS_PORT"])
    title = Path(f"/proc/{stack.procs['redis'].pid}/cmdline").read_bytes().rstrip(b"\0").split()
    assert title[0].endswith(b"redis-server") and title[1:] == [f"127.0.0.1:{port}".encode()], title
    listening = set()  # every socket listening on the port, from the kernel's own table
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                listening.add(address)
    assert listening == {"0100007F"}, listening  # 127.0.0.1 only, no IPv6, no wildcard
    client = redis.Redis(host="127.0.0.1", port=port)
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert client.config_get("protected-mode")["protected-mode"] == "yes"


# After every hostile case: nothing broke, nothing was lost ---------------------------------

def test_the_service_is_intact_after_every_hostile_case(stack, seeded, image_server, ingest_root, capsys):
    """Every hostile case of this module, sent again from here through a client of its own (whose
    figures count only these), then the checks."""
    api = new_api(stack, ingest_root)
    for how in BAD_AUTH:
        send_bad_auth(api, how)
    for key, granted in SCOPED_KEYS:
        send_without_scope(api, key, granted)
    for category, _, method, path, kw, status, code in REFUSED:
        api.check_error(category, api.call(method, path, **kw), status, code)
    send_oversize_body(api, stack)
    send_url_batch(api, image_server, stack)
    send_path_batch(api)
    send_image_batches(api)
    for name in [*BOMBS, *corrupt_files()]:
        send_bad_query_image(api, name)

    crashed = [name for name, proc in stack.procs.items() if proc.poll() is not None]
    count = api.call("GET", "/collections/photos").json()["count"]
    present = [i for i in seeded["ids"] if api.call("GET", f"/collections/photos/items/{i}").status_code == 200]
    lost = seeded["count"] - len(present)
    found = {}
    for item_id in ("cat", "coffee", "berries"):
        photo = PHOTOS[SEEDS[item_id]].read_bytes()
        hits = api.call("POST", SEARCH, files={"image": ("q", photo)}, data={"k": "2"}).json()["hits"]
        found[item_id] = hits[0]["id"]
    text_hits = api.call("POST", SEARCH, json={"text": "cat", "k": 4}).json()
    lines = ["", "hostile cases per category:"]
    lines += [f"  {category:<15} {n}" for category, n in sorted(api.figures.items())]
    lines += [f"  {'total':<15} {sum(api.figures.values())}",
              f"500s seen: {len(api.server_errors)}", f"worker crashes: {len(crashed)}",
              f"items lost: {lost} (count {count}, expected {seeded['count']})"]
    with capsys.disabled():
        print("\n".join(lines))
    assert not api.server_errors, api.server_errors
    assert not crashed, f"processes died: {crashed}"
    assert count == seeded["count"] and lost == 0
    assert found == {"cat": "cat", "coffee": "coffee", "berries": "berries"}
    assert text_hits["hits"][0]["id"] == "cat" and text_hits["shards"]["answered"] == text_hits["shards"]["total"]
    item = api.call("GET", "/collections/photos/items/hostile-meta").json()
    assert item["text"] == HOSTILE_TEXT and item["metadata"] == HOSTILE_METADATA
    assert sum(api.figures.values()) >= 150
