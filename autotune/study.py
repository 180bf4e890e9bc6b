"""Create, load, run and inspect studies (the public facade).

The trial runner (the ask -> run -> record -> tell loop, the recorder and the drift
rechecks) is :mod:`autotune._trial_runner`; one configuration runs through
:func:`autotune._run.run_config`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from autotune import _trial_runner, drift
from autotune._confirm import CONFIRMS_ATTR
from autotune._coverage import START_UP_ATTR
from autotune._jobs import assign_devices, check_threads_fit, core_slots, worker_devices
from autotune._trial_runner import FAILURE_CONSTRAINT, TrialResult
from autotune.config import Budget, TrialConfig
from autotune.exceptions import (
    SpaceMismatchError,
    StudyError,
    StudyExistsError,
    StudyNotFoundError,
)
from autotune.launch import Launcher, WarmLauncher
from autotune.objectives import ENERGY_METRICS
from autotune.pareto import FrontSnapshot, pareto_front
from autotune.space import SearchSpace, check_measurable, load_space, one_line, parse_space
from autotune.storage import AutotuneStorage
from autotune.storage._models import StudyRow
from autotune.storage._retry import retry_budget_s, retrying

_logger = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2", "random")
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
#: Objectives whose values depend on where the energy figure came from.


@dataclass(frozen=True)
class FrontPoint:
    """A configuration on the Pareto front, with its objective values and all metrics.

    ``stability`` is what later re-measurements said (:mod:`autotune.drift`):
    ``unchecked``, ``stable``, ``inconclusive`` or ``drifting``. ``energy_source`` says
    where its energy figures come from (``estimated``, ``rapl``, ``nvml``...).
    """

    trial_number: int
    config: dict[str, Any]
    values: dict[str, float]
    metrics: dict[str, Any]
    stability: str = "unchecked"
    energy_source: str | None = None


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name != name.strip():
        raise StudyError(f"invalid study name {name!r}: use 1-200 printable characters "
                         "without leading or trailing spaces")


def make_sampler(name: str, seed: int | None) -> Any:
    """Optuna sampler ``name`` (``tpe``, ``nsga2`` or ``random``).

    TPE is multivariate (knobs interact: precision x batch size x threads) and uses the
    constant liar, so several workers on one study do not sample the same point.
    """
    import optuna

    if name not in SAMPLERS:
        raise StudyError(f"unknown sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed,
                                              n_startup_trials=5)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=10)
        return optuna.samplers.RandomSampler(seed=seed)


class Study:
    """A tuning study: a stored search space plus Optuna's trials and autotune's records.

    Get one with :func:`create_study` or :func:`load_study`.
    """

    def __init__(self, row: StudyRow, storage: AutotuneStorage) -> None:
        self._row = row
        self.storage = storage
        self._reader: tuple[Any, Any] | None = None
        self.space: SearchSpace = parse_space(json.loads(row.space_json), check_files=False,
                                              source=f"study {row.study_name!r}")

    @property
    def name(self) -> str:
        """The study's name."""
        return self._row.study_name

    @property
    def sampler(self) -> str:
        """The sampler the study was created with."""
        return self._row.sampler

    @property
    def seed(self) -> int | None:
        """The study's seed (``None``: not seeded)."""
        return self._row.seed

    @property
    def id(self) -> int:
        """The study's id in the autotune tables."""
        return self._row.id

    def close(self) -> None:
        """Release database connections (a later call reconnects)."""
        self.storage.close()

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _optuna_study(self, sampler: Any = None) -> Any:

        if sampler is None:
            # One reader per storage connection: Optuna's cache in front of the database
            # keeps finished trials, so reading a long study again fetches only what
            # changed (a fresh load_study re-reads every trial: 0.8 s per completion at
            # 1000 trials, measured)
            rdb = self.storage.optuna
            if self._reader is None or self._reader[0] is not rdb:
                self._reader = (rdb, self._load(rdb))
            return self._reader[1]
        return self._load(self.storage.optuna, sampler)

    def _load(self, rdb: Any, sampler: Any = None) -> Any:
        """Optuna's study on ``rdb``, through lost connections once the storage was
        reached (``storage.retry_s``)."""
        import optuna

        return retrying(lambda: optuna.load_study(study_name=self.name, storage=rdb,
                                                  sampler=sampler),
                        "loading the study", budget_s=self.storage.retry_s)

    def check_space(self, space: SearchSpace) -> None:
        """Raise :class:`SpaceMismatchError` unless ``space`` searches what the study does."""
        if space.fingerprint() != self._row.space_fingerprint:
            raise SpaceMismatchError(
                f"study {self.name!r} was created with a different search space; "
                "create a new study (another name) for the new space")

    # -- running ---------------------------------------------------------------------------

    def check_backends(self) -> list[str]:
        """The space's backends that are not installed on this machine (a study may be run
        on another machine than the one that created it).

        Raises :class:`StudyError` with the install command when none of them is: no trial
        could run. When only some are missing they are returned (their trials are recorded
        infeasible, ``unsupported``, without starting a worker), for the caller to warn.
        """
        from autotune.backends import BACKENDS
        from autotune.config import KNOB_DEFAULTS

        spec = self.space.param("backend")
        names = [str(c) for c in spec.choices] if spec is not None else \
            [KNOB_DEFAULTS["backend"]]
        missing = [n for n in names if n in BACKENDS and not BACKENDS[n].is_installed()]
        if missing and len(missing) == len(names):
            raise StudyError(f"{_backends_phrase(missing)} of study {self.name!r} "
                             f"{'is' if len(missing) == 1 else 'are'} not installed here; "
                             f"install {'it' if len(missing) == 1 else 'them'} with: "
                             f"{install_command(missing)}")
        return missing

    def check_factory_unchanged(self) -> None:
        """Raise :class:`StudyError` when the workload factory's file differs from the one
        the study's trials were measured with (a study must not mix two model versions)."""
        from autotune.workloads import WorkloadRef, factory_hash

        now = factory_hash(WorkloadRef(self.space.workload, self.space.workload_kwargs))
        if now is None:
            return
        for row in reversed(self.storage.measurements(self._row.id)):
            stored = json.loads(row.config_json).get("factory_hash")
            if stored:
                if stored != now:
                    path = self.space.workload.rpartition(":")[0]
                    raise StudyError(
                        f"the factory file {path} changed since trial {row.trial_number} of "
                        f"study {self.name!r} was measured (hash {stored} then, {now} now): a "
                        "study must not mix two versions of a model; restore the file or "
                        "create a new study for the new version")
                return

    def optimize(self, n_trials: int | None = None, timeout: float | None = None, *,
                 sampler: str | None = None,
                 callbacks: list[Callable[[TrialResult], None]] | None = None,
                 launcher: Launcher | None = None,
                 recheck_every: int = drift.RECHECK_EVERY,
                 jobs: int = 1, devices: Sequence[str] | None = None,
                 launcher_factory: Callable[[Sequence[int]], Launcher] | None = None,
                 ) -> list[TrialResult]:
        """Run trials until ``n_trials`` are done or ``timeout`` seconds have passed.

        With neither given, runs 10 trials. A trial is not started after the timeout; the
        one running then finishes (within its own ``trial_seconds``).

        Trials run on warm workers (:class:`autotune.launch.WarmLauncher`) unless another
        ``launcher`` is given; workers this call started are gone when it returns.

        After every ``recheck_every`` trials (0: never) up to two front configurations
        are measured again and compared with their trials, so a configuration whose speed
        drifts is flagged ``drifting`` rather than crowned (:mod:`autotune.drift`).

        ``jobs``: trials run at once on this machine, each job on its own cores and
        accelerator (:mod:`autotune._jobs`), sharing ``n_trials``; each job gets a launcher
        from ``launcher_factory(cores)`` (default: warm workers pinned to those cores).
        ``devices``: the only devices of the space this process may run (an
        ``autotune worker --devices``); the sampler proposes no other.
        """
        if n_trials is not None and n_trials < 1:
            raise StudyError(f"n_trials must be a positive integer, got {n_trials}")
        if timeout is not None and timeout <= 0:
            raise StudyError(f"timeout must be a positive number of seconds, got {timeout}")
        if recheck_every < 0:
            raise StudyError(f"recheck_every must be 0 (never) or a positive number of "
                             f"trials, got {recheck_every}")
        if n_trials is None and timeout is None:
            n_trials = 10
        if jobs > 1 and launcher is not None:
            raise StudyError("a launcher serves one job; give launcher_factory for jobs > 1")
        start = time.monotonic()  # the timeout counts from the call, set-up included
        slots, job_devices = self.plan_jobs(jobs, devices)
        self.check_factory_unchanged()
        missing = self.check_backends()
        if missing:
            _logger.warning("%s", missing_backends_warning(self.name, missing))
        self.storage.prepare_for_writing()
        # reached: from here on a lost connection is a fault to ride out, not an error
        self.storage.retry_s = max(self.storage.retry_s, retry_budget_s())
        with self.storage.pooled(jobs):
            return self._optimize(n_trials, timeout, start, sampler=sampler,
                                  callbacks=callbacks, launcher=launcher,
                                  recheck_every=recheck_every, jobs=jobs, slots=slots,
                                  job_devices=job_devices, launcher_factory=launcher_factory)

    def _optimize(self, n_trials: int | None, timeout: float | None, start: float, *,
                  sampler: str | None, callbacks: list[Callable[[TrialResult], None]] | None,
                  launcher: Launcher | None, recheck_every: int, jobs: int,
                  slots: list[tuple[int, ...]], job_devices: list[list[str]],
                  launcher_factory: Callable[[Sequence[int]], Launcher] | None,
                  ) -> list[TrialResult]:
        done_before = len(self._optuna_study().trials)
        # A fresh seed per run, derived from the study's: a re-run must not replay trials.
        run_seed = None if self.seed is None else self.seed + done_before
        name = sampler or self.sampler
        if jobs > 1:
            def make_ostudy(job: int) -> Any:  # a sampler each: its own seed and state
                return self._optuna_study(self._searching_sampler(
                    name, None if run_seed is None else run_seed + 1000 * job))

            factory = launcher_factory or (lambda cores: WarmLauncher(cpus=cores))
            launchers = [factory(cores) for cores in slots]
            try:
                return _trial_runner.run_jobs(
                    self, make_ostudy, launchers, job_devices, n_trials=n_trials,
                    timeout=timeout, start=start, callbacks=callbacks,
                    recheck_every=recheck_every)
            finally:
                for each in launchers:
                    each.close()
        ostudy = self._optuna_study(self._searching_sampler(name, run_seed))
        active: Launcher = launcher if launcher is not None else WarmLauncher()
        try:
            return _trial_runner.run_trials(
                self, ostudy, active, n_trials=n_trials, timeout=timeout, start=start,
                callbacks=callbacks, recheck_every=recheck_every, devices=job_devices[0])
        finally:
            if launcher is None:  # a launcher passed in belongs to the caller
                active.close()

    def _searching_sampler(self, name: str, seed: int | None) -> Any:
        """Sampler ``name`` behind the feasibility pre-screen (:mod:`autotune._feasibility`):
        configurations known not to run are not proposed."""
        from autotune._feasibility import feasible_sampler

        return feasible_sampler(make_sampler(name, seed), self.space, seed=self.seed or 0)

    def plan_jobs(self, jobs: int = 1, devices: Sequence[str] | None = None,
                  ) -> tuple[list[tuple[int, ...]], list[list[str]]]:
        """Each job's cores (none for one job: it keeps the process's) and devices, for a
        run of ``jobs`` trials at once on ``devices`` (see :meth:`optimize`). Raises
        :class:`StudyError` in one line when they cannot run honestly: more jobs than
        cores, a space whose threads exceed a job's cores, devices the space does not
        search, data-parallel trials on accelerators that other jobs hold."""
        usable = worker_devices(self.space, devices)
        if jobs == 1:
            return [], [usable]
        slots = core_slots(jobs)
        check_threads_fit(self.space, len(slots[0]), jobs)
        from autotune._data_parallel import check_jobs

        problem = check_jobs(self.space, usable, jobs)
        if problem is not None:
            raise StudyError(problem)
        return slots, assign_devices(usable, jobs)

    def recheck_front(self, launcher: Launcher, *, after_trials: int = 0,
                      points: int = drift.RECHECK_POINTS,
                      deadline: float | None = None) -> list[drift.Verdict]:
        """Measure up to ``points`` front configurations again (the least re-checked
        first, best on the first objective first; drifting ones are not measured again)
        and store how they compare. None is started after ``deadline`` (a
        ``time.monotonic()`` value)."""
        return _trial_runner.recheck_front(self, launcher, after_trials=after_trials,
                                           points=points, deadline=deadline)

    def stability(self) -> dict[int, str]:
        """Each re-checked trial's standing (``stable``, ``drifting``, ``inconclusive``)."""
        verdicts: dict[int, list[str]] = {}
        for row in self.storage.rechecks(self._row.id):
            verdicts.setdefault(row.trial_number, []).append(row.verdict)
        return {n: drift.stability(v) for n, v in verdicts.items()}

    def _effective_budget(self) -> Budget:
        """The space's budget, with enough window steps for every latency percentile the
        objectives and constraints use (p90 needs 64 samples, p95 132, p99 662)."""
        return _trial_runner.effective_budget(self.space)

    # -- reading ---------------------------------------------------------------------------

    def trials(self) -> list[TrialResult]:
        """Every trial with its state, parameters and metrics, in order."""
        import optuna

        states = optuna.trial.TrialState
        ostudy = self._optuna_study()
        otrials = retrying(lambda: ostudy.get_trials(deepcopy=False), "reading the trials",
                           budget_s=self.storage.retry_s)
        # a trial reaped after its worker died was never told by it: its failure is in
        # autotune's measurement row only (worker_lost)
        unexplained = any(t.state == states.FAIL and "failure_kind" not in t.user_attrs
                          for t in otrials)
        recorded = {r.trial_number: r for r in self.storage.measurements(self._row.id)} \
            if unexplained else {}
        confirmed_by = {t.user_attrs[CONFIRMS_ATTR]: t.number for t in otrials
                        if CONFIRMS_ATTR in t.user_attrs}
        out = []
        for t in otrials:
            row = recorded.get(t.number)
            kind = t.user_attrs.get("failure_kind") or (row.failure_kind if row else None)
            reason = t.user_attrs.get("reason") or (row.reason if row else "")
            screened = t.state == states.COMPLETE and \
                t.user_attrs.get("metrics", {}).get("fidelity") == "screen"
            if t.state == states.COMPLETE:
                state = "infeasible" if kind else "screened" if screened else "ok"
            elif t.state == states.RUNNING:
                state = "running"
            elif t.state == states.WAITING:  # a retry queued for the next run
                state = "waiting"
            elif t.state == states.PRUNED:  # stopped early, dominated by the front
                state = "pruned"
                reason = reason or t.user_attrs.get("pruned_reason", "")
            else:
                state = "fail"
            if state == "screened":
                reason = _screened_reason(confirmed_by.get(t.number))
            # a screened trial (its confirmation deferred) is never a front candidate
            feasible = t.state == states.COMPLETE and not screened and all(
                v <= 0 for v in t.constraints.values())
            out.append(TrialResult(
                number=t.number, state=state, params=dict(t.params),
                metrics=dict(t.user_attrs.get("metrics", {})), values=t.values,
                feasible=feasible, failure_kind=kind, reason=reason,
                wall_s=t.user_attrs.get("wall_s"), confirms=t.user_attrs.get(CONFIRMS_ATTR),
                start_up=bool(t.user_attrs.get(START_UP_ATTR)),
            ))
        return out

    def pareto_front(self, *, exclude: frozenset[int] = frozenset()) -> list[FrontPoint]:
        """Feasible trials no other feasible trial dominates (ties are all kept).

        ``exclude``: trial numbers left out (e.g. drifting ones, to see what would lead
        without them).
        """
        trials = [t for t in self.trials()
                  if t.feasible and t.values is not None and t.number not in exclude]
        # Energy measured by a counter and energy estimated from CPU time are not
        # comparable: with an energy objective, points compete only with points whose
        # energy has the same source, and each point says its source.
        uses_energy = any(m in ENERGY_METRICS for m in self.space.objective_names)
        groups: dict[str | None, list[TrialResult]] = {}
        for t in trials:
            source = t.metrics.get("energy_source") if uses_energy else None
            groups.setdefault(source, []).append(t)
        keys = sorted(n for group in groups.values() for n in pareto_front(
            [(t.number, t.values or []) for t in group], self.space.directions))
        by_number = {t.number: t for t in trials}
        standing = self.stability()
        return [self._front_point(by_number[n], standing) for n in keys]

    def _front_point(self, trial: TrialResult,
                     standing: dict[int, str] | None = None) -> FrontPoint:
        """``trial`` as a front point: its full configuration, values and standing."""
        fixed = TrialConfig.from_params(self.space, {}).knobs()
        standing = self.stability() if standing is None else standing
        return FrontPoint(
            trial_number=trial.number, config={**fixed, **trial.params},
            values=dict(zip(self.space.objective_names, trial.values or [], strict=True)),
            metrics=trial.metrics, stability=standing.get(trial.number, "unchecked"),
            energy_source=trial.metrics.get("energy_source"))

    def front_history(self) -> list[FrontSnapshot]:
        """The front after every completed trial, in completion order, with hypervolumes.

        Empty for a study whose trials ran before autotune kept this history (schema v1).
        """
        return [FrontSnapshot(trial_number=r.trial_number, front=json.loads(r.front_json),
                              hypervolume=r.hypervolume,
                              reference=json.loads(r.reference_json),
                              energy_sources=json.loads(r.energy_sources_json),
                              created_at=r.created_at)
                for r in self.storage.front_snapshots(self._row.id)]

    def hypervolume(self) -> float | None:
        """The current front's hypervolume (see :func:`autotune.pareto.reference_point`).

        ``None`` before the first completed trial, when no history was kept, or when the
        volume is undefined (an infinite value on the front).
        """
        row = self.storage.latest_front_snapshot(self._row.id)
        return row.hypervolume if row is not None else None

    def summary(self) -> dict[str, Any]:
        """Name, workload, counts by state, front size, the best value per objective,
        when a trial last started or ended (``last_update``) and since when the oldest
        running trial runs (``running_since``): ISO times in UTC, ``None`` when none."""
        import optuna

        trials = self.trials()
        otrials = self._optuna_study().get_trials(deepcopy=False)
        stamps = [d for t in otrials
                  for d in (t.datetime_start, t.datetime_complete) if d is not None]
        running = [t.datetime_start for t in otrials
                   if t.state == optuna.trial.TrialState.RUNNING and t.datetime_start]
        counts = {s: sum(t.state == s for t in trials)
                  for s in ("ok", "screened", "infeasible", "pruned", "fail", "running",
                            "waiting")}
        front = self.pareto_front()
        best: dict[str, float | None] = {}
        leaders: dict[str, dict[str, Any]] = {}
        # A drifting point is not crowned while a steady trial exists: leaders come from
        # the front the trials would have without the drifting ones.
        drifting = frozenset(p.trial_number for p in front if p.stability == "drifting")
        steady = (self.pareto_front(exclude=drifting) if drifting else front) or front
        for name, direction in self.space.objectives:
            pick = max if direction == "maximize" else min
            top = pick(steady, key=lambda p: p.values[name], default=None)
            best[name] = top.values[name] if top else None
            if top is not None:  # the best value of an objective is always on the front
                leaders[name] = {"backend": top.config.get("backend"),
                                 "device": top.config.get("device"),
                                 "trial": top.trial_number, "value": best[name]}
        return {
            "name": self.name,
            "workload": self.space.workload,
            "mode": self.space.mode,
            "objectives": dict(self.space.objectives),
            "constraints": [str(c) for c in self.space.constraints],
            "sampler": self.sampler,
            "seed": self.seed,
            "trials": counts,
            "front_size": len(front),
            "drifting": [p.trial_number for p in front if p.stability == "drifting"],
            "energy_sources": sorted({p.energy_source for p in front if p.energy_source}),
            "best": best,
            "leaders": leaders,
            "created_at": self._row.created_at.isoformat(timespec="seconds"),
            # Optuna stores naive local times, autotune naive UTC: made UTC like created_at
            "last_update": _utc_iso(max(stamps)) if stamps else None,
            "running_since": _utc_iso(min(running)) if running else None,
        }


