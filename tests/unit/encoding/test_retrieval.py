"""The retrieval core together: real photos -> fused vectors -> shard indexes -> merged top-k."""
import cv2
import numpy as np
import pytest

from bench.photos import all_photos
from shared.encoding.encoders import collection_encoder
from shared.encoding.imagedecode import decode_image
from shared.index.labels import shard_for
from shared.index.merge import merge_topk
from shared.index.shard_index import ItemRecord, ShardIndex

SHARDS = 3
PHOTOS = all_photos()


def variant(data: bytes) -> np.ndarray:
    """A cropped, downscaled, heavily re-compressed copy, decoded again."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    h, w = img.shape[:2]
    img = img[int(h * 0.08):int(h * 0.8), int(w * 0.15):int(w * 0.92)]
    img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 35])
    return decode_image(enc.tobytes())


@pytest.fixture(scope="module")
def encoder():
    return collection_encoder("efficientnet_lite0", "glove-6b-50d")


@pytest.fixture(scope="module")
def shards(encoder):
    """Every photo ingested without a caption, spread over three shard indexes."""
    images = [decode_image(p.read_bytes()) for p in PHOTOS]
    items = encoder.encode_items(images, [None] * len(PHOTOS))
    indexes = [ShardIndex(encoder.image_dim + encoder.text_dim, image_dim=encoder.image_dim) for _ in range(SHARDS)]
    for photo, item in zip(PHOTOS, items):
        indexes[shard_for(photo.name, SHARDS)].upsert(
            [photo.name], item.vector[None, :], [ItemRecord(photo.name, None, {}, True)])
    return indexes


def search(indexes, query, k=5):
    per_shard = [[{"id": h.id, "score": h.score} for h in idx.search(query.vector, k)] for idx in indexes]
    return merge_topk(per_shard, k)


def test_a_variant_of_each_photo_finds_the_original_first(encoder, shards):
    misses = []
    for photo in PHOTOS:
        hits = search(shards, encoder.query(variant(photo.read_bytes()), None, None))
        if hits[0]["id"] != photo.name:
            misses.append(photo.name)
    assert not misses


def test_text_cat_ranks_the_uncaptioned_cat_above_unrelated_photos(encoder, shards):
    hits = search(shards, encoder.query(None, "cat", None), k=len(PHOTOS))
    assert hits[0]["id"] == "chelsea"


def test_caption_and_image_semantics_both_count(encoder):
    coffee = decode_image(next(p for p in PHOTOS if p.name == "coffee").read_bytes())
    captioned, uncaptioned, caption_only = encoder.encode_items(
        [coffee, coffee, None], ["my grandmother's kitchen", None, "my grandmother's kitchen"])
    query = encoder.query(None, "coffee", None).vector
    # The caption says nothing of coffee; the image's semantics still make the item findable.
    assert float(captioned.vector @ query) > float(caption_only.vector @ query)
    assert uncaptioned.has_image and not caption_only.has_image
