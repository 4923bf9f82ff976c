"""The Python client (mmsearch.client) and the `mmsearch` CLI (mmsearch.cli) against the real stack,
plus the client's retry behaviour against a tiny fake server."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from bench.photos import all_photos
import mmsearch as mc
from mmsearch.cli import cli
from shared.runtime.stack import free_port
from tests.support.stack import running_stack

PHOTOS = {p.name: p for p in all_photos()}
# The CLI's folder: ids are paths relative to it; sidecar captions for some photos.
FOLDER = {"cats/chelsea.png": "chelsea", "coffee.png": "coffee", "fruit/imagenet_04.jpg": "imagenet_04",
          "imagenet_13.jpg": "imagenet_13", "imagenet_10.jpg": "imagenet_10", "space/astronaut.png": "astronaut"}
SIDECARS = {"coffee.png": "a cup of espresso", "fruit/imagenet_04.jpg": "fresh strawberries"}
CAT_ID = "cats/chelsea.png"


# The client's retries, against a fake server ---------------------------------------------

class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 then 429 (both with Retry-After: 0) before a 200, counting the calls."""

    calls = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).calls += 1
        if type(self).calls <= 2:
            status, body = (503, "unavailable") if type(self).calls == 1 else (429, "rate_limited")
            payload = json.dumps({"error": {"code": body, "message": f"try later ({body})", "details": {}}})
            self.send_response(status)
            self.send_header("Retry-After", "0")
        else:
            payload = json.dumps({"status": "ok"})
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        pass


def test_client_retries_503_and_429_then_gives_up_bounded():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert mc.Client(url, backoff_s=0.01).healthz() == {"status": "ok"}
        assert _Flaky.calls == 3
        _Flaky.calls = 0
        with pytest.raises(mc.Unavailable) as err:
            mc.Client(url, retries=0).healthz()
        assert err.value.status == 503 and err.value.code == "unavailable"
    finally:
        server.shutdown()


def test_client_unreachable_api_is_one_clear_error():
    port = free_port()
    with pytest.raises(mc.ConnectionFailed) as err:
        mc.Client(f"http://127.0.0.1:{port}", retries=2, backoff_s=0.01).collections()
    assert "cannot reach the mmsearch API" in str(err.value) and "\n" not in str(err.value)


# The real stack -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(shared_stack):
    return shared_stack


@pytest.fixture(scope="module")
def client(stack):
    return mc.Client(stack.api_url, timeout=60)


@pytest.fixture(scope="module")
def run(stack):
    """Invoke the CLI in-process against the stack: (exit code, stdout, stderr)."""
    runner = CliRunner()
    # `status` reads slot owners and queue lengths from the stack's Redis (found like `mmsearch up` does).
    env = {"MMSEARCH_REDIS_PORT": stack.env["MMSEARCH_REDIS_PORT"], "MMSEARCH_SHARDS": "2"}

    def invoke(*args: str):
        result = runner.invoke(cli, ["--api", stack.api_url, *args], catch_exceptions=False, env=env)
        return result.exit_code, result.stdout, result.stderr

    return invoke


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for rel, name in FOLDER.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PHOTOS[name].path, root / rel)
    for rel, caption in SIDECARS.items():
        (root / rel).with_suffix(".txt").write_text(caption + "\n")
    (root / "notes.md").write_text("not an image")
    return root