def _screened_reason(confirmer: int | None) -> str:
    """What a screened trial's note says: where its full measurement is, if anywhere."""
    if confirmer is not None:
        return f"screen figures only; measured in full as trial {confirmer}"
    return ("screen figures only; not measured in full: the confirmed front dominated "
            "its best case (or the run ended before its confirmation)")


def _utc_iso(local: datetime) -> str:
    """A naive local time (as Optuna stores them) as naive-UTC ISO text."""
    return local.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def install_command(backends: list[str]) -> str:
    """The pip command that installs ``backends`` (registered names), e.g.
    ``pip install 'autotune[tensorflow]'``."""
    from autotune.backends import BACKENDS

    if len(backends) == 1:
        return BACKENDS[backends[0]].install_hint
    return f"pip install 'autotune[{','.join(BACKENDS[b].extra for b in backends)}]'"


def _backends_phrase(backends: list[str]) -> str:
    names = ", ".join(repr(b) for b in backends)
    return f"backend {names}" if len(backends) == 1 else f"backends {names}"


def missing_backends_warning(study: str, backends: list[str]) -> str:
    """One line: some of a study's backends are not installed here, and what happens."""
    one = len(backends) == 1
    return (f"{_backends_phrase(backends)} of study {study!r} "
            f"{'is' if one else 'are'} not installed here: "
            f"{'its' if one else 'their'} configurations are not proposed here; install "
            f"{'it' if one else 'them'} with: {install_command(backends)}")


