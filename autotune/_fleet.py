"""What a fleet of workers is doing on one study: trials per worker and per device, trials
per minute, workers gone silent, and the front per machine kind.

Read from what every trial records when it starts (:data:`autotune._liveness.WORKER_ATTR`,
``host:pid``; :data:`~autotune._liveness.MACHINE_ATTR`, the machine row) and from Optuna's
start and completion times; nothing is stored twice.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from autotune._liveness import MACHINE_ATTR, WORKER_ATTR, grace_period_s

if TYPE_CHECKING:
    from autotune.study import FrontPoint, Study

#: Trials per minute are counted over this recent window.
RATE_WINDOW_S = 600.0


@dataclass(frozen=True)
class WorkerStatus:
    """One worker process (``host:pid``) as the study's trials tell it."""

    worker: str
    machine: str  # its machine kind (CPU model and cores)
    finished: int
    running: int
    failed: int
    devices: dict[str, int]
    last_seen: str | None  # ISO time (UTC) of its latest trial start or end
    trials_per_min: float
    silent: bool  # holds a running trial but has not been heard of for the grace period


@dataclass(frozen=True)
class FleetStatus:
    """Every worker of a study, trials per device, and the study's recent pace."""

    workers: list[WorkerStatus]
    devices: dict[str, int]
    trials_per_min: float
    grace_s: int

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``study show --workers --json``)."""
        return {"workers": [asdict(w) for w in self.workers], "devices": self.devices,
                "trials_per_min": self.trials_per_min, "grace_s": self.grace_s}


def machine_kinds(study: Study, machine_ids: Iterable[int]) -> dict[int, str]:
    """Machine row id -> its kind: ``CPU model, N cores`` (machines of one kind compare)."""
    return {row.id: f"{row.cpu_model}, {row.logical_cores} cores"
            for row in study.storage.machine_rows(set(machine_ids))}


def fleet_status(study: Study, *, now: datetime.datetime | None = None) -> FleetStatus:
    """The workers of ``study`` and what they did (see the module)."""
    import optuna

    states = optuna.trial.TrialState
    now = now or datetime.datetime.now()  # Optuna's times are naive local times
    grace = grace_period_s()
    trials = study._optuna_study().get_trials(deepcopy=False)
    kinds = machine_kinds(study, {t.user_attrs[MACHINE_ATTR] for t in trials
                                  if isinstance(t.user_attrs.get(MACHINE_ATTR), int)})
    fixed_device = study.space.fixed_params().get("device", "cpu")
    by_worker: dict[str, list[Any]] = {}
    devices: dict[str, int] = {}
    for t in trials:
        device = str(t.params.get("device", fixed_device))
        if t.state.is_finished():
            devices[device] = devices.get(device, 0) + 1
        name = t.user_attrs.get(WORKER_ATTR)
        if name:
            by_worker.setdefault(str(name), []).append(t)
    window = datetime.timedelta(seconds=RATE_WINDOW_S)
    workers = []
    for name, mine in sorted(by_worker.items()):
        stamps = [d for t in mine for d in (t.datetime_start, t.datetime_complete) if d]
        last = max(stamps) if stamps else None
        running = sum(t.state == states.RUNNING for t in mine)
        recent = [t for t in mine if t.datetime_complete and now - t.datetime_complete <= window]
        worker_devices: dict[str, int] = {}
        for t in mine:
            device = str(t.params.get("device", fixed_device))
            worker_devices[device] = worker_devices.get(device, 0) + 1
        machine = next((kinds[t.user_attrs[MACHINE_ATTR]] for t in mine
                        if t.user_attrs.get(MACHINE_ATTR) in kinds), "unknown machine")
        workers.append(WorkerStatus(
            worker=name, machine=machine,
            finished=sum(t.state in (states.COMPLETE, states.FAIL) for t in mine),
            running=running, failed=sum(t.state == states.FAIL for t in mine),
            devices=worker_devices, last_seen=_iso(last),
            trials_per_min=_rate(recent, now),
            # a running trial whose worker was not heard of for the grace period: its
            # heartbeats have stopped too (the reaper will fail it at the next ask)
            silent=bool(running and last and (now - last).total_seconds() > grace
                        and _stale(study, mine)),
        ))
    finished = [t for t in trials if t.datetime_complete and
                now - t.datetime_complete <= window]
    return FleetStatus(workers=workers, devices=dict(sorted(devices.items())),
                       trials_per_min=_rate(finished, now),
                       grace_s=grace)


def _rate(finished: list[Any], now: datetime.datetime) -> float:
    """Trials per minute of ``finished`` (completed within the window), over the time
    since the first of them started (a run younger than the window is not diluted)."""
    starts = [t.datetime_start for t in finished if t.datetime_start]
    if not starts:
        return 0.0
    span = min(RATE_WINDOW_S, max(1.0, (now - min(starts)).total_seconds()))
    return round(float(len(finished)) / float(span) * 60.0, 2)


def _stale(study: Study, trials: list[Any]) -> bool:
    """Whether one of these running trials has no recent heartbeat (Optuna's own check)."""
    ostudy = study._optuna_study()
    stale = set(ostudy._storage._get_stale_trial_ids(ostudy._study_id))
    return any(t._trial_id in stale for t in trials)


def fronts_by_machine_kind(study: Study) -> dict[str, list[FrontPoint]]:
    """The Pareto front of each machine kind's trials (a fleet of mixed machines: where
    each kind of machine is best). Trials without a recorded machine are left out."""
    from autotune.pareto import pareto_front

    rows = {r.trial_number: r.machine_id for r in study.storage.measurements(study.id)}
    kinds = machine_kinds(study, set(rows.values()))
    everything = {p.trial_number: p for p in study.pareto_front()}
    trials = [t for t in study.trials() if t.feasible and t.values is not None]
    groups: dict[str, list[Any]] = {}
    for t in trials:
        kind = kinds.get(rows.get(t.number, -1))
        if kind is not None:
            groups.setdefault(kind, []).append(t)
    out: dict[str, list[FrontPoint]] = {}
    for kind, group in sorted(groups.items()):
        keys = pareto_front([(t.number, t.values or []) for t in group],
                            study.space.directions)
        points = []
        for number in sorted(keys):
            point = everything.get(number)
            if point is None:  # not on the overall front: build it as the front does
                point = study._front_point(next(t for t in group if t.number == number))
            points.append(point)
        out[kind] = points
    return out


def _iso(local: datetime.datetime | None) -> str | None:
    if local is None:
        return None
    return local.astimezone(datetime.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


__all__ = ["FleetStatus", "WorkerStatus", "fleet_status", "fronts_by_machine_kind",
           "machine_kinds"]