def test_client_collections_items_jobs_search_and_errors(client):
    assert client.healthz()["status"] == "ok"
    assert client.readyz()["ready"] is True
    body = client.create_collection("clientcoll", shards=2, store_thumbnails=True)
    assert body["name"] == "clientcoll" and body["shards"] == 2
    with pytest.raises(mc.Conflict) as err:
        client.create_collection("clientcoll")
    assert err.value.status == 409 and err.value.details == {"collection": "clientcoll"}
    with pytest.raises(mc.NotFound):
        client.collection("no-such-collection")
    with pytest.raises(mc.InvalidRequest):
        client.create_collection("Bad Name!")
    assert "clientcoll" in [c["name"] for c in client.collections()]

    # JSON items (one caption-only) and multipart files (with a caption and metadata) together.
    items = [{"id": "strawberries", "image": {"base64": __import__("base64").b64encode(
        PHOTOS["imagenet_04"].read_bytes()).decode()}, "text": "fresh strawberries"},
             {"id": "note", "text": "a note about cannons"}]
    files = [PHOTOS["coffee"].path, mc.FileItem(PHOTOS["chelsea"].path, id="cat photo", metadata={"pet": True})]
    bodies = client.ingest("clientcoll", items=items, files=files, batch=1)
    assert len(bodies) == 4 and all(b["state"] == "succeeded" for b in bodies)
    assert bodies[0]["ids"] == ["strawberries"] and bodies[3]["ids"] == ["cat photo"]
    coffee_id = bodies[2]["ids"][0]  # generated by the server
    assert client.collection("clientcoll")["count"] == 4
    job = client.job(bodies[0]["id"])
    assert job["kind"] == "ingest" and (job["done"], job["failed"], job["total"]) == (1, 0, 1)

    item = client.item("clientcoll", "cat photo")
    assert item == {"id": "cat photo", "text": None, "metadata": {"pet": True}, "has_image": True,
                    "shard": item["shard"]}
    thumb = client.thumbnail("clientcoll", "cat photo")
    assert cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR) is not None
    with pytest.raises(mc.NotFound):
        client.item("clientcoll", "missing")
    assert client.exists("clientcoll", ["cat photo", "missing", "note"]) == {"cat photo", "note"}

    hits = client.search("clientcoll", image=PHOTOS["coffee"].path, k=3)["hits"]
    assert hits[0]["id"] == coffee_id
    hits = client.search("clientcoll", text="cat", image=PHOTOS["chelsea"].read_bytes(),
                         weights={"image": 1, "text": 0.5}, filter={"pet": True})["hits"]
    assert [h["id"] for h in hits] == ["cat photo"]
    with pytest.raises(mc.InvalidRequest):
        client.search("clientcoll")  # neither text nor image
    with pytest.raises(mc.NotFound):
        client.search("no-such-collection", text="cat")

    deleted = client.wait_job(client.delete_item("clientcoll", "note")["job_id"], timeout=60)
    assert deleted["state"] == "succeeded"
    with pytest.raises(mc.NotFound):
        client.item("clientcoll", "note")
    client.delete_collection("clientcoll")
    with pytest.raises(mc.NotFound):
        client.job("0123456789abcdef")
    with pytest.raises(mc.NotFound):
        client.collection("clientcoll")


def test_a_scan_while_writes_go_on_lists_every_stable_item_once_and_deletes_by_filter(client):
    client.create_collection("pages", shards=2)
    stable = {f"s{n:03d}" for n in range(150)}
    doomed = [f"d{n:03d}" for n in range(100)]
    client.ingest("pages", items=[{"id": i, "text": "a cat on a mat", "metadata": {"group": "stable", "n": n}}
                                  for n, i in enumerate(sorted(stable))] +
                  [{"id": i, "text": "a dog", "metadata": {"group": "doomed"}} for i in doomed], batch=100)
    stop, writes = threading.Event(), []

    def write_meanwhile() -> None:  # new ids all over the id order, deletes, upserts of stable ids
        n = 0
        while not stop.is_set():
            fresh = [{"id": f"{'adsz'[n % 4]}{n:04d}x", "text": "a bird", "metadata": {"group": "new"}}]
            writes.append(client.add_items("pages", fresh + [{"id": f"s{n % 150:03d}", "text": "a cat again",
                                                               "metadata": {"group": "stable"}}])["job_id"])
            if n < len(doomed):
                writes.append(client.delete_item("pages", doomed[n])["job_id"])
            n += 1

    writer = threading.Thread(target=write_meanwhile, daemon=True)
    writer.start()
    seen, cursor, pages = [], None, 0
    while True:
        deadline = time.monotonic() + 60
        while len(writes) < 2 * pages and time.monotonic() < deadline:  # each page meets new writes
            time.sleep(0.01)
        pages += 1
        page = client.items("pages", limit=20, cursor=cursor, fields=["metadata"])
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    stop.set()
    writer.join(timeout=60)
    assert len(writes) > 10  # the scan did overlap writes
    assert len(seen) == len(set(seen)) and seen == sorted(seen) and stable <= set(seen)
    client.wait_jobs(writes, timeout=120)

    listed = list(client.iter_items("pages", filter={"group": {"$in": ["stable"]}}, fields=[]))
    assert {i["id"] for i in listed} == stable and set(listed[0]) == {"id", "shard"}
    job = client.wait_job(client.delete_items("pages", filter={"group": {"$ne": "stable"}})["job_id"], timeout=60)
    assert job["state"] == "succeeded" and job["total"] > 0
    assert {i["id"] for i in client.iter_items("pages", page_size=1000)} == stable
    job = client.wait_job(client.delete_items("pages", ids=["s000", "never-there"])["job_id"], timeout=60)
    assert job["state"] == "succeeded" and job["not_found"] == ["never-there"]
    client.delete_collection("pages")