# -- module-level API ------------------------------------------------------------------------


def _as_space(space: SearchSpace | str | Path) -> tuple[SearchSpace, str]:
    if isinstance(space, SearchSpace):
        return space, json.dumps(space.to_dict(), indent=2)
    path = Path(space)
    parsed = load_space(path)
    return parsed, path.read_text(encoding="utf-8")


@contextlib.contextmanager
def _naming_the_space(where: str, key: str) -> Iterator[None]:
    """Prefix a :class:`StudyError` raised inside with the space file and key, the way
    every other space error reads (``FILE: params.device: device 'cuda:3' ...``)."""
    try:
        yield
    except StudyError as e:
        raise StudyError(one_line(f"{where}: {key}: {e}")) from None


def _check_data_parallel_fits(space: SearchSpace) -> None:
    """Refuse a space whose largest ``data_parallel`` cannot get cores of its own here."""
    from autotune._data_parallel import check_machine
    from autotune._jobs import available_cores

    problem = check_machine(space, available_cores())
    if problem is not None:
        raise StudyError(problem)


def create_study(name: str, space: SearchSpace | str | Path, *, storage: str | None = None,
                 sampler: str = "tpe", seed: int | None = None,
                 exist_ok: bool = False) -> Study:
    """Create a study for ``space`` (a :class:`SearchSpace` or a space file path).

    Everything is validated before anything is written. With ``exist_ok``, an existing
    study with the same space is returned (a different space is an error).
    """
    import optuna

    from autotune.devices import check_installed, resolve_devices

    _check_name(name)
    parsed, source = _as_space(space)
    where = "<space>" if isinstance(space, SearchSpace) else str(space)
    check_measurable(parsed.budget, where)
    with _naming_the_space(where, "params.backend"):
        check_installed(parsed)
    with _naming_the_space(where, "params.data_parallel"):
        _check_data_parallel_fits(parsed)
    if sampler not in SAMPLERS:
        raise StudyError(f"unknown sampler {sampler!r}; allowed: {', '.join(SAMPLERS)}")
    store = AutotuneStorage(storage)
    if store.exists:
        store.check_readable()
    existing = store.get_study(name) if store.exists else None
    if existing is not None and name not in optuna.get_all_study_names(store.optuna):
        store.delete_study_rows(existing.id)  # orphan rows of a study Optuna deleted
        existing = None
    if existing is None and store.exists and name in optuna.get_all_study_names(store.optuna):
        existing = _created_by_another(store, name)
    if existing is not None:
        return _join_existing(existing, store, parsed, exist_ok)
    # The fingerprint is of the space as written (device: auto stays auto), so the same
    # file matches the study on any machine; the stored space has the devices found here.
    fingerprint = parsed.fingerprint()
    with _naming_the_space(where, "params.device"):
        resolved = resolve_devices(parsed)
    store.prepare_for_writing()
    try:
        ostudy = optuna.create_study(study_name=name, storage=store.optuna,
                                     directions=parsed.directions)
    except optuna.exceptions.DuplicatedStudyError:
        # another process created it between our look and our create: Optuna's unique
        # name decides who creates; the others join (exist_ok) or are told it exists
        return _join_existing(_created_by_another(store, name), store, parsed, exist_ok)
    try:
        with warnings.catch_warnings():  # experimental since 3.2, still the way in 5.0
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ostudy.set_metric_names(parsed.objective_names)
        ostudy.set_user_attr("autotune_space", resolved.to_dict())
        row = StudyRow(study_name=name, space_json=json.dumps(resolved.to_dict()),
                       space_source=source, space_fingerprint=fingerprint,
                       sampler=sampler, seed=seed, autotune_version=_version())
        store.add_study(row)
    except BaseException:
        optuna.delete_study(study_name=name, storage=store.optuna)
        raise
    return Study(row, store)


