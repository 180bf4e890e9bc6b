"""Drift checks: re-measure front configurations later in a study and compare.

Measured on the development VM, some configurations switch between a fast and a slow
state by up to 2.5x across time, within one process too
(``../shared/research/hand_written_tuner.md``). A single short measurement cannot see
that; measuring the same configuration again, minutes and many trials later, can. A front
point whose re-measurement disagrees with its trial is flagged ``drifting`` rather than
crowned: the summary's leaders skip it while a steady alternative exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: A re-measurement this far from the original (either way) and outside its confidence
#: interval is drift. 10 % is the "noisy" spread: closer than that, two short windows on
#: this kind of machine are not distinguishable.
DRIFT_THRESHOLD = 0.10
#: Re-check front points after every this many trials of a run (0 disables)...
RECHECK_EVERY = 10
#: ...and no sooner than this many seconds after the run started or the last re-check:
#: the drift seen here is a change of the machine's state over minutes; with trials of
#: a fraction of a second, ten trials later is the same state (and re-checks cost a
#: fifth of a short study's wall time).
RECHECK_MIN_INTERVAL_S = 30.0
#: Front points re-measured per check.
RECHECK_POINTS = 2

STABILITY_ORDER = ("drifting", "inconclusive", "stable", "unchecked")


@dataclass(frozen=True)
class Verdict:
    """How a re-measurement compares with the trial it repeats."""

    verdict: str  # stable | drifting | inconclusive
    ratio: float | None  # new throughput / original throughput
    reason: str


def compare(original: Mapping[str, Any], new: Mapping[str, Any]) -> Verdict:
    """Compare two measurement summaries (``Measurement.summary()`` dicts) of one config.

    ``drifting`` when the new median throughput differs by more than
    :data:`DRIFT_THRESHOLD` and lies outside the original's 95 % confidence interval;
    ``inconclusive`` when the re-measurement itself was disturbed (another process on its
    cores) or has no throughput.
    """
    old_t, new_t = original.get("throughput_sps"), new.get("throughput_sps")
    if not old_t or not new_t:
        return Verdict("inconclusive", None, "no throughput to compare")
    ratio = float(new_t) / float(old_t)
    if new.get("contended") or original.get("contended"):
        which = "re-measurement's" if new.get("contended") else "original trial's"
        return Verdict("inconclusive", ratio, f"another process used the {which} cores")
    ci = original.get("throughput_ci_sps")
    outside = ci is None or not (ci[0] <= new_t <= ci[1])
    if abs(ratio - 1.0) > DRIFT_THRESHOLD and outside:
        return Verdict("drifting", ratio,
                       f"re-measured at {ratio:.2f}x the trial's throughput "
                       f"({new_t:,.0f} vs {old_t:,.0f} samples/s)")
    return Verdict("stable", ratio, f"re-measured at {ratio:.2f}x the trial's throughput")


def stability(verdicts: Sequence[str]) -> str:
    """A point's standing from all its rechecks: once drifting, always drifting (a
    configuration seen 2.5x off cannot be trusted on one steady re-run)."""
    if not verdicts:
        return "unchecked"
    if "drifting" in verdicts:
        return "drifting"
    return "stable" if "stable" in verdicts else "inconclusive"


def pick_for_recheck(candidates: Sequence[int], checked_counts: Mapping[int, int],
                     k: int = RECHECK_POINTS) -> list[int]:
    """Which front points to re-measure: the least re-checked first, and among those the
    order given (best first)."""
    order = {n: i for i, n in enumerate(candidates)}
    ranked = sorted(candidates, key=lambda n: (checked_counts.get(n, 0), order[n]))
    return ranked[:k]