def _table_rows(stdout: str) -> list[list[str]]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert lines[0].split()[:3] == ["RANK", "ID", "SCORE"], stdout
    return [line.split() for line in lines[1:]]


def test_cli_ingest_search_jobs_end_to_end(run, client, folder, tmp_path):
    code, out, err = run("collections", "create", "clicoll", "--shards", "2", "--precision", "fp32",
                         "--encoder-setting", "v1")
    assert code == 0 and "created collection clicoll" in out
    assert client.collection("clicoll")["precision"] == "fp32"  # encoded in fp32 whatever the host prefers
    assert client.collection("clicoll")["encoder_setting"] == "v1"
    code, out, err = run("ingest", str(folder), "--collection", "clicoll", "--batch", "4")
    assert code == 0, err
    assert "succeeded: 6 ingested, 0 failed of 6 into clicoll; 0 already present" in out
    assert "ingest [" in err and "6/6" in err  # the progress bar, from the jobs' counters
    assert client.item("clicoll", "coffee.png")["text"] == "a cup of espresso"
    assert client.item("clicoll", CAT_ID)["text"] is None

    # Resumable: nothing is re-uploaded; a new photo alone is.
    code, out, err = run("ingest", str(folder), "-c", "clicoll")
    assert code == 0 and "nothing to upload: all 6 images are in clicoll" in out, out + err
    shutil.copyfile(PHOTOS["rocket"].path, folder / "space" / "rocket.jpg")
    code, out, err = run("ingest", str(folder), "-c", "clicoll")
    assert code == 0 and "succeeded: 1 ingested, 0 failed of 1 into clicoll; 6 already present" in out

    code, out, err = run("search", "-c", "clicoll", "--image", str(folder / "fruit/imagenet_04.jpg"), "-k", "3")
    assert code == 0, err
    rows = _table_rows(out)
    assert rows[0][:2] == ["1", "fruit/imagenet_04.jpg"] and "strawberries" in out
    code, out, err = run("search", "-c", "clicoll", "--text", "cat", "-k", "3")
    assert code == 0 and _table_rows(out)[0][:2] == ["1", CAT_ID]
    code, out, err = run("search", "-c", "clicoll", "--text", "espresso", "--image", str(folder / "coffee.png"),
                         "--weights", "1,0.5", "--json")
    body = json.loads(out)
    assert code == 0 and body["hits"][0]["id"] == "coffee.png" and body["shards"]["answered"] == 2

    # --no-wait prints job ids; jobs show / watch read them.
    code, out, err = run("ingest", str(folder / "coffee.png"), "-c", "clicoll", "--force", "--no-wait")
    job_id = out.strip()
    assert code == 0 and len(out.splitlines()) == 1, out
    code, out, err = run("jobs", "watch", job_id)
    assert code == 0 and f"{job_id} succeeded: 1 done, 0 failed of 1" in out
    code, out, err = run("jobs", "show", job_id, "--json")
    assert code == 0 and json.loads(out)["state"] == "succeeded"
    code, out, err = run("jobs", "show", job_id)
    assert code == 0 and "state        succeeded" in out

    # A broken image: the job completes with errors -> exit 3 and the item's error.
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code, out, err = run("ingest", str(bad), str(folder / "imagenet_10.jpg"), "-c", "clicoll", "--force")
    assert code == 3 and "completed_with_errors: 1 ingested, 1 failed of 2" in out
    assert "failed broken.jpg:" in err

    code, out, err = run("collections", "list")
    assert code == 0 and any(r.split()[:3] == ["clicoll", "2", "7"] for r in out.splitlines()), out
    code, out, err = run("collections", "show", "clicoll", "--json")
    assert code == 0 and json.loads(out)["count"] == 7
    code, out, err = run("collections", "show", "clicoll")
    assert code == 0 and "encoder_setting  v1" in out, out
    code, out, err = run("status")
    assert code == 0 and "ready" in out and "clicoll" in out, out
    assert "slots in use [0, 1]" in out and "queues       encode=" in out, out


