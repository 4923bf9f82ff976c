"""shared.encoding.imagedecode on real photos and on hand-built edge cases (EXIF, alpha, 16-bit, bombs)."""
from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image  # Pillow comes with scikit-image, a test dependency; the module under test does not use it

from bench.photos import all_photos, foolbox_photos
from shared.errors import ImageDecodeError, ImageTooLargeError
from shared.encoding.imagedecode import decode_image, make_thumbnail, resize_for_model

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)

# What each EXIF orientation value asks a viewer to do to the stored pixels (numpy, RGB)
UPRIGHT = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def encode(rgb: np.ndarray, ext: str, *params: int) -> bytes:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    ok, buf = cv2.imencode(ext, bgr, list(params))
    assert ok
    return buf.tobytes()


def quadrants(h: int = 40, w: int = 64) -> np.ndarray:
    """RGB image whose four quadrants are red, green / blue, white: every flip/rotation differs."""
    img = np.empty((h, w, 3), np.uint8)
    img[: h // 2, : w // 2], img[: h // 2, w // 2:] = RED, GREEN
    img[h // 2:, : w // 2], img[h // 2:, w // 2:] = BLUE, WHITE
    return img


def tiff_exif(orientation: int, order: str) -> bytes:
    """A minimal TIFF-format EXIF block: IFD0 with the one Orientation entry."""
    magic = b"II*\x00" if order == "<" else b"MM\x00*"
    return magic + struct.pack(order + "IHHHIHHI", 8, 1, 0x0112, 3, 1, orientation, 0, 0)


def jpeg_with_orientation(jpeg: bytes, orientation: int) -> bytes:
    payload = b"Exif\x00\x00" + tiff_exif(orientation, ">")
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_orientation(png: bytes, orientation: int) -> bytes:
    return png[:33] + png_chunk(b"eXIf", tiff_exif(orientation, "<")) + png[33:]  # right after IHDR


def webp_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """An extended (VP8X) WebP: the lossy frame of cv2's encoding plus an EXIF chunk."""
    simple = encode(rgb, ".webp", cv2.IMWRITE_WEBP_QUALITY, 95)
    assert simple[12:16] == b"VP8 "
    h, w = rgb.shape[:2]
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x08, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    exif = tiff_exif(orientation, ">")
    body = b"WEBP" + vp8x + simple[12:] + b"EXIF" + struct.pack("<I", len(exif)) + exif
    return b"RIFF" + struct.pack("<I", len(body)) + body


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def cv2_rgb(data: bytes) -> np.ndarray:
    """OpenCV's own full-size decode (IMREAD_COLOR: EXIF orientation applied, alpha dropped), in RGB."""
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    """A real photo upscaled to 3000x2000 (6 MP), tagged EXIF orientation 6 (rotate 90 clockwise)."""
    photo = cv2.imread(str(foolbox_photos()[0].path))
    big = cv2.resize(photo, (3000, 2000), interpolation=cv2.INTER_LINEAR)
    return jpeg_with_orientation(cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(), 6)


# --- real photos, channel order ---------------------------------------------------------------


@pytest.mark.parametrize("photo", all_photos(), ids=lambda p: p.name)
def test_real_photo_decodes_like_opencv_in_rgb(photo):
    data = photo.read_bytes()
    rgb = decode_image(data, target_size=10_000)  # no reduction: must equal a plain cv2 decode
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.flags.c_contiguous
    assert np.array_equal(rgb, cv2_rgb(data))


def test_foolbox_jpeg_is_reduced_to_half_for_224():
    photo = foolbox_photos()[0]
    full = cv2_rgb(photo.read_bytes())
    assert min(full.shape[:2]) >= 448
    rgb = decode_image(photo.read_bytes())
    assert rgb.shape == ((full.shape[0] + 1) // 2, (full.shape[1] + 1) // 2, 3)


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".gif"])
def test_pure_red_comes_back_red_in_rgb_order(ext):
    rgb = decode_image(encode(np.full((32, 48, 3), RED, np.uint8), ext))
    assert rgb.shape == (32, 48, 3)
    r, g, b = (rgb[..., i].mean() for i in range(3))
    assert r > 240 and g < 15 and b < 15


# --- EXIF orientation ----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_exif_orientation_is_applied(fmt, orientation):
    stored = quadrants()
    data = {
        "jpeg": lambda: jpeg_with_orientation(encode(stored, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 95), orientation),
        "png": lambda: png_with_orientation(encode(stored, ".png"), orientation),
        "webp": lambda: webp_with_orientation(stored, orientation),
    }[fmt]()
    rgb = decode_image(data)
    expected = np.ascontiguousarray(UPRIGHT[orientation](stored))
    assert rgb.shape == expected.shape
    assert mean_abs_diff(rgb, expected) < 6
    assert np.array_equal(rgb, cv2_rgb(data))  # OpenCV's IMREAD_COLOR orients the same way


def test_exif_block_with_a_jpeg_style_prefix_is_read():
    stored = quadrants()
    png = encode(stored, ".png")
    exif = b"Exif\x00\x00" + tiff_exif(8, ">")  # some writers keep APP1's prefix in PNG's eXIf
    rgb = decode_image(png[:33] + png_chunk(b"eXIf", exif) + png[33:])
    assert np.array_equal(rgb, np.rot90(stored, 1))


def test_big_jpeg_uses_reduced_decode_and_keeps_orientation(big_jpeg):
    rgb = decode_image(big_jpeg)
    # 3000x2000 stored, upright it is 2000 wide and 3000 high; 1/8 scale keeps the smaller side >= 224
    assert rgb.shape == (375, 250, 3)
    reference = cv2.resize(cv2_rgb(big_jpeg), (250, 375), interpolation=cv2.INTER_AREA)
    assert reference.shape == rgb.shape  # cv2_rgb is the full-size decode, oriented by OpenCV
    assert mean_abs_diff(rgb, reference) < 4
    assert mean_abs_diff(rgb, np.ascontiguousarray(np.rot90(reference, 2))) > 4 * mean_abs_diff(rgb, reference)


@pytest.mark.parametrize("target, shape", [(224, (375, 250)), (300, (750, 500)), (700, (1500, 1000)),
                                           (1001, (3000, 2000))])
def test_reduction_keeps_smaller_side_at_least_target(big_jpeg, target, shape):
    rgb = decode_image(big_jpeg, target_size=target)
    assert rgb.shape[:2] == shape
    assert min(rgb.shape[:2]) >= target


# --- colour types ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_grayscale_becomes_three_equal_channels(ext):
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (16, 1))
    rgb = decode_image(encode(gray, ext, cv2.IMWRITE_JPEG_QUALITY, 100))
    assert rgb.shape == (16, 64, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert np.abs(rgb[..., 0].astype(int) - gray).max() <= 2


def rgba_sample() -> np.ndarray:
    """Columns: opaque red, fully transparent (black underneath), half-transparent blue."""
    rgba = np.zeros((8, 3, 4), np.uint8)
    rgba[:, 0] = (*RED, 255)
    rgba[:, 1] = (0, 0, 0, 0)
    rgba[:, 2] = (*BLUE, 128)
    return rgba


@pytest.mark.parametrize("ext", [".png", ".webp"])
def test_alpha_is_composited_on_white(ext):
    bgra = cv2.cvtColor(rgba_sample(), cv2.COLOR_RGBA2BGRA)
    rgb = decode_image(encode(bgra, ext, cv2.IMWRITE_WEBP_QUALITY, 101))
    assert rgb.shape == (8, 3, 3)
    assert tuple(rgb[0, 0]) == RED
    assert tuple(rgb[0, 1]) == WHITE
    assert tuple(rgb[0, 2]) == (127, 127, 255)


def test_gif_transparency_is_composited_on_white():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = (*RED, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "GIF")  # cv2 writes no transparent GIFs
    rgb = decode_image(buf.getvalue())
    assert tuple(rgb[0, 0]) == RED and tuple(rgb[0, 5]) == WHITE


def test_bmp_fourth_byte_is_not_taken_for_alpha():
    bgrx = np.zeros((4, 4, 4), np.uint8)
    bgrx[..., 2] = 255  # red, with the fourth byte 0 as many 32-bit BMP writers leave it
    rgb = decode_image(encode(bgrx, ".bmp"))
    assert tuple(rgb[0, 0]) == RED


def test_16_bit_png_is_scaled_not_truncated():
    values = np.array([[0, 129, 257 * 100, 40000, 65280, 65535]], np.uint16)
    rgb = decode_image(encode(values, ".png"))
    # round(v / 257); the low byte would give 0, 129, 100, 64, 0, 255 and the high byte 0, 0, 100, 156, 255, 255
    assert rgb[0, :, 0].tolist() == [0, 1, 100, 156, 254, 255]
    bgra = np.zeros((1, 2, 4), np.uint16)
    bgra[0, 0] = (0, 0, 65535, 65535)  # opaque red
    bgra[0, 1] = (65535, 0, 0, 0)  # transparent blue
    rgb = decode_image(encode(bgra, ".png"))
    assert tuple(rgb[0, 0]) == RED and tuple(rgb[0, 1]) == WHITE


def palette_png(trns: bytes | None = None) -> bytes:
    """4x2 palette PNG built by hand: row 0 indices 0,1,2,0 / row 1 indices 2,2,1,0."""
    ihdr = struct.pack(">IIBBBBB", 4, 2, 8, 3, 0, 0, 0)
    plte = bytes([*RED, *GREEN, *BLUE])
    raw = b"\x00" + bytes([0, 1, 2, 0]) + b"\x00" + bytes([2, 2, 1, 0])
    chunks = png_chunk(b"IHDR", ihdr) + png_chunk(b"PLTE", plte)
    if trns is not None:
        chunks += png_chunk(b"tRNS", trns)
    return b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b"")


