"""Vectors in and out of Redis streams (raw float32 bytes) and JSON messages (base64)."""
from __future__ import annotations

import base64

import numpy as np


def vector_to_bytes(vec: np.ndarray) -> bytes:
    return np.ascontiguousarray(vec, dtype="<f4").tobytes()


def vector_from_bytes(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").copy()


def vector_to_b64(vec: np.ndarray) -> str:
    return base64.b64encode(vector_to_bytes(vec)).decode("ascii")


def vector_from_b64(text: str) -> np.ndarray:
    return vector_from_bytes(base64.b64decode(text))
