"""GET /: the web page (api/static/index.html + app.css + app.js: no framework, no build step,
nothing fetched from elsewhere), GET /docs: the API reference rendered in the browser from
/openapi.json (docs.html + docs.css + docs.js, likewise), and GET /static/<file> for their
assets.

The page talks to the /v1 API like any client (with the API key the user types, kept in
sessionStorage, when keys are configured). Every answer carries a strict Content-Security-Policy:
scripts and styles from this server only, images from it or blob: URLs (thumbnails are fetched
with the key and shown as blobs), no framing.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

bp = Blueprint("web", __name__)


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(filename: str) -> Response:
    response = send_from_directory(STATIC_DIR, filename, mimetype="text/html", max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return _secured(response)


@bp.get("/")
def index() -> Response:
    return _page("index.html")


@bp.get("/docs")
def docs() -> Response:
    return _page("docs.html")


@bp.get("/static/<path:filename>")
def static(filename: str) -> Response:
    response = send_from_directory(STATIC_DIR, filename, max_age=300)
    return _secured(response)
