"""The client's import over real HTTP (the API on Werkzeug's server, no workers): the archive
file is sent as it is read, past MMSEARCH_MAX_REQUEST_BYTES, and its items are logged."""
import threading

import pytest
from werkzeug.serving import make_server

from mmsearch import Client
from tests.unit.api.test_exports import APP_SETTINGS, made_archive  # APP_SETTINGS: make_app reads it here


@pytest.fixture
def api_url(make_app):
    server = make_server("127.0.0.1", 0, make_app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join()


def test_an_archive_over_the_request_limit_is_imported_from_its_file(api_url, tmp_path):
    path = tmp_path / "backup.zip"
    path.write_bytes(made_archive(n=40))
    assert path.stat().st_size > APP_SETTINGS["max_request_bytes"]
    client = Client(api_url, retries=0)
    answer = client.import_collection(path, name="restored", wait=False)
    assert answer["collection"]["name"] == "restored"
    job = client.job(answer["job_id"])
    assert job["kind"] == "import" and job["total"] == job["done"] == 40
