"""Tests of item labels and the shard an item belongs to."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from shared.index.labels import label_for, shard_for


def test_label_is_blake2b_63_bits_and_stable_across_processes():
    expected = int.from_bytes(hashlib.blake2b(b"abc", digest_size=8).digest(), "big") & ((1 << 63) - 1)
    assert label_for("abc") == expected == 6393727014797677913
    assert 0 <= label_for("é" * 100) < 2**63
    code = "from shared.index.labels import label_for; print(label_for('abc'), label_for('x/y'))"
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout
               for seed in ("1", "2")}
    assert outputs == {f"{label_for('abc')} {label_for('x/y')}\n"}


def test_shard_for_is_label_mod_shards():
    for item_id in ("a", "b", "some/long/id", ""):
        assert shard_for(item_id, 7) == label_for(item_id) % 7
    assert {shard_for(f"id{j}", 4) for j in range(200)} == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        shard_for("a", 0)