#: Seconds a creator waits for another process's half-created study to be complete.
CONCURRENT_CREATE_WAIT_S = 30.0
#: Seconds after which an Optuna study without autotune's stamp counts as foreign.
FOREIGN_AFTER_S = 2.0


def _created_by_another(store: AutotuneStorage, name: str) -> StudyRow:
    """The autotune row of study ``name``, whose Optuna study exists: another process is
    creating it (Optuna's study first, then autotune's row), so wait for the row. Without
    one after :data:`CONCURRENT_CREATE_WAIT_S` the Optuna study was not made by autotune."""
    import optuna

    start = time.monotonic()
    while True:
        row = store.get_study(name)
        if row is not None:
            return row
        waited = time.monotonic() - start
        # An autotune creator stamps the Optuna study within milliseconds of creating it;
        # a study without the stamp after FOREIGN_AFTER_S was made by someone else.
        stamped = "autotune_space" in optuna.load_study(
            study_name=name, storage=store.optuna).user_attrs
        if waited >= CONCURRENT_CREATE_WAIT_S or (not stamped and waited >= FOREIGN_AFTER_S):
            raise StudyExistsError(f"an Optuna study named {name!r} (not made by autotune) "
                                   f"already exists in {store.url}")
        time.sleep(0.1)


def _join_existing(row: StudyRow, store: AutotuneStorage, space: SearchSpace,
                   exist_ok: bool) -> Study:
    if not exist_ok:
        raise StudyExistsError(f"study {row.study_name!r} already exists in {store.url}; "
                               "choose another name or delete it first")
    study = Study(row, store)
    study.check_space(space)
    return study