def test_cli_items_jobs_paging_and_operator_filters(run, client, tmp_path):
    client.create_collection("cliitems", shards=2, store_thumbnails=True)
    client.ingest("cliitems", items=[{"id": f"note{n}", "text": f"a cat number {n}", "metadata": {"year": 2015 + n}}
                                     for n in range(6)],
                  files=[mc.FileItem(PHOTOS["chelsea"].path, id="cat.png", metadata={"year": 2030})])
    code, out, err = run("items", "list", "-c", "cliitems", "--limit", "4")
    assert code == 0 and [r.split()[0] for r in out.splitlines()[1:]] == ["cat.png", "note0", "note1", "note2"]
    assert "4 items; next page: --cursor 'note2'" in err
    code, out, err = run("items", "list", "-c", "cliitems", "--cursor", "note2", "--json")
    assert code == 0 and [i["id"] for i in json.loads(out)["items"]] == ["note3", "note4", "note5"]
    code, out, err = run("items", "list", "-c", "cliitems", "--all", "--limit", "2", "--fields", "id", "--json",
                         "--filter", '{"year": {"$gte": 2018, "$lt": 2031}}')
    assert code == 0 and json.loads(out) == {"items": [{"id": i, "shard": client.item("cliitems", i)["shard"]}
                                                       for i in ("cat.png", "note3", "note4", "note5")],
                                             "next_cursor": None}
    code, out, err = run("items", "get", "-c", "cliitems", "note1")
    assert code == 0 and "a cat number 1" in out and '{"year": 2016}' in out
    code, out, err = run("items", "get", "-c", "cliitems", "nope")
    assert code == 1 and "404 not_found" in err
    code, out, err = run("items", "thumbnail", "-c", "cliitems", "cat.png", "-o", str(tmp_path / "t.jpg"))
    assert code == 0 and cv2.imread(str(tmp_path / "t.jpg")) is not None

    code, out, err = run("search", "-c", "cliitems", "-t", "cat", "-k", "3", "--json")
    ranking = [h["id"] for h in json.loads(out)["hits"]]
    code, out, err = run("search", "-c", "cliitems", "-t", "cat", "-k", "2", "--offset", "1")
    assert code == 0 and [r[:2] for r in _table_rows(out)] == [["2", ranking[1]], ["3", ranking[2]]]
    code, out, err = run("search", "-c", "cliitems", "-t", "cat", "--filter", '{"year": {"$in": [2015, 2030]}}',
                         "--filter", "nothing=else", "--json")
    assert code == 0 and json.loads(out)["hits"] == []
    code, out, err = run("search", "-c", "cliitems", "-t", "cat", "--filter", '{"year": {"$lte": 2016}}', "--json")
    assert code == 0 and {h["id"] for h in json.loads(out)["hits"]} == {"note0", "note1"}
    code, out, err = run("search", "-c", "cliitems", "-t", "cat", "-k", "10", "--offset", "995")
    assert code == 2 and "at most 1000" in err

    code, out, err = run("items", "delete", "-c", "cliitems", "note0", "never-there")
    assert code == 0 and "succeeded: 1 deleted, 1 not found of 2 from cliitems" in out
    code, out, err = run("items", "delete", "-c", "cliitems", "--filter", '{"year": {"$gt": 2019}}', "--json")
    assert code == 0 and json.loads(out)["total"] == 2  # note5 and cat.png
    code, out, err = run("items", "list", "-c", "cliitems", "--json")
    assert [i["id"] for i in json.loads(out)["items"]] == ["note1", "note2", "note3", "note4"]

    code, out, err = run("jobs", "list", "-c", "cliitems", "--kind", "delete")
    rows = [r.split() for r in out.splitlines()[1:]]
    assert code == 0 and len(rows) == 2 and all(r[1:4] == ["delete", "cliitems", "succeeded"] for r in rows)
    code, out, err = run("jobs", "list", "--limit", "1", "--json")
    page = json.loads(out)
    assert code == 0 and len(page["jobs"]) == 1 and page["next_cursor"]
    code, out, err = run("jobs", "list", "--cursor", page["next_cursor"], "--limit", "1", "--json")
    assert code == 0 and json.loads(out)["jobs"][0]["id"] != page["jobs"][0]["id"]
    code, out, err = run("jobs", "list", "--state", "done")
    assert code == 2
    client.delete_collection("cliitems")


