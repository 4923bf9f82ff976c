"""The record a shard keeps of each item besides its vector, shared by the index and its snapshots."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ItemRecord:
    """What a shard stores about an item besides its vector."""

    id: str
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    has_image: bool = False
    thumbnail: bytes | None = None
