"""Pareto fronts and their hypervolume as pure functions (no storage, no plotting)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import numpy as np

from autotune.objectives import worst_value

K = TypeVar("K", bound=Hashable)


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "minimize":
            x, y = -x, -y
        if x < y:
            return False
        if x > y:
            better = True
    return better


def pareto_front(points: Sequence[tuple[K, Sequence[float]]],
                 directions: Sequence[str]) -> list[K]:
    """Keys of the non-dominated points, in input order.

    Points with equal values are all kept (neither dominates the other). Points with a NaN
    value are never on the front. Infinite values are ordinary comparisons (an infinitely
    good value dominates, equal infinities tie); :func:`hypervolume` says what they add.
    """
    valid = [(k, v) for k, v in points if not any(math.isnan(x) for x in v)]
    return [k for k, v in valid
            if not any(dominates(w, v, directions) for _, w in valid)]


# -- hypervolume ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrontSnapshot:
    """The Pareto front as it stood right after one completed trial.

    ``front``: trial numbers on the front then. ``hypervolume``: what the front dominates
    up to ``reference`` (objective name -> value, see :func:`reference_point`); ``None``
    when undefined (a front value is infinite, so the volume is unbounded).
    ``energy_sources``: where the front's energy figures came from (``estimated``,
    ``rapl``, ``nvml``...); more than one means the hypervolume spans energy figures that
    are not comparable with each other (the front itself compares energy per source).
    """

    trial_number: int
    front: list[int]
    hypervolume: float | None
    reference: dict[str, float]
    energy_sources: list[str]
    created_at: datetime


def reference_point(objective_names: Sequence[str], *, trial_seconds: float,
                    rated_power_w: float, memory_total_mb: float) -> list[float]:
    """The hypervolume reference point of a study: each objective's physical worst case.

    A hypervolume is only comparable across trials, runs and studies if its reference point
    is fixed in advance, not taken from the points seen so far (the usual "worst observed
    value plus a margin" moves with every trial). So each objective gets the worst value a
    trial can physically report, :func:`autotune.objectives.worst_value`:

    - ``throughput_sps`` and ``accuracy``: 0 (nothing processed, nothing right);
    - ``latency_p*_ms``: the trial budget (``trial_seconds``), since no step that finished
      inside the budget can have taken longer;
    - ``power_w``: the device's rated power, the most it can draw;
    - ``energy_per_sample_j``: rated power x the whole budget spent on one sample;
    - ``peak_memory_mb``: the machine's total memory.

    These are also the values an infeasible trial is recorded with, so a configuration
    that failed sits exactly on the reference point and adds no volume.
    """
    return [worst_value(m, trial_seconds=trial_seconds, rated_power_w=rated_power_w,
                        memory_total_mb=memory_total_mb) for m in objective_names]


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str],
                reference: Sequence[float]) -> float:
    """Exact volume of the objective space the ``points`` dominate, bounded by ``reference``.

    Maximised objectives are negated, so everything is minimised; a point then dominates
    the box between itself and ``reference``, and the result is the volume of the union of
    those boxes (the S-metric). Rules for awkward points:

    - a point not strictly better than ``reference`` in every objective adds nothing
      (its box is empty), including one with an infinitely bad value;
    - a point with a NaN value is skipped (it says nothing, as on the front);
    - a point strictly better than ``reference`` everywhere with an infinitely good value
      dominates an unbounded region: the result is ``math.inf``;
    - duplicates and dominated points are harmless (the union does not change).

    The algorithm is "hypervolume by slicing objectives" (HSO, While et al. 2006): sort by
    the last objective, and sum, over the slabs between consecutive values, the slab's
    thickness times the (d-1)-dimensional volume of the points below it; two objectives are
    a sorted sweep. Cost O(n^(d-1) log n) for n points and d objectives: milliseconds for
    fronts of a hundred points and up to four objectives.

    Raises ``ValueError`` for mismatched lengths, an unknown direction or a non-finite
    reference.
    """
    d = len(directions)
    if d == 0 or len(reference) != d:
        raise ValueError(f"{len(reference)} reference values for {d} directions")
    unknown = [x for x in directions if x not in ("maximize", "minimize")]
    if unknown:
        raise ValueError(f"unknown direction {unknown[0]!r}; use 'maximize' or 'minimize'")
    if not all(math.isfinite(r) for r in reference):
        raise ValueError(f"reference point {list(reference)} must be finite")
    sign = np.array([-1.0 if x == "maximize" else 1.0 for x in directions])
    ref = np.asarray(reference, dtype=float) * sign
    if not points:
        return 0.0
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != d:
        raise ValueError(f"points must each have {d} values, got shape {arr.shape}")
    arr = arr * sign
    arr = arr[~np.isnan(arr).any(axis=1)]
    # NaN compares False, so this keeps only points strictly inside the reference box.
    arr = arr[(arr < ref).all(axis=1)]
    if arr.size == 0:
        return 0.0
    if np.isneginf(arr).any():
        return math.inf
    return float(_hso(arr, ref))


def _hso(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated by ``points`` (minimised, all finite and strictly below ``ref``)."""
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    if points.shape[1] == 2:
        # Sweep along the first objective: between consecutive x values, the height of the
        # union is ref_y minus the best y of the points to the left.
        order = np.argsort(points[:, 0], kind="stable")
        xs = points[order, 0]
        best_y = np.minimum.accumulate(points[order, 1])
        widths = np.diff(np.append(xs, ref[0]))
        return float(np.sum(widths * (ref[1] - best_y)))
    order = np.argsort(points[:, -1], kind="stable")
    points = points[order]
    cuts = np.append(points[:, -1], ref[-1])
    volume = 0.0
    for i in range(len(points)):
        thickness = cuts[i + 1] - cuts[i]
        if thickness > 0:  # equal last values: one slab, counted at the last of them
            volume += thickness * _hso(points[: i + 1, :-1], ref[:-1])
    return volume
