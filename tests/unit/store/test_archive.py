"""The export archive: what is written is read back exactly, in bounded batches; a truncated,
altered, foreign or malformed archive is refused whole with the reason."""
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

from shared.store import archive
from shared.store.serializers import vector_to_b64

SETTINGS = {"name": "photos", "shards": 2, "image_model": "efficientnet_lite0", "text_model": "glove-6b-50d",
            "dims": {"image": 3, "text": 2}, "precision": "fp32", "encoder_setting": "v1", "store_thumbnails": True,
            "cid": "dropped",
            "created_at": 1.0}
rng = np.random.default_rng(1)


def made(n: int = 5) -> tuple[bytes, list[np.ndarray]]:
    vectors = [rng.normal(size=5).astype(np.float32) for _ in range(n)]
    out = io.BytesIO()
    lines = [archive.item_line(f"id/{i}", None if i % 2 else f"caption {i}", {"n": i, "tags": ["a"]}, i % 2 == 0,
                               "anBlZw==" if i % 2 == 0 else None, vector_to_b64(v))  # b"jpeg" in base64
             for i, v in enumerate(vectors)]
    assert archive.write_archive(out, SETTINGS, lines) == n
    return out.getvalue(), vectors


def rezipped(data: bytes, change) -> bytes:
    """The archive with its members passed through `change(name, bytes) -> bytes` (valid CRCs)."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in src.namelist():
            zf.writestr(name, change(name, src.read(name)))
    return out.getvalue()


def read(data: bytes) -> archive.Archive:
    return archive.read_archive(io.BytesIO(data))


def test_what_is_written_is_read_back():
    data, vectors = made()
    found = read(data)
    assert found.collection == {k: SETTINGS[k] for k in archive.SETTINGS} and found.count == 5
    (items,) = found.batches(100, 2**20)
    assert [i.id for i in items] == [f"id/{i}" for i in range(5)]
    assert items[0].text == "caption 0" and items[1].text is None
    assert items[0].thumbnail == b"jpeg" and items[1].thumbnail is None
    assert items[2].metadata == {"n": 2, "tags": ["a"]} and items[2].has_image is True
    for item, vector in zip(items, vectors):
        assert np.array_equal(item.vector, vector)


def test_an_archive_from_before_encoder_settings_reads_as_v1():
    data, _ = made()
    old = rezipped(data, _manifest(lambda m: m["collection"].pop("encoder_setting")))
    assert read(old).collection["encoder_setting"] == "v1"


def test_items_come_in_batches_bounded_by_count_and_bytes():
    data, _ = made(7)
    found = read(data)
    assert [[i.id for i in b] for b in found.batches(3, 2**20)] == [
        ["id/0", "id/1", "id/2"], ["id/3", "id/4", "id/5"], ["id/6"]]
    lines = [len(line) for line in zipfile.ZipFile(io.BytesIO(data)).read(archive.ITEMS).splitlines(keepends=True)]
    assert 3 * min(lines) > 2 * max(lines)  # any two lines fit in the bound below, no three do
    assert [len(b) for b in found.batches(100, 2 * max(lines))] == [2, 2, 2, 1]
    assert [len(b) for b in found.batches(100, 1)] == [1] * 7  # an item longer than the bound comes alone


def flipped(data: bytes) -> bytes:
    """A byte of items.jsonl's compressed bytes changed, as a damaged disk would."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(archive.ITEMS)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + 20
    return data[:start] + bytes([data[start] ^ 0xFF]) + data[start + 1:]


def _manifest(change):
    def apply(name, raw):
        if name != archive.MANIFEST:
            return raw
        manifest = json.loads(raw)
        change(manifest)
        return json.dumps(manifest).encode()
    return apply


def _items(change):
    def apply(name, raw):
        return change(raw) if name == archive.ITEMS else raw
    return apply


def _with_digest(change):
    """Change items.jsonl and fix the manifest's digest and count, as a careful forger would."""
    def forge(data):
        items = change(zipfile.ZipFile(io.BytesIO(data)).read(archive.ITEMS))

        def apply(name, raw):
            if name == archive.ITEMS:
                return items
            manifest = json.loads(raw)
            manifest["sha256"], manifest["items"] = hashlib.sha256(items).hexdigest(), len(items.splitlines())
            return json.dumps(manifest).encode()
        return rezipped(data, apply)
    return forge


@pytest.mark.parametrize("spoil, reason", [
    (lambda d: d[:len(d) // 2], "not a zip archive"),
    (lambda d: d[:-30], "not a zip archive"),
    (lambda d: b"hello", "not a zip archive"),
    (flipped, "damaged"),
    (lambda d: rezipped(d, _items(lambda raw: raw.replace(b"caption 4", b"caption 5"))), "checksum"),
    (lambda d: rezipped(d, lambda n, raw: raw if n == archive.ITEMS else b"{}"), "another format"),
    (lambda d: rezipped(d, _manifest(lambda m: m.update(version=2))), "version 2"),
    (lambda d: rezipped(d, _manifest(lambda m: m["collection"].pop("dims"))), "settings"),
    (lambda d: rezipped(d, _manifest(lambda m: m.update(items=4))), "the manifest says 4"),
    (_with_digest(lambda raw: raw + raw.splitlines(keepends=True)[0]), "item 5 of items.jsonl names an id twice"),
    (_with_digest(lambda raw: b"".join(reversed(raw.splitlines(keepends=True)))), "item 1 .* out of order"),
    (_with_digest(lambda raw: raw.replace(b"caption 2", b"x" * (archive.MAX_LINE_BYTES + 1))), "holds a line over"),
    (_with_digest(lambda raw: raw.replace(b'"id": "id/1"', b'"id": 7')), "item 1"),
    (_with_digest(lambda raw: raw.replace(b'"has_image": false', b'"has_image": 0', 1)), "item 1"),
    (_with_digest(lambda raw: raw.replace(b'"vector": "', b'"vector": "AAAA', 1)), "item 0"),  # 6 numbers
])
def test_a_spoiled_archive_is_refused_whole(spoil, reason):
    data, _ = made()
    with pytest.raises(archive.ArchiveError, match=reason):
        read(spoil(data))


def test_a_zip_that_is_no_export_is_refused():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("photo.jpg", b"jpeg")
    with pytest.raises(archive.ArchiveError, match="no manifest.json"):
        read(out.getvalue())


def test_an_archive_that_unpacks_to_far_more_than_its_size_is_refused():
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(archive.ITEMS, b"\n" * 50_000_000)
    with pytest.raises(archive.ArchiveError, match="unpacks to more"):
        read(out.getvalue())
