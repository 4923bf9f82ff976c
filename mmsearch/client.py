"""Python client of the mmsearch HTTP API (its contract: docs/api.md), on which the `mmsearch` CLI is built.

    from mmsearch.client import Client
    c = Client("http://127.0.0.1:8000", key=None)
    c.create_collection("photos", shards=2)
    jobs = c.ingest("photos", files=["a.jpg", FileItem("b.jpg", text="a dog")], progress=True)
    hits = c.search("photos", text="a dog on the beach", k=5)["hits"]

Every method returns the API's JSON body as a dict (thumbnails: bytes). Error answers raise
`ApiError` subclasses named after docs/api.md's codes (`NotFound`, `Conflict`, ...); an API that
cannot be reached raises `ConnectionFailed`. 503 and 429 answers (honouring `Retry-After`)
and connection failures are retried with bounded exponential backoff. The module imports
only `requests`, never the service's heavy dependencies.
"""
from __future__ import annotations

import base64
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TextIO, Union
from urllib.parse import quote

import requests

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATES = frozenset({"succeeded", "completed_with_errors", "failed", "cancelled"})
PathLike = Union[str, os.PathLike]


# Errors -----------------------------------------------------------------------------------

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


# Ingest inputs and progress ---------------------------------------------------------------

@dataclass
class FileItem:
    """An image file to upload, with its optional id, caption and metadata."""

    path: PathLike
    id: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in (("id", self.id), ("text", self.text), ("metadata", self.metadata)) if v is not None}


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


