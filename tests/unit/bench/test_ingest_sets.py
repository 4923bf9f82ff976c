"""bench.ingest_sets: the mixed set holds captioned 1024-px JPEGs and PNG cut-outs with a
transparent background, and every id is distinct."""
from __future__ import annotations

import cv2
import numpy as np

from bench.ingest_sets import cutout_png, mixed_set
from bench.service import jpeg_with_long_side, real_photos


def test_cutout_png_is_opaque_inside_and_transparent_in_the_corners() -> None:
    png = cutout_png(jpeg_with_long_side(real_photos()[0].read_bytes(), 256))
    bgra = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and bgra.shape[2] == 4
    height, width = bgra.shape[:2]
    assert bgra[height // 2, width // 2, 3] == 255
    assert bgra[0, 0, 3] == 0 and bgra[-1, -1, 3] == 0


def test_mixed_set_alternates_jpeg_and_png_all_captioned_at_1024_px() -> None:
    items = mixed_set(6)
    assert len({item.id for item in items}) == 6
    assert all(item.text for item in items)
    kinds = [item.image[:4] for item in items]
    assert kinds[0][:3] == b"\xff\xd8\xff"
    assert kinds[1] == b"\x89PNG"
    for item in items[:2]:
        image = cv2.imdecode(np.frombuffer(item.image, np.uint8), cv2.IMREAD_UNCHANGED)
        assert max(image.shape[:2]) == 1024
