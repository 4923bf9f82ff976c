"""Encoder settings: every constant that changes the vectors a collection stores, by version.

A collection names its setting when it is created (`MMSEARCH_ENCODER_SETTING` or the request's
`encoder_setting`) and keeps it: its items and queries are always encoded with that setting's
values, whatever the default for new collections becomes. A published setting is never edited;
a change of any value is a new version. Collections and exports from before settings existed
were encoded with "v1", today's values exactly. Torch-free: the API checks names with it.
"""
from __future__ import annotations

from dataclasses import dataclass

POOLINGS = ("avg",)  # of the image model's last feature map


@dataclass(frozen=True)
class EncoderSetting:
    """The values behind a collection's vectors (the models and precision are its own fields)."""

    caption_conse_mix: float  # captioned image: text block = normalise(caption + mix * ConSE vector)
    conse_top_k: int          # ConSE: classes mixed into an image's word vector
    conse_temperature: float  # ConSE: softmax temperature of the class probabilities
    hypernym_levels: int      # ConSE class vectors: WordNet hypernym levels added to each name...
    hypernym_weight: float    # ...with this weight each
    sif_a: float              # the text model's SIF weighting, a / (a + p(word))
    pooling: str              # image features from the image model's last feature map

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")


# v1: the values chosen with `python -m bench.quality` before settings were versioned.
V1 = EncoderSetting(caption_conse_mix=1.0, conse_top_k=10, conse_temperature=2.0, hypernym_levels=2,
                    hypernym_weight=1.0, sif_a=1e-3, pooling="avg")
ENCODER_SETTINGS: dict[str, EncoderSetting] = {"v1": V1}
LEGACY_ENCODER_SETTING = "v1"  # what a collection record or an export without the field was encoded with


def encoder_setting(name: object) -> EncoderSetting:
    """The setting called `name`; ValueError for a name this server does not know."""
    if not isinstance(name, str) or name not in ENCODER_SETTINGS:
        raise ValueError(f"encoder_setting must be one of {', '.join(ENCODER_SETTINGS)}; got {name!r}")
    return ENCODER_SETTINGS[name]


def resolve_encoder_setting(requested: str | None, default: str) -> str:
    """The setting a new collection gets: `requested`, else `default`; ValueError when unknown."""
    name = default if requested is None else requested
    encoder_setting(name)
    return name