def load_study(name: str, *, storage: str | None = None) -> Study:
    """Load an existing study. Raises :class:`StudyNotFoundError` naming the storage."""
    store = AutotuneStorage(storage)
    if store.exists:
        store.check_readable()
    row = store.get_study(name) if store.exists else None
    if row is not None and store.exists:
        import optuna

        if name not in optuna.get_all_study_names(store.optuna):
            row = None  # deleted with Optuna's own tools: only orphan rows remain
    if row is None:
        known = [r.study_name for r in store.list_studies()] if store.exists else []
        hint = f"; studies there: {', '.join(known[:10])}" if known else \
            "; create it with `autotune study create`"
        raise StudyNotFoundError(f"no study named {name!r} in {store.url}{hint}")
    return Study(row, store)


def list_studies(*, storage: str | None = None) -> list[Study]:
    """Every autotune study in the storage (empty if the database does not exist yet)."""
    import optuna

    store = AutotuneStorage(storage)
    if not store.exists:
        return []
    store.check_readable()
    rows = store.list_studies()
    if not rows:
        return []
    # A study deleted with Optuna's own tools leaves autotune rows behind: skip them.
    alive = set(optuna.get_all_study_names(store.optuna))
    return [Study(row, store) for row in rows if row.study_name in alive]


def delete_study(name: str, *, storage: str | None = None) -> None:
    """Delete a study: Optuna's trials and autotune's records."""
    import optuna

    study = load_study(name, storage=storage)
    # autotune's rows first: if Optuna's delete is interrupted, the study is simply gone
    # from autotune's view instead of leaving rows that point at nothing.
    study.storage.delete_study_rows(study._row.id)
    if name in optuna.get_all_study_names(study.storage.optuna):
        optuna.delete_study(study_name=name, storage=study.storage.optuna)
    study.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autotune")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = ["FAILURE_CONSTRAINT", "FrontPoint", "Study", "TrialResult", "create_study",
           "delete_study", "list_studies", "load_study", "make_sampler"]
