"""GET /openapi.json: the OpenAPI 3.0 description of the whole HTTP API.

Written by hand next to the code it describes; the limits in it (items per request, image and
body sizes, text length) are the running app's settings, and the /v1 operations require the
bearer scheme only when API keys are configured. A test checks that its paths and methods are
exactly the app's URL rules.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from api.context import services
from api.errors import HTTP_CODES
from api.validation import DEFAULT_K, MAX_ID_CHARS, MAX_K
from api.validation.job_listing import DEFAULT_JOBS_PAGE, JOB_KINDS, JOB_STATES, MAX_JOBS_PAGE
from api.validation.listing import DEFAULT_FIELDS, DEFAULT_PAGE, LIST_FIELDS, MAX_PAGE
from shared.store import catalog
from shared.runtime.config import Settings
from shared.encoding.encoder_settings import ENCODER_SETTINGS
from shared.encoding.precision import PRECISIONS

bp = Blueprint("openapi", __name__)

Schema = dict[str, Any]
JSON_TYPE = "application/json"
MULTIPART_TYPE = "multipart/form-data"
ERRORS = {400: ("invalid_request", "The request is malformed; nothing was stored or enqueued."),
          401: ("unauthorized", "Missing or unknown API key."),
          403: ("forbidden", "The API key lacks the scope this call needs (read, write or admin)."),
          404: ("not_found", "No such collection, item or job."),
          409: ("conflict", "The collection already exists."),
          413: ("payload_too_large", "Too many items, or a body or image over the limits."),
          415: ("unsupported_media_type", "The body is neither JSON nor multipart/form-data."),
          422: ("invalid_item", "The query image cannot be decoded."),
          429: ("rate_limited", "Over MMSEARCH_RATE_LIMIT for this key or address; see Retry-After."),
          500: ("internal", "Unexpected error (never with a stack trace)."),
          503: ("unavailable", "Redis, the broker or a shard is not reachable, the worker role the request "
                                "needs is still starting, or the answer timed out.")}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False, **extra}
    if required:
        schema["required"] = list(required)
    return schema


def nullable(schema: Schema) -> Schema:
    if "$ref" in schema:  # OpenAPI 3.0 ignores the siblings of a $ref
        return {"allOf": [schema], "nullable": True}
    return {**schema, "nullable": True}


def json_body(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {JSON_TYPE: {"schema": schema}}}


def errors(*statuses: int) -> dict[str, Schema]:
    return {str(s): {"$ref": f"#/components/responses/{ERRORS[s][0]}"} for s in statuses}


def _schemas(settings: Settings) -> dict[str, Schema]:
    text = {"type": "string", "maxLength": settings.max_text_chars,
            "description": "Empty or whitespace-only text counts as no text."}
    image_source = {"oneOf": [
        obj({"base64": {"type": "string", "format": "byte",
                        "description": f"At most {settings.max_image_bytes} bytes once decoded."}}, ("base64",)),
        obj({"url": {"type": "string", "format": "uri", "description": "http or https, fetched by a worker."}},
            ("url",)),
        obj({"path": {"type": "string", "description": "Relative to MMSEARCH_INGEST_ROOT (which must be set); "
                                                       "a missing file fails its item alone."}}, ("path",)),
    ]}
    item_fields = {
        "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS,
               "description": "Printable characters; generated (uuid4 hex) when absent. Re-ingesting an id replaces it."},
        "text": nullable(text),
        "metadata": nullable({"type": "object", "additionalProperties": True}),
    }
    weights = obj({b: {"type": "number", "minimum": 0, "default": 1} for b in ("image", "text")},
                  description="Block weights; score = sum(w * cos) / sum of the weights of the blocks the query "
                              "has. Those weights must not all be 0.")
    search_filter = {"type": "object", "additionalProperties": True, "description":
                     "Metadata conditions, all of which must hold: key -> value (equality), key -> {operator: "
                     "argument} ($eq $ne $in $nin $gt $gte $lt $lte $exists), $and / $or -> [filters] (nested at "
                     "most 4 deep). A list value in metadata matches by element. See docs/api.md, Search."}
    k = {"type": "integer", "minimum": 1, "maximum": MAX_K, "default": DEFAULT_K}
    offset = {"type": "integer", "minimum": 0, "maximum": MAX_K - 1, "default": 0,
              "description": f"Skip this many hits of the ranking (offset + k <= {MAX_K}): pages of one ranking."}
    job_fields: dict[str, Schema] = {
        "id": {"type": "string"}, "kind": {"type": "string", "enum": list(JOB_KINDS)},
        "collection": {"type": "string"}, "state": {"type": "string", "enum": list(JOB_STATES)},
        "total": {"type": "integer"}, "done": {"type": "integer"}, "failed": {"type": "integer"},
        "errors": {"type": "array", "items": ref("JobError")},
        "created_at": nullable({"type": "number"}), "started_at": nullable({"type": "number"}),
        "finished_at": nullable({"type": "number"}), "cancel_requested": {"type": "boolean"},
        "result": nullable({"oneOf": [ref("SearchResult"), ref("ExportResult")]}),
        "not_found": {"type": "array", "items": {"type": "string"},
                      "description": "Ids a delete job found absent (the job still succeeds)."},
    }
    error_code = {"type": "string", "description": "One of: " + ", ".join(sorted(set(HTTP_CODES.values())))}
    return {
        "Error": obj({"error": obj({"code": error_code, "message": {"type": "string"},
                                    "details": {"type": "object", "additionalProperties": True}},
                                   ("code", "message", "details"))}, ("error",)),
        "CollectionCreate": obj({
            "name": {"type": "string", "pattern": catalog.NAME_RE.pattern},
            "shards": nullable({"type": "integer", "minimum": 1, "maximum": catalog.MAX_SHARDS,
                                "default": settings.default_shards}),
            "image_model": nullable({"type": "string", "default": settings.image_model,
                                     "enum": sorted(catalog.IMAGE_MODEL_DIMS)}),
            "text_model": nullable({"type": "string", "default": settings.text_model,
                                    "description": "A registered name or the path of a GloVe text file."}),
            "store_thumbnails": nullable({"type": "boolean", "default": settings.store_thumbnails}),
            "precision": nullable({"type": "string", "enum": ["auto", *PRECISIONS], "default": settings.precision,
                                   "description": "Image model precision, fixed for the collection's life: "
                                                  "auto picks bf16 where the host has bf16 matrix units (NVIDIA GPU, AMX CPU), else fp32."}),
            "encoder_setting": nullable({"type": "string", "enum": list(ENCODER_SETTINGS), "default": settings.encoder_setting,
                                         "description": "The versioned values that shape the stored vectors (caption/ConSE "
                                                        "mix, ConSE, SIF), fixed for the collection's life; see docs/api.md."}),
        }, ("name",)),
        "Collection": obj({
            "name": {"type": "string"}, "shards": {"type": "integer"}, "image_model": {"type": "string"},
            "text_model": {"type": "string"},
            "dims": obj({"image": {"type": "integer"}, "text": {"type": "integer"}}, ("image", "text")),
            "count": {"type": "integer", "description": "Searchable items."},
            "store_thumbnails": {"type": "boolean"}, "created_at": {"type": "number"},
            "precision": {"type": "string", "enum": list(PRECISIONS)},
            "encoder_setting": {"type": "string", "description": "The collection's encoder setting (v1 for "
                                                                 "collections from before settings existed)."},
        }, ("name", "shards", "image_model", "text_model", "dims", "count", "created_at")),
        "CollectionList": obj({"collections": {"type": "array", "items": ref("Collection")}}, ("collections",)),
        "CollectionDeleted": obj({"deleted": {"type": "string"}}, ("deleted",)),
        "ImageSource": image_source,
        "Item": obj({**item_fields, "image": nullable(ref("ImageSource"))},
                    description="Needs an image, a text or both."),
        "ItemsRequest": obj({"items": {"type": "array", "minItems": 1,
                                       "maxItems": settings.max_items_per_request, "items": ref("Item")}},
                            ("items",)),
        "ItemsUpload": obj({
            "image": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "One file part per item, in order."},
            "items": {"type": "string", "description":
                      "JSON array of items without `image`, aligned with the image parts by position; items "
                      "beyond the images are text-only and need a text."},
        }),
        "Accepted": obj({"job_id": {"type": "string"}, "status_url": {"type": "string"}}, ("job_id", "status_url")),
        "IngestAccepted": obj({"job_id": {"type": "string"}, "status_url": {"type": "string"},
                               "ids": {"type": "array", "items": {"type": "string"},
                                       "description": "In request order."}},
                              ("job_id", "status_url", "ids")),
        "CancelAccepted": obj({"job_id": {"type": "string"}, "status_url": {"type": "string"},
                               "cancel_requested": {"type": "boolean"}}, ("job_id", "cancel_requested")),
        "IdsRequest": obj({"ids": {"type": "array", "minItems": 1, "maxItems": 1000,
                                   "items": {"type": "string", "maxLength": MAX_ID_CHARS}}}, ("ids",)),
        "PresentIds": obj({"present": {"type": "array", "items": {"type": "string"},
                                       "description": "The asked ids the collection holds, in request order."}},
                          ("present",)),
        "ItemRecord": obj({"id": {"type": "string"}, "text": nullable({"type": "string"}),
                           "metadata": {"type": "object", "additionalProperties": True},
                           "has_image": {"type": "boolean"}, "shard": {"type": "integer"}},
                          ("id", "text", "metadata", "has_image", "shard")),
        "ListedItem": obj({"id": {"type": "string"}, "shard": {"type": "integer"}, "text": nullable({"type": "string"}),
                           "metadata": {"type": "object", "additionalProperties": True},
                           "has_image": {"type": "boolean"},
                           "thumbnail": nullable({"type": "string", "format": "byte",
                                                  "description": "The JPEG thumbnail, base64."})},
                          ("id", "shard"), description="id and shard, and the fields asked for."),
        "ItemPage": obj({"items": {"type": "array", "items": ref("ListedItem"), "description": "By id."},
                         "next_cursor": nullable({"type": "string", "description":
                                                  "Pass as cursor for the next page; null on the last one."})},
                        ("items", "next_cursor")),
        "DeleteRequest": obj({"ids": {"type": "array", "minItems": 1, "maxItems": 1000,
                                      "items": {"type": "string", "maxLength": MAX_ID_CHARS}},
                              "filter": ref("Filter")},
                             description="Either ids or a (non-empty) filter."),
        "DeleteAccepted": obj({"job_id": {"type": "string"}, "status_url": {"type": "string"},
                               "total": {"type": "integer", "description": "Items the delete job names."}},
                              ("job_id", "status_url", "total")),
        "ImportArchive": {"type": "string", "format": "binary", "maxLength": settings.max_import_bytes,
                          "description": f"An export archive, at most {settings.max_import_bytes} bytes "
                                         "(MMSEARCH_MAX_IMPORT_BYTES; this body alone is not held to "
                                         "MMSEARCH_MAX_REQUEST_BYTES), else 413."},
        "ImportAccepted": obj({"job_id": {"type": "string"}, "status_url": {"type": "string"},
                               "collection": ref("Collection")}, ("job_id", "status_url", "collection")),
        "ExportResult": obj({"archive": {"type": "string", "description": "Where to download it (an hour)."},
                             "items": {"type": "integer"}, "bytes": {"type": "integer"},
                             "sha256": {"type": "string", "description": "Of the archive file."}},
                            ("archive", "items", "bytes", "sha256"),
                            description="The result of a succeeded export job."),
        "JobError": obj({"index": {"type": "integer"}, "id": nullable({"type": "string"}),
                         "code": {"type": "string"}, "message": {"type": "string"}}, ("index", "code", "message")),
        "Job": obj(job_fields, ("id", "kind", "collection", "state", "total", "done", "failed", "errors",
                                "created_at", "started_at", "finished_at", "result")),
        "JobSummary": obj({k: v for k, v in job_fields.items() if k not in ("errors", "result", "not_found")},
                          ("id", "kind", "collection", "state", "total", "done", "failed", "created_at"),
                          description="A job as GET /v1/jobs/{job_id} shows it, less errors, result and not_found."),
        "JobPage": obj({"jobs": {"type": "array", "items": ref("JobSummary"), "description": "Newest first."},
                        "next_cursor": nullable({"type": "string", "description":
                                                 "Pass as cursor for the next page; null when no job is left."})},
                       ("jobs", "next_cursor")),
        "Weights": weights,
        "Filter": search_filter,
        "SearchRequest": obj({"text": nullable(text), "image": nullable(ref("ImageSource")), "k": k, "offset": offset,
                              "weights": nullable(ref("Weights")), "filter": nullable(ref("Filter"))},
                             description="Needs a text, an image or both."),
        "SearchUpload": obj({"image": {"type": "string", "format": "binary"}, "text": text,
                             "k": {"type": "string", "pattern": "^[0-9]+$", "description": f"Integer in 1..{MAX_K}."},
                             "offset": {"type": "string", "pattern": "^[0-9]+$",
                                        "description": f"Integer; offset + k <= {MAX_K}."},
                             "weights": {"type": "string", "description": "JSON object, as in SearchRequest."},
                             "filter": {"type": "string", "description": "JSON object, as in SearchRequest."}}),
        "Hit": obj({"id": {"type": "string"}, "score": {"type": "number"},
                    "scores": obj({"image": nullable({"type": "number"}), "text": nullable({"type": "number"})}),
                    "text": nullable({"type": "string"}),
                    "metadata": {"type": "object", "additionalProperties": True}},
                   ("id", "score", "scores")),
        "SearchResult": obj({
            "hits": {"type": "array", "items": ref("Hit"), "description": "By score, descending; no id twice."},
            "k": {"type": "integer"}, "offset": {"type": "integer"}, "took_ms": {"type": "number"},
            "cached": {"type": "boolean", "description": "Served from the query worker's result cache: the same "
                                                         "query, k and filter, and no write to the collection since."},
            "timings": obj({"encode_ms": {"type": "number", "description": "Reading and encoding the query."},
                            "search_ms": {"type": "number", "description": "The shards' searches and the merge "
                                                                           "(or the cache look-up)."}},
                           ("encode_ms", "search_ms")),
            "shards": obj({"total": {"type": "integer"}, "answered": {"type": "integer"},
                           "message": {"type": "string", "description": "Why some shards did not answer."}},
                          ("total", "answered")),
            "consistency": obj({
                "after_job": {"type": "string"},
                "counted": {"type": "boolean", "description": "The job had counted all its items when the search started."},
                "applied": {"type": "boolean", "description": "Every shard that answered had applied the job's entries."},
                "met": {"type": "boolean", "description": "counted, applied, and every shard answered."}},
                ("after_job", "counted", "applied", "met")),
        }, ("hits", "k", "took_ms", "shards")),
        "Health": obj({"status": {"type": "string", "enum": ["ok"]}}, ("status",)),
        "Ready": obj({"status": {"type": "string", "enum": ["ready"]}, "redis": {"type": "string"},
                      "collections": {"type": "integer"}, "slots": {"type": "array", "items": {"type": "integer"}},
                      "queues": {"type": "object", "additionalProperties": {"type": "integer"},
                                 "description": "Messages waiting on the encode and query queues."}},
                     ("status",)),
    }


def _parameters() -> dict[str, Schema]:
    def path(name: str, description: str, schema: Schema | None = None) -> Schema:
        return {"name": name, "in": "path", "required": True, "description": description,
                "schema": schema or {"type": "string"}}

    return {
        "CollectionName": path("name", "Collection name.", {"type": "string", "pattern": catalog.NAME_RE.pattern}),
        "ItemId": path("item_id", "Item id (may contain '/').", {"type": "string", "maxLength": MAX_ID_CHARS}),
        "JobId": path("job_id", "Job id."),
        "StaticFile": path("filename", "A file of the web page or the docs page (app.js, app.css, docs.js, ...)."),
        "Async": {"name": "async", "in": "query", "required": False,
                  "description": "1: answer 202 with a search job whose result is the response body.",
                  "schema": {"type": "string", "enum": ["0", "1", "true", "false"], "default": "0"}},
        "AfterJob": {"name": "after_job", "in": "query", "required": False,
                     "description": "Read-your-writes: each shard first applies (within the shard deadline) what "
                                    "this job of the collection logged; the answer's `consistency` says if it did.",
                     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}},
        "Limit": {"name": "limit", "in": "query", "required": False, "description": "Items per page.",
                  "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
        "Cursor": {"name": "cursor", "in": "query", "required": False,
                   "description": "The next_cursor of the page before (an item id: the page starts after it).",
                   "schema": {"type": "string", "maxLength": MAX_ID_CHARS}},
        "ListFilter": {"name": "filter", "in": "query", "required": False,
                       "description": "A Filter as a JSON string.", "schema": {"type": "string"}},
        "Fields": {"name": "fields", "in": "query", "required": False,
                   "description": f"Comma-separated, of {', '.join(LIST_FIELDS)}; id and shard always come.",
                   "schema": {"type": "string", "default": ",".join(DEFAULT_FIELDS)}},
        "ImportName": {"name": "name", "in": "query", "required": False,
                       "description": "The new collection's name (default: the archive's).",
                       "schema": {"type": "string", "pattern": catalog.NAME_RE.pattern}},
        "JobsCollection": {"name": "collection", "in": "query", "required": False,
                           "description": "Only this collection's jobs.",
                           "schema": {"type": "string", "pattern": catalog.NAME_RE.pattern}},
        "JobsState": {"name": "state", "in": "query", "required": False, "description": "Only jobs in this state.",
                      "schema": {"type": "string", "enum": list(JOB_STATES)}},
        "JobsKind": {"name": "kind", "in": "query", "required": False, "description": "Only jobs of this kind.",
                     "schema": {"type": "string", "enum": list(JOB_KINDS)}},
        "JobsLimit": {"name": "limit", "in": "query", "required": False, "description": "Jobs per page.",
                      "schema": {"type": "integer", "minimum": 1, "maximum": MAX_JOBS_PAGE,
                                 "default": DEFAULT_JOBS_PAGE}},
        "JobsCursor": {"name": "cursor", "in": "query", "required": False,
                       "description": "The next_cursor of the page before.", "schema": {"type": "string"}},
        "Wait": {"name": "wait", "in": "query", "required": False,
                 "description": "Long-poll: answer as soon as the job is final, or after this many seconds.",
                 "schema": {"type": "number", "minimum": 0, "maximum": 30, "default": 0}},
    }


def _operations(secured: bool, limited: bool = False) -> dict[str, dict[str, Schema]]:
    def op(summary: str, tag: str, responses: dict[str, Schema], params: tuple[str, ...] = (),
           body: Schema | None = None) -> Schema:
        operation: Schema = {"summary": summary, "tags": [tag], "responses": responses}
        if params:
            operation["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in params]
        if body is not None:
            operation["requestBody"] = body
        if tag != "operations":
            operation["security"] = [{"bearerAuth": []}] if secured else []
            operation["responses"] = {**responses, **errors(*((401, 403) if secured else ()),
                                                            *((429,) if limited else ()), 500, 503)}
        return operation

    def ok(schema: str, description: str, status: int = 200) -> dict[str, Schema]:
        return {str(status): json_body(ref(schema), description)}

    json_or_multipart = {"required": True, "content": {JSON_TYPE: {"schema": ref("ItemsRequest")},
                                                       MULTIPART_TYPE: {"schema": ref("ItemsUpload")}}}
    search_body = {"required": True, "content": {JSON_TYPE: {"schema": ref("SearchRequest")},
                                                  MULTIPART_TYPE: {"schema": ref("SearchUpload")}}}
    coll, item, job = ("CollectionName",), ("CollectionName", "ItemId"), ("JobId",)
    return {
        "/": {"get": op("The web page", "operations", {"200": {
            "description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}})},
        "/docs": {"get": op("This document, rendered for reading (no key needed)", "operations", {"200": {
            "description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}})},
        "/healthz": {"get": op("Liveness", "operations", ok("Health", "The API process lives."))},
        "/readyz": {"get": op("Readiness", "operations", {
            **ok("Ready", "Redis answers, an encode and a query worker are ready (models loaded, consuming) "
                          "and every shard of every collection has a live owner that has loaded it."),
            "503": {"description": "Not ready; `message` says what is missing and `details` gives roles (each "
                                   "worker role's start-up stage), redis, missing_slots, missing_shards, "
                                   "loading_slots (owned, shards still loading) and queues.",
                    "content": {JSON_TYPE: {"schema": ref("Error")}}}})},
        "/openapi.json": {"get": op("This document", "operations", {"200": {
            "description": "OpenAPI 3.0 document.", "content": {JSON_TYPE: {"schema": {"type": "object"}}}}})},
        "/metrics": {"get": {**op("Prometheus metrics (text exposition format)", "operations", {
            "200": {"description": "Request counts and latencies, queue lengths, jobs by state, items per shard, "
                                   "encode throughput, per-shard search latency (docs/operations.md, Metrics).",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            **({"401": {"description": "Missing or unknown API key.",
                        "content": {JSON_TYPE: {"schema": ref("Error")}}}} if secured else {})}),
            "security": [{"bearerAuth": []}] if secured else []}},
        "/static/{filename}": {"get": op("A file of the web page", "operations", {
            "200": {"description": "Script, stylesheet or page of the web page.",
                    "content": {"application/javascript": {"schema": {"type": "string"}},
                                "text/css": {"schema": {"type": "string"}}}},
            "404": {"description": "No such file.", "content": {JSON_TYPE: {"schema": ref("Error")}}}},
            ("StaticFile",))},
        "/v1/collections": {
            "get": op("List collections", "collections", ok("CollectionList", "All collections.")),
            "post": op("Create a collection", "collections",
                       {**ok("Collection", "Created.", 201), **errors(400, 409, 413, 415)},
                       body={"required": True, "content": {JSON_TYPE: {"schema": ref("CollectionCreate")}}}),
        },
        "/v1/collections/{name}": {
            "get": op("Show a collection", "collections", {**ok("Collection", "The collection."), **errors(404)},
                      coll),
            "delete": op("Delete a collection", "collections",
                         {**ok("CollectionDeleted", "Deleted; shard owners drop its indexes.", 202),
                          **errors(404)}, coll),
        },
        "/v1/collections/{name}/items": {
            "get": op("List items by id, a page at a time", "items",
                      {**ok("ItemPage", "The page."), **errors(400, 404)}, (*coll, "Limit", "Cursor", "ListFilter",
                                                                           "Fields")),
            "post": op("Ingest items (asynchronous)", "items",
                       {**ok("IngestAccepted", "Job created; poll status_url.", 202),
                        **errors(400, 404, 413, 415)}, coll, json_or_multipart),
        },
        "/v1/collections/{name}/items/exists": {
            "post": op("Which of these ids the collection holds", "items",
                       {**ok("PresentIds", "The ids held."), **errors(400, 404)}, coll,
                       {"required": True, **json_body(ref("IdsRequest"), "Up to 1000 item ids.")}),
        },
        "/v1/collections/{name}/items/delete": {
            "post": op("Delete items by ids or by filter (asynchronous)", "items",
                       {**ok("DeleteAccepted", "Delete job created.", 202), **errors(400, 404, 415)}, coll,
                       {"required": True, **json_body(ref("DeleteRequest"), "ids or filter.")}),
        },
        "/v1/collections/{name}/items/{item_id}": {
            "get": op("Show an item", "items", {**ok("ItemRecord", "The item."), **errors(404)}, item),
            "delete": op("Delete an item (asynchronous, idempotent)", "items",
                         {**ok("Accepted", "Delete job created.", 202), **errors(404)}, item),
        },
        "/v1/collections/{name}/items/{item_id}/thumbnail": {
            "get": op("An item's thumbnail", "items", {
                "200": {"description": "JPEG thumbnail.",
                        "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                **errors(404)}, item),
        },
        "/v1/collections/{name}/export": {
            "post": op("Export the collection into one archive (a job)", "collections",
                       {**ok("Accepted", "Export job created; its result names the archive.", 202), **errors(404)},
                       coll),
        },
        "/v1/collections/import": {
            "post": op("Create a collection from an export archive, without encoding again", "collections",
                       {**ok("ImportAccepted", "Collection created; the import job logs its items.", 202),
                        **errors(400, 409, 413, 415)}, ("ImportName",),
                       {"required": True, "content": {t: {"schema": ref("ImportArchive")}
                                                      for t in ("application/zip", "application/octet-stream")}}),
        },
        "/v1/jobs/{job_id}/archive": {
            "get": op("The archive of a succeeded export job", "jobs", {
                "200": {"description": "The zip archive (manifest.json, items.jsonl).",
                        "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                **errors(404)}, job),
        },
        "/v1/collections/{name}/search": {
            "post": op("Search by text, image or both", "search", {
                **ok("SearchResult", "The hits."),
                **ok("Accepted", "With async=1: a search job whose result is the SearchResult.", 202),
                **errors(400, 404, 413, 415, 422)}, (*coll, "Async", "AfterJob"), search_body),
        },
        "/v1/jobs": {
            "get": op("List jobs, newest first", "jobs", {**ok("JobPage", "The page."), **errors(400)},
                      ("JobsCollection", "JobsState", "JobsKind", "JobsLimit", "JobsCursor")),
        },
        "/v1/jobs/{job_id}": {
            "get": op("Job status", "jobs", {**ok("Job", "The job."), **errors(400, 404)}, (*job, "Wait")),
            "delete": op("Cancel what has not run yet", "jobs",
                         {**ok("CancelAccepted", "Cancel requested.", 202), **errors(404)}, job),
        },
    }


def build_spec(settings: Settings) -> Schema:
    return {
        "openapi": "3.0.3",
        "info": {"title": "mmsearch", "version": "1",
                 "description": "Distributed multimodal image retrieval: bulk ingest images with captions and "
                                "metadata, poll jobs, search by text, image or both. Every error body is "
                                "`Error`; JSON is `application/json; charset=utf-8`."},
        "tags": [{"name": n} for n in ("collections", "items", "search", "jobs", "operations")],
        "paths": _operations(bool(settings.api_keys), settings.rate_limit > 0),
        "components": {
            "schemas": _schemas(settings),
            "parameters": _parameters(),
            "responses": {code: json_body(ref("Error"), description) for code, description in ERRORS.values()},
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Needed on /v1 when MMSEARCH_API_KEYS is set. A key "
                                                              "may be limited to scopes: read (GETs, search), "
                                                              "write (ingest, item deletes, job cancel), admin "
                                                              "(collection create/delete); 403 without it."}},
        },
    }


@bp.get("/openapi.json")
def document() -> Response:
    return jsonify(build_spec(services().settings))
