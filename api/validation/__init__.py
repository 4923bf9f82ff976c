"""Validating collection, item and search requests before anything is stored or enqueued.

Every check raises `ApiError` (400 `invalid_request`, 413 `payload_too_large`) whose details
name the offending `field` (and the item's `index`), so a malformed request is refused as a
whole and a well-formed one carries only what the workers can use. One module per kind of
request (collections, items, search), one for images (JSON sources and file parts), and the
checks they share (common); this package's names are what the blueprints use.

Rules where docs/api.md is silent (those of images, multipart ingest and multipart search
are in their modules):
- Unknown fields are refused everywhere; `null` counts as an absent optional field.
- A text that is empty or only whitespace counts as no text.
- Error messages echo at most a short prefix of what the client sent and never an internal
  path (the ingest root stays private).
"""
from api.validation.collections import NewCollection, parse_new_collection
from api.validation.common import invalid
from api.validation.images import ImageInput, image_source
from api.validation.items import MAX_ID_CHARS, ItemInput, is_valid_id, parse_items_json, parse_items_multipart
from api.validation.search import DEFAULT_K, MAX_K, SearchInput, parse_search_json, parse_search_multipart

__all__ = ["DEFAULT_K", "MAX_ID_CHARS", "MAX_K", "ImageInput", "ItemInput", "NewCollection", "SearchInput",
           "image_source", "invalid", "is_valid_id", "parse_items_json", "parse_items_multipart",
           "parse_new_collection", "parse_search_json", "parse_search_multipart"]
