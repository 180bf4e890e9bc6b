"""Heartbeats for running trials, and the reaper of trials whose worker died.

A process running a trial (``study run``, ``autotune worker``) records a heartbeat for it
every :func:`heartbeat_interval_s` seconds in Optuna's own heartbeat table. Before every
``ask`` any process of the study reaps the trials whose heartbeat is older than the grace
period (:func:`grace_period_s`): the worker was SIGKILLed or its machine was lost. A reaped
trial is failed with ``failure_kind: worker_lost`` (in autotune's measurement table, with
the machine and worker that held it) and its configuration is queued again once; a retry
that is lost as well is not queued a third time. Out-of-memory and unsupported
configurations are never retried (they end COMPLETE as infeasible, not here).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from autotune.storage._retry import retrying

if TYPE_CHECKING:
    from autotune.study import Study

_logger = logging.getLogger("autotune.study")

# Optuna warns at every ask() that heartbeats are meant for Study.optimize; autotune's
# ask/tell loop records them itself (heartbeat() below), so the note says nothing here.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used",
                        category=UserWarning)

#: Seconds between heartbeats of a running trial (``$AUTOTUNE_HEARTBEAT_S`` overrides it).
#: With :data:`GRACE_INTERVALS` a trial is reaped after 60 s of silence: long enough that
#: a database restart of a few tens of seconds does not look like dead workers.
HEARTBEAT_S = 15
#: A trial whose last heartbeat is this many intervals old is reaped.
GRACE_INTERVALS = 4
#: User attribute naming the trial a retry re-runs (a crash's or a lost worker's).
RETRY_ATTR = "autotune_retry_of"
#: User attributes naming where a trial runs: the machine row and ``host:pid``.
MACHINE_ATTR, WORKER_ATTR = "autotune_machine", "autotune_worker"


def heartbeat_interval_s() -> int:
    """:data:`HEARTBEAT_S`, or ``$AUTOTUNE_HEARTBEAT_S`` (a positive integer) when set."""
    try:
        value = int(os.environ.get("AUTOTUNE_HEARTBEAT_S", HEARTBEAT_S))
    except ValueError:
        return HEARTBEAT_S
    return value if value >= 1 else HEARTBEAT_S


def grace_period_s() -> int:
    """Seconds without a heartbeat after which a running trial counts as lost."""
    return GRACE_INTERVALS * heartbeat_interval_s()


def worker_name() -> str:
    """``host:pid`` of this process: what a trial records as its worker."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Record heartbeats for Optuna trial ``trial_id`` on ``storage`` (an
    ``RDBStorage``) while the block runs. A beat that fails (the database is restarting)
    is skipped: the next one is due within the interval, well inside the grace period."""
    stop = threading.Event()
    interval = heartbeat_interval_s()

    def beat() -> None:
        while not stop.is_set():
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # transient: the reaper's grace covers a few missed beats
                _logger.debug("heartbeat of trial %d failed", trial_id, exc_info=True)
            stop.wait(interval)

    thread = threading.Thread(target=beat, name=f"autotune-heartbeat-{trial_id}",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)


def reap_lost_trials(study: Study, ostudy: Any) -> list[int]:
    """Fail the study's running trials whose worker stopped beating, record each as
    ``worker_lost`` and queue its configuration again once. Returns their numbers.

    Safe to run from every worker at once: Optuna lets exactly one of them change a
    trial's state, and only that one records and re-queues it.
    """
    import optuna

    storage = ostudy._storage  # Optuna's cache in front of the RDBStorage: it beats too
    if not callable(getattr(storage, "_get_stale_trial_ids", None)) or \
            storage.get_heartbeat_interval() is None:
        return []
    reaped: list[int] = []

    def reap() -> None:
        for trial_id in storage._get_stale_trial_ids(ostudy._study_id):
            try:
                if storage.set_trial_state_values(trial_id,
                                                  state=optuna.trial.TrialState.FAIL):
                    reaped.append(trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker reaped it, or its own worker told it just now

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retrying(reap, "reaping lost trials", budget_s=study.storage.retry_s)
    orphans = retrying(lambda: _fail_orphans(ostudy), "reaping trials that never started",
                       budget_s=study.storage.retry_s)
    numbers = []
    for trial_id in reaped:
        try:
            trial = retrying(lambda tid=trial_id: storage.get_trial(tid),  # type: ignore[misc]
                             "reading a lost trial", budget_s=study.storage.retry_s)
            _record_lost(study, ostudy, trial)
        except Exception:  # recording another worker's loss must not stop this worker
            _logger.warning("could not record lost trial (id %d)", trial_id, exc_info=True)
            continue
        numbers.append(trial.number)
    return sorted(numbers + orphans)


def orphan_after_s() -> int:
    """Seconds after which a running trial that no worker ever claimed (no worker name,
    no heartbeat) counts as orphaned: generous, as trial start times come from the clock of
    the machine that asked."""
    return 3 * grace_period_s()


def _fail_orphans(ostudy: Any) -> list[int]:
    """Fail the running trials no worker claimed within :func:`orphan_after_s`: an ``ask``
    whose reply was lost to a dropped connection (its worker asked again and ran that
    one) or a process of an autotune without heartbeats. They never ran, so nothing of
    them is lost and they are not queued again."""
    import datetime

    import optuna

    storage = ostudy._storage
    now = datetime.datetime.now()  # Optuna stores start times as naive local times
    limit = datetime.timedelta(seconds=orphan_after_s())
    failed = []
    for trial in ostudy.get_trials(deepcopy=False,
                                   states=(optuna.trial.TrialState.RUNNING,)):
        if WORKER_ATTR in trial.user_attrs or trial.datetime_start is None or \
                now - trial.datetime_start < limit:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, "failure_kind", "worker_lost")
            storage.set_trial_user_attr(
                trial._trial_id, "reason",
                f"never started: no worker claimed it within {orphan_after_s()} s of its "
                "ask (the ask's reply was lost to a dropped connection, or it came from an "
                "autotune without heartbeats); not queued again: it never ran")
            if storage.set_trial_state_values(trial._trial_id,
                                              state=optuna.trial.TrialState.FAIL):
                failed.append(trial.number)
                _logger.warning("trial %d failed: never started by any worker", trial.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    return failed


def _record_lost(study: Study, ostudy: Any, trial: Any) -> None:
    from autotune._run import trial_config
    from autotune.storage._models import MeasurementRow

    grace = grace_period_s()
    holder = trial.user_attrs.get(WORKER_ATTR, "its worker")
    retried = RETRY_ATTR in trial.user_attrs
    reason = (f"{holder} stopped sending heartbeats for over {grace} s (killed, or its "
              "machine was lost); " + ("this was already the retry of trial "
                                       f"{trial.user_attrs[RETRY_ATTR]}: not queued again"
                                       if retried else "its configuration is queued again"))
    _logger.warning("trial %d lost: %s", trial.number, reason)
    machine = trial.user_attrs.get(MACHINE_ATTR)
    config = trial_config(study.space, trial.params, seed=study.seed or 0)
    if isinstance(machine, int):
        study.storage.add_measurement(MeasurementRow(
            study_id=study.id, trial_number=trial.number, machine_id=machine, state="fail",
            failure_kind="worker_lost", reason=reason, traceback="",
            config_json=json.dumps(config.to_dict()), metrics_json="{}", raw_json="{}",
            wall_s=0.0))
    if not retried:
        retrying(lambda: ostudy.enqueue_trial(trial.params,
                                              user_attrs={RETRY_ATTR: trial.number}),
                 "queueing a lost trial again", budget_s=study.storage.retry_s)


__all__ = ["GRACE_INTERVALS", "HEARTBEAT_S", "MACHINE_ATTR", "RETRY_ATTR", "WORKER_ATTR",
           "grace_period_s", "heartbeat", "heartbeat_interval_s", "orphan_after_s",
           "reap_lost_trials",
           "worker_name"]
