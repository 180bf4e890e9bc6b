"""The trial runner of a study: the ask -> run -> record -> tell loop and drift rechecks.

:class:`autotune.study.Study` is the public facade; :meth:`Study.optimize` and
:meth:`Study.recheck_front` hand their work to :func:`run_trials` and
:func:`recheck_front` here. Each configuration runs through :func:`autotune._run.run_config`
(pre-checks, launch, typed result); :class:`Recorder` turns that result into autotune's
measurement row, Optuna's ``tell()`` and the stored front.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune import drift
from autotune._coverage import START_UP_ATTR
from autotune._jobs import Quota
from autotune._liveness import (
    MACHINE_ATTR,
    RETRY_ATTR,
    WORKER_ATTR,
    Reaper,
    enqueue_once,
    heartbeat,
    worker_name,
)
from autotune._run import RunResult, run_config, trial_config
from autotune.config import Budget, TrialConfig
from autotune.launch import Launcher
from autotune.objectives import ENERGY_METRICS, worst_value
from autotune.pareto import hypervolume, reference_point
from autotune.profiling.fingerprint import fingerprint_hash, machine_fingerprint
from autotune.profiling.power import rated_device_power_w
from autotune.profiling.stats import PERCENTILE_MIN_SAMPLES
from autotune.simulation import is_simulated
from autotune.storage._models import FrontSnapshotRow, MeasurementRow, RecheckRow
from autotune.storage._retry import retrying

if TYPE_CHECKING:
    from autotune.space import SearchSpace
    from autotune.study import Study

_logger = logging.getLogger("autotune.study")

#: Constraint key that marks a trial whose configuration could not be measured.
FAILURE_CONSTRAINT = "measurable"


@dataclass(frozen=True)
class TrialResult:
    """One trial as autotune sees it.

    ``state`` is ``ok`` (measured, feasible or not), ``screened`` (stopped after the
    screen with its confirmation deferred: figures for the sampler, never a front point;
    see :mod:`autotune._confirm`), ``infeasible`` (out of memory, unsupported, diverged:
    recorded complete with worst-case values), ``pruned`` (stopped early: its confidence
    box was dominated by the front; ``reason`` says by what), ``fail`` (crash, timeout,
    killed worker), ``running``, or ``waiting`` (a queued trial: a crashed trial's single
    retry or a confirmation; it runs first in the next run if this one ended before it).
    ``confirms``: the screened trial this one measures again in full, if any.
    ``start_up``: the trial measured an arm of the space once before the search
    (:mod:`autotune._coverage`).
    """

    number: int
    state: str
    params: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    values: list[float] | None = None
    feasible: bool = False
    failure_kind: str | None = None
    reason: str = ""
    wall_s: float | None = None
    confirms: int | None = None
    start_up: bool = False


def effective_budget(space: SearchSpace) -> Budget:
    """The space's budget, with enough window steps for every latency percentile the
    objectives and constraints use (p90 needs 64 samples, p95 132, p99 662)."""
    budget = space.budget
    needed = [PERCENTILE_MIN_SAMPLES[int(m[len("latency_p"):-len("_ms")])]
              for m in [*space.objective_names, *(c.metric for c in space.constraints)]
              if m.startswith("latency_p")]
    steps = max([budget.window_min_steps, *needed])
    return dataclasses.replace(budget, window_min_steps=steps)


def trial_count(ostudy: Any) -> int:
    """How many trials the Optuna study holds now."""
    return len(ostudy.get_trials(deepcopy=False))


def run_trials(study: Study, ostudy: Any, launcher: Launcher, *,
               n_trials: int | None, timeout: float | None, start: float,
               callbacks: list[Callable[[TrialResult], None]] | None,
               recheck_every: int, devices: Sequence[str] | None = None) -> list[TrialResult]:
    """Run trials of ``study`` (asked from ``ostudy``, its Optuna study with the run's
    sampler) on ``launcher`` (left open) until ``n_trials`` are done or ``timeout``
    seconds after ``start`` (a ``time.monotonic()`` value) have passed; re-check the
    front every ``recheck_every`` trials. ``devices``: the only devices this worker's
    trials may use (``None``: whatever the sampler proposes)."""
    recorder = _recorder(study, ostudy)
    quota = Quota(n_trials)
    results = _loop(study, ostudy, recorder, launcher, quota, timeout, start,
                    callbacks, recheck_every, _device_pin(study, ostudy, devices))
    return results + _confirm_pass(study, ostudy, recorder, launcher, quota, timeout, start,
                                   callbacks, devices)


def _confirm_pass(study: Study, ostudy: Any, recorder: Recorder, launcher: Launcher,
                  quota: Quota, timeout: float | None, start: float,
                  callbacks: list[Callable[[TrialResult], None]] | None,
                  devices: Sequence[str] | None = None) -> list[TrialResult]:
    """After the run's trials: confirm the screened ones that could still be on the
    front (:mod:`autotune._confirm`), within the run's timeout; ``devices``: the only
    devices this worker runs (``None``: any)."""
    from autotune._confirm import confirm_screened

    if quota.interrupted.is_set() or quota.stop.is_set():
        return []
    budget = effective_budget(study.space)
    distributions = study.space.distributions()

    def on_result(result: TrialResult) -> None:
        for callback in callbacks or ():
            callback(result)

    return confirm_screened(
        study, ostudy,
        lambda: run_asked(study, ostudy, recorder, launcher, quota, budget, distributions),
        deadline=None if timeout is None else start + timeout, on_result=on_result,
        devices=devices)


def run_jobs(study: Study, make_ostudy: Callable[[int], Any],
             launchers: Sequence[Launcher], job_devices: Sequence[Sequence[str]], *,
             n_trials: int | None, timeout: float | None, start: float,
             callbacks: list[Callable[[TrialResult], None]] | None,
             recheck_every: int) -> list[TrialResult]:
    """:func:`run_trials` for several jobs at once, a thread each (see
    :mod:`autotune._jobs`): job ``i`` asks through ``make_ostudy(i)``, runs on
    ``launchers[i]`` (pinned to its cores) and only on ``job_devices[i]``; they share the
    ``n_trials`` quota. The first error of any job stops the others and is raised."""
    quota = Quota(n_trials)
    lock = threading.Lock()
    results: list[TrialResult] = []
    errors: list[BaseException] = []

    def on_result(result: TrialResult) -> None:
        with lock:  # callbacks (a progress display) are not thread-safe
            results.append(result)
            for callback in callbacks or ():
                callback(result)

    finished = [threading.Event() for _ in launchers]

    def job(index: int) -> None:
        try:
            ostudy = make_ostudy(index)
            recorder = _recorder(study, ostudy, f"{worker_name()}#{index + 1}")
            _loop(study, ostudy, recorder, launchers[index], quota, timeout,
                  start, [on_result], recheck_every if index == 0 else 0,
                  _device_pin(study, ostudy, job_devices[index]), keep=False)
        except BaseException as e:
            errors.append(e)
            quota.stop.set()
        finally:
            finished[index].set()

    threads = [threading.Thread(target=job, args=(i,), name=f"autotune-job-{i + 1}")
               for i in range(len(launchers))]
    for thread in threads:
        thread.start()
    try:
        _wait(finished)
    except BaseException:  # Ctrl-C: no new trial; the running ones end with their workers
        quota.interrupted.set()  # before the workers end: their trials are interrupted
        quota.stop.set()
        for launcher in launchers:
            launcher.close()
        _wait(finished)
        raise
    finally:
        for thread in threads:
            thread.join()  # ending now: their last act was to set their event
    if errors:
        raise errors[0]
    # the jobs have ended: the first job's launcher confirms the screened trials
    ostudy = make_ostudy(0)
    _confirm_pass(study, ostudy, _recorder(study, ostudy, f"{worker_name()}#1"),
                  launchers[0], quota, timeout, start, [on_result],
                  sorted({d for each in job_devices for d in each}))
    return sorted(results, key=lambda r: r.number)


def _wait(finished: Sequence[threading.Event]) -> None:
    """Wait until every job has set its event, in short sleeps. Not ``Thread.join``: a
    signal the kernel hands to another thread (SIGTERM, Ctrl-C) runs its Python handler
    only once the main thread wakes, which a join without a timeout never does, and on
    Python 3.11 a join (or ``is_alive``) that the handler's KeyboardInterrupt cuts short
    may mark a running thread as stopped (bpo-45274's fix), so the run would end while
    a job still records its trial."""
    while not all(event.is_set() for event in finished):
        time.sleep(0.1)


def _recorder(study: Study, ostudy: Any, worker: str | None = None) -> Recorder:
    fingerprint = machine_fingerprint()
    machine_id = study.storage.upsert_machine(fingerprint, fingerprint_hash(fingerprint))
    return Recorder(study, ostudy, machine_id, fingerprint, worker)


def _device_pin(study: Study, ostudy: Any,
                devices: Sequence[str] | None) -> Callable[[], None] | None:
    """What to do before each ask so the sampler proposes only ``devices`` (cycled, one
    per trial, through Optuna's PartialFixedSampler); ``None`` when nothing is pinned.
    Queued trials (retries) of other devices are left in the queue for their workers."""
    import optuna

    from autotune._jobs import space_devices

    if devices is None or list(devices) == space_devices(study.space) \
            or study.space.param("device") is None:
        return None
    from autotune._feasibility import FeasibleSampler

    outer = ostudy.sampler
    # the feasibility pre-screen stays outermost: it checks whole configurations, the
    # pinned device included
    screened = isinstance(outer, FeasibleSampler)
    base = outer.base if screened else outer
    turn = itertools.cycle(list(devices))
    _take_from_queue_only(ostudy, set(devices))

    def pin() -> None:
        with warnings.catch_warnings():  # experimental since 2.4, still so
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            device = {"device": next(turn)}
            fixed = optuna.samplers.PartialFixedSampler(device, base)
            ostudy.sampler = outer.with_base(fixed, device) if screened else fixed

    return pin


def _take_from_queue_only(ostudy: Any, devices: set[str]) -> None:
    """Make ``ostudy.ask()`` take from the queue only trials whose device is one of
    ``devices``: a queued trial's parameters win over the sampler's, so a retry of a
    ``cuda:0`` trial asked for by a CPU-only worker would otherwise run where it cannot.
    This replaces Optuna's private ``Study._pop_waiting_trial_id`` (same logic, plus the
    filter); ``tests/test_fleet.py`` checks it against the installed Optuna."""
    import optuna

    states = optuna.trial.TrialState
    storage = ostudy._storage
    if not callable(getattr(ostudy, "_pop_waiting_trial_id", None)):
        raise RuntimeError("this Optuna has no Study._pop_waiting_trial_id: autotune cannot "
                           "keep other devices' queued trials from a pinned worker")

    def pop_waiting_trial_id() -> int | None:
        for trial in storage.get_all_trials(ostudy._study_id, deepcopy=False,
                                            states=(states.WAITING,)):
            device = trial.system_attrs.get("fixed_params", {}).get("device")
            if device is not None and device not in devices:
                continue  # another worker's to run
            try:  # as Optuna: whoever moves it to RUNNING first runs it
                if storage.set_trial_state_values(trial._trial_id, state=states.RUNNING):
                    return int(trial._trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
        return None

    ostudy._pop_waiting_trial_id = pop_waiting_trial_id


def _loop(study: Study, ostudy: Any, recorder: Recorder, launcher: Launcher,
          quota: Quota, timeout: float | None, start: float,
          callbacks: list[Callable[[TrialResult], None]] | None,
          recheck_every: int, pin: Callable[[], None] | None = None,
          keep: bool = True) -> list[TrialResult]:
    """Ask, run, record and tell until ``quota`` or ``timeout`` ends it; ``keep``: return
    the results (a job hands them to its callback instead)."""
    budget = effective_budget(study.space)
    distributions = study.space.distributions()
    reaper = Reaper(study, ostudy)
    results: list[TrialResult] = []
    done = 0
    since_recheck, last_recheck = 0, start
    while quota.claim():
        if timeout is not None and time.monotonic() - start >= timeout:
            break
        if pin is not None:
            pin()
        reaper.reap()  # trials of workers that died: failed, recorded, re-queued
        result = run_asked(study, ostudy, recorder, launcher, quota, budget, distributions)
        if result is None:
            continue
        done += 1
        if keep:
            results.append(result)
        for callback in callbacks or ():
            callback(result)
        since_recheck += 1
        # Drift is a change over time: a re-check seconds after the front was measured
        # sees the same machine state, so it waits for the interval as well as the count.
        if recheck_every and since_recheck >= recheck_every and \
                time.monotonic() - last_recheck >= drift.RECHECK_MIN_INTERVAL_S:
            recheck_front(study, launcher, after_trials=trial_count(ostudy),
                          deadline=None if timeout is None else start + timeout)
            since_recheck, last_recheck = 0, time.monotonic()
    return results


def run_asked(study: Study, ostudy: Any, recorder: Recorder, launcher: Launcher,
              quota: Quota, budget: Budget,
              distributions: dict[str, Any]) -> TrialResult | None:
    """Ask ``ostudy`` for a trial (a queued one first), run and record it; ``None`` when
    another worker's reaper took the trial meanwhile. A trial queued to confirm a screened
    one (:mod:`autotune._confirm`) is measured in full: its confirmation is not deferred
    again."""
    from autotune._confirm import CONFIRMS_ATTR

    trial = retrying(lambda: ostudy.ask(distributions), "asking for a trial",
                     budget_s=study.storage.retry_s)
    # Whatever goes wrong between ask and tell (a storage error, Ctrl-C), the trial
    # must not stay RUNNING forever: it is told FAIL and the error goes on (and should
    # this process die instead, its heartbeats stop and another process reaps it).
    try:
        # claimed before the first heartbeat: a trial with heartbeats always names
        # its worker and machine, which its reaper's record needs
        recorder.mark_running(trial)
        with heartbeat(ostudy._storage, trial._trial_id):
            config = trial_config(study.space, trial.params, seed=study.seed or 0,
                                  budget=budget)
            confirming = CONFIRMS_ATTR in trial.user_attrs
            config = dataclasses.replace(config, screen=screen_for(study, config,
                                                                   defer=not confirming))
            run = run_config(config, launcher)
            if quota.interrupted.is_set() and run.state != "ok":
                raise KeyboardInterrupt  # its worker ended with the run, not by itself
            result = recorder.record(trial, config, run)
    except _ReapedMeanwhile:
        # this worker was cut off from the database for longer than the grace period
        # (or its claim came after the orphan watch) and another worker reaped the
        # trial: not this worker's to record, and no reason to stop
        _logger.warning("trial %d was reaped while this worker could not reach the "
                        "database; its retry measures it again", trial.number)
        return None
    except BaseException as e:
        # an error while the run is interrupted is the interruption's doing (the
        # worker it waited on was killed under it)
        _tell_fail_quietly(ostudy, trial, e, interrupted=quota.interrupted.is_set())
        raise
    if run.launched and run.failure_kind == "oom" and (
            config.budget.memory_mb is not None or config.device != "cpu"):
        # the group's first out-of-memory trial: one bounded probe finds where it fits
        # (not on a CPU without a cap: that would probe the machine's own memory)
        from autotune._memory_probe import probe_after_oom

        try:
            probe_after_oom(study, ostudy, launcher, config)
        except Exception as e:  # a lost probe leaves the bisection by trials; no reason to stop
            _logger.warning("memory probe after trial %d failed: %s", trial.number, e)
    return result


def screen_for(study: Study, config: TrialConfig, *,
               defer: bool = True) -> dict[str, Any] | None:
    """What ``config`` is screened against (:mod:`autotune.profiling.screening`): the
    study's confirmed front now, drifting points left out (their figures are in doubt);
    ``None`` when early stopping is off, or there is no front yet and nothing to defer.
    With an energy objective only points of the same device count: energy of another
    device may come from another source (a counter against an estimate), which is not
    comparable.

    ``defer``: a survivor with a long window left may stop at the screen and be
    confirmed at the end of the run (``budget.defer_confirmation``, infer mode, a real
    device: a simulator's window costs no wall time, so there is nothing to save)."""
    # a data-parallel trial is measured in full: its replicas would each screen their own
    # steps, and a screen is a decision they would have to take together
    if not config.budget.early_stop or config.mode == "generate" or \
            config.data_parallel > 1:
        return None
    from autotune.profiling.screening import DEFER_AFTER_S, Screen

    defer_after_s = DEFER_AFTER_S if defer and config.budget.defer_confirmation and \
        config.mode == "infer" and not is_simulated(config.device) else None

    names = study.space.objective_names
    uses_energy = any(m in ENERGY_METRICS for m in names)
    # the stored front (kept under the study's lock after every completed trial), not
    # one recomputed from every trial: reading it costs the same at trial 10 and 1000
    drifting = {n for n, s in study.stability().items() if s == "drifting"}
    points = []
    front = study.storage.front_trial_numbers(study.id)
    for row in study.storage.measurements(study.id, front) if front else ():
        if row.trial_number in drifting:
            continue
        if uses_energy and json.loads(row.config_json).get("device") != config.device:
            continue
        metrics = json.loads(row.metrics_json)
        if all(isinstance(metrics.get(n), int | float) and math.isfinite(metrics[n])
               for n in names):
            points.append(tuple(float(metrics[n]) for n in names))
    if not points and defer_after_s is None:
        return None
    return Screen(objectives=tuple(names), directions=tuple(study.space.directions),
                  front=tuple(points), defer_after_s=defer_after_s).to_dict()


def recheck_front(study: Study, launcher: Launcher, *, after_trials: int = 0,
                  points: int = drift.RECHECK_POINTS,
                  deadline: float | None = None) -> list[drift.Verdict]:
    """See :meth:`autotune.study.Study.recheck_front`."""
    front = study.pareto_front()
    drifting = frozenset(p.trial_number for p in front if p.stability == "drifting")
    if drifting:  # check what would lead without them
        front = study.pareto_front(exclude=drifting)
    first, direction = study.space.objectives[0]
    front.sort(key=lambda p: p.values[first], reverse=direction == "maximize")
    counts: dict[int, int] = {}
    for row in study.storage.rechecks(study.id):
        counts[row.trial_number] = counts.get(row.trial_number, 0) + 1
    verdicts = []
    for number in drift.pick_for_recheck([p.trial_number for p in front], counts, points):
        if deadline is not None and time.monotonic() >= deadline:
            break
        stored = study.storage.measurement(study.id, number)
        if stored is None:
            continue
        config = TrialConfig.from_dict(json.loads(stored.config_json))
        # unsupported here (backend not installed, CPU without the precision): no worker
        run = run_config(config, launcher)
        new = run.summary()
        if run.ok:
            verdict = drift.compare(json.loads(stored.metrics_json), new)
        else:
            verdict = drift.Verdict("inconclusive", None,
                                    f"re-measurement failed ({run.failure_kind}): "
                                    f"{run.reason}")
        if verdict.verdict == "drifting":
            _logger.warning("trial %d is drifting: %s", number, verdict.reason)
        study.storage.add_recheck(RecheckRow(
            study_id=study.id, trial_number=number, after_trials=after_trials,
            state=run.state, verdict=verdict.verdict, ratio=verdict.ratio,
            metrics_json=json.dumps({k: v for k, v in new.items() if k != "missing"}),
            reason=verdict.reason))
        verdicts.append(verdict)
    return verdicts


class Recorder:
    """Turns a run's result into Optuna's tell() and autotune's rows."""

    def __init__(self, study: Study, ostudy: Any, machine_id: int,
                 fingerprint: dict[str, Any], worker: str | None = None) -> None:
        self.study = study
        self.worker = worker or worker_name()
        self.ostudy = ostudy
        self.machine_id = machine_id
        budget = study.space.budget
        device = study.space.param("device")
        devices = [str(d) for d in device.choices] if device is not None and \
            device.choices else ["cpu"]
        self._worst = {
            "trial_seconds": budget.trial_seconds,
            # the most any device of the space can draw: a GPU's reading must not be
            # "worse" than the reference, or its trials would add no hypervolume
            "rated_power_w": max(rated_device_power_w(d) for d in devices),
            "memory_total_mb": float(fingerprint["memory_total_mb"]),
        }

    def mark_running(self, trial: Any) -> None:
        """Record where ``trial`` runs (this machine's row, ``host:pid``, ``#job`` with
        several jobs): the reaper names them when this worker is lost, and ``study show
        --workers`` groups trials by worker and machine."""
        self._retrying(lambda: (trial.set_user_attr(MACHINE_ATTR, self.machine_id),
                                trial.set_user_attr(WORKER_ATTR, self.worker)))

    def _retrying(self, operation: Callable[[], Any]) -> Any:
        import optuna

        try:
            return retrying(operation, "recording a trial",
                            budget_s=self.study.storage.retry_s)
        except optuna.exceptions.UpdateFinishedTrialError as e:
            raise _ReapedMeanwhile(str(e)) from e

    def _tell(self, trial: Any, values: list[float] | None = None, **kwargs: Any) -> None:
        """``tell``, retried through a lost connection; a retry that finds the trial
        finished means the first attempt committed before the connection dropped."""
        import optuna

        attempts = 0

        def tell() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self.ostudy.tell(trial, values, **kwargs)
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
                finished = isinstance(e, optuna.exceptions.UpdateFinishedTrialError) or \
                    str(e).startswith("Cannot tell a ")  # Optuna's words for a told trial
                if not finished:
                    raise
                if attempts == 1:  # finished before our first tell: the reaper's doing
                    raise _ReapedMeanwhile(str(e)) from e

        self._retrying(tell)

    def worst(self, metric: str) -> float:
        direction = dict(self.study.space.objectives).get(metric)
        return worst_value(metric, direction=direction, **self._worst)

    def record(self, trial: Any, config: TrialConfig, run: RunResult) -> TrialResult:
        import optuna

        from autotune._confirm import CONFIRMS_ATTR

        space = self.study.space
        state: str = run.state
        kind, reason = run.failure_kind, run.reason
        summary: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        measured: Callable[[str], float | None] = lambda metric: None  # noqa: E731
        if run.measurement is not None:
            m = run.measurement
            summary, raw = m.summary(), m.to_dict()
            # a screened trial (confirmation deferred) tells the sampler estimates where
            # its short window cannot report a percentile; its stored metrics stay as
            # measured
            if m.screened and not m.pruned:
                state, measured = "screened", m.screen_estimate
            else:
                measured = summary.get
            missing = [o for o in space.objective_names if measured(o) is None]
            if missing:
                state, kind = "infeasible", "missing_metric"
                reason = "; ".join(f"{o}: {m.missing_reasons().get(o, 'not measured')}"
                                   for o in missing)
        pruned = run.measurement is not None and bool(run.measurement.pruned)
        if pruned:
            assert run.measurement is not None
            state, kind, reason = "pruned", None, run.measurement.pruned["reason"]
        values: list[float] | None = None
        feasible = False
        # autotune's row first: a trial Optuna calls finished always has its measurement.
        # The screen is not part of the configuration (a re-run measures it in full).
        stored_config = dataclasses.replace(config, screen=None)
        self.study.storage.add_measurement(MeasurementRow(
            study_id=self.study.id, trial_number=trial.number, machine_id=self.machine_id,
            state=state, failure_kind=kind, reason=reason, traceback=run.traceback,
            config_json=json.dumps(stored_config.to_dict()), metrics_json=json.dumps(summary),
            raw_json=json.dumps(raw), wall_s=run.wall_s,
        ))
        self._retrying(lambda: trial.set_user_attr("wall_s", round(run.wall_s, 3)))
        self._retrying(lambda: trial.set_user_attr("fixed_knobs", space.fixed_params()))
        headline = {k: v for k, v in summary.items() if k not in ("missing", "energy_model")}
        if pruned:
            # data for the sampler (TPE ranks pruned trials below complete ones), never a
            # front point: its figures come from the screening part of a window only
            self._retrying(lambda: trial.set_user_attr("metrics", headline))
            self._retrying(lambda: trial.set_user_attr("pruned_reason", reason[:2000]))
            self._tell(trial, state=optuna.trial.TrialState.PRUNED)
            _logger.info("trial %d pruned: %s", trial.number, reason)
        elif state in ("ok", "screened", "infeasible"):
            def value(metric: str) -> float:
                v = measured(metric) if state != "infeasible" else None
                return float(v) if v is not None else self.worst(metric)

            values = [value(o) for o in space.objective_names]
            violations = {str(c): c.violation(value(c.metric)) for c in space.constraints}
            violations[FAILURE_CONSTRAINT] = 0.0 if state == "ok" else 1.0
            for key, v in violations.items():
                self._retrying(functools.partial(trial.set_constraint, key, v))
            # a screened trial is data for the sampler, never a front candidate
            feasible = state != "screened" and all(v <= 0 for v in violations.values())
            self._retrying(lambda: trial.set_user_attr("metrics", headline))
            for k in ("throughput_sps", "latency_p95_ms", "accuracy", "energy_source"):
                if k in summary:
                    self._retrying(functools.partial(trial.set_user_attr, k, summary[k]))
            if kind:
                self._retrying(lambda: trial.set_user_attr("failure_kind", kind))
                self._retrying(lambda: trial.set_user_attr("reason", reason[:2000]))
            self._tell(trial, values)
            if state == "screened":
                _logger.info("trial %d screened: its confirmation is deferred to the end "
                             "of the run", trial.number)
        else:
            self._retrying(lambda: trial.set_user_attr("failure_kind", kind))
            self._retrying(lambda: trial.set_user_attr("reason", reason[:2000]))
            self._tell(trial, state=optuna.trial.TrialState.FAIL)
            _logger.warning("trial %d failed (%s): %s; params %s", trial.number, kind, reason,
                            trial.params)
            # A crash may be transient (retried once). A timeout or a SIGKILL (the OOM
            # killer) would strike again: retrying would only spend the budget twice.
            if kind == "crash" and RETRY_ATTR not in trial.user_attrs:
                enqueue_once(self.ostudy, trial.params, {RETRY_ATTR: trial.number},
                             RETRY_ATTR, trial.number, budget_s=self.study.storage.retry_s)
        if values is not None and state != "screened":  # a screened trial is no front point
            self._update_front(trial.number)
        return TrialResult(number=trial.number, state=state, params=dict(trial.params),
                           metrics=summary, values=values, feasible=feasible,
                           failure_kind=kind, reason=reason, wall_s=run.wall_s,
                           confirms=trial.user_attrs.get(CONFIRMS_ATTR),
                           start_up=self._start_up(trial))

    def _start_up(self, trial: Any) -> bool:
        """Whether the sampler proposed ``trial`` as a start-up arm. It marks the stored
        trial after the ``Trial`` object took its copy of the attributes, so the stored
        trial is read (one read a trial, from Optuna's cache when it holds it)."""
        stored = self._retrying(lambda: self.ostudy._storage.get_trial(trial._trial_id))
        return bool(stored.user_attrs.get(START_UP_ATTR))

    def _update_front(self, trial_number: int) -> None:
        """Store the front after a completed trial, with a snapshot for its history.

        The hypervolume is of the whole front, from the physical worst cases of
        :func:`reference_point` (the values infeasible trials get, so they add nothing).
        With an energy objective the front may hold points of several energy sources
        (compared only within their source); the volume then spans all of them, which
        still only grows as trials complete, and the snapshot lists the sources so a
        reader knows the energy figures it combines are not comparable.
        """
        self.study.storage.update_front(self.study.id, lambda: self._front(trial_number))

    def _front(self, trial_number: int) -> tuple[list[tuple[int, list[float]]],
                                                 FrontSnapshotRow]:
        """The study's front now, and its snapshot after ``trial_number``."""
        front = self.study.pareto_front()
        names = self.study.space.objective_names
        points = [(p.trial_number, [p.values[o] for o in names]) for p in front]
        reference = reference_point(names, **self._worst)
        volume = hypervolume([v for _, v in points], self.study.space.directions, reference)
        snapshot = FrontSnapshotRow(
            study_id=self.study.id, trial_number=trial_number,
            front_json=json.dumps([n for n, _ in points]),
            # infinite: a front value is infinitely good; the volume is undefined (None)
            hypervolume=volume if math.isfinite(volume) else None,
            reference_json=json.dumps(dict(zip(names, reference, strict=True))),
            energy_sources_json=json.dumps(
                sorted({p.energy_source for p in front if p.energy_source})),
        )
        return points, snapshot


class _ReapedMeanwhile(Exception):
    """The trial being recorded was finished by another worker's reaper."""


def _tell_fail_quietly(ostudy: Any, trial: Any, error: BaseException, *,
                       interrupted: bool = False) -> None:
    """Mark ``trial`` FAIL after an error between ask and tell (``interrupted``: the run
    is being interrupted); never mask that error."""
    import optuna

    try:
        trial.set_user_attr("failure_kind", "interrupted" if interrupted or isinstance(
            error, KeyboardInterrupt) else "storage")
        trial.set_user_attr("reason", f"{type(error).__name__}: {error}"[:2000])
        ostudy.tell(trial, state=optuna.trial.TrialState.FAIL)
    except Exception:  # the storage may be what failed; the original error matters more
        _logger.debug("could not mark trial %d failed", trial.number, exc_info=True)


__all__ = ["FAILURE_CONSTRAINT", "Recorder", "TrialResult", "effective_budget",
           "recheck_front", "run_jobs", "run_trials", "screen_for"]
