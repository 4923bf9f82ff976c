"""The web page, end to end in headless Chromium (Debian `chromium` + `chromium-driver`, driven by
Selenium through the system chromedriver; nothing is downloaded) against the real stack with API
keys and JSON logs: key field, image upload -> expected top hit, escaping of untrusted captions
and metadata, item details and "more like this", uploads with live job progress, a screenshot.
Then /metrics of that stack after the searches, and the job / request ids in its JSON logs.

The screenshot lands in the test's tmp_path (its path is printed); with
MMSEARCH_UPDATE_SCREENSHOT=1 it also replaces docs/web.png (the README's picture).
Without chromium, chromedriver or selenium the browser test is skipped (`make install` installs
them, as root).

The page's static parts are also checked without a browser.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time

import cv2
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.photos import all_photos
from tests.support.stack import running_stack
from shared.runtime.stack import ROOT

KEY = "web-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
SCREENSHOT_ENV = "MMSEARCH_UPDATE_SCREENSHOT"

PHOTOS = {p.name: p for p in all_photos()}
INGESTED = ["chelsea", "coffee", "astronaut", "rocket", "imagenet_00", "imagenet_04", "imagenet_06",
            "imagenet_13"]
UPLOADED_BY_PAGE = ["imagenet_10", "imagenet_11"]
HOSTILE_CAPTION = 'espresso <img src=x onerror="document.body.dataset.xss=1"> <b>cup</b>'
HOSTILE_META = {"source": "<script>document.body.dataset.xss=2</script>", "year": 2024}
CAPTIONS = {"coffee": HOSTILE_CAPTION, "imagenet_04": "fresh strawberries", "imagenet_13": "an old cannon"}


# The page without a browser ---------------------------------------------------------------

@pytest.fixture
def client(redis_server, redis_client, tmp_path):
    from api import create_app

    app = create_app({"redis_url": redis_server, "data_dir": tmp_path, "api_keys": ("k",)})
    app.testing = True
    return app.test_client()


def test_page_and_assets_are_served_without_a_key_under_a_strict_csp(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    html = page.get_data(as_text=True)
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        resp = client.get(asset)
        assert resp.status_code == 200, asset
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/static/app.js").mimetype in ("text/javascript", "application/javascript")
    assert client.get("/static/../web.py").status_code == 404
    assert client.get("/v1/collections").status_code == 401  # the API itself still needs the key


def test_page_sources_load_nothing_from_elsewhere_and_never_write_html():
    static = ROOT / "api" / "static"
    for path in static.iterdir():
        source = path.read_text()
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", source), path.name
        assert "@import" not in source and "url(http" not in source, path.name
    for path in static.glob("*.js"):
        script = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in script, (path.name, sink)


# The page in Chromium against the real stack ------------------------------------------------

def recompressed_crop(data: bytes) -> bytes:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    crop = img[int(h * 0.1):int(h * 0.85), int(w * 0.12):int(w * 0.9)]
    ok, enc = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 50])
    assert ok
    return enc.tobytes()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mmsearch-web")
    with running_stack(data_dir, MMSEARCH_DEFAULT_COLLECTION_SHARDS="2", MMSEARCH_API_KEYS=KEY,
                       MMSEARCH_LOG_FORMAT="json") as st:
        yield st


def wait_job(base: str, job_id: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = requests.get(f"{base}/v1/jobs/{job_id}", headers=AUTH, timeout=30).json()
        if body["state"] in ("succeeded", "completed_with_errors", "failed", "cancelled"):
            return body
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} not final: {body}")


@pytest.fixture(scope="module")
def ingested(stack):
    base = stack.api_url
    resp = requests.post(f"{base}/v1/collections", json={"name": "photos"}, headers=AUTH, timeout=30)
    assert resp.status_code == 201, resp.text
    photos = [PHOTOS[n] for n in INGESTED]
    meta = [{"id": p.name, **({"text": CAPTIONS[p.name]} if p.name in CAPTIONS else {}),
             "metadata": HOSTILE_META if p.name == "chelsea" else {"source": "e2e"}} for p in photos]
    files = [("image", (p.path.name, p.read_bytes(), "application/octet-stream")) for p in photos]
    resp = requests.post(f"{base}/v1/collections/photos/items", files=files, data={"items": json.dumps(meta)},
                         headers={**AUTH, "X-Request-ID": "e2e-ingest"}, timeout=60)
    assert resp.status_code == 202, resp.text
    assert resp.headers["X-Request-ID"] == "e2e-ingest"
    job = wait_job(base, resp.json()["job_id"])
    assert job["state"] == "succeeded" and job["done"] == len(photos), job
    # warm up: the query worker loads its image model on its first image query
    resp = requests.post(f"{base}/v1/collections/photos/search", files={"image": PHOTOS["rocket"].read_bytes()},
                         headers=AUTH, timeout=60)
    assert resp.status_code == 200 and resp.json()["hits"][0]["id"] == "rocket", resp.text
    return job


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian chromium and chromium-driver are not installed (as root: apt-get install -y "
                    "chromium chromium-driver; `make install` does it)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1360,1000", "--force-device-scale-factor=1",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, timeout_s: float = 60, what: str = ""):
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = driver.execute_script(f"return ({script});")
        if result:
            return result
        time.sleep(0.1)
    message = driver.execute_script("return document.querySelector('#message').textContent")
    raise AssertionError(f"timed out waiting for {what or script} (page message: {message!r})")


RESULT_IDS = "[...document.querySelectorAll('#results .card')].map(c => c.dataset.id)"
THUMBS_LOADED = ("[...document.querySelectorAll('#results .thumb')].every(t => !t.classList.contains('loading')"
                 " && (t.classList.contains('none') || t.querySelector('img').complete"
                 " && t.querySelector('img').naturalWidth > 0))")


def search_results(driver, first: str | None = None) -> list[str]:
    wait_for(driver, "document.querySelector('#results').dataset.state === 'done'"
                     " && !document.body.classList.contains('searching')", what="results")
    if first is not None:
        wait_for(driver, f"{RESULT_IDS}[0] === {json.dumps(first)}", timeout_s=30, what=f"{first} first")
    return driver.execute_script(f"return {RESULT_IDS};")


def test_docs_page_renders_every_operation_and_schema_of_the_openapi_document(stack, browser):
    spec = requests.get(f"{stack.api_url}/openapi.json", timeout=30).json()
    browser.get(f"{stack.api_url}/docs")  # no key: the page and its document are public
    operations = "document.querySelectorAll('#operations details.op').length"
    wait_for(browser, f"{operations} > 0", what="the operations")
    assert browser.execute_script(f"return {operations};") == sum(len(ops) for ops in spec["paths"].values())
    assert browser.execute_script("return document.querySelectorAll('#schemas .schema').length;") == \
        len(spec["components"]["schemas"])
    paths = browser.execute_script("return [...document.querySelectorAll('.op .path')].map(p => p.textContent);")
    assert "/v1/collections/{name}/items" in paths and "/v1/jobs" in paths
    assert "Cannot show" not in browser.find_element("id", "description").text


def test_web_page_end_to_end(stack, ingested, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(f"{stack.api_url}/")
    # The server has API keys: the page asks for one, then lists the collections.
    wait_for(driver, "document.body.classList.contains('needs-key')", what="the key prompt")
    driver.find_element(By.ID, "api-key").send_keys(KEY)
    driver.find_element(By.ID, "key-save").click()
    wait_for(driver, "document.querySelector('#collection').value === 'photos'", what="collection list")
    assert "photos (8)" in driver.find_element(By.ID, "collection").text

    # Upload two photos with the ingest panel; its job row shows live progress until final.
    paths = "\n".join(str(PHOTOS[n].path) for n in UPLOADED_BY_PAGE)
    driver.find_element(By.ID, "ingest-files").send_keys(paths)
    driver.find_element(By.ID, "upload-btn").click()
    wait_for(driver, "document.querySelector('#jobs .job')", what="a job row")
    wait_for(driver, "document.querySelector('#jobs .job').dataset.state === 'succeeded'", timeout_s=120,
             what="the upload job to succeed")
    job_text = driver.find_element(By.CSS_SELECTOR, "#jobs .job").text
    assert "2 done, 0 failed of 2" in job_text and "null" not in job_text, job_text
    wait_for(driver, "document.querySelector('#collection').selectedOptions[0].textContent === 'photos (10)'",
             what="the new count")

    # Search by an uploaded image (a recompressed crop of the cat): the cat comes first.
    query = tmp_path / "query-cat.jpg"
    query.write_bytes(recompressed_crop(PHOTOS["chelsea"].read_bytes()))
    driver.find_element(By.ID, "q-file").send_keys(str(query))
    ids = search_results(driver, first="chelsea")
    assert len(ids) == len(set(ids)) == 10
    wait_for(driver, THUMBS_LOADED, what="thumbnails")
    first = driver.find_element(By.CSS_SELECTOR, "#results .card")
    assert first.find_element(By.CSS_SELECTOR, ".item-id").text == "chelsea"
    assert len(first.find_elements(By.CSS_SELECTOR, ".bar")) == 2  # score + image part (no text in the query)
    width = driver.execute_script("return document.querySelector('#results .card .thumb img').naturalWidth")
    assert width > 0

    # Image and text together: each card shows the score and both parts.
    text_box = driver.find_element(By.ID, "q-text")
    text_box.send_keys("a cat")
    driver.find_element(By.ID, "search-btn").click()
    wait_for(driver, "document.querySelectorAll('#results .card .bar').length === 30", what="three bars per card")
    assert search_results(driver, first="chelsea")[0] == "chelsea"
    wait_for(driver, THUMBS_LOADED, what="thumbnails")

    screenshot = tmp_path / "web.png"
    assert driver.save_screenshot(str(screenshot))
    print(f"\nweb page screenshot: {screenshot}")
    if os.environ.get(SCREENSHOT_ENV) == "1":
        from PIL import Image  # scikit-image's dependency: a 256-colour copy keeps the README light

        (ROOT / "docs").mkdir(exist_ok=True)
        with Image.open(screenshot) as shot:
            shot.convert("RGB").quantize(colors=256).save(ROOT / "docs" / "web.png", optimize=True)
        print(f"updated {ROOT / 'docs' / 'web.png'}")

    # Untrusted captions and metadata are shown as text, never run or parsed as HTML.
    driver.find_element(By.ID, "q-clear").click()
    text_box.clear()
    text_box.send_keys("espresso cup")
    driver.find_element(By.ID, "search-btn").click()
    search_results(driver, first="coffee")
    coffee = driver.find_element(By.CSS_SELECTOR, '#results .card[data-id="coffee"]')
    assert coffee.find_element(By.CSS_SELECTOR, ".caption").text == HOSTILE_CAPTION
    assert coffee.find_elements(By.CSS_SELECTOR, ".caption img, .caption b") == []
    assert len(coffee.find_elements(By.CSS_SELECTOR, ".bar")) == 2  # score + text part

    # Details of the cat, then "more like this" searches by its image.
    text_box.clear()
    driver.find_element(By.CSS_SELECTOR, '#results .card[data-id="chelsea"]').click()
    wait_for(driver, "document.querySelector('#detail').open", what="the detail dialog")
    assert driver.find_element(By.ID, "d-id").text == "chelsea"
    meta = driver.find_element(By.ID, "d-meta").text
    assert HOSTILE_META["source"] in meta and "2024" in meta
    wait_for(driver, "document.querySelector('#d-shard').textContent.startsWith('shard')", what="the item look-up")
    wait_for(driver, "!document.querySelector('#d-image').hidden", what="the detail image")
    driver.save_screenshot(str(tmp_path / "web-detail.png"))
    driver.find_element(By.ID, "d-more").click()
    wait_for(driver, "!document.querySelector('#detail').open", what="the dialog to close")
    wait_for(driver, "!document.querySelector('#q-preview').hidden", what="the query preview")
    search_results(driver, first="chelsea")
    assert driver.execute_script("return document.body.dataset.xss") is None
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"], script:not([src])').length") == 0


def test_metrics_and_json_logs_of_the_stack(stack, ingested):
    """After the page's searches: /metrics parses and its counters moved; the logs are JSON lines
    carrying the request id and the job id."""
    base = stack.api_url
    resp = requests.post(f"{base}/v1/collections/photos/search", json={"text": "a cat", "k": 3}, headers=AUTH,
                         timeout=60)
    assert resp.status_code == 200, resp.text
    assert requests.get(f"{base}/metrics", timeout=30).status_code == 401
    text = requests.get(f"{base}/metrics", headers=AUTH, timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def total(name, **match):
        return sum(v for (n, labels), v in samples.items()
                   if n == name and all(dict(labels).get(k) == m for k, m in match.items()))

    assert total("mmsearch_redis_up") == 1
    assert total("mmsearch_encoded_images_total") >= len(INGESTED)
    assert total("mmsearch_http_requests_total", endpoint="/v1/collections/<name>/search", method="POST",
                 status="200") >= 1
    assert total("mmsearch_shard_search_duration_seconds_count", collection="photos") >= 2
    assert total("mmsearch_shard_items", collection="photos") >= len(INGESTED)
    assert total("mmsearch_jobs", kind="ingest", state="succeeded") >= 1
    assert ("mmsearch_queue_length", (("queue", "encode"),)) in samples
    assert total("mmsearch_shard_slot_up") == 2

    def json_lines(name):
        out = []
        for line in (stack.log_dir / f"{name}.log").read_text(errors="replace").splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    job_id = ingested["id"]
    api_lines = json_lines("api")
    assert any(l.get("request_id") == "e2e-ingest" and l.get("job_id") == job_id for l in api_lines)
    assert any(l.get("job_id") == job_id for l in json_lines("encode")), "the encode worker logs its job id"
    for name in ("encode", "query"):  # Celery's block about root, if any, is one line of ours
        assert "superuser privileges" not in (stack.log_dir / f"{name}.log").read_text(errors="replace")
    assert (stack.log_dir / "redis.log").read_text() == "", "redis-server writes its own log in the data dir"
