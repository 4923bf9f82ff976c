"""The mmsearch HTTP API: a Flask application factory (the contract: docs/api.md).

`create_app()` reads the settings from the environment (a mapping of Settings fields
overrides them: tests), stores them with a Redis client and a Celery client in
`app.extensions["mmsearch"]` (api.context) and registers one blueprint per area; the /v1
ones sit under a parent blueprint that checks API keys. The API never imports torch: it
validates, stores in Redis and sends Celery tasks by name.
"""
from __future__ import annotations

from typing import Any, Mapping

from flask import Blueprint, Flask

from api import collections, exports, item_deletes, item_pages, items, jobs, metrics, ops, openapi, search, web
from api.auth import require_api_key
from shared.runtime.celery_config import make_celery
from api.context import EXTENSION, Services
from api.errors import register_error_handlers
from shared.runtime.config import Settings
from shared.runtime.redis_conn import connect

# Form parts besides the `image` files that a multipart request may carry (items, or the
# search fields), so Werkzeug's part limit never undercuts the item limit.
FORM_FIELD_PARTS = 8


def _v1() -> Blueprint:
    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(require_api_key)
    for area in (collections, items, item_pages, item_deletes, jobs, search, exports):
        v1.register_blueprint(area.bp)
    return v1


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    settings = Settings.from_env().with_overrides(test_config or {})
    app = Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_MEMORY_SIZE=settings.max_request_bytes,
        MAX_FORM_PARTS=settings.max_items_per_request + FORM_FIELD_PARTS,
    )
    app.json.mimetype = "application/json; charset=utf-8"
    app.json.sort_keys = False
    app.extensions[EXTENSION] = Services(settings, connect(settings), make_celery(settings, name="mmsearch-api"))
    register_error_handlers(app)
    metrics.init_app(app)  # request ids, access log, request metrics, GET /metrics
    app.register_blueprint(_v1())
    for area in (ops, openapi, web):
        app.register_blueprint(area.bp)
    return app