def test_palette_png_is_expanded():
    rgb = decode_image(palette_png())
    assert [tuple(p) for p in rgb[0]] == [RED, GREEN, BLUE, RED]
    assert [tuple(p) for p in rgb[1]] == [BLUE, BLUE, GREEN, RED]
    rgb = decode_image(palette_png(trns=b"\x00"))  # palette entry 0 (red) fully transparent
    assert [tuple(p) for p in rgb[0]] == [WHITE, GREEN, BLUE, WHITE]


def test_cmyk_jpeg_is_converted_to_rgb():
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), RED, np.uint8)).convert("CMYK").save(buf, "JPEG", quality=95)
    assert b"Adobe" in buf.getvalue()  # a real CMYK JPEG, as Photoshop writes them
    rgb = decode_image(buf.getvalue())
    assert rgb.shape == (8, 8, 3)
    assert rgb[..., 0].min() > 240 and rgb[..., 1:].max() < 15


# --- bad input ---------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """name -> (data, what the error message must say)"""
    jpeg = foolbox_photos()[1].read_bytes()
    png = encode(quadrants(), ".png")
    noise = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    return {
        "empty": (b"", "empty"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "jpeg without EOI": (jpeg[:-2], "truncated JPEG"),
        "jpeg header only": (jpeg[:300], "truncated JPEG"),
        "random bytes": (noise, "supported format"),
        "random after jpeg SOI": (b"\xff\xd8" + noise, "corrupt JPEG"),
        "text file": (Path(__file__).read_bytes(), "supported format"),
        "tiff (unsupported)": (encode(quadrants(), ".tiff"), "supported format"),
        "truncated png": (png[: len(png) // 2], "corrupt or truncated"),
        "png with corrupt data": (png[:40] + bytes(len(png) - 40), "corrupt or truncated"),
        "webp cut in its header": (encode(quadrants(), ".webp")[:22], "header is truncated"),
        "webp cut after its header": (encode(quadrants(), ".webp")[:30], "corrupt or truncated"),
    }


@pytest.mark.parametrize("name", list(bad_inputs()))
def test_bad_input_raises_image_decode_error(name):
    data, message = bad_inputs()[name]
    with pytest.raises(ImageDecodeError, match=message) as info:
        decode_image(data)
    assert not isinstance(info.value, ImageTooLargeError)


def test_decompression_bomb_header_is_refused_before_decoding(monkeypatch):
    bomb = png_header_only(30000, 30000)
    assert len(bomb) < 100

    def no_decode(*_args):
        raise AssertionError("decoded despite the pixel limit")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="30000x30000"):
        decode_image(bomb)
    assert time.perf_counter() - started < 0.1


@pytest.mark.parametrize("fmt", ["jpeg", "png", "gif", "bmp", "webp VP8", "webp VP8L", "webp VP8X"])
def test_max_pixels_is_enforced_on_the_header(fmt):
    img = quadrants(40, 64)
    data = {
        "jpeg": lambda: encode(img, ".jpg"),
        "png": lambda: encode(img, ".png"),
        "gif": lambda: encode(img, ".gif"),
        "bmp": lambda: encode(img, ".bmp"),
        "webp VP8": lambda: encode(img, ".webp", cv2.IMWRITE_WEBP_QUALITY, 90),
        "webp VP8L": lambda: encode(img, ".webp", cv2.IMWRITE_WEBP_QUALITY, 101),
        "webp VP8X": lambda: webp_with_orientation(img, 1),
    }[fmt]()
    if fmt.startswith("webp"):
        assert data[12:16].rstrip() == fmt.split()[1].encode()  # the WebP variant the case is named after
    assert decode_image(data, max_pixels=40 * 64).shape == (40, 64, 3)
    with pytest.raises(ImageTooLargeError, match="64x40"):
        decode_image(data, max_pixels=40 * 64 - 1)


def test_max_bytes_is_enforced():
    jpeg = foolbox_photos()[0].read_bytes()
    assert decode_image(jpeg, max_bytes=len(jpeg)).shape[2] == 3
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(jpeg, max_bytes=len(jpeg) - 1)


# --- resize and thumbnail ----------------------------------------------------------------------------


def test_resize_for_model_squashes_the_whole_image():
    wide = np.zeros((200, 800, 3), np.uint8)
    wide[:, :100] = RED  # the left eighth: a centre crop would lose it
    wide[:, 100:] = BLUE
    out = resize_for_model(wide, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert tuple(out[112, 10]) == RED and tuple(out[112, 100]) == BLUE


@pytest.mark.parametrize("shape, interpolation", [((700, 1000), cv2.INTER_AREA), ((300, 460), cv2.INTER_AREA),
                                                  ((300, 440), cv2.INTER_LINEAR), ((100, 150), cv2.INTER_LINEAR)])
def test_resize_for_model_averages_only_when_shrinking_over_2x(shape, interpolation):
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    assert np.array_equal(resize_for_model(img, 224), cv2.resize(img, (224, 224), interpolation=interpolation))


def test_thumbnail_is_a_small_jpeg_with_the_aspect_kept(big_jpeg):
    rgb = decode_image(big_jpeg, target_size=1001)  # 2000 wide, 3000 high upright
    thumb = make_thumbnail(rgb)
    assert thumb[:2] == b"\xff\xd8" and len(thumb) < 20_000
    back = decode_image(thumb)
    assert back.shape == (160, 107, 3)
    assert mean_abs_diff(back, cv2.resize(rgb, (107, 160), interpolation=cv2.INTER_AREA)) < 6


def test_thumbnail_never_upscales():
    thumb = make_thumbnail(quadrants(40, 64))
    assert decode_image(thumb).shape == (40, 64, 3)
