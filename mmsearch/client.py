"""Python client of the mmsearch HTTP API (its contract: docs/api.md), on which the `mmsearch` CLI is built.

    from mmsearch import Client, FileItem
    c = Client("http://127.0.0.1:8000", key=None)
    c.create_collection("photos", shards=2)
    jobs = c.ingest("photos", files=["a.jpg", FileItem("b.jpg", text="a dog")], progress=True)
    hits = c.search("photos", text="a dog on the beach", k=5)["hits"]

Every method returns the API's JSON body as a dict (thumbnails: bytes). Error answers raise
`ApiError` subclasses (mmsearch.errors) named after docs/api.md's codes (`NotFound`,
`Conflict`, ...); an API that cannot be reached raises `ConnectionFailed`. 503 and 429 answers
(honouring `Retry-After`) and connection failures are retried with bounded exponential backoff.
The package imports only `requests`, never the service's heavy dependencies.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import quote

import requests

from mmsearch.errors import ApiError, ConnectionFailed, Unavailable, error_from_response
from mmsearch.job_states import FINAL_STATES, summed_counters
from mmsearch.progress import ProgressBar
from mmsearch.uploads import FileItem, PathLike, file_batches

DEFAULT_URL = "http://127.0.0.1:8000"
EXISTS_BATCH = 1000  # ids per existence check (the API's limit)
IMPORT_BYTES_PER_S = 10e6  # the least rate at which a server checks an import and logs its items


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
            if hasattr(kw.get("data"), "seek"):
                kw["data"].seek(0)  # a file body is sent from its start at each attempt
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
                          precision: str | None = None, encoder_setting: str | None = None) -> dict[str, Any]:
        body = {"name": name, "shards": shards, "image_model": image_model, "text_model": text_model,
                "store_thumbnails": store_thumbnails, "precision": precision, "encoder_setting": encoder_setting}
        return self._json("POST", "/v1/collections", json={k: v for k, v in body.items() if v is not None})

    def collections(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/collections")["collections"]

    def collection(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/collections/{self._seg(name)}")

    def delete_collection(self, name: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/collections/{self._seg(name)}")

    def export_collection(self, name: str, path: PathLike, timeout: float | None = None) -> dict[str, Any]:
        """Export the collection into an archive file at `path` (written only when the export job
        succeeded, and checked against its sha256); the job's final body."""
        job = self.wait_job(self._json("POST", f"/v1/collections/{self._seg(name)}/export")["job_id"], timeout=timeout)
        if job["state"] != "succeeded":
            return job
        resp = self.request("GET", job["result"]["archive"], stream=True)
        digest, part = hashlib.sha256(), Path(f"{path}.part")
        with open(part, "wb") as out:
            for chunk in resp.iter_content(2**20):
                out.write(chunk)
                digest.update(chunk)
        if digest.hexdigest() != job["result"]["sha256"]:
            part.unlink()
            raise ValueError(f"the archive of job {job['id']} came incomplete or altered; export again")
        part.replace(path)
        return job

    def import_collection(self, path: PathLike, name: str | None = None, wait: bool = True,
                          timeout: float | None = None) -> dict[str, Any]:
        """Create a collection from an export archive (named `name`, default the archive's) ->
        the import job's final body (wait=True) or the 202 body, with `collection`."""
        # The server answers once it has checked the whole archive and logged every item: the
        # wait for its answer grows with the archive.
        wait_s = self.timeout + Path(path).stat().st_size / IMPORT_BYTES_PER_S
        with open(path, "rb") as body:  # sent as it is read, with its Content-Length
            answer = self._json("POST", "/v1/collections/import", params={"name": name} if name else None,
                                data=body, headers={"Content-Type": "application/zip"},
                                timeout=(self.timeout, wait_s))
        if not wait:
            return answer
        return {**self.wait_job(answer["job_id"], timeout=timeout), "collection": answer["collection"]}

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
        plan += [("files", chunk) for chunk in file_batches(files, batch, max_batch_bytes)]
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
                    done, failed, _, _ = summed_counters(bodies.values())
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

    def exists(self, collection: str, ids: Iterable[str]) -> set[str]:
        """Which of `ids` the collection holds (one request per EXISTS_BATCH ids)."""
        wanted = list(dict.fromkeys(ids))
        present: set[str] = set()
        for start in range(0, len(wanted), EXISTS_BATCH):
            body = self._json("POST", f"/v1/collections/{self._seg(collection)}/items/exists",
                              json={"ids": wanted[start:start + EXISTS_BATCH]})
            present.update(body["present"])
        return present

    def items(self, collection: str, limit: int = 100, cursor: str | None = None,
              filter: Mapping[str, Any] | None = None, fields: Sequence[str] | None = None) -> dict[str, Any]:
        """One page of the collection's items by id -> {items, next_cursor}; `fields` of text,
        metadata, has_image, thumbnail (None: the server's default; [] ids alone)."""
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        if filter is not None:
            params["filter"] = json.dumps(dict(filter))
        if fields is not None:
            params["fields"] = ",".join(fields) or "id"
        return self._json("GET", f"/v1/collections/{self._seg(collection)}/items", params=params)

    def iter_items(self, collection: str, filter: Mapping[str, Any] | None = None,
                   fields: Sequence[str] | None = None, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every item of the collection (meeting `filter`) by id, page after page."""
        cursor = None
        while True:
            page = self.items(collection, page_size, cursor, filter, fields)
            yield from page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def delete_items(self, collection: str, ids: Sequence[str] | None = None,
                     filter: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Delete by `ids` (at most 1000) or by `filter` as one job -> {job_id, status_url, total}."""
        body = {"ids": list(ids)} if ids is not None else {"filter": dict(filter or {})}
        return self._json("POST", f"/v1/collections/{self._seg(collection)}/items/delete", json=body)

    # Jobs --------------------------------------------------------------------------------

    def job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """The job's body; with `wait` (seconds, up to 30) the server answers as soon as the job
        is final, or after that long."""
        params = {"wait": f"{wait:g}"} if wait else None
        return self._json("GET", f"/v1/jobs/{self._seg(job_id)}", params=params)

    def jobs(self, collection: str | None = None, state: str | None = None, kind: str | None = None,
             limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        """One page of jobs, newest first -> {jobs, next_cursor}."""
        params = {"collection": collection, "state": state, "kind": kind, "limit": limit, "cursor": cursor}
        return self._json("GET", "/v1/jobs", params={k: v for k, v in params.items() if v is not None})

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/jobs/{self._seg(job_id)}")

    def wait_job(self, job_id: str, timeout: float | None = None, progress: bool = False) -> dict[str, Any]:
        """Poll a job until its state is final; its final body (TimeoutError after `timeout` s)."""
        return self.wait_jobs([job_id], timeout=timeout, progress=progress)[0]

    def watch_jobs(self, job_ids: Sequence[str], timeout: float | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yield the bodies of all `job_ids` about every `poll_s`, the last time when all are
        final. Each unfinished job is long-polled (`job(wait=poll_s)`), so its end is seen as it
        happens, not at the next poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bodies: dict[str, dict[str, Any]] = {}
        while True:
            started = time.monotonic()
            for job_id in job_ids:
                if bodies.get(job_id, {}).get("state") not in FINAL_STATES:
                    bodies[job_id] = self.job(job_id, wait=self.poll_s)
            current = [bodies[j] for j in job_ids]
            yield current
            if all(b["state"] in FINAL_STATES for b in current):
                return
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job(s) not final after {timeout}s: {', '.join(job_ids)}")
            time.sleep(max(0.0, self.poll_s - (time.monotonic() - started)))  # a server that cannot wait

    def wait_jobs(self, job_ids: Sequence[str], timeout: float | None = None, progress: bool = False,
                  bar: ProgressBar | None = None) -> list[dict[str, Any]]:
        """Wait for several jobs; with progress, one bar over their summed counters."""
        bar = bar or (ProgressBar() if progress else None)
        bodies: list[dict[str, Any]] = []
        for bodies in self.watch_jobs(job_ids, timeout=timeout):
            if bar is not None:
                done, failed, total, state = summed_counters(bodies)
                bar.update(done, failed, total, state, final=state in FINAL_STATES)
        return bodies

    # Search ------------------------------------------------------------------------------

    def search(self, collection: str, text: str | None = None, image: PathLike | bytes | None = None,
               k: int = 10, weights: Mapping[str, float] | None = None,
               filter: Mapping[str, Any] | None = None, offset: int = 0) -> dict[str, Any]:
        """Search by text, by an image (a file path or its bytes), or both -> {hits, k, took_ms,
        shards}; `offset` skips that many hits of the ranking (offset + k <= 1000)."""
        body: dict[str, Any] = {"k": k}
        if offset:
            body["offset"] = offset
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