def test_an_export_imported_on_a_second_stack_gives_the_same_items_and_top_10_and_a_spoiled_one_is_refused(
        run, client, tmp_path):
    client.create_collection("backup", shards=2, store_thumbnails=True)
    words = ["cat", "dog", "beach", "mountain", "coffee", "rocket", "fruit", "city", "snow", "river"]
    client.ingest("backup", items=[{"id": f"t{n:02d}", "text": f"a {words[n % 10]} near a {words[n // 10 + 5]}",
                                    "metadata": {"n": n, "tags": [words[n % 10]]}} for n in range(40)],
                  files=[mc.FileItem(PHOTOS[p].path, id=p, text=None if p == "coffee" else p)
                         for p in ("chelsea", "coffee", "rocket")])
    queries = [{"text": w} for w in words[:5]] + [{"image": PHOTOS["astronaut"].path},
                                                  {"text": "cat", "image": PHOTOS["chelsea"].path}]
    before = [client.search("backup", k=10, **q)["hits"] for q in queries]
    archive = tmp_path / "backup.zip"
    code, out, err = run("collections", "export", "backup", str(archive))
    assert code == 0 and "exported 43 items of backup" in out, out + err

    # Restored on a second stack (its own Redis and data dir, the same models), under the same name.
    (tmp_path / "second-stack").mkdir()
    with running_stack(tmp_path / "second-stack", MMSEARCH_LOG_LEVEL="WARNING") as second:
        other = mc.Client(second.api_url, timeout=60)
        result = CliRunner().invoke(cli, ["--api", second.api_url, "collections", "import", str(archive)])
        assert result.exit_code == 0 and "succeeded: imported 43 items of 43 into backup" in result.stdout, \
            result.stdout + result.stderr
        original, restored = client.collection("backup"), other.collection("backup")
        assert {k: v for k, v in restored.items() if k != "created_at"} == \
            {k: v for k, v in original.items() if k != "created_at"}
        fields = ["text", "metadata", "has_image", "thumbnail"]
        assert list(other.iter_items("backup", fields=fields)) == list(client.iter_items("backup", fields=fields))
        after = [other.search("backup", k=10, **q)["hits"] for q in queries]
        for hits, again in zip(before, after):
            # Every text differs, so no two items tie but those an image query scores 0 (no image).
            assert [h["id"] for h in again if h["score"] > 0] == [h["id"] for h in hits if h["score"] > 0]
            # The archive holds the vectors as the shards store them (float16): scores agree to ~1e-4.
            assert [h["score"] for h in again] == pytest.approx([h["score"] for h in hits], abs=1e-3)
        result = CliRunner().invoke(cli, ["--api", second.api_url, "collections", "import", str(archive)])
        assert result.exit_code == 1 and "409 conflict" in result.stderr  # the archive's own name is taken

    # Truncated, altered (the manifest's digest no longer matches) or foreign: refused, nothing created.
    data = archive.read_bytes()
    truncated, altered, foreign = tmp_path / "cut.zip", tmp_path / "altered.zip", tmp_path / "foreign.zip"
    truncated.write_bytes(data[:len(data) // 2])
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(altered, "w") as out_zip:
        for name in src.namelist():
            member = src.read(name)
            out_zip.writestr(name, member.replace(b"a cat near", b"a dog near") if name == "items.jsonl" else member)
    with zipfile.ZipFile(foreign, "w") as out_zip:
        out_zip.writestr("photo.jpg", b"not an export")
    for spoiled, reason in ((truncated, "not a zip archive"), (altered, "checksum"), (foreign, "no manifest.json")):
        code, out, err = run("collections", "import", str(spoiled), "--name", "spoiled")
        assert code == 1 and "archive refused" in err and reason in err, (spoiled, err)
    assert "spoiled" not in [c["name"] for c in client.collections()]
    client.delete_collection("backup")


def test_cli_errors_are_one_line_with_scriptable_exit_codes(run):
    for args in (["search", "-c", "x", "--bogus"], ["search", "-c", "x"], ["search", "-c", "x", "-t", "a", "-k", "0"],
                 ["search", "-c", "x", "-t", "a", "--weights", "1"], ["ingest", "/no/such/dir", "-c", "x"],
                 ["collections", "frobnicate"]):
        code, out, err = run(*args)
        assert code == 2, (args, code, out, err)
        assert len(err.strip().splitlines()) == 1 and "error:" in err, (args, err)
    for args in (["search", "-c", "no-such-collection", "--text", "cat"], ["collections", "show", "nope"],
                 ["jobs", "show", "0123456789abcdef"], ["collections", "create", "Bad Name"]):
        code, out, err = run(*args)
        assert code == 1, (args, code, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and err.startswith("mmsearch: error:")
    code, out, err = run("collections", "create", "dupe")
    code, out, err = run("collections", "create", "dupe")
    assert code == 1 and "409 conflict" in err, err
    code, out, err = run("collections", "delete", "dupe")
    assert code == 0 and "deleted collection dupe" in out


def test_console_script_is_installed(stack):
    exe = Path(sys.executable).parent / "mmsearch"
    assert exe.exists(), "run `pip install -e .` (make install) to get the mmsearch command"
    proc = subprocess.run([str(exe), "search", "--collection", "x", "--bogus"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
    env = {**os.environ, "MMSEARCH_API": stack.api_url}
    proc = subprocess.run([str(exe), "search", "-c", "nope", "-t", "cat"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 1 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
