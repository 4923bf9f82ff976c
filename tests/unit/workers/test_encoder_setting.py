"""A collection keeps the encoder setting it was created with: once the default for new
collections changes, the encode worker still encodes its items with its own setting (real
Redis, the real image and text models)."""
from __future__ import annotations

import contextvars
from dataclasses import replace

import numpy as np

from bench.photos import skimage_photos
from shared.encoding.encoder_settings import ENCODER_SETTINGS, V1
from shared.encoding.encoders import collection_encoder
from shared.encoding.imagedecode import decode_image
from shared.runtime.config import Settings
from shared.store import catalog, jobs, keys, shardlog, staging

CAPTION = "my grandmother's kitchen"


def test_a_v1_collection_keeps_encoding_with_v1_after_the_default_changes(redis_client, monkeypatch, tmp_path):
    import workers.encode as encode

    monkeypatch.setitem(ENCODER_SETTINGS, "v-later", replace(V1, caption_conse_mix=0.25))
    monkeypatch.setattr(encode, "redis_client", lambda: redis_client)
    before = Settings.from_env({"MMSEARCH_DATA_DIR": str(tmp_path)})
    old = catalog.create_collection(redis_client, before, "old", shards=1)
    after = Settings.from_env({"MMSEARCH_DATA_DIR": str(tmp_path), "MMSEARCH_ENCODER_SETTING": "v-later"})
    monkeypatch.setattr(encode, "settings", lambda: after)
    new = catalog.create_collection(redis_client, after, "new", shards=1)
    assert (old.encoder_setting, new.encoder_setting) == ("v1", "v-later")

    data = next(p for p in skimage_photos() if p.name == "coffee").read_bytes()
    job = jobs.create_job(redis_client, "ingest", "old", old.cid, 1, ids=["coffee"])
    staged = staging.stage(redis_client, old.cid, job, {0: data}, 600)[0]  # as the API hands it over
    item = {"index": 0, "id": "coffee", "text": CAPTION, "image": {"staged": staged}}
    outcome = contextvars.copy_context().run(lambda: encode.encode_items.apply(kwargs={
        "job_id": job, "collection": "old", "cid": old.cid, "items": [item]}).get())
    assert outcome == {"done": 1, "failed": 0, "skipped": 0}, jobs.job_view(redis_client, job, 60)["errors"]
    (_, fields), = redis_client.xrange(keys.shard_log(old.cid, 0))
    stored = shardlog.LogEntry.from_fields(fields).vector

    def encoded_with(setting: str) -> np.ndarray:
        encoder = collection_encoder(old.image_model, old.text_model, old.precision, setting)
        (encoded,) = encoder.encode_items([encoder.prepare_image(decode_image(data))], [CAPTION])
        return encoded.vector

    np.testing.assert_allclose(stored, encoded_with("v1"), atol=1e-6)
    assert np.abs(stored - encoded_with("v-later")).max() > 1e-3  # the other setting gives other vectors
