"""Measure one configuration exactly as a trial would, outside any study; or re-run a stored
trial with its exact configuration and say what differs from when it was stored.

:func:`measure_trial` is the reproducibility half of a study: every stored trial keeps its
full :class:`~autotune.config.TrialConfig` (knobs, resolved execution, budget, seed), the
fingerprint of the machine it ran on, and, when it was measured, the worker's thread count,
framework versions and performance environment variables (OMP/MKL...). Re-running compares
all of them with the re-run's, because a throughput that moved is only explained by what
else moved.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune import drift
from autotune._run import RunResult, launcher_for, run_config, trial_config
from autotune.config import TrialConfig
from autotune.exceptions import (
    AutotuneError,
    NonFiniteLossError,
    OutOfMemoryError,
    StudyError,
    TrialError,
    UnsupportedConfigError,
)
from autotune.launch import Launcher, ProcessLauncher
from autotune.profiling.fingerprint import fingerprint_hash, machine_fingerprint
from autotune.profiling.measurement import Measurement
from autotune.space import check_measurable, parse_space

if TYPE_CHECKING:
    from autotune.storage._models import MeasurementRow
    from autotune.study import Study

_INFEASIBLE: dict[str, type[TrialError]] = {
    "oom": OutOfMemoryError, "unsupported": UnsupportedConfigError,
    "nan_loss": NonFiniteLossError,
}
#: Fingerprint keys compared one by one (``framework_versions`` is compared per package).
_MACHINE_KEYS = ("cpu_model", "cpu_flags", "logical_cores", "physical_cores",
                 "memory_total_mb", "os", "python")


def measure(workload: str, mode: str, *, budget: dict[str, Any] | None = None,
            seed: int = 0, launcher: Launcher | None = None, **knobs: Any) -> Measurement:
    """Run one trial of ``workload`` in ``mode`` with ``knobs`` (named as in a space file:
    backend, device, batch_size, precision, learning_rate, optimizer, pruning_ratio,
    pruning_structure, execution, threads) and return its :class:`Measurement`.

    Knobs are validated like a space file (a training knob in infer mode is an error).
    Raises :class:`OutOfMemoryError`, :class:`UnsupportedConfigError` or
    :class:`NonFiniteLossError` when the configuration cannot be measured, and
    :class:`AutotuneError` when the worker crashes or times out. ``launcher`` (e.g. a
    :class:`~autotune.launch.WarmLauncher` kept open over many calls) replaces the fresh
    worker process each call starts by default; it stays open.
    """
    space = parse_space({"workload": workload, "mode": mode,
                         "objectives": {"throughput_sps": "maximize"},
                         "params": knobs, "budget": budget or {}},
                        source="measure")
    check_measurable(space.budget, "measure")
    config = trial_config(space, {}, seed=seed)
    with launcher_for(launcher, ProcessLauncher) as active:
        return _measurement_of(run_config(config, active))


def _measurement_of(run: RunResult, *, context: str = "", stored: str = "") -> Measurement:
    """The run's measurement, or the typed error a failed run stands for.

    ``context`` prefixes the message; ``stored`` (how the stored trial ended) follows it.
    """
    if run.measurement is not None:
        return run.measurement
    suffix = f" ({stored})" if stored else ""
    if run.state == "infeasible":
        raise _INFEASIBLE.get(run.failure_kind or "", TrialError)(
            f"{context}{run.reason}{suffix}")
    raise AutotuneError(f"{context}measurement failed ({run.failure_kind}): "
                        f"{run.reason}{suffix}")


# -- re-running a stored trial ---------------------------------------------------------------


@dataclass(frozen=True)
class StoredTrial:
    """A stored trial as far as re-running it is concerned.

    ``state`` is the stored row's: ``ok``, ``infeasible`` (out of memory, unsupported,
    diverged, an objective not measured) or ``fail`` (crash, timeout, killed worker).
    ``measurement`` is ``None`` when the trial produced none; ``metrics`` is the summary
    the study showed for it (empty then). ``machine`` is the fingerprint of the machine it
    ran on.
    """

    study: str
    number: int
    state: str
    failure_kind: str | None
    reason: str
    config: TrialConfig
    metrics: dict[str, Any]
    measurement: Measurement | None
    machine: dict[str, Any]
    #: metrics worth comparing: throughput first, then the study's objectives and
    #: constrained metrics
    compared_metrics: tuple[str, ...] = ("throughput_sps",)

    def describe(self) -> str:
        """How the stored trial ended, in a few words (``ok``, ``infeasible (oom: ...)``)."""
        if self.state == "ok":
            return "ok"
        return f"{self.state} ({self.failure_kind}: {self.reason})" if self.reason else \
            f"{self.state} ({self.failure_kind})"


@dataclass(frozen=True)
class Difference:
    """One way the re-run's conditions differ from the stored trial's.

    ``kind`` is ``machine`` (hardware, OS, Python: another machine or an upgraded one),
    ``framework`` (a framework version), ``threads``, ``environment`` (a performance
    variable such as ``OMP_NUM_THREADS``; ``None`` means unset), ``worker`` (warm worker vs
    fresh process), ``contention`` (another process used the trial's cores) or ``outcome``
    (the stored trial did not produce a measurement, the re-run did).
    """

    kind: str
    name: str
    stored: Any
    now: Any
    note: str = ""

    @property
    def message(self) -> str:
        """One line: what differs, stored then now."""
        def show(value: Any) -> str:
            return "unset" if value is None else repr(value) if isinstance(value, str) \
                else json.dumps(value)

        what = self.kind if self.name == self.kind else f"{self.kind} {self.name}"
        text = f"{what}: {show(self.stored)} when stored, {show(self.now)} now"
        return f"{text} ({self.note})" if self.note else text

    def to_dict(self) -> dict[str, Any]:
        """JSON form (with the rendered ``message``)."""
        return {**dataclasses.asdict(self), "message": self.message}


@dataclass(frozen=True)
class Remeasurement:
    """A stored trial re-run with its exact configuration.

    ``measurement`` is the re-run's; ``stored`` the stored trial; ``machine`` the re-run's
    machine fingerprint; ``differences`` what differs between the conditions of the two runs
    (warnings, not errors: the re-run is still a valid measurement of the configuration).
    """

    stored: StoredTrial
    measurement: Measurement
    machine: dict[str, Any]
    differences: tuple[Difference, ...] = field(default=())

    @property
    def config(self) -> TrialConfig:
        """The configuration both runs measured."""
        return self.stored.config

    @property
    def throughput_ratio(self) -> float | None:
        """Re-run throughput over stored throughput (``None`` without a stored figure)."""
        return self.verdict.ratio

    @property
    def verdict(self) -> drift.Verdict:
        """The throughput judged as a study's drift recheck judges it
        (:func:`autotune.drift.compare`): ``stable``, ``drifting`` (more than 10 % off and
        outside the stored 95 % interval) or ``inconclusive``."""
        return drift.compare(self.stored.metrics, self.measurement.summary())

    def comparison(self) -> dict[str, dict[str, Any]]:
        """Per compared metric: ``stored``, ``now`` and ``ratio`` (now / stored)."""
        now = self.measurement.summary()
        out: dict[str, dict[str, Any]] = {}
        for metric in self.stored.compared_metrics:
            a, b = self.stored.metrics.get(metric), now.get(metric)
            ratio = b / a if isinstance(a, int | float) and isinstance(b, int | float) \
                and a != 0 else None
            out[metric] = {"stored": a, "now": b, "ratio": ratio}
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (what ``autotune measure --from-trial --json``
        prints)."""
        stored = self.stored
        return {
            "study": stored.study,
            "trial": stored.number,
            "workload": stored.config.workload,
            "mode": stored.config.mode,
            "knobs": stored.config.knobs(),
            "config": stored.config.to_dict(),
            "metrics": self.measurement.summary(),
            "measurement": self.measurement.to_dict(),
            "stored": {"state": stored.state, "failure_kind": stored.failure_kind,
                       "reason": stored.reason, "metrics": stored.metrics,
                       "threads": stored.measurement.threads if stored.measurement else None,
                       "versions": stored.measurement.versions if stored.measurement else None,
                       "environment": stored.measurement.environment
                       if stored.measurement else None},
            "comparison": self.comparison(),
            "verdict": dataclasses.asdict(self.verdict),
            "machine": {"stored_hash": fingerprint_hash(stored.machine) if stored.machine
                        else None, "now_hash": fingerprint_hash(self.machine),
                        "stored_hostname": stored.machine.get("hostname"),
                        "now_hostname": self.machine.get("hostname")},
            "differences": [d.to_dict() for d in self.differences],
        }


def stored_trial(study: str, number: int, *, storage: str | None = None) -> StoredTrial:
    """Trial ``number`` of ``study`` as stored: its exact configuration, how it ended, its
    measurement and machine. Nothing is run and nothing is written.

    Raises :class:`StudyNotFoundError` for an unknown study and :class:`StudyError` for a
    trial number the study does not have, or a trial that stored no configuration (still
    running, a queued retry, interrupted before it was recorded).
    """
    from autotune.study import load_study

    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise StudyError(f"trial numbers are integers from 0, got {number!r}")
    with load_study(study, storage=storage) as s:
        row = _measurement_row(s, number)
        config = _stored_config(s.name, number, row)
        raw = json.loads(row.raw_json or "{}")
        compared = ["throughput_sps", *s.space.objective_names,
                    *(c.metric for c in s.space.constraints)]
        return StoredTrial(
            study=s.name, number=number, state=row.state, failure_kind=row.failure_kind,
            reason=row.reason, config=config, metrics=json.loads(row.metrics_json or "{}"),
            measurement=_stored_measurement(raw), machine=s.storage.get_machine(row.machine_id),
            compared_metrics=tuple(dict.fromkeys(compared)))


def _measurement_row(study: Study, number: int) -> MeasurementRow:
    """The autotune row of trial ``number``; a clear error when there is none."""
    # The study's own id: autotune's rows reference studies by it (see storage/_models.py).
    row = study.storage.measurement(study.id, number)
    if row is not None:
        return row
    trials = study.trials()
    by_number = {t.number: t for t in trials}
    name = study.name
    if not trials:
        raise StudyError(f"study {name!r} has no trials yet; run some with "
                         f"`autotune study run {name}`")
    if number not in by_number:
        has = "trial 0 only" if len(trials) == 1 else f"trials 0-{max(by_number)}"
        raise StudyError(f"study {name!r} has no trial {number}: it has {has} "
                         f"(`autotune study show {name} --all` lists them)")
    t = by_number[number]
    if t.state == "running":
        why = "is still running: nothing is stored for it yet"
    elif t.state == "waiting":
        why = ("is waiting: a crashed trial's retry, queued for the next `autotune study "
               "run`, not run yet")
    elif t.state == "fail":
        detail = f"{t.failure_kind}: {t.reason}" if t.reason else str(t.failure_kind)
        why = f"failed ({detail}) before its configuration was stored"
    else:
        why = f"is {t.state} but has no stored configuration (its autotune record is missing)"
    raise StudyError(f"trial {number} of {name!r} {why}; nothing to re-run")


def _stored_config(study: str, number: int, row: MeasurementRow) -> TrialConfig:
    try:
        return TrialConfig.from_dict(json.loads(row.config_json))
    except (TypeError, KeyError, ValueError) as e:  # a row written by another version
        raise StudyError(f"the stored configuration of trial {number} of {study!r} cannot be "
                         f"read by this autotune version: {e}") from None


def _stored_measurement(raw: dict[str, Any]) -> Measurement | None:
    """Rebuild a :class:`Measurement` from its stored ``to_dict()`` (``None``: none stored).

    JSON turned the tuples into lists; fields a newer autotune added are ignored and fields
    an older one lacked take their defaults.
    """
    if not raw:
        return None
    known = {f.name for f in dataclasses.fields(Measurement)}
    data = {k: v for k, v in raw.items() if k in known}
    data["step_times_s"] = tuple(data.get("step_times_s", ()))
    data["warnings"] = tuple(data.get("warnings", ()))
    try:
        return Measurement(**data)
    except TypeError:  # a required field is missing: compare without the stored details
        return None


def measure_trial(study: str, number: int, *, storage: str | None = None,
                  launcher: Launcher | None = None) -> Remeasurement:
    """Re-run trial ``number`` of ``study`` with its exact stored configuration (knobs,
    resolved execution, budget and seed) and compare with the stored trial.

    The re-run runs in a fresh worker process (a study's trials ran on warm workers: that
    difference is reported, it changes start-up costs, not the measured window). Trials that
    ended infeasible or failed can be re-run too, to reproduce the failure. Nothing is
    written to the storage. ``launcher`` replaces the fresh-process launcher (tests).

    Returns a :class:`Remeasurement`: the new :class:`Measurement` with the stored metrics
    and the :class:`Difference` list (machine fingerprint, framework versions, thread
    count, performance environment variables...). Raises like :func:`measure` when the
    re-run produces no measurement (the message says how the stored trial ended), and like
    :func:`stored_trial` for a study or trial that cannot be re-run.
    """
    stored = stored_trial(study, number, storage=storage)
    fingerprint = machine_fingerprint()
    with launcher_for(launcher, ProcessLauncher) as active:
        run = run_config(stored.config, active)
    measurement = _measurement_of(
        run, context=f"re-run of trial {number} of {stored.study!r}: ",
        stored="stored: " + stored.describe())
    return Remeasurement(stored=stored, measurement=measurement, machine=fingerprint,
                         differences=tuple(differences(stored, measurement, fingerprint)))


def differences(stored: StoredTrial, now: Measurement,
                machine: dict[str, Any]) -> list[Difference]:
    """What differs between the stored trial's conditions and a re-run's (``now`` measured
    on ``machine``): machine, framework versions, threads, environment, worker, contention.
    """
    out: list[Difference] = []
    if stored.machine:
        same = fingerprint_hash(stored.machine) == fingerprint_hash(machine)
        if not same:
            for key in _MACHINE_KEYS:
                if stored.machine.get(key) != machine.get(key):
                    out.append(Difference("machine", key, stored.machine.get(key),
                                          machine.get(key)))
            out.extend(_dict_differences("framework",
                                         stored.machine.get("framework_versions") or {},
                                         machine.get("framework_versions") or {}))
            if not out:  # a key this version does not know about changed the hash
                out.append(Difference("machine", "fingerprint_hash",
                                      fingerprint_hash(stored.machine),
                                      fingerprint_hash(machine)))
        if stored.machine.get("hostname") != machine.get("hostname"):
            out.append(Difference(
                "machine", "hostname", stored.machine.get("hostname"), machine.get("hostname"),
                "same hardware and software" if same else ""))
    old = stored.measurement
    if stored.state != "ok":
        out.append(Difference(
            "outcome", "outcome", stored.describe(), "ok",
            "" if old is not None else "nothing stored to compare threads, framework "
            "versions and environment with"))
    if old is None:
        return out
    reported = {d.name for d in out if d.kind == "framework"}
    out.extend(d for d in _dict_differences("framework", old.versions, now.versions)
               if d.name not in reported)
    if old.threads != now.threads:
        note = "threads not pinned: the worker used every core it could" \
            if stored.config.threads is None else ""
        out.append(Difference("threads", "threads", old.threads, now.threads, note))
    out.extend(_dict_differences("environment", old.environment, now.environment))
    if bool(old.worker.get("warm")) and not now.worker.get("warm"):
        out.append(Difference(
            "worker", "worker", f"warm worker, its trial {old.worker.get('trial', '?')}",
            "fresh process", "start-up costs differ; the measured window should not"))
    if old.contended or now.contended:
        out.append(Difference("contention", "foreign_cpu_fraction",
                              old.contention.get("foreign_fraction"),
                              now.contention.get("foreign_fraction"),
                              "another process used the trial's cores"))
    return out


def _dict_differences(kind: str, stored: dict[str, Any],
                      now: dict[str, Any]) -> list[Difference]:
    """One :class:`Difference` per key whose value differs (``None``: absent)."""
    return [Difference(kind, key, stored.get(key), now.get(key))
            for key in sorted(set(stored) | set(now)) if stored.get(key) != now.get(key)]
