"""The measured loop of one trial, run inside the worker process.

warm-up (until step times are stable; never counted) -> measured window (each step timed
between synchronised clock reads; extended until the median step time's confidence
interval is narrow enough or the budget ends;
measured again once if another process used our cores) -> quality. In train mode accuracy
is taken after exactly ``train_epochs`` epochs, wherever that falls; the evaluation is
excluded from the step times and from the energy window.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from autotune.profiling.contention import ContentionMonitor, ContentionReading
from autotune.profiling.contention import combine as combine_loads
from autotune.profiling.power import EnergyReading, PowerMeter, combine
from autotune.profiling.screening import (
    Screen,
    describe,
    dominated_by,
    early_rung,
    optimistic_corner,
    remaining_steps_s,
)
from autotune.profiling.stats import PERCENTILE_MIN_SAMPLES, is_stable, relative_ci_halfwidth

if TYPE_CHECKING:
    from autotune.backends import Backend
    from autotune.config import Budget, TrialConfig

#: How often (in steps) the window checks its confidence interval; the check itself is
#: not timed (a selection of three order statistics, linear in the steps so far).
CI_CHECK_EVERY = 8
#: A window's stop reasons that end it for every replica as soon as one replica meets them
#: (the others are in the same window: what ends one ends the synchronised window)
_HARD_STOPS = ("deadline", "window_max_s")


class Agreement(Protocol):
    """How the replicas of a data-parallel trial decide together
    (:mod:`autotune.launch._replicas`): ``all(vote)`` returns every replica's vote, in rank
    order, to every replica, so each takes the same decision at the same step (a replica
    that stopped alone would leave the others waiting in their next all-reduce)."""

    def all(self, vote: Any) -> list[Any]: ...


class Solo:
    """The agreement of a trial with one replica: its own vote."""

    def all(self, vote: Any) -> list[Any]:
        return [vote]


SOLO = Solo()


def _agreed_stop(votes: Sequence[str | None]) -> str | None:
    """The window's stop reason from every replica's: a hard stop (deadline, longest
    window) of any replica ends it; a met confidence interval needs every replica's."""
    for reason in _HARD_STOPS:
        if reason in votes:
            return reason
    if votes and all(v == "ci_met" for v in votes):
        return "ci_met"
    return None


def _clock(backend: Backend) -> Any:
    """The clock steps are timed with: a simulator's virtual clock, else the real
    ``time.perf_counter`` (looked up at each read)."""
    if getattr(backend, "simulated", False):  # duck-typed test doubles have no flag
        return backend.clock
    return lambda: time.perf_counter()


class _Trainer:
    """Counts optimizer steps and evaluates once when the training budget is reached."""

    def __init__(self, backend: Backend, budget_steps: int | None) -> None:
        self.backend = backend
        self.budget_steps = budget_steps
        self.steps = 0
        #: the model's quality (the spec's ``quality``; ``None`` when it has none)
        self.accuracy: float | None = None
        #: whether the quality was measured (a model without a quality is never "due")
        self.evaluated = False
        self.eval_s = 0.0

    def count(self) -> bool:
        """Count a step (and let the backend do its untimed between-step work). True when
        the training budget was just reached and evaluation is due."""
        self.steps += 1
        self.backend.between_steps()
        return self.budget_steps is not None and self.steps == self.budget_steps

    def evaluate(self) -> None:
        """Held-out accuracy now, timed apart."""
        clock = _clock(self.backend)
        t0 = clock()
        self.accuracy = self.backend.evaluate()
        self.evaluated = True
        self.eval_s = clock() - t0

    def after_step(self) -> None:
        """Count a step outside the measured window and evaluate if due."""
        if self.count():
            self.evaluate()


