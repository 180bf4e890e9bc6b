"""Start-up coverage: every arm of the space measured once before the model-based search.

An *arm* is one combination of the space's categorical knobs (backend x device x precision
x ...): the choices a performance engineer compares first. Optuna's TPE starts with a few
independent random draws, so with 9 runnable arms it can go 20 trials without measuring
the one that holds the front (on the simulated fleet: ``sim:gpu80`` at ``int8``), and its
model cannot value an arm it never saw. So the first trials of a study visit every arm
that can run, once, in an order drawn from the study's seed; the numeric knobs come from
the study's sampler, as they would have. Then the sampler takes over with every arm in its
history.

In inference, where the batch does not change what the model computes, an arm's first
trial runs at the largest batch that fits (the pre-screen lowers it): that is the arm's
throughput ceiling, the figure its arms are compared on, and the end of its front that
throughput and energy per sample reward. Not when a constraint bounds a metric that grows
with the batch (a latency, peak memory): the largest batch would break it. In training
the batch changes the number of optimizer steps, hence the model's quality, so it is
left to the sampler.

Measured (``benchmarks/sampler_benchmark.py``, BENCHMARKS.md section 12): trials to 95 %
of the true hypervolume, median of 20 seeds, fell from 11 to 5 on *fleet-serve* and from
13 to 8 on *fleet-train* (the issue's seeds 0-9: 12.5 to 4.5 and 10.5 to 10; held-out
seeds 20-39: 7.5 to 5.5 and 13 to 8).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.space import SearchSpace

#: The trial attribute that marks a start-up trial, its value the arm it claims (written
#: while the trial is asked for, before its parameters are: another worker reading the
#: study then sees the arm taken).
START_UP_ATTR = "start_up"
#: At most this many arms are covered; a space with more covers only its hardware knobs,
#: and one with more hardware arms than this is left to the sampler (covering a random
#: part of the arms is what a random start-up does anyway).
MAX_ARMS = 16
#: The knobs that choose where and in what number format a model runs.
HARDWARE_KNOBS = ("backend", "device", "precision")
#: Objectives that a larger batch improves (the per-sample cost is amortised).
BATCH_REWARDED = frozenset({"throughput_sps", "tokens_per_s", "energy_per_sample_j",
                            "pct_of_peak"})
#: Metrics that a larger batch worsens: a constraint on one rules the largest batch out.
BATCH_PENALISED = frozenset({"latency_p50_ms", "latency_p90_ms", "latency_p95_ms",
                             "latency_p99_ms", "peak_memory_mb", "power_w"})


def arm_knobs(space: SearchSpace) -> tuple[str, ...]:
    """The knobs whose combinations are covered: every searched categorical knob but the
    batch (a size, not a choice of kind), else the hardware ones, else none (too many)."""
    knobs = [p.name for p in space.params
             if p.kind == "categorical" and len(p.choices) > 1 and p.name != "batch_size"]
    for names in (knobs, [n for n in knobs if n in HARDWARE_KNOBS]):
        if names and math.prod(len(c) for c in _choices(space, names)) <= MAX_ARMS:
            return tuple(names)
    return ()


def _choices(space: SearchSpace, names: Sequence[str]) -> list[tuple[Any, ...]]:
    """The choices of each categorical knob ``names``."""
    specs = [space.param(name) for name in names]
    return [spec.choices for spec in specs if spec is not None]


def arms(space: SearchSpace, seed: int) -> list[dict[str, Any]]:
    """Every combination of :func:`arm_knobs`, in an order drawn from ``seed`` (the same
    study seed gives the same order)."""
    names = arm_knobs(space)
    if not names:
        return []
    combos = [dict(zip(names, values, strict=True))
              for values in itertools.product(*_choices(space, names))]
    random.Random(seed).shuffle(combos)
    return combos


def starts_at_largest_batch(space: SearchSpace) -> bool:
    """Whether an arm's first trial runs at the largest batch that fits (see the module's
    docstring for why only in inference, and not under a latency or memory constraint)."""
    spec = space.param("batch_size")
    if space.mode != "infer" or spec is None or spec.kind == "fixed":
        return False
    if not BATCH_REWARDED.intersection(space.objective_names):
        return False
    return not any(c.metric in BATCH_PENALISED for c in space.constraints)


def arm_key(params: Mapping[str, Any], names: tuple[str, ...]) -> tuple[Any, ...]:
    """The arm ``params`` belong to."""
    return tuple(params.get(name) for name in names)


class Coverage:
    """Which arm the next start-up trial measures, for one study (see the module)."""

    def __init__(self, space: SearchSpace, seed: int) -> None:
        self.space = space
        self.names = arm_knobs(space)
        self.arms = arms(space, seed)
        self.largest_batch = starts_at_largest_batch(space)
        #: arms found unable to run (the pre-checks refuse them): not tried again
        self.dead: set[tuple[Any, ...]] = set()

    def pending(self, study: Any, trial_number: int,
                fixed: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The arms no trial of ``study`` (but ``trial_number``) has measured, is
        measuring or has claimed, that agree with the ``fixed`` knobs (a worker pinned to
        a device, a trial queued with some knobs given), in order. An arm whose trials
        all ran out of memory is pending again: its first batch was too large, and the
        pre-screen now knows a smaller one. Empty once the start-up is over: the study
        had more than twice as many trials as arms before this one."""
        # the trial's number counts every trial before it: past the start-up, nothing
        # is read (the driver's work per proposal stays flat as the study grows)
        if not self.arms or trial_number > 2 * len(self.arms):
            return []
        done = set(self.dead)
        for t in study.get_trials(deepcopy=False):
            if t.number == trial_number or t.user_attrs.get("failure_kind") == "oom":
                continue
            claim = t.user_attrs.get(START_UP_ATTR)
            done.add(arm_key(claim if isinstance(claim, dict) else t.params, self.names))
        return [arm for arm in self.arms
                if arm_key(arm, self.names) not in done
                and all(arm.get(k, v) == v for k, v in fixed.items())]

    def first_batch(self, params: Mapping[str, Any], distribution: Any) -> Any:
        """The batch an arm's first trial asks for: the largest the space's
        ``distribution`` of it allows (:func:`starts_at_largest_batch`; the pre-screen
        lowers it to what fits), else the sampler's; a multiple of the trial's
        ``data_parallel`` replicas (the global batch splits evenly)."""
        batch = params.get("batch_size")
        if self.largest_batch and distribution is not None:
            # Optuna's distribution: its high is already on the range's step
            batch = max(distribution.choices) if hasattr(distribution, "choices") \
                else int(distribution.high)
        replicas = int(params.get("data_parallel") or 1)
        if isinstance(batch, int) and replicas > 1 and batch >= replicas:
            batch -= batch % replicas
        return batch


__all__ = ["BATCH_PENALISED", "BATCH_REWARDED", "HARDWARE_KNOBS", "MAX_ARMS", "START_UP_ATTR",
           "Coverage",
           "arm_key", "arm_knobs", "arms", "starts_at_largest_batch"]
