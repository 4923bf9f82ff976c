"""Encode cost of measurement 7's image descriptors, as ratios to today's average pooling.

On a shared machine one option timed after another measures the load as much as the option, so
the options run interleaved: every round times each option once on the same images, in an order
that rotates from round to round, and each option's figure is the median over the rounds of its
time divided by average pooling's in the same round. Decoding is outside the timing; resizing
to each scale and the model are inside.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

Encode = Callable[[list[np.ndarray]], object]  # descriptors of a list of RGB images


def interleaved_cost(options: dict[str, Encode], images: list[np.ndarray], rounds: int,
                     baseline: str) -> dict[str, dict[str, float]]:
    """Per option: `ms_per_image` (median over the rounds) and `x_baseline` (median of the
    per-round ratios to `baseline`'s time)."""
    names = list(options)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            options[name](images)
            seconds[name].append(time.perf_counter() - t0)
    base = np.asarray(seconds[baseline])
    return {n: {"ms_per_image": float(1000 * np.median(seconds[n]) / len(images)),
                "x_baseline": float(np.median(np.asarray(seconds[n]) / base))} for n in names}