@dataclass
class _Window:
    """One measured window: step times, samples, energy and the contention seen."""

    times: list[float]
    samples: int
    window_s: float
    excluded_s: float
    stop_reason: str
    energy: EnergyReading
    contention: ContentionReading | None
    warnings: list[str]
    #: generate mode: per measured step, each token's time since the step began
    generations: list[list[float]]
    #: set when the screen stopped the window: why, and the front point that dominated
    pruned: dict[str, Any] | None = None
    #: set when a survivor's confirmation was deferred: its optimistic corner, its steps
    #: and the window it did not spend now
    screened: dict[str, Any] | None = None
    #: per step, the seconds a gradient all-reduce was in flight (data parallel; empty
    #: where the backend does not measure it)
    comm: list[float] = field(default_factory=list)


def _measure_window(backend: Backend, budget: Budget, trainer: _Trainer, meter: PowerMeter,
                    monitor: ContentionMonitor | None, deadline: float,
                    min_steps: int | None = None, screen: Screen | None = None,
                    samples_per_step: int = 1, sync: Agreement = SOLO) -> _Window:
    """Time synchronised steps until the median's confidence interval is within
    ``budget.target_ci``, ``window_max_s`` or the deadline; with a ``screen``, stop
    early once the trial's confidence box is dominated by the screen's front (checked
    after ``screen.min_steps`` steps and each time the step count doubles), or, when the
    screen defers confirmations, once the steps the window still needs would take
    ``screen.defer_after_s`` or more.

    An evaluation falling inside the window (train mode's budget reached) is cut out of
    the window's time, energy and contention reading. With several replicas (``sync``)
    each step's stop decision is taken together, after the step's clock reads.
    """
    times: list[float] = []
    comm: list[float] = []
    generations: list[list[float]] = []
    samples = 0
    readings: list[EnergyReading] = []
    loads: list[ContentionReading] = []
    warnings: list[str] = []
    stop_reason = "deadline"
    clock = _clock(backend)
    window_start = clock()
    excluded_s = 0.0

    def begin() -> None:
        if monitor is not None:
            monitor.begin()
        meter.begin()

    def end() -> None:
        readings.append(meter.end())
        if monitor is not None:
            loads.append(monitor.end())

    begin()
    # Replicas agree every CI_CHECK_EVERY steps (a loopback round trip each, ~0.3 ms here:
    # after every step it would stretch a short step's window by a third); one replica
    # decides after every step, as it always has
    horizon = 1 if isinstance(sync, Solo) else CI_CHECK_EVERY
    next_screen = screen.min_steps if screen is not None else None
    pruned: dict[str, Any] | None = None
    screened: dict[str, Any] | None = None
    while True:
        backend.synchronize()
        s = clock()
        samples += backend.step()
        backend.synchronize()
        times.append(clock() - s)
        # duck-typed test doubles have no hook
        step_comm = getattr(backend, "last_step_comm_s", lambda: None)()
        if step_comm is not None:
            comm.append(step_comm)
        generation = getattr(backend, "last_generation", None)
        if generation is not None:
            generations.append(generation)
        if trainer.count():  # evaluation inside the window: cut it out
            end()
            trainer.evaluate()
            excluded_s += trainer.eval_s
            begin()
        now = clock()
        elapsed = now - window_start - excluded_s
        vote: str | None = None
        # the next step (replicas: the steps to their next agreement) would end past
        # the deadline
        if now + horizon * times[-1] >= deadline:
            vote = "deadline"
        elif next_screen is not None and screen is not None and (
                len(times) >= next_screen or early_rung(screen, len(times), elapsed)):
            # rungs at min_steps, 2x, 4x...: a few checks per trial (slow steps: one more
            # before them, at SCREEN_EARLY_STEPS)
            next_screen = screen.min_steps if len(times) < screen.min_steps else \
                next_screen * 2
            if "energy_per_sample_j" in screen.objectives:
                end()  # the energy so far; the window goes on in a new segment
                begin()
            corner = _corner(screen, times, samples_per_step, trainer, readings, samples)
            pruned = _pruning(screen, corner, len(times))
            if pruned is not None:
                stop_reason = "pruned"
                break
            if screen.defer_after_s is not None:
                left = remaining_steps_s(times, min_steps or budget.window_min_steps)
                if left >= screen.defer_after_s:
                    screened = {"corner": [c if math.isfinite(c) else None for c in corner],
                                "steps": len(times), "deferred_s": left}
                    stop_reason = "screened"
                    break
        long_enough = elapsed >= budget.window_min_s and len(times) >= (
            min_steps or budget.window_min_steps)
        if vote is None and long_enough and len(times) % CI_CHECK_EVERY == 0 and \
                relative_ci_halfwidth(times) <= budget.target_ci:
            vote = "ci_met"
        elif vote is None and long_enough and elapsed >= budget.window_max_s:
            vote = "window_max_s"
        if horizon > 1 and len(times) % horizon:
            continue  # replicas decide together every `horizon` steps only
        agreed = _agreed_stop(sync.all(vote))
        if agreed is not None:
            stop_reason = agreed
            if agreed == "deadline":
                warnings.append("the trial budget ended the measured window")
            break
    window_end = clock()  # before the meters' reads (npu-smi's may block)
    end()
    return _Window(
        times=times, samples=samples,
        window_s=window_end - window_start - excluded_s, excluded_s=excluded_s,
        stop_reason=stop_reason, energy=combine(readings),
        contention=combine_loads(loads) if loads else None, warnings=warnings,
        generations=generations, pruned=pruned, screened=screened, comm=comm,
    )


