"""Intervals for shares and paired differences: the one place benchmarks and evaluations get them."""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson(k: int, n: int, digits: int = 3) -> tuple[float, float]:
    """Wilson 95% interval of the share k/n ((0, 0) when n is 0), rounded to `digits` places (more for shares of a
    fraction of a percent)."""
    if n == 0:
        return (0.0, 0.0)
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(max(0.0, centre - half), digits), round(min(1.0, centre + half), digits))


def bootstrap_mean(diff: Sequence[float], resamples: int = 10_000) -> tuple[float, float, float]:
    """The mean of paired differences and its percentile-bootstrap 95% interval over the pairs (seeded: the
    same differences always give the same interval)."""
    import numpy as np

    values = np.asarray(diff, dtype=float)
    picks = np.random.default_rng(0).integers(0, values.size, size=(resamples, values.size))
    low, high = np.percentile(values[picks].mean(axis=1), [2.5, 97.5])
    return float(values.mean()), float(low), float(high)
