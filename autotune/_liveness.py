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

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
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
#: User attribute naming the orphan (a trial no worker claimed) a queued trial puts back.
REQUEUE_ATTR = "autotune_requeue_of"
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


class Reaper:
    """Reaps one study's lost trials, for one worker: ask it to :meth:`reap` before every
    ``ask``. Safe to run from every worker at once: Optuna lets exactly one of them change
    a trial's state, and only one records it (the measurement row is the claim) and queues
    its configuration again.

    A trial is lost when its worker stopped beating (SIGKILL, a lost machine): it is
    failed, recorded ``worker_lost`` and queued again once. A trial that no worker ever
    claimed (an ``ask`` whose reply a dropped connection lost) is an orphan: failed after
    :func:`orphan_after_s` of this reaper's own watching, and put back in the queue when it
    came from there. Time is read from the database (heartbeats) and from this process's
    monotonic clock (orphans), never by comparing two machines' clocks.
    """

    def __init__(self, study: Study, ostudy: Any) -> None:
        self.study = study
        self.ostudy = ostudy
        #: trial id -> when (``time.monotonic()``) this reaper first saw it unclaimed
        self._unclaimed_since: dict[int, float] = {}
        #: failed trials already known to be recorded (not looked up again)
        self._recorded: set[int] = set()

    def reap(self) -> list[int]:
        """Reap what is lost now; returns the numbers of the trials this reaper failed or
        recorded."""
        storage = self.ostudy._storage  # Optuna's cache in front of the RDBStorage
        if not callable(getattr(storage, "_get_stale_trial_ids", None)) or \
                storage.get_heartbeat_interval() is None:
            return []
        budget = self.study.storage.retry_s
        retrying(self._fail_stale, "reaping lost trials", budget_s=budget)
        numbers = retrying(self._record_unrecorded, "recording lost trials", budget_s=budget)
        orphans = retrying(self._fail_orphans, "reaping trials that never started",
                           budget_s=budget)
        return sorted(numbers + orphans)

    def _fail_stale(self) -> None:
        """Fail the running trials whose heartbeat is older than the grace period (the
        database's clock on both sides). Recording them is :meth:`_record_unrecorded`'s
        job, so a reaper that dies right after the state change loses nothing: the next
        one records the trial."""
        import optuna

        storage = self.ostudy._storage
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for trial_id in storage._get_stale_trial_ids(self.ostudy._study_id):
                # finished meanwhile: another worker reaped it, or its own worker told it
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    storage.set_trial_state_values(trial_id,
                                                   state=optuna.trial.TrialState.FAIL)

    def _record_unrecorded(self) -> list[int]:
        """Record the lost trials nobody recorded yet: failed, claimed by a worker (so
        they had heartbeats), without the ``failure_kind`` every autotune worker sets
        before it fails a trial itself, and without a measurement row."""
        import optuna

        recorded = []
        for trial in self.ostudy.get_trials(deepcopy=False,
                                            states=(optuna.trial.TrialState.FAIL,)):
            if trial._trial_id in self._recorded or WORKER_ATTR not in trial.user_attrs \
                    or "failure_kind" in trial.user_attrs:
                continue
            if self.study.storage.measurement(self.study.id, trial.number) is None:
                try:
                    if _record_lost(self.study, self.ostudy, trial):
                        recorded.append(trial.number)
                except Exception:  # recording another worker's loss must not stop this one
                    _logger.warning("could not record lost trial %d", trial.number,
                                    exc_info=True)
                    continue
            self._recorded.add(trial._trial_id)
        return recorded

    def _fail_orphans(self) -> list[int]:
        """Fail the running trials no worker claimed (no worker name, so no heartbeat)
        while this reaper watched them for :func:`orphan_after_s`. They never ran, so
        nothing of them is lost; one that came from the queue (a retry) is put back."""
        import optuna

        storage = self.ostudy._storage
        now = time.monotonic()
        running = {t._trial_id: t for t in self.ostudy.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            if WORKER_ATTR not in t.user_attrs}
        self._unclaimed_since = {tid: self._unclaimed_since.get(tid, now)
                                 for tid in running}
        failed = []
        for trial_id, since in list(self._unclaimed_since.items()):
            if now - since < orphan_after_s():
                continue
            trial = running[trial_id]
            queued = trial.system_attrs.get("fixed_params")
            try:
                storage.set_trial_user_attr(trial_id, "failure_kind", "worker_lost")
                storage.set_trial_user_attr(
                    trial_id, "reason",
                    f"never started: no worker claimed it within {orphan_after_s()} s of "
                    "its ask (the ask's reply was lost to a dropped connection, or it came "
                    "from an autotune without heartbeats); " +
                    ("put back in the queue" if queued else
                     "not queued again: it never ran"))
                if not storage.set_trial_state_values(trial_id,
                                                      state=optuna.trial.TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # claimed meanwhile is impossible (no worker name); reaped by another
            finally:
                self._unclaimed_since.pop(trial_id, None)
            failed.append(trial.number)
            _logger.warning("trial %d failed: never started by any worker", trial.number)
            if queued:
                enqueue_once(self.ostudy, queued, {**trial.user_attrs,
                                                   REQUEUE_ATTR: trial.number},
                             REQUEUE_ATTR, trial.number, budget_s=self.study.storage.retry_s)
        return failed


def orphan_after_s() -> int:
    """Seconds a reaper watches a running trial that no worker claimed (no worker name, no
    heartbeat) before it fails it as an orphan: longer than the storage retry budget, which
    a live worker may spend between its ask and its claim."""
    return 3 * grace_period_s()


def enqueue_once(ostudy: Any, params: dict[str, Any], user_attrs: dict[str, Any],
                 marker: str, number: int, *, budget_s: float) -> bool:
    """Queue ``params`` with ``user_attrs`` (which carry ``marker: number``) unless a
    trial carrying that marker is already there: a retried enqueue whose first commit's
    reply was lost does not queue the configuration twice. Returns whether it queued."""
    def enqueue() -> bool:
        if any(t.user_attrs.get(marker) == number for t in ostudy.get_trials(deepcopy=False)):
            return False
        ostudy.enqueue_trial(params, user_attrs=user_attrs)
        return True

    return bool(retrying(enqueue, "queueing a trial again", budget_s=budget_s))


def _record_lost(study: Study, ostudy: Any, trial: Any) -> bool:
    """Record ``trial`` as lost and queue it again unless it was a retry; ``False`` when
    another reaper's row was there first (that reaper queues it)."""
    from autotune._run import trial_config
    from autotune.storage._models import MeasurementRow

    grace = grace_period_s()
    holder = trial.user_attrs.get(WORKER_ATTR, "its worker")
    retried = RETRY_ATTR in trial.user_attrs
    reason = (f"{holder} stopped sending heartbeats for over {grace} s (killed, or its "
              "machine was lost); " + ("this was already the retry of trial "
                                       f"{trial.user_attrs[RETRY_ATTR]}: not queued again"
                                       if retried else "its configuration is queued again"))
    machine = trial.user_attrs.get(MACHINE_ATTR)
    config = trial_config(study.space, trial.params, seed=study.seed or 0)
    if isinstance(machine, int):
        # the row is the claim: of the reapers recording this trial at once, the one
        # whose row is stored queues the retry (its token tells its own row from another's)
        claimed = study.storage.add_measurement(MeasurementRow(
            study_id=study.id, trial_number=trial.number, machine_id=machine, state="fail",
            failure_kind="worker_lost", reason=reason, traceback="",
            config_json=json.dumps(config.to_dict()), metrics_json="{}",
            raw_json=json.dumps({"recorded_by": f"{worker_name()}/{uuid.uuid4().hex}"}),
            wall_s=0.0))
        if not claimed:
            return False
    _logger.warning("trial %d lost: %s", trial.number, reason)
    if not retried:
        enqueue_once(ostudy, trial.params, {RETRY_ATTR: trial.number}, RETRY_ATTR,
                     trial.number, budget_s=study.storage.retry_s)
    return True


__all__ = ["GRACE_INTERVALS", "HEARTBEAT_S", "MACHINE_ATTR", "REQUEUE_ATTR", "RETRY_ATTR",
           "WORKER_ATTR", "Reaper", "enqueue_once", "grace_period_s", "heartbeat",
           "heartbeat_interval_s", "orphan_after_s", "worker_name"]
