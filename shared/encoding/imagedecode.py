"""Untrusted image bytes -> RGB arrays for the image models, and JPEG thumbnails.

Every image the service ingests or is queried with goes through `decode_image`. It reads the
container header first (JPEG, PNG, GIF, BMP, WebP; anything else is refused), enforces the byte
and pixel limits before anything is decompressed, then decodes with OpenCV:

- JPEG: `IMREAD_COLOR`, or `IMREAD_REDUCED_COLOR_2/4/8` (libjpeg's DCT scaling) when the smaller
  side is at least 2/4/8 times the model input. OpenCV converts grayscale and CMYK to colour and
  applies the EXIF orientation in all of these modes. A JPEG with no end-of-image marker after
  its first scan is refused as truncated.
- PNG, GIF, BMP, WebP: `IMREAD_UNCHANGED`, so 16-bit samples (rounded to 8 bits) and alpha survive.
  Alpha is composited on white (transparent product shots then look like shots on a white
  background); BMP's fourth byte is dropped, not composited, as it is mostly unused padding.
  OpenCV skips EXIF orientation in this mode, so the orientation of PNG's eXIf chunk and WebP's
  EXIF chunk is applied here.

OpenCV's own log lines are silenced on import (failures surface as `ImageDecodeError`); libpng and
libjpeg print some warnings straight to stderr, which no OpenCV setting stops.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import cv2
import numpy as np

from shared.errors import ImageDecodeError, ImageTooLargeError

cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 JPG, CC DAC
_JPEG_REDUCTIONS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                    (2, cv2.IMREAD_REDUCED_COLOR_2))
_ORIENTATIONS = {  # EXIF orientation tag value -> the transform that shows the image upright
    2: lambda m: cv2.flip(m, 1),
    3: lambda m: cv2.rotate(m, cv2.ROTATE_180),
    4: lambda m: cv2.flip(m, 0),
    5: cv2.transpose,
    6: lambda m: cv2.rotate(m, cv2.ROTATE_90_CLOCKWISE),
    7: lambda m: cv2.rotate(cv2.transpose(m), cv2.ROTATE_180),
    8: lambda m: cv2.rotate(m, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


@dataclass(frozen=True)
class _Header:
    format: str
    width: int
    height: int
    orientation: int = 1  # EXIF orientation, read for the formats OpenCV decodes unchanged


def decode_image(data: bytes, *, target_size: int = 224, max_pixels: int = 100_000_000,
                 max_bytes: int | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB of an encoded image, upright, at least `target_size` on its smaller side
    when the original is (JPEGs much larger than that are decoded at 1/2, 1/4 or 1/8 scale).

    Raises ImageTooLargeError past `max_bytes` or `max_pixels` (checked on the header, before
    decoding) and ImageDecodeError for anything that is not a complete image of a known format.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes, over the limit of {max_bytes}")
    header = _read_header(data)
    if header.width <= 0 or header.height <= 0:
        raise ImageDecodeError(f"{header.format} header gives an empty size {header.width}x{header.height}")
    if header.width * header.height > max_pixels:
        raise ImageTooLargeError(f"image is {header.width}x{header.height} pixels, over the limit of {max_pixels}")
    if header.format == "jpeg":
        bgr = _imdecode(data, _jpeg_flags(min(header.width, header.height), target_size))
    else:
        raw = _imdecode(data, cv2.IMREAD_UNCHANGED)
        bgr = _to_bgr8(raw, composite_alpha=header.format != "bmp")
        if header.orientation in _ORIENTATIONS:
            bgr = _ORIENTATIONS[header.orientation](bgr)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_for_model(rgb: np.ndarray, size: int = 224) -> np.ndarray:
    """The whole image squashed to size x size (no crop, aspect not kept), uint8 RGB."""
    return _shrink(rgb, (size, size))


def make_thumbnail(rgb: np.ndarray, max_side: int = 160, quality: int = 80) -> bytes:
    """JPEG bytes of the image scaled down (never up) to fit max_side, aspect kept."""
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w)
    if scale < 1:
        rgb = _shrink(rgb, (max(1, round(w * scale)), max(1, round(h * scale))))
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {w}x{h} thumbnail")
    return buf.tobytes()


def _shrink(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` resized to `size` (width, height): INTER_AREA where some side shrinks more than 2x
    (it averages away aliasing), else the much faster INTER_LINEAR (after a reduced JPEG decode
    the shrink is usually under 2x, where INTER_AREA costs several times as much for no visible
    gain)."""
    h, w = rgb.shape[:2]
    interpolation = cv2.INTER_AREA if w > 2 * size[0] or h > 2 * size[1] else cv2.INTER_LINEAR
    return cv2.resize(rgb, size, interpolation=interpolation)


def _imdecode(data: bytes, flags: int) -> np.ndarray:
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        raise ImageDecodeError(f"image data is corrupt: {exc.err}") from None
    if img is None:
        raise ImageDecodeError("image data is corrupt or truncated")
    return img