@dataclass
class ProgressBar:
    """A one-line text progress bar drawn from job counters: done/failed/total, items/s, ETA.

    The rate is measured over the last `window_s` seconds of counter readings. On a terminal
    the line is redrawn in place; elsewhere (logs, pipes) a line is written every
    `log_every_s` seconds, and the final line always.
    """

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    width: int = 30
    log_every_s: float = 10.0
    window_s: float = 15.0
    label: str = "ingest"
    _samples: list[tuple[float, int]] = field(default_factory=list)
    _start: float | None = None
    _last_draw: float = 0.0
    _tty: bool | None = None

    def _interval(self) -> float:
        if self._tty is None:
            self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        return 0.2 if self._tty else self.log_every_s

    def due(self) -> bool:
        """Whether an update now would be drawn (callers skip fetching counters otherwise)."""
        return time.monotonic() - self._last_draw >= self._interval()

    def rate(self) -> float:
        """Items per second over the recent readings."""
        if len(self._samples) < 2:
            return 0.0
        (t0, p0), (t1, p1) = self._samples[0], self._samples[-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else 0.0

    def update(self, done: int, failed: int, total: int, state: str = "", final: bool = False) -> None:
        now = time.monotonic()
        processed = done + failed
        self._start = now if self._start is None else self._start
        self._samples.append((now, processed))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.pop(0)
        if not final and now - self._last_draw < self._interval():
            return
        self._last_draw = now
        rate = self.rate()
        remaining = max(total - processed, 0)
        if final:
            timing = f"in {_fmt_duration(now - self._start)}"
        else:
            timing = f"ETA {_fmt_duration(remaining / rate if rate > 0 else math.inf)}"
        filled = int(round((processed / total if total else 1.0) * self.width))
        line = (f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {processed}/{total}  "
                f"ok {done}  failed {failed}  {rate:.1f} items/s  {timing}" + (f"  {state}" if state else ""))
        if self._tty:
            self.stream.write("\r" + line + ("\n" if final else "\x1b[K"))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _file_batches(files: Sequence[PathLike | FileItem], batch: int, max_bytes: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    size = 0
    for f in files:
        path = f.path if isinstance(f, FileItem) else f
        n = os.path.getsize(path)
        if chunk and (len(chunk) >= batch or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(f)
        size += n
    if chunk:
        yield chunk


def _aggregate(bodies: Iterable[Mapping[str, Any]]) -> tuple[int, int, int, str]:
    bodies = list(bodies)
    done = sum(b.get("done", 0) for b in bodies)
    failed = sum(b.get("failed", 0) for b in bodies)
    total = sum(b.get("total", 0) for b in bodies)
    return done, failed, total, overall_state(bodies)


def overall_state(bodies: Sequence[Mapping[str, Any]]) -> str:
    """One state for several jobs: the worst final state once all are final, else running/queued."""
    states = [b.get("state", "") for b in bodies]
    if not states:
        return "succeeded"
    if not all(s in FINAL_STATES for s in states):
        return "running" if any(s != "queued" for s in states) else "queued"
    for worst in ("failed", "cancelled", "completed_with_errors"):
        if worst in states:
            return worst
    return "succeeded"


# The client -------------------------------------------------------------------------------

class Client:
    """Typed methods for every endpoint of the mmsearch API v1."""

    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, timeout: float = 60,
                 retries: int = 4, backoff_s: float = 0.25, max_backoff_s: float = 10.0,
                 poll_s: float = 0.5) -> None:
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.poll_s = poll_s
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "mmsearch-client/0.1"
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # Transport ---------------------------------------------------------------------------

    def _delay(self, attempt: int, resp: requests.Response | None) -> float:
        delay = min(self.backoff_s * 2 ** attempt, self.max_backoff_s)
        retry_after = resp.headers.get("Retry-After") if resp is not None else None
        if retry_after:
            try:
                delay = min(max(float(retry_after), 0.0), 60.0)
            except ValueError:
                pass  # an HTTP date: keep the backoff
        return delay

    def request(self, method: str, path: str, *, ok: Sequence[int] = (200, 201, 202, 204),
                retry: bool = True, files_factory: Callable[[], Any] | None = None, **kw: Any) -> requests.Response:
        """One call with retries; `path` is below the server root (e.g. "/v1/collections")."""
        kw.setdefault("timeout", self.timeout)
        attempt = 0
        while True:
            if files_factory is not None:
                kw["files"] = files_factory()  # multipart bodies are rebuilt for each attempt
            try:
                resp = self.session.request(method, self.url + path, **kw)
            except (requests.ConnectionError, requests.Timeout) as exc:
                # A POST that may have reached the server is not repeated; one never sent is.
                if retry and attempt < self.retries and (method != "POST" or _not_sent(exc)):
                    time.sleep(self._delay(attempt, None))
                    attempt += 1
                    continue
                raise ConnectionFailed(0, ConnectionFailed.code,
                                       f"cannot reach the mmsearch API at {self.url}: {_short(exc)}") from None
            if resp.status_code in ok:
                return resp
            if retry and resp.status_code in (429, 503) and attempt < self.retries:
                time.sleep(self._delay(attempt, resp))
                attempt += 1
                continue
            raise error_from_response(resp)

    def _json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        resp = self.request(method, path, **kw)
        return resp.json() if resp.content else {}

    @staticmethod
    def _seg(value: str) -> str:
        return quote(value, safe="")

    @staticmethod
    def _item_path(collection: str, item_id: str) -> str:
        # Item ids may hold "/" (file paths): the API takes the rest of the URL as the id.
        # "." and ".." segments are escaped so that no URL normalisation removes them.
        segments = [quote(s, safe="") if s not in (".", "..") else s.replace(".", "%2E")
                    for s in item_id.split("/")]
        return f"/v1/collections/{quote(collection, safe='')}/items/{'/'.join(segments)}"

    # Operations --------------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        return self._json("GET", "/healthz")

    def readyz(self) -> dict[str, Any]:
        """The readiness body plus `ready`: True on 200; on 503 False with the error's details."""
        try:
            return {"ready": True, **self._json("GET", "/readyz", retry=False)}
        except Unavailable as exc:
            return {"ready": False, "status": "not ready", "message": exc.message, **exc.details}

    # Collections -------------------------------------------------------------------------

    def create_collection(self, name: str, shards: int | None = None, image_model: str | None = None,
                          text_model: str | None = None, store_thumbnails: bool | None = None,
                          precision: str | None = None) -> dict[str, Any]:
        body = {"name": name, "shards": shards, "image_model": image_model, "text_model": text_model,
                "store_thumbnails": store_thumbnails, "precision": precision}
        return self._json("POST", "/v1/collections", json={k: v for k, v in body.items() if v is not None})

    def collections(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/collections")["collections"]

    def collection(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/collections/{self._seg(name)}")

    def delete_collection(self, name: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/collections/{self._seg(name)}")

    # Items -------------------------------------------------------------------------------

    def add_items(self, collection: str, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """One JSON ingest request -> the 202 body {job_id, status_url, ids}."""
        return self._json("POST", f"/v1/collections/{self._seg(collection)}/items", json={"items": list(items)})

    def upload_files(self, collection: str, files: Sequence[PathLike | FileItem]) -> dict[str, Any]:
        """One multipart ingest request with these image files -> the 202 body."""
        entries = [f if isinstance(f, FileItem) else FileItem(f) for f in files]
        meta = json.dumps([e.fields() for e in entries])

        def parts() -> list[tuple[str, Any]]:
            out: list[tuple[str, Any]] = [("image", (Path(e.path).name, Path(e.path).read_bytes(),
                                                      "application/octet-stream")) for e in entries]
            return out + [("items", (None, meta, "application/json"))]

        return self._json("POST", f"/v1/collections/{self._seg(collection)}/items", files_factory=parts)

    def ingest(self, collection: str, items: Sequence[Mapping[str, Any]] | None = None,
               files: Sequence[PathLike | FileItem] | None = None, wait: bool = True,
               progress: bool = False, batch: int = 64, timeout: float | None = None,
               bar: ProgressBar | None = None, max_batch_bytes: int = 32 * 2**20) -> list[dict[str, Any]]:
        """Ingest JSON `items` (API item dicts) and/or image `files`, `batch` per request.

        Files are also split so that one request stays under `max_batch_bytes`; a file without
        an id gets one from the server. Returns the final job bodies, each with the `ids` of
        its items in request order (wait=True), or the 202 answers {job_id, status_url, ids}. With
        progress=True (or a `bar`) one bar on stderr follows all the jobs' counters together,
        from the first upload until every job is final. If a request fails, the exception's
        `details["submitted_jobs"]` lists the jobs already started.
        """
        if batch < 1:
            raise ValueError("batch must be >= 1")
        items, files = list(items or []), list(files or [])
        plan: list[tuple[str, list[Any]]] = [("items", items[i:i + batch]) for i in range(0, len(items), batch)]
        plan += [("files", chunk) for chunk in _file_batches(files, batch, max_batch_bytes)]
        total = len(items) + len(files)
        bar = bar or (ProgressBar() if progress and wait else None)
        answers: list[dict[str, Any]] = []
        bodies: dict[str, dict[str, Any]] = {}
        try:
            for n, (kind, chunk) in enumerate(plan, 1):
                answers.append(self.add_items(collection, chunk) if kind == "items"
                               else self.upload_files(collection, chunk))
                if bar is not None and bar.due():
                    for answer in answers:
                        if bodies.get(answer["job_id"], {}).get("state") not in FINAL_STATES:
                            bodies[answer["job_id"]] = self.job(answer["job_id"])
                    done, failed, _, _ = _aggregate(bodies.values())
                    bar.update(done, failed, total, f"uploading {n}/{len(plan)}")
        except ApiError as exc:
            exc.details.setdefault("submitted_jobs", [a["job_id"] for a in answers])
            raise
        if not wait:
            return answers
        bodies_final = self.wait_jobs([a["job_id"] for a in answers], timeout=timeout, bar=bar)
        return [{**body, "ids": answer["ids"]} for body, answer in zip(bodies_final, answers)]

    def item(self, collection: str, id: str) -> dict[str, Any]:
        return self._json("GET", self._item_path(collection, id))

    def thumbnail(self, collection: str, id: str) -> bytes:
        return self.request("GET", self._item_path(collection, id) + "/thumbnail").content

    def delete_item(self, collection: str, id: str) -> dict[str, Any]:
        return self._json("DELETE", self._item_path(collection, id))

    def exists(self, collection: str, ids: Iterable[str], workers: int = 16) -> set[str]:
        """Which of `ids` the collection holds (one look-up per id, `workers` at a time)."""
        from concurrent.futures import ThreadPoolExecutor

        def probe(item_id: str) -> str | None:
            try:
                self.item(collection, item_id)
                return item_id
            except NotFound as exc:
                if exc.details.get("id") is None and "collection" in exc.details:
                    raise  # the collection itself is gone
                return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return {i for i in pool.map(probe, list(ids)) if i is not None}

    # Jobs --------------------------------------------------------------------------------

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{self._seg(job_id)}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/jobs/{self._seg(job_id)}")

    def wait_job(self, job_id: str, timeout: float | None = None, progress: bool = False) -> dict[str, Any]:
        """Poll a job until its state is final; its final body (TimeoutError after `timeout` s)."""
        return self.wait_jobs([job_id], timeout=timeout, progress=progress)[0]

    def watch_jobs(self, job_ids: Sequence[str], timeout: float | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yield the bodies of all `job_ids` at each poll, the last time when all are final."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bodies: dict[str, dict[str, Any]] = {}
        while True:
            for job_id in job_ids:
                if bodies.get(job_id, {}).get("state") not in FINAL_STATES:
                    bodies[job_id] = self.job(job_id)
            current = [bodies[j] for j in job_ids]
            yield current
            if all(b["state"] in FINAL_STATES for b in current):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job(s) not final after {timeout}s: {', '.join(job_ids)}")
            time.sleep(self.poll_s)

    def wait_jobs(self, job_ids: Sequence[str], timeout: float | None = None, progress: bool = False,
                  bar: ProgressBar | None = None) -> list[dict[str, Any]]:
        """Wait for several jobs; with progress, one bar over their summed counters."""
        bar = bar or (ProgressBar() if progress else None)
        bodies: list[dict[str, Any]] = []
        for bodies in self.watch_jobs(job_ids, timeout=timeout):
            if bar is not None:
                done, failed, total, state = _aggregate(bodies)
                bar.update(done, failed, total, state, final=state in FINAL_STATES)
        return bodies

    # Search ------------------------------------------------------------------------------

    def search(self, collection: str, text: str | None = None, image: PathLike | bytes | None = None,
               k: int = 10, weights: Mapping[str, float] | None = None,
               filter: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Search by text, by an image (a file path or its bytes), or both -> {hits, k, took_ms, shards}."""
        body: dict[str, Any] = {"k": k}
        if text is not None:
            body["text"] = text
        if image is not None:
            data = image if isinstance(image, (bytes, bytearray)) else Path(image).read_bytes()
            body["image"] = {"base64": base64.b64encode(data).decode()}
        if weights is not None:
            body["weights"] = dict(weights)
        if filter is not None:
            body["filter"] = dict(filter)
        return self._json("POST", f"/v1/collections/{self._seg(collection)}/search", json=body)


def _not_sent(exc: Exception) -> bool:
    """Whether a requests failure happened before the request could reach the server."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return type(reason).__name__ in ("NewConnectionError", "ConnectTimeoutError", "NameResolutionError")


def _short(exc: Exception) -> str:
    """A one-line reason for a requests exception (without urllib3's nested reprs)."""
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "Connection reset", "Temporary failure in name resolution"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
