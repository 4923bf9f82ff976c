"""Typed errors of the retrieval core; the API maps them to HTTP error codes."""
from __future__ import annotations


class MMSearchError(Exception):
    """Base of every error mmsearch raises on purpose. `code` is the docs/api.md error code."""

    code = "internal"


class ImageDecodeError(MMSearchError):
    """The bytes are not an image we can decode (empty, truncated, unknown format...)."""

    code = "invalid_item"


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels or bytes than the configured limits allow."""

    code = "payload_too_large"


class ModelUnavailableError(MMSearchError):
    """A named model is unknown or its weights are not on this machine."""

    code = "invalid_request"


class SnapshotError(MMSearchError):
    """A shard snapshot is missing, truncated or fails its checksum: it is never loaded."""

    code = "internal"