def _jpeg_flags(smaller_side: int, target_size: int) -> int:
    """The largest DCT reduction that keeps the smaller side at least target_size."""
    for factor, flags in _JPEG_REDUCTIONS:
        if smaller_side >= factor * target_size:
            return flags
    return cv2.IMREAD_COLOR


def _to_bgr8(img: np.ndarray, *, composite_alpha: bool) -> np.ndarray:
    """8-bit BGR of what IMREAD_UNCHANGED returns (gray, BGR or BGRA; 8 or 16 bits)."""
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=255 / 65535)  # rounds: 65535 -> 255, 257 -> 1
    elif img.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported sample type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.shape[2] == 4:
        return _on_white(img) if composite_alpha else np.ascontiguousarray(img[..., :3])
    return img


def _on_white(bgra: np.ndarray) -> np.ndarray:
    alpha = bgra[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(bgra[..., :3])
    a = alpha.astype(np.uint16)
    return ((bgra[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def _read_header(data: bytes) -> _Header:
    if not data:
        raise ImageDecodeError("image data is empty")
    try:
        if data.startswith(b"\xff\xd8"):
            return _jpeg_header(data)
        if data.startswith(_PNG_SIGNATURE):
            return _png_header(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return _Header("gif", *struct.unpack_from("<HH", data, 6))
        if data.startswith(b"BM"):
            return _bmp_header(data)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _webp_header(data)
    except struct.error:
        raise ImageDecodeError("image header is truncated") from None
    raise ImageDecodeError("not an image in a supported format (JPEG, PNG, GIF, BMP, WebP)")


def _jpeg_header(data: bytes) -> _Header:
    """Walks the marker segments to the first scan: size from the SOFn segment."""
    pos, size = 2, None
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageDecodeError("corrupt JPEG: marker expected")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a segment
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: entropy-coded data follows, up to the EOI marker
            if size is None:
                raise ImageDecodeError("corrupt JPEG: no frame header before the scan")
            if data.find(b"\xff\xd9", pos) < 0:
                raise ImageDecodeError("truncated JPEG: no end-of-image marker")
            return _Header("jpeg", *size)
        if marker in _JPEG_SOF_MARKERS and size is None:
            height, width = struct.unpack_from(">HH", data, pos + 5)
            size = (width, height)
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    raise ImageDecodeError("truncated JPEG: data ends before the first scan")


def _png_header(data: bytes) -> _Header:
    """IHDR gives the size; an eXIf chunk before the image data gives the orientation."""
    if data[12:16] != b"IHDR":
        raise ImageDecodeError("corrupt PNG: IHDR is not the first chunk")
    width, height = struct.unpack_from(">II", data, 16)
    pos, orientation = 8, 1
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            orientation = _exif_orientation(data[pos + 8:pos + 8 + length])
        if kind in (b"eXIf", b"IDAT", b"IEND"):
            break
        pos += 12 + length
    return _Header("png", width, height, orientation)


def _bmp_header(data: bytes) -> _Header:
    if struct.unpack_from("<I", data, 14)[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return _Header("bmp", width, abs(height))  # negative height: rows stored top-down


def _webp_header(data: bytes) -> _Header:
    kind, payload = data[12:16], 20
    if kind == b"VP8 ":  # lossy: 3-byte frame tag, start code, 14-bit sizes
        if data[payload + 3:payload + 6] != b"\x9d\x01\x2a":
            raise ImageDecodeError("corrupt WebP: bad VP8 start code")
        width, height = struct.unpack_from("<HH", data, payload + 6)
        return _Header("webp", width & 0x3FFF, height & 0x3FFF)
    if kind == b"VP8L":  # lossless: signature byte, then 14-bit width-1 and height-1
        bits = struct.unpack_from("<I", data, payload + 1)[0]
        return _Header("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":  # extended: 24-bit canvas width-1 and height-1, then chunks (EXIF...)
        width = int.from_bytes(data[payload + 4:payload + 7], "little") + 1
        height = int.from_bytes(data[payload + 7:payload + 10], "little") + 1
        pos, orientation = 12, 1
        while pos + 8 <= len(data):
            chunk, length = struct.unpack_from("<4sI", data, pos)
            if chunk == b"EXIF":
                orientation = _exif_orientation(data[pos + 8:pos + 8 + length])
                break
            pos += 8 + length + (length & 1)
        return _Header("webp", width, height, orientation)
    raise ImageDecodeError(f"unsupported WebP chunk {kind!r}")


def _exif_orientation(exif: bytes) -> int:
    """The orientation tag (0x0112) of IFD0 in a TIFF-format EXIF block; 1 if absent or unreadable."""
    exif = exif.removeprefix(b"Exif\x00\x00")
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(exif[:4])
    if order is None:
        return 1
    try:
        ifd = struct.unpack_from(order + "I", exif, 4)[0]
        for i in range(struct.unpack_from(order + "H", exif, ifd)[0]):
            tag, kind, _count, value = struct.unpack_from(order + "HHIH", exif, ifd + 2 + 12 * i)
            if tag == 0x0112 and kind == 3:  # SHORT, stored left-justified in the value field
                return value
    except struct.error:
        pass
    return 1
