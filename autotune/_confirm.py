"""Deferred confirmation: measure in full the screened configurations that could still
be on the front.

A trial the screen let through but whose full window would have been long is recorded
``screened`` (:mod:`autotune.profiling.screening`): its figures come from the screening
part of its window and only guide the sampler. At the end of a run, each screened
configuration whose optimistic corner (the best its 95 % box allowed) no confirmed front
point dominates is run again, in full, as a new trial carrying ``confirms: N``. The most
promising one goes first (the best screen estimate of the first objective), and the front
is read again after each, so a confirmed point that dominates the others spares them.
Screened trials the confirmed front dominates stay screened: like pruned trials, never on
the front, never recommended.

This is the same re-measurement a drift recheck does (:func:`autotune._run.run_config`
on a stored configuration), recorded as a trial so that the front, ``recommend``,
``verify`` and ``gate`` see a confirmed measurement and the sampler sees its values.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from autotune._liveness import enqueue_once
from autotune.config import TrialConfig

if TYPE_CHECKING:
    from autotune._trial_runner import TrialResult
    from autotune.study import Study

_logger = logging.getLogger("autotune.study")

#: User attribute of a trial that confirms screened trial N (its value: N).
CONFIRMS_ATTR = "confirms"


def confirmations(trials: list[TrialResult]) -> dict[int, int]:
    """Screened trial number -> the trial that confirms it (queued, running or done)."""
    return {t.confirms: t.number for t in trials if t.confirms is not None}


def to_confirm(study: Study, devices: Sequence[str] | None = None) -> list[TrialResult]:
    """The screened trials not confirmed yet whose optimistic corner no point of the
    confirmed front dominates, most promising first (best screen estimate of the first
    objective); with ``devices``, only those of these devices (a pinned worker's)."""
    from autotune._trial_runner import screen_for
    from autotune.profiling.screening import Screen, dominated_by

    trials = study.trials()
    confirmed = confirmations(trials)
    pending = [t for t in trials if t.state == "screened" and t.number not in confirmed
               and (not devices or t.params.get("device", devices[0]) in devices)]
    if not pending:
        return []
    rows = {r.trial_number: r for r in study.storage.measurements(
        study.id, [t.number for t in pending])}
    out = []
    for trial in pending:
        row = rows.get(trial.number)
        if row is None:
            continue
        config = TrialConfig.from_dict(json.loads(row.config_json))
        corner = _corner(json.loads(row.raw_json), study.space.directions)
        screen = screen_for(study, config, defer=False)
        if screen is None or corner is None or \
                dominated_by(Screen.from_dict(screen), corner) is None:
            out.append(trial)
    first = study.space.directions[0]
    out.sort(key=lambda t: (t.values or [0.0])[0], reverse=first == "maximize")
    return out


def _corner(raw: dict[str, Any], directions: Sequence[str]) -> list[float] | None:
    """The stored optimistic corner of a screened measurement; an unbounded objective
    (stored as ``None``) is infinitely good."""
    corner = (raw.get("screened") or {}).get("corner")
    if not isinstance(corner, list) or len(corner) != len(directions):
        return None
    return [float(c) if c is not None else (math.inf if d == "maximize" else -math.inf)
            for c, d in zip(corner, directions, strict=True)]


def confirm_screened(study: Study, ostudy: Any, run_next: Callable[[], TrialResult | None],
                     *, deadline: float | None = None,
                     on_result: Callable[[TrialResult], None] | None = None,
                     devices: Sequence[str] | None = None) -> list[TrialResult]:
    """Confirm, one at a time, the screened trials that could still be on the front (see
    the module docstring); ``run_next`` asks for the next queued trial and runs it.
    Stops at ``deadline`` (a ``time.monotonic()`` value): what is left waits for the next
    run, which confirms it. ``devices``: this worker's (it confirms only trials of its
    devices; another worker confirms the rest)."""
    results: list[TrialResult] = []
    tried: set[int] = set()
    while True:
        candidates = [t for t in to_confirm(study, devices) if t.number not in tried]
        if not candidates:
            break
        if deadline is not None and time.monotonic() >= deadline:
            _logger.warning("%d screened configuration(s) not confirmed before the timeout; "
                            "the next run of study %r confirms them", len(candidates),
                            study.name)
            break
        target = candidates[0]
        tried.add(target.number)
        enqueue_once(ostudy, dict(target.params), {CONFIRMS_ATTR: target.number},
                     CONFIRMS_ATTR, target.number, budget_s=study.storage.retry_s)
        # the queue may hold an older trial (a crash's retry) ahead of this one: run
        # until this confirmation has run (each ask takes the oldest queued trial)
        for _ in range(_queued(ostudy) + 1):
            if not _queued(ostudy):
                break  # another worker took it: with an empty queue, ask would sample anew
            result = run_next()
            if result is None:
                continue
            results.append(result)
            if on_result is not None:
                on_result(result)
            if result.confirms == target.number:
                break
    return results


def _queued(ostudy: Any) -> int:
    """How many trials wait in the queue."""
    import optuna

    return len(ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


__all__ = ["CONFIRMS_ATTR", "confirm_screened", "confirmations", "to_confirm"]
