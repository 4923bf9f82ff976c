"""/v1/collections: create, list, show and delete collections (shared.store.catalog does the work)."""
from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, Response, jsonify

from api.bodies import read_json_object
from api.context import services
from api.errors import ApiError
from api.validation import parse_new_collection
from shared.store import catalog
from shared.errors import ModelUnavailableError

bp = Blueprint("collections", __name__, url_prefix="/collections")


def _not_found(name: str) -> ApiError:
    return ApiError(404, "not_found", f"collection {name!r} does not exist", {"collection": name})


def require_collection(name: str) -> catalog.Collection:
    """The collection called `name`, or 404."""
    coll = catalog.get_collection(services().redis, name)
    if coll is None:
        raise _not_found(name)
    return coll


@bp.post("")
def create() -> tuple[Response, int]:
    spec = parse_new_collection(read_json_object())
    svc = services()
    try:
        coll = catalog.create_collection(svc.redis, svc.settings, **asdict(spec))
    except ModelUnavailableError as exc:
        raise ApiError(400, "invalid_request", str(exc),
                       {"image_model": spec.image_model or svc.settings.image_model,
                        "text_model": spec.text_model or svc.settings.text_model}) from exc
    except catalog.CollectionExists as exc:
        raise ApiError(409, "conflict", str(exc), {"collection": spec.name}) from exc
    return jsonify(coll.public(0)), 201


@bp.get("")
def list_all() -> Response:
    r = services().redis
    return jsonify({"collections": [c.public(catalog.collection_count(r, c)) for c in catalog.list_collections(r)]})


@bp.get("/<name>")
def show(name: str) -> Response:
    coll = require_collection(name)
    return jsonify(coll.public(catalog.collection_count(services().redis, coll)))


@bp.delete("/<name>")
def delete(name: str) -> tuple[Response, int]:
    if catalog.delete_collection(services().redis, name) is None:
        raise _not_found(name)
    return jsonify({"deleted": name}), 202
