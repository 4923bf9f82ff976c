"""Encoder settings: v1 is the values collections were encoded with before settings existed; an
unknown name is refused wherever one is given; a record without a setting reads as v1."""
from __future__ import annotations

import json

import pytest

from shared.encoding.encoder_settings import (ENCODER_SETTINGS, LEGACY_ENCODER_SETTING, V1, EncoderSetting,
                                              encoder_setting, resolve_encoder_setting)
from shared.runtime.config import Settings
from shared.store.catalog import Collection


def test_v1_holds_the_values_from_before_settings_existed() -> None:
    assert ENCODER_SETTINGS["v1"] is V1 and LEGACY_ENCODER_SETTING == "v1"
    assert V1 == EncoderSetting(caption_conse_mix=1.0, conse_top_k=10, conse_temperature=2.0, hypernym_levels=2,
                                hypernym_weight=1.0, sif_a=1e-3, pooling="avg")


def test_unknown_names_are_refused_with_the_known_ones() -> None:
    assert resolve_encoder_setting(None, "v1") == "v1" and resolve_encoder_setting("v1", "other") == "v1"
    for name in ("v0", "", 3, None):
        with pytest.raises(ValueError, match="encoder_setting must be one of v1"):
            encoder_setting(name)
    with pytest.raises(ValueError, match="MMSEARCH_ENCODER_SETTING: encoder_setting must be one of"):
        Settings.from_env({"MMSEARCH_ENCODER_SETTING": "v0"})
    assert Settings.from_env({}).encoder_setting == "v1"
    with pytest.raises(ValueError, match="pooling"):
        EncoderSetting(1.0, 10, 2.0, 2, 1.0, 1e-3, pooling="max")


def test_a_collection_record_without_a_setting_reads_as_v1() -> None:
    record = {"name": "old", "cid": "abc", "shards": 1, "image_model": "efficientnet_lite0",
              "text_model": "glove-6b-50d", "dims": {"image": 1280, "text": 50}, "store_thumbnails": True,
              "created_at": 1.0}
    coll = Collection.from_json(json.dumps(record))
    assert coll.encoder_setting == "v1" and coll.public(0)["encoder_setting"] == "v1"
