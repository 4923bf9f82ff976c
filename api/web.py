"""GET /: a placeholder page pointing at the API description (the web page is still to come)."""
from __future__ import annotations

from flask import Blueprint, Response

bp = Blueprint("web", __name__)

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>mmsearch</title></head>
<body>
<h1>mmsearch</h1>
<p>Multimodal image retrieval. The HTTP API lives under <code>/v1</code>;
its description is <a href="/openapi.json">/openapi.json</a>.</p>
</body>
</html>
"""


@bp.get("/")
def index() -> Response:
    return Response(PAGE, mimetype="text/html")
