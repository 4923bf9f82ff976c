"""A search that cannot be done, with the error code the API turns into its HTTP error."""
from __future__ import annotations

from typing import Any


class SearchRefused(Exception):
    """Raised by the query worker's steps; the search answers `body()` instead of hits."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}