def _corner(screen: Screen, times: list[float], samples_per_step: int, trainer: _Trainer,
            readings: list[EnergyReading], samples: int) -> list[float]:
    """The best value each objective could still take, from the window so far."""
    known = {}
    if trainer.evaluated and trainer.accuracy is not None:  # infer mode: measured already
        known = {"accuracy": trainer.accuracy, "quality": trainer.accuracy}
    energy = combine(readings).energy_j if readings else None
    return optimistic_corner(screen.objectives, screen.directions, times,
                             samples_per_step, known, energy, samples)


def _pruning(screen: Screen, corner: list[float], steps: int) -> dict[str, Any] | None:
    """The pruning record when ``corner`` is dominated by the screen's front."""
    point = dominated_by(screen, corner)
    if point is None:
        return None
    return {"reason": describe(screen, corner, point), "dominated_by": list(point),
            "corner": [c if math.isfinite(c) else None for c in corner], "steps": steps}


def run_profile(backend: Backend, config: TrialConfig, meter: PowerMeter,
                deadline: float, monitor: ContentionMonitor | None = None,
                sync: Agreement = SOLO) -> dict[str, Any]:
    """Warm up, measure and evaluate an already set-up ``backend``.

    ``deadline`` is a ``backend.clock()`` value (``time.perf_counter()`` unless
    simulated) by which the loop must have returned;
    no step is started that would, at the last step's pace, end past it. With a
    ``monitor``, a window during which another process used this process's cores is
    measured again once if the deadline allows, else flagged. A replica of a
    data-parallel trial passes its ``sync``: warm-up's end, the window's end, a
    re-measurement and the end of training are decided by every replica together, so
    they all run the same steps in the same window.
    Returns the raw result (step times in seconds, energy reading, accuracy...).
    """
    budget = config.budget
    clock = _clock(backend)
    warnings: list[str] = []
    if config.mode == "train":
        trainer = _Trainer(backend, budget.train_epochs * backend.steps_per_epoch)
    else:
        trainer = _Trainer(backend, None)
        trainer.evaluate()

    # The first step is timed apart: in graph/xla modes it includes compilation, and on
    # any backend one-time kernel initialisation; it must not cut warm-up short.
    backend.synchronize()
    s = clock()
    backend.step()
    backend.synchronize()
    first_step_s = clock() - s
    trainer.after_step()

    # Warm-up: excluded from every statistic, but it trains (counts towards the budget).
    warmup: list[float] = []
    w_start = clock()
    while True:
        backend.synchronize()
        s = clock()
        backend.step()
        backend.synchronize()
        warmup.append(clock() - s)
        trainer.after_step()
        now = clock()
        vote: str | None = None
        if now - w_start >= budget.warmup_min_s and is_stable(warmup):
            vote = "stable"
        elif now - w_start >= budget.warmup_max_s:
            vote = "longest"
        # the next step, and at least one measured step, would end past the deadline
        elif now + 2 * warmup[-1] >= deadline:
            vote = "deadline"
        votes = sync.all(vote)
        if "deadline" in votes:
            warnings.append("the trial budget ended the warm-up before it was stable")
            break
        if "longest" in votes:
            warnings.append(f"warm-up did not stabilise within {budget.warmup_max_s:g} s")
            break
        if all(v == "stable" for v in votes):
            break
    warmup_s = clock() - w_start

    # Measured window; measured again (once) if another process used our cores meanwhile.
    # In generate mode it lasts (deadline permitting) until enough requests were measured
    # for the p95 of TTFT and TPOT, the percentiles latency SLOs are written on.
    min_steps = None
    if config.mode == "generate":
        min_steps = max(budget.window_min_steps,
                        -(-PERCENTILE_MIN_SAMPLES[95] // max(1, config.batch_size)))
    screen = Screen.from_dict(config.screen) if config.screen else None
    # a screen stops one replica's window without a vote: replicas are never screened
    assert screen is None or isinstance(sync, Solo), "a data-parallel trial is not screened"
    window = _measure_window(backend, budget, trainer, meter, monitor, deadline, min_steps,
                             screen, config.batch_size, sync)
    remeasured = 0
    # a window cut short by the screen is measured again too: a prune decided while
    # another process held our cores is a verdict on that process, not on this trial
    # (replicas: again for all when any was contended and every one has the time)
    contended = window.contention is not None and window.contention.contended
    votes = sync.all([contended, clock() + window.window_s + window.excluded_s < deadline])
    if any(c for c, _ in votes) and all(t for _, t in votes):
        reason = window.contention.reason if contended and window.contention else \
            "another replica's cores were used by another process"
        warnings.append(f"re-measured: {reason}")
        remeasured = 1
        window = _measure_window(backend, budget, trainer, meter, monitor, deadline,
                                 min_steps, screen, config.batch_size, sync)
    if window.contention is not None and window.contention.contended:
        warnings.append(window.contention.reason)
    warnings.extend(window.warnings)
    times = window.times

    # Finish the training budget (untimed) if the window ended before it (a pruned
    # trial is not finished: it will not be on the front whatever its accuracy).
    if trainer.budget_steps is not None and window.pruned is None and \
            window.screened is None:
        last = times[-1]
        while not trainer.evaluated and all(sync.all(clock() + last < deadline)):
            s = clock()
            backend.step()
            trainer.after_step()
            last = clock() - s
        if not trainer.evaluated:
            warnings.append(
                f"training budget of {trainer.budget_steps} steps not reached within the "
                f"trial budget ({trainer.steps} steps done); accuracy not measured"
            )

    return {
        "step_times_s": times,
        "generations": window.generations,
        "warmup_step_times_s": warmup,
        "samples": window.samples,
        "window_s": window.window_s,
        "warmup_s": warmup_s,
        "first_step_s": first_step_s,
        "eval_s": trainer.eval_s,
        "stop_reason": window.stop_reason,
        "remeasured": remeasured,
        "contention": None if window.contention is None else asdict(window.contention),
        "train_steps": trainer.steps,
        "budget_steps": trainer.budget_steps,
        "accuracy": trainer.accuracy,
        "energy": asdict(window.energy),
        "warnings": warnings,
        "pruned": window.pruned,
        "screened": window.screened,
        "step_comm_s": window.comm,
    }
