"""Multi-objective early stopping: stop a trial whose partial measurement cannot reach the
front.

While a trial's window runs, each objective's 95 % confidence interval is known from the
steps so far (throughput and latency from order statistics of the step times, energy per
sample from the energy read so far). Together they are the trial's confidence *box*. If a
point of the study's current (confirmed) front is at least as good as the box's most
optimistic corner in every objective, and better in one, no amount of further measuring
can put the trial on the front: it is stopped there, recorded as pruned with the front
point that dominated it, and never enters the front. A trial whose box is not dominated
goes on to the full window: the screen is the first part of the window, and a
configuration that survives it is confirmed by the rest (successive halving with two
rungs, without paying warm-up twice).

Objectives the window cannot bound yet (train mode's accuracy before the training budget,
peak memory, generate mode's token latencies) are taken at their most optimistic value:
they never let a trial be pruned, so pruning is never a guess.

This is Optuna's long-open multi-objective pruning (optuna/optuna#3450) done with
confidence boxes instead of intermediate values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.pareto import dominates

#: Objectives a window's step times bound (each from order statistics of the steps).
_LATENCY_QUANTILES = {"latency_p50_ms": 0.50, "latency_p90_ms": 0.90,
                      "latency_p95_ms": 0.95, "latency_p99_ms": 0.99}
#: Steps before the first screening decision (the median's interval needs 6, a p95's
#: lower bound about 10).
SCREEN_MIN_STEPS = 16
#: Extra optimism on energy per sample: the meter's reading covers the window so far,
#: whose power may still settle.
ENERGY_MARGIN = 0.10


@dataclass(frozen=True)
class Screen:
    """What a trial is screened against: the objectives, their directions and the values
    of the study's current front (each point a tuple in objective order)."""

    objectives: tuple[str, ...]
    directions: tuple[str, ...]
    front: tuple[tuple[float, ...], ...]
    min_steps: int = SCREEN_MIN_STEPS

    def to_dict(self) -> dict[str, Any]:
        """JSON form (sent to the worker with the trial)."""
        return {"objectives": list(self.objectives), "directions": list(self.directions),
                "front": [list(p) for p in self.front], "min_steps": self.min_steps}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Screen:
        """Inverse of :meth:`to_dict`."""
        return cls(objectives=tuple(data["objectives"]), directions=tuple(data["directions"]),
                   front=tuple(tuple(float(v) for v in p) for p in data["front"]),
                   min_steps=int(data.get("min_steps", SCREEN_MIN_STEPS)))


def quantile_ci(values: Sequence[float], q: float,
                z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the ``q`` quantile (binomial order
    statistics, normal approximation); a bound beyond the samples is infinite (or 0 below)."""
    arr = np.sort(np.asarray(values, dtype=float))
    n = len(arr)
    half = z * math.sqrt(n * q * (1 - q))
    lo, hi = math.floor(n * q - half) - 1, math.ceil(n * q + half)
    low = float(arr[lo]) if lo >= 0 else 0.0
    high = float(arr[hi]) if hi < n else math.inf
    return low, high


def optimistic_corner(objectives: Sequence[str], directions: Sequence[str],
                      times: Sequence[float], samples_per_step: int,
                      known: Mapping[str, float], energy_j: float | None,
                      samples: int) -> list[float]:
    """The best value each objective could still take, from the window so far.

    ``known``: objectives already measured exactly (infer mode's accuracy, evaluated
    before the window). ``energy_j`` over ``samples``: the energy read so far."""
    median_lo, median_hi = quantile_ci(times, 0.5)
    corner = []
    for name, direction in zip(objectives, directions, strict=True):
        best = math.inf if direction == "maximize" else -math.inf
        if name in known and known[name] is not None:
            best = float(known[name])
        elif name == "throughput_sps" and median_lo > 0:
            best = samples_per_step / median_lo
        elif name in _LATENCY_QUANTILES:
            best = quantile_ci(times, _LATENCY_QUANTILES[name])[0] * 1e3
        elif name == "energy_per_sample_j" and energy_j is not None and samples > 0 and \
                median_hi < math.inf and median_lo > 0:
            # energy per sample scales with the step time at a steady power: its best
            # case is today's figure scaled by the median's lower bound, less a margin
            median = float(np.median(times))
            best = energy_j / samples * (median_lo / median) * (1 - ENERGY_MARGIN)
        elif name == "power_w" and energy_j is not None:
            best = -math.inf  # a window's power is not bounded below by its start
        corner.append(best)
    return corner


def dominated_by(screen: Screen, corner: Sequence[float]) -> tuple[float, ...] | None:
    """The first front point that dominates ``corner`` (``None``: the trial may still
    reach the front)."""
    if any(math.isnan(v) for v in corner):
        return None
    for point in screen.front:
        if dominates(point, corner, screen.directions):
            return point
    return None


def describe(screen: Screen, corner: Sequence[float], point: Sequence[float]) -> str:
    """One line: which front point dominated the trial's best case."""
    pairs = ", ".join(f"{n} {_fmt(c)} vs {_fmt(p)}" for n, c, p in
                      zip(screen.objectives, corner, point, strict=True))
    return f"dominated by a front point even at the best of its 95 % box ({pairs})"


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "unbounded"
    return f"{value:.4g}"


__all__ = ["SCREEN_MIN_STEPS", "Screen", "describe", "dominated_by", "optimistic_corner",
           "quantile_ci"]
