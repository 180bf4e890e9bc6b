"""One bounded memory probe per (backend, device, precision, execution): the largest batch
that fits, found in one worker instead of by a trial at a time.

Real frameworks have no memory model autotune can trust in advance (the simulator and the
built-in gpt do: :func:`autotune._run.predicted_out_of_memory`). Without one, the
feasibility pre-screen (:mod:`autotune._feasibility`) learns a group's boundary from the
trials that ran out of memory, one trial per step of a bisection, each paying a worker
restart and a warm-up. When a group's first trial runs out, the driver runs one probe
instead: a worker builds the model at a batch between the largest that ran and the one
that ran out, runs one step under the same memory cap, and bisects (in log scale) for at
most :data:`MAX_ATTEMPTS` batches or :data:`MAX_S` seconds. What it finds (the largest batch
that fitted, the smallest that did not) is stored on the study (a study user attribute
per group) and the pre-screen lowers every later proposal of that group to fit.

A probe step is a real step of the trial's own code path (the same factory, precision,
execution and memory cap), so "fits" means what a trial would find, not an estimate; it is
not a measurement and is never recorded as a trial.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.launch import Launcher
    from autotune.study import Study

_logger = logging.getLogger("autotune.study")

#: Study user attribute of a group's probe: this prefix, then the group joined by ``|``.
PROBE_ATTR_PREFIX = "memory_probe:"
#: Batches one probe tries at most, and the seconds it may take (it stops after the batch
#: that is running then).
MAX_ATTEMPTS = 6
MAX_S = 20.0


def group_of(config: TrialConfig) -> tuple[str, ...]:
    """Configurations whose memory differs only by the batch size (a data-parallel
    trial's replicas each hold a share of the batch: a group of their own)."""
    group = (config.backend, config.device, config.precision, config.execution)
    if config.data_parallel > 1:
        return (*group, f"data_parallel={config.data_parallel}")
    return group


def probe_attr(group: tuple[str, ...]) -> str:
    """The study user attribute holding ``group``'s probe."""
    return PROBE_ATTR_PREFIX + "|".join(group)


def middle(low: int, high: int) -> int | None:
    """The batch to try between ``low`` (fits) and ``high`` (does not): their geometric
    middle; ``None`` once they are within 5 % (or adjacent)."""
    if high - low <= 1 or high <= low * 1.05:
        return None
    return min(high - 1, max(low + 1, int(math.sqrt(low * high))))


def bisect(fits: Callable[[int], bool], request: Mapping[str, Any],
           deadline: float) -> dict[str, Any]:
    """Bisect for the largest batch that fits, ``fits(batch)`` running one step.

    ``request``: ``low`` (a batch; ``low_fits``: whether it is known to fit, else it is
    tried first), ``high`` (a batch known not to fit) and ``max_attempts``. Stops at
    ``deadline`` (a ``time.perf_counter()`` value). Returns ``fits`` (the largest batch
    that fitted, ``None`` when none did), ``oom`` (the smallest that did not) and
    ``attempts`` (``[batch, fitted]`` in order)."""
    low, high = int(request["low"]), int(request["high"])
    low_fits = bool(request.get("low_fits"))
    attempts: list[list[Any]] = []
    candidate = middle(low, high) if low_fits else low
    while candidate is not None and len(attempts) < int(request.get("max_attempts",
                                                                    MAX_ATTEMPTS)) \
            and time.perf_counter() < deadline:
        fitted = fits(candidate)
        attempts.append([candidate, fitted])
        if fitted:
            low, low_fits = candidate, True
        else:
            high = candidate
            if not low_fits:
                break  # the smallest batch in doubt does not fit: nothing below is known
        candidate = middle(low, high)
    return {"fits": low if low_fits else None, "oom": high, "attempts": attempts}


def reply(found: dict[str, Any]) -> dict[str, Any]:
    """A worker's reply to a probe: ``infeasible`` (``oom``) when a try ran out, so the
    launcher replaces that worker (an allocation failure may leave a framework
    unusable), with what was found."""
    ran_out = any(not fitted for _, fitted in found["attempts"])
    return {"status": "infeasible" if ran_out else "ok", "failure_kind": "oom",
            "reason": "memory probe", "memory_probe": found}


def probe_after_oom(study: Study, ostudy: Any, launcher: Launcher,
                    config: TrialConfig) -> dict[str, Any] | None:
    """After ``config`` ran out of memory: probe its group once (see the module
    docstring), store what was found on the study and return it; ``None`` when the group
    was probed already or the probe found nothing."""
    import dataclasses

    group = group_of(config)
    attr = probe_attr(group)
    # a data-parallel group is bisected by its trials only: a probe is one process
    if attr in ostudy.user_attrs or config.data_parallel > 1:
        return None
    low, low_fits = _largest_that_ran(study, ostudy, group)
    if low is None:
        spec = study.space.param("batch_size")
        low = int(spec.low) if spec is not None and spec.low is not None else 1
    if low >= config.batch_size:
        return None
    request = {"low": low, "low_fits": low_fits, "high": config.batch_size,
               "max_attempts": MAX_ATTEMPTS, "max_s": MAX_S}
    probe = dataclasses.replace(config, screen=None, memory_probe=request)
    outcome = launcher.run(probe)
    found = (outcome.result or {}).get("memory_probe")
    if not isinstance(found, dict):
        _logger.warning("memory probe of %s found nothing: %s %s", "/".join(group),
                        outcome.status, outcome.reason)
        return None
    record = {"group": list(group), **found}
    ostudy.set_user_attr(attr, record)
    _logger.info("memory probe of %s: batch %s fits, %s does not (%d step(s) tried)",
                 "/".join(group), found.get("fits"), found.get("oom"),
                 len(found.get("attempts") or ()))
    return record


def _largest_that_ran(study: Study, ostudy: Any,
                      group: tuple[str, ...]) -> tuple[int | None, bool]:
    """The largest batch of ``group`` a completed trial ran at (and ``True``), or
    ``(None, False)``."""
    import optuna

    from autotune._run import trial_config

    best: int | None = None
    for t in ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                       optuna.trial.TrialState.PRUNED)):
        if t.user_attrs.get("failure_kind") or "batch_size" not in t.params:
            continue
        if group_of(trial_config(study.space, t.params, seed=study.seed or 0)) != group:
            continue
        best = max(best or 0, int(t.params["batch_size"]))
    return best, best is not None


def stored_probes(study_user_attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The probes stored on a study (its user attributes)."""
    return [v for k, v in study_user_attrs.items()
            if k.startswith(PROBE_ATTR_PREFIX) and isinstance(v, dict)]


__all__ = ["MAX_ATTEMPTS", "MAX_S", "PROBE_ATTR_PREFIX", "bisect", "group_of", "middle",
           "probe_after_oom", "probe_attr", "reply", "stored_probes"]
