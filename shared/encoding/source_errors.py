"""`SourceError`: the image of one item could not be had from its source (URL, path or staged upload)."""
from __future__ import annotations

from shared.errors import MMSearchError


class SourceError(MMSearchError):
    """The image of one item could not be fetched; `code` goes into the job's errors."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
