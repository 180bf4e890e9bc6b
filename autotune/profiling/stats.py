"""Statistics over raw step times (pure numpy, no framework)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Minimum samples before a percentile is reported (MLPerf's counts: 64 for p90, 662 for
#: p99). Both leave about 6.5 samples beyond the percentile, so it is an estimate rather
#: than the sample maximum; p95 gets the same margin (6.6 / 0.05 = 132). The median is
#: always reported (its confidence interval says how good it is).
PERCENTILE_MIN_SAMPLES = {50: 1, 90: 64, 95: 132, 99: 662}
#: Spread (IQR/median) above which a measurement is flagged noisy / very noisy.
NOISY_SPREAD = 0.10
VERY_NOISY_SPREAD = 0.25


def percentile(values: Sequence[float], q: int) -> float | None:
    """The q-th percentile (linear interpolation), or ``None`` with too few samples."""
    if len(values) < PERCENTILE_MIN_SAMPLES.get(q, 1) or not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def spread(values: Sequence[float]) -> float:
    """Relative spread IQR/median (torch.utils.benchmark's stopping statistic)."""
    if len(values) < 4:
        return math.inf
    arr = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(arr, [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else math.inf


def median_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval for the median (binomial order statistics).

    Returns ``None`` when there are too few samples for the requested confidence (< 6 at 95 %).
    """
    n = len(values)
    if n < 6:
        return None
    arr = np.sort(np.asarray(values, dtype=float))
    lo, hi = _median_ci_ranks(n, confidence)
    return float(arr[lo]), float(arr[hi])


def _median_ci_ranks(n: int, confidence: float) -> tuple[int, int]:
    """The ranks (0-based, in sorted order) bounding the median's interval: the normal
    approximation of the binomial(n, 1/2) distribution of ranks."""
    z = {0.90: 1.645, 0.95: 1.96, 0.99: 2.576}.get(confidence, 1.96)
    half = z * math.sqrt(n) / 2
    return max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half))


def relative_ci_halfwidth(values: Sequence[float], confidence: float = 0.95) -> float:
    """Half the width of the median's confidence interval over the median (0.02: the
    median is known to +-2 %); ``inf`` with too few samples."""
    n = len(values)
    if n < 6:
        return math.inf
    lo, hi = _median_ci_ranks(n, confidence)
    middle = sorted({(n - 1) // 2, n // 2})  # one rank for an odd count, two for an even
    # a few order statistics by selection: linear, where median_ci's sort is n log n
    picked = np.partition(np.asarray(values, dtype=float), sorted({lo, hi, *middle}))
    median = float(np.mean(picked[middle]))
    return float(picked[hi] - picked[lo]) / (2 * median) if median > 0 else math.inf


def is_stable(values: Sequence[float], window: int = 5, tolerance: float = 0.10) -> bool:
    """Whether the last ``window`` step times agree with the ``window`` before them.

    Used to end warm-up: the first steps on a CPU are several times slower (one-time
    oneDNN/MKL initialisation, caches, page faults).
    """
    if len(values) < 2 * window:
        return False
    last = float(np.median(values[-window:]))
    before = float(np.median(values[-2 * window:-window]))
    return before > 0 and abs(last - before) / before <= tolerance
