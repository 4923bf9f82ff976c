"""Image files to upload: `FileItem` (a path with its id, caption and metadata) and their split into requests."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Sequence, Union

PathLike = Union[str, os.PathLike]


@dataclass
class FileItem:
    """An image file to upload, with its optional id, caption and metadata."""

    path: PathLike
    id: str | None = None
    text: str | None = None
    metadata: dict[str, Any] | None = None

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in (("id", self.id), ("text", self.text), ("metadata", self.metadata)) if v is not None}


def file_batches(files: Sequence[PathLike | FileItem], batch: int, max_bytes: int) -> Iterator[list[Any]]:
    """The files in request-sized chunks: at most `batch` files, and under `max_bytes` unless one file alone is larger."""
    chunk: list[Any] = []
    size = 0
    for f in files:
        path = f.path if isinstance(f, FileItem) else f
        n = os.path.getsize(path)
        if chunk and (len(chunk) >= batch or size + n > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(f)
        size += n
    if chunk:
        yield chunk
