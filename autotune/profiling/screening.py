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

**Deferred confirmation.** A survivor whose full window would still take long (a large
batch needs its 132 steps for a p95, a second or more) need not be confirmed at once: most
such configurations are dominated by the time the run ends. With ``defer_after_s`` set, a
survivor whose remaining steps are projected to take ``defer_after_s`` or more stops at the
screen too, recorded ``screened`` (its figures are screen estimates for the sampler, never
a front point); at the end of the run the configurations among them that could still be
on the front are measured again in full (see :mod:`autotune._confirm`). The sampler
learns from every screened trial at once; only the configurations that matter pay for a
full window.
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
#: Slow steps get an earlier first screen: after this many steps, once they have lasted
#: :data:`SCREEN_EARLY_S` (a 40 ms step's 16 steps would be 0.64 s). Order-statistic
#: intervals are honest at any count, only wider: 8 steps bound the median by their
#: extremes (99.6 %), which still stops a configuration the front beats by a margin.
SCREEN_EARLY_STEPS = 8
SCREEN_EARLY_S = 0.1
#: A survivor is deferred (see the module docstring) when its full window would still
#: take at least this long: below it, a later confirmation's second build and warm-up
#: (about 0.1 s on a warm worker) would cost most of what stopping saves.
DEFER_AFTER_S = 0.3
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
    #: defer the confirmation of a survivor whose window would still last this many
    #: seconds (``None``: a survivor is always measured in full at once)
    defer_after_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (sent to the worker with the trial)."""
        return {"objectives": list(self.objectives), "directions": list(self.directions),
                "front": [list(p) for p in self.front], "min_steps": self.min_steps,
                "defer_after_s": self.defer_after_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Screen:
        """Inverse of :meth:`to_dict`."""
        return cls(objectives=tuple(data["objectives"]), directions=tuple(data["directions"]),
                   front=tuple(tuple(float(v) for v in p) for p in data["front"]),
                   min_steps=int(data.get("min_steps", SCREEN_MIN_STEPS)),
                   defer_after_s=data.get("defer_after_s"))


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


def early_rung(screen: Screen, steps: int, elapsed_s: float) -> bool:
    """Whether a window of slow steps is screened now, before ``screen.min_steps``:
    exactly at :data:`SCREEN_EARLY_STEPS` steps that took :data:`SCREEN_EARLY_S` or
    more."""
    return steps == SCREEN_EARLY_STEPS < screen.min_steps and elapsed_s >= SCREEN_EARLY_S


def remaining_steps_s(times: Sequence[float], min_steps: int) -> float:
    """Seconds the window would still need for its minimum step count (132 for a p95),
    at the median pace so far: what deferring a survivor's confirmation saves now.

    ``window_min_s`` is left out on purpose: it is a short floor every measurement pays,
    a confirmation included; what varies between configurations, and what deferral is
    for, is a long step times the steps a percentile needs."""
    return max(0, min_steps - len(times)) * float(np.median(times))


def describe(screen: Screen, corner: Sequence[float], point: Sequence[float]) -> str:
    """One line: which front point dominated the trial's best case."""
    pairs = ", ".join(f"{n} {_fmt(c)} vs {_fmt(p)}" for n, c, p in
                      zip(screen.objectives, corner, point, strict=True))
    return f"dominated by a front point even at the best of its 95 % box ({pairs})"


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "unbounded"
    return f"{value:.4g}"


__all__ = ["DEFER_AFTER_S", "SCREEN_EARLY_S", "SCREEN_EARLY_STEPS", "SCREEN_MIN_STEPS",
           "Screen", "describe", "dominated_by", "early_rung", "optimistic_corner",
           "quantile_ci", "remaining_steps_s"]
