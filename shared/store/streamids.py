"""Redis stream ids ("<ms>-<seq>") as comparable values."""
from __future__ import annotations


def parse(stream_id: str | bytes | None) -> tuple[int, int]:
    """(ms, seq); None or empty sorts before every real id."""
    if not stream_id:
        return (0, 0)
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    return (int(ms), int(seq or 0))


def at_least(applied: str | bytes | None, mark: str | bytes | None) -> bool:
    """True when a position `applied` covers the entry `mark`."""
    return parse(applied) >= parse(mark)
