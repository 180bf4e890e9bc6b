"""Many workers, many machines, one study: concurrent workers on PostgreSQL and SQLite,
``--jobs`` with disjoint cores, heartbeats and the reaper, lost connections, and the bad
inputs of a fleet. Workers are real ``autotune worker`` processes running the numpy fake
backend (a trial takes a fraction of a second), so the test is of the coordination."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

import autotune
from autotune._fleet import fleet_status, fronts_by_machine_kind
from autotune._jobs import (
    assign_devices,
    check_storage_for_workers,
    core_slots,
    filesystem_type,
    worker_devices,
)
from autotune._liveness import (
    MACHINE_ATTR,
    REQUEUE_ATTR,
    RETRY_ATTR,
    WORKER_ATTR,
    Reaper,
    enqueue_once,
    orphan_after_s,
)
from autotune.exceptions import StudyError
from autotune.profiling.fingerprint import machine_fingerprint
from autotune.space import parse_space
from autotune.storage._retry import is_transient, retrying
from autotune.testing import FakeLauncher
from autotune.testing.storages import StorageSupplier, admin_connect, optuna_storage
from tests.processes import alive, children

NUMPY = "autotune.testing.fake_backend:NumpyBackend"
TINY = "autotune.testing.workloads:tiny"
# early stopping off: these tests count complete trials of a fleet (tests/test_screening.py
# covers pruning)
FAST = {"trial_seconds": 30, "warmup_max_s": 0.02, "window_min_s": 0.02,
        "window_min_steps": 5, "window_max_s": 0.05, "train_epochs": 1, "early_stop": False}


def fast_space(**budget: Any) -> dict[str, Any]:
    return {"workload": TINY, "mode": "train", "objectives": {"throughput_sps": "maximize"},
            "params": {"backend": NUMPY, "batch_size": [8, 16, 32, 64, 128],
                       "threads": [1], "optimizer": "sgd",
                       "learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}},
            "budget": {**FAST, **budget}}


def worker(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """An ``autotune worker`` process on study ``fleet``."""
    return subprocess.Popen(
        [sys.executable, "-m", "autotune", "worker", "fleet", "--storage", url, "--quiet",
         "--recheck-every", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def states(url: str) -> dict[str, int]:
    with optuna_storage(url) as storage:
        trials = optuna.load_study(study_name="fleet", storage=storage).get_trials()
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def assert_front_consistent(study: autotune.Study) -> None:
    """The stored front equals the front recomputed from every trial, and every
    completed trial left exactly one snapshot."""
    stored = study.storage.front_trial_numbers(study.id)
    assert stored == sorted(p.trial_number for p in study.pareto_front())
    completed = [t.number for t in study.trials() if t.state in ("ok", "infeasible")]
    snapshots = [s.trial_number for s in study.front_history()]
    assert sorted(snapshots) == sorted(completed)
    assert study.front_history()[-1].front == stored


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    with StorageSupplier("postgresql", tmp_path, prefix="autotune_fleet") as url:
        yield url


# -- the concurrency contract on the real PostgreSQL --------------------------------------------


@pytest.mark.postgres
def test_eight_workers_times_25_trials_on_one_study(postgres: str) -> None:
    autotune.create_study("fleet", parse_space(fast_space()), storage=postgres,
                          seed=0).close()
    procs = [worker(postgres, "--n-trials", "25") for _ in range(8)]
    outcomes = [finish(p) for p in procs]
    assert all(code == 0 for code, _ in outcomes), [o[-3000:] for c, o in outcomes if c][:1]
    assert states(postgres) == {"COMPLETE": 200}  # nothing RUNNING, failed or waiting
    with autotune.load_study("fleet", storage=postgres) as study:
        numbers = [t.number for t in study.trials()]
        assert sorted(numbers) == list(range(200))  # no duplicate trial numbers
        assert len(study.storage.measurements(study.id)) == 200
        assert_front_consistent(study)
        workers = {t.metrics["worker"]["pid"] for t in study.trials()}
        assert len(workers) >= 8  # every worker process ran trials of its own
        fleet = fleet_status(study)
        assert len(fleet.workers) == 8 and fleet.devices == {"cpu": 200}
        assert sum(w.finished for w in fleet.workers) == 200
        assert not any(w.silent or w.running for w in fleet.workers)
        assert fleet.trials_per_min > 0


@pytest.mark.postgres
def test_a_worker_killed_mid_trial_is_reaped_and_its_trial_run_once(
        postgres: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"AUTOTUNE_HEARTBEAT_S": "1"}  # grace: 4 s
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")
    autotune.create_study("fleet", parse_space(fast_space(window_min_s=1.5,
                                                          window_max_s=2)),
                          storage=postgres, seed=0).close()
    doomed = worker(postgres, "--n-trials", "5", env=env)
    storage = optuna.storages.RDBStorage(postgres)
    ostudy = optuna.load_study(study_name="fleet", storage=storage)
    deadline = time.monotonic() + 60
    while not any(t.state == optuna.trial.TrialState.RUNNING and WORKER_ATTR in t.user_attrs
                  for t in ostudy.get_trials(deepcopy=False)):
        assert time.monotonic() < deadline and doomed.poll() is None, finish(doomed)
        time.sleep(0.1)
    time.sleep(0.5)  # its warm worker is measuring now
    helpers = children(doomed.pid)
    assert helpers, "the worker runs its trial in a warm worker process of its own"
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()  # reaped, its pipes closed
    # the trial process dies with its worker (PR_SET_PDEATHSIG), holding no core
    _wait_until(lambda: not any(alive(p) for p in helpers), 10, "the trial process to end")
    lost = [t for t in ostudy.get_trials(deepcopy=False)
            if t.state == optuna.trial.TrialState.RUNNING]
    assert len(lost) == 1
    killed_at = time.monotonic()
    time.sleep(5)  # past the grace: the fleet view calls it silent
    with autotune.load_study("fleet", storage=postgres) as study:
        silent = [w for w in fleet_status(study).workers if w.silent]
        assert [w.worker for w in silent] == [lost[0].user_attrs[WORKER_ATTR]]
    survivor = worker(postgres, "--n-trials", "4", env=env)
    code, out = finish(survivor)
    assert code == 0, out
    with autotune.load_study("fleet", storage=postgres) as study:
        trials = {t.number: t for t in study.trials()}
        reaped = trials[lost[0].number]
        assert reaped.state == "fail" and reaped.failure_kind == "worker_lost", reaped
        assert "stopped sending heartbeats for over 4 s" in reaped.reason
        retries = [t for t in ostudy.get_trials(deepcopy=False)
                   if t.user_attrs.get(RETRY_ATTR) == lost[0].number]
        assert len(retries) == 1 and retries[0].params == lost[0].params  # re-run once
        assert retries[0].state == optuna.trial.TrialState.COMPLETE
        assert "RUNNING" not in states(postgres) and "WAITING" not in states(postgres)
        done_by_survivor = [t for t in ostudy.get_trials(deepcopy=False)
                            if t.state == optuna.trial.TrialState.COMPLETE
                            and t.user_attrs.get(WORKER_ATTR, "").endswith(
                                f":{survivor.pid}")]
        assert len(done_by_survivor) == 4  # its share, the re-run included
        row = study.storage.measurement(study.id, lost[0].number)
        assert row is not None and row.machine_id == lost[0].user_attrs[MACHINE_ATTR]
        assert_front_consistent(study)
    storage.engine.dispose()
    assert time.monotonic() - killed_at < 120


@pytest.mark.postgres
def test_every_connection_terminated_mid_study_loses_nothing(postgres: str) -> None:
    autotune.create_study("fleet", parse_space(fast_space()), storage=postgres,
                          seed=0).close()
    database = postgres.rsplit("/", 1)[1]
    env = {"AUTOTUNE_HEARTBEAT_S": "1"}  # orphans (below) reaped after 12 s
    procs = [worker(postgres, "--n-trials", "15", env=env) for _ in range(2)]
    _wait_until(lambda: states(postgres).get("COMPLETE", 0) >= 2, 60, "the study to start")
    terminated = 0
    stop = time.monotonic() + 8
    with contextlib.closing(admin_connect()) as admin:
        while time.monotonic() < stop and any(p.poll() is None for p in procs):
            rows = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE datname = %s AND pid <> pg_backend_pid()",
                                 (database,)).fetchall()
            terminated += sum(1 for (ok,) in rows if ok)
            time.sleep(0.05)
    outcomes = [finish(p) for p in procs]
    assert all(code == 0 for code, _ in outcomes), [o[-3000:] for c, o in outcomes if c][:1]
    assert terminated > 0  # the workers really lost connections
    assert states(postgres).get("COMPLETE") == 30  # every worker's share, nothing lost
    with autotune.load_study("fleet", storage=postgres) as study:
        assert len(study.storage.measurements(study.id)) == 30
        assert_front_consistent(study)
        # an ask whose reply was lost leaves a trial nobody runs: the reaper fails it
        # once no worker claimed it (it never ran, so it is not queued again)
        if states(postgres).get("RUNNING"):
            os.environ["AUTOTUNE_HEARTBEAT_S"] = "1"
            try:
                reaper = Reaper(study, study._optuna_study())
                assert reaper.reap() == []  # watched from now, whatever the start times say
                time.sleep(orphan_after_s() + 1)
                assert reaper.reap()
            finally:
                del os.environ["AUTOTUNE_HEARTBEAT_S"]
            assert set(states(postgres)) <= {"COMPLETE", "FAIL"}
            failed = [t for t in study.trials() if t.state == "fail"]
            assert all(t.reason.startswith("never started") for t in failed), failed


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["postgresql", "sqlite"])
def test_ten_creators_of_one_name_make_one_study(mode: str, tmp_path: Path) -> None:
    space = tmp_path / "fast.yaml"
    space.write_text(json.dumps(fast_space()))
    with StorageSupplier(mode, tmp_path) as url:
        def create(*extra: str) -> subprocess.Popen[str]:
            return subprocess.Popen([sys.executable, "-m", "autotune", "study", "create",
                                     "fleet", "--space", str(space), "--storage", url,
                                     *extra], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)

        joined = [finish(p) for p in [create("--exist-ok") for _ in range(10)]]
        assert all(code == 0 for code, _ in joined), joined
        with optuna_storage(url) as storage:
            assert optuna.get_all_study_names(storage) == ["fleet"]
        told = [finish(p) for p in [create() for _ in range(3)]]
        assert all(code == 1 and "study 'fleet' already exists" in out for code, out in told)


def test_two_runs_started_together_on_a_fresh_database(tmp_path: Path) -> None:
    """The fault seen before: both inserted the machine row and one died of it."""
    url = f"sqlite:///{tmp_path}/two.db"
    autotune.create_study("fleet", parse_space(fast_space()), storage=url, seed=0).close()
    procs = [subprocess.Popen([sys.executable, "-m", "autotune", "study", "run", "fleet",
                               "--storage", url, "--n-trials", "3", "--quiet",
                               "--recheck-every", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = [finish(p) for p in procs]
    assert all(code == 0 for code, _ in outcomes), outcomes
    assert states(url) == {"COMPLETE": 6}
    with autotune.load_study("fleet", storage=url) as study:
        assert_front_consistent(study)


# -- --jobs on one machine ---------------------------------------------------------------------


def test_jobs_run_trials_at_once_on_disjoint_cores(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs 2 cores")
    with autotune.create_study("fleet", parse_space(fast_space(window_min_s=0.3, window_max_s=0.5)),
                               storage=url, seed=0) as study:
        results = study.optimize(n_trials=6, jobs=2, recheck_every=0)
        assert len(results) == 6 and all(r.state == "ok" for r in results)
        names = {w.worker.rsplit("#", 1)[1] for w in fleet_status(study).workers}
        assert names == {"1", "2"}  # each job is a worker of its own in the fleet view
        cpus = {tuple(r.metrics["worker"]["cpus"]) for r in results}
        assert len(cpus) == 2 and all(len(c) == 1 for c in cpus)  # a core each, never shared
        assert not set.intersection(*(set(c) for c in cpus))
        otrials = study._optuna_study().get_trials()
        spans = sorted((t.datetime_start, t.datetime_complete) for t in otrials)
        assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))  # overlap
        assert_front_consistent(study)


def test_core_slots_and_device_assignment() -> None:
    assert core_slots(2, [0, 1, 2, 3, 4]) == [(0, 1), (2, 3)]  # the odd core stays idle
    with pytest.raises(StudyError, match="--jobs 3 needs at least 3 cores"):
        core_slots(3, [0, 1])
    assert assign_devices(["cpu", "cuda:0", "cuda:1"], 2) == [["cpu", "cuda:0"],
                                                              ["cpu", "cuda:1"]]
    with pytest.raises(StudyError, match="give job 3 nothing to run"):
        assign_devices(["cuda:0", "cuda:1"], 3)


def test_jobs_refuse_threads_beyond_a_jobs_cores(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs 2 cores")
    data = fast_space()
    data["params"]["threads"] = [1, 2]
    with autotune.create_study("fleet", parse_space(data),
                               storage=f"sqlite:///{tmp_path}/t.db") as study:
        with pytest.raises(StudyError, match=rf"params.threads: up to 2 threads, but --jobs "
                                             rf"{cores} gives each job 1 core"):
            study.plan_jobs(cores)  # a core per job
        assert study.plan_jobs(1) == ([], [["cpu"]])


def test_the_front_per_machine_kind_and_the_live_view(tmp_path: Path) -> None:
    from sqlalchemy import update

    from autotune.storage._models import MeasurementRow

    url = f"sqlite:///{tmp_path}/kinds.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url,
                               seed=0) as study:
        study.optimize(n_trials=6, recheck_every=0)
        other = study.storage.upsert_machine(
            {**machine_fingerprint(), "hostname": "gpu-node", "cpu_model": "Other CPU",
             "logical_cores": 64}, "other-machine")
        with study.storage.engine.begin() as conn:  # trials 3-5 "ran" on another kind
            conn.execute(update(MeasurementRow).where(MeasurementRow.trial_number >= 3)
                         .values(machine_id=other))
        fronts = fronts_by_machine_kind(study)
        assert len(fronts) == 2 and "Other CPU, 64 cores" in fronts
        assert all(p.trial_number >= 3 for p in fronts["Other CPU, 64 cores"])
        best = max(study.trials(), key=lambda t: t.metrics["throughput_sps"]).number
        assert any(best in [p.trial_number for p in v] for v in fronts.values())
    shown = subprocess.run([sys.executable, "-m", "autotune", "study", "show", "fleet",
                            "--storage", url, "--json"], capture_output=True, text=True)
    assert set(json.loads(shown.stdout)["fronts_by_machine"]) == set(fronts)
    live = subprocess.Popen([sys.executable, "-m", "autotune", "study", "show", "fleet",
                             "--storage", url, "--live", "--interval", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    live.send_signal(signal.SIGINT)
    code, out = finish(live, timeout=30)
    assert code == 0 and "Workers of 'fleet'" in out and "ok 6" in out, out


# -- heartbeats and the reaper -----------------------------------------------------------------


def test_a_trial_without_heartbeats_is_reaped_once_and_its_retry_not_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")
    url = f"sqlite:///{tmp_path}/reap.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url,
                               seed=0) as study:
        study.storage.prepare_for_writing()
        ostudy = study._optuna_study()
        machine = study.storage.upsert_machine(machine_fingerprint(), "test-machine")

        def ask() -> Any:  # as the trial loop does: where it runs, then a heartbeat
            trial = ostudy.ask(study.space.distributions())
            trial.set_user_attr(MACHINE_ATTR, machine)
            trial.set_user_attr(WORKER_ATTR, "node-7:4242")
            ostudy._storage.record_heartbeat(trial._trial_id)  # then its worker "dies"
            return trial

        trial = ask()
        reaper = Reaper(study, ostudy)
        assert reaper.reap() == []  # within the grace: still alive
        time.sleep(5)
        assert reaper.reap() == [trial.number]
        assert reaper.reap() == [] and Reaper(study, ostudy).reap() == []  # once
        retry = ask()  # the queued configuration
        assert retry.user_attrs[RETRY_ATTR] == trial.number and retry.params == trial.params
        time.sleep(5)
        assert reaper.reap() == [retry.number]
        waiting = [t for t in ostudy.get_trials() if t.state.name == "WAITING"]
        assert waiting == []  # a lost retry is not queued a third time
        lost = {t.number: t for t in study.trials()}
        assert lost[trial.number].failure_kind == "worker_lost"
        assert lost[trial.number].reason.startswith("node-7:4242 stopped sending heartbeats")
        assert "already the retry of trial" in lost[retry.number].reason


# -- faults of the storage --------------------------------------------------------------------


def test_transient_faults_are_retried_and_others_are_not() -> None:
    from sqlalchemy.exc import IntegrityError, OperationalError

    lost = OperationalError("SELECT 1", {}, Exception("server closed the connection "
                                                      "unexpectedly"))
    assert is_transient(lost)
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the "
                                                     "commit.")
    wrapped.__cause__ = lost
    assert is_transient(wrapped)  # Optuna's wrapper of SQLAlchemy's of the driver's
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate key")))
    # seen once when the server cut a connection off mid-command (all connections killed)
    assert is_transient(OperationalError("SELECT 1", {}, Exception(
        "sending query and params failed: another command is already in progress")))
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise lost
        return "done"

    assert retrying(flaky, budget_s=10) == "done" and len(calls) == 3
    with pytest.raises(OperationalError):
        retrying(lambda: (_ for _ in ()).throw(lost), budget_s=0)


def test_an_unreachable_storage_is_one_line_and_waited_for_only_when_asked(
        tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    start = time.monotonic()
    code, out = finish(worker(url))
    assert code == 1 and "Traceback" not in out
    assert out.strip().splitlines()[-1].startswith("autotune: error: storage ")
    assert "Connection refused" in out and time.monotonic() - start < 30
    start = time.monotonic()
    code, out = finish(worker(url, "--wait", "3"))
    assert code == 1 and time.monotonic() - start >= 3, out


def test_a_worker_whose_devices_match_nothing_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/dev.db"
    autotune.create_study("fleet", parse_space(fast_space()), storage=url).close()
    code, out = finish(worker(url, "--devices", "cuda:0,cuda:1"))
    assert code == 1 and "Traceback" not in out
    assert ("--devices cuda:0,cuda:1: none of them is searched by the study (its devices: "
            "cpu)") in out
    assert worker_devices(parse_space(fast_space()), ["cpu", "npu:0"]) == ["cpu"]


def test_sqlite_shared_by_machines_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    url = f"sqlite:///{tmp_path}/shared.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url,
                               seed=0) as study:
        study.optimize(n_trials=1, recheck_every=0)
        check_storage_for_workers(study, allow_sqlite=False)  # one machine: fine
        monkeypatch.setattr(socket, "gethostname", lambda: "another-node")
        with pytest.raises(StudyError, match="has trials from another machine"):
            check_storage_for_workers(study, allow_sqlite=False)
        check_storage_for_workers(study, allow_sqlite=True)
        monkeypatch.setattr("autotune._jobs.filesystem_type", lambda path: "nfs4")
        with pytest.raises(StudyError, match="SQLite file on a nfs4 network filesystem"):
            check_storage_for_workers(study, allow_sqlite=False)


def test_filesystem_type_reads_the_longest_mount_point(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text("rootfs / ext4 rw 0 0\nserver:/export /shared nfs4 rw 0 0\n"
                      "tmpfs /shared/tmp tmpfs rw 0 0\n")
    assert filesystem_type(Path("/shared/studies/a.db"), mounts) == "nfs4"
    assert filesystem_type(Path("/shared/tmp/a.db"), mounts) == "tmpfs"
    assert filesystem_type(Path("/home/a.db"), mounts) == "ext4"


# -- helpers -----------------------------------------------------------------------------------


def _wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)



# -- Ray ---------------------------------------------------------------------------------------


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local Ray head (2 CPUs), started and stopped by the test as a cluster admin would
    (without Ray's token authentication, which a driver given an explicit address does
    not pick up from this machine's token file)."""
    import tempfile

    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # short: Ray's unix socket paths must fit in 107 bytes
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    started = subprocess.run(
        [str(ray_bin), "start", "--head", "--num-cpus", "2", "--port", str(port),
         "--include-dashboard", "false", "--disable-usage-stats",
         "--temp-dir", temp],
        capture_output=True, text=True, env=env, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, env=env,
                       timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.postgres
def test_study_run_places_its_workers_on_a_ray_cluster(postgres: str, ray_cluster: str,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    from autotune.cli import main

    autotune.create_study("fleet", parse_space(fast_space()), storage=postgres,
                          seed=0).close()
    code = main(["study", "run", "fleet", "--storage", postgres, "--jobs", "2", "--n-trials",
                 "8", "--ray", ray_cluster, "--recheck-every", "0", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert json.loads(out.out)["run"]["trials"] == 8
    assert states(postgres) == {"COMPLETE": 8}
    with autotune.load_study("fleet", storage=postgres) as study:
        workers = {t.metrics["worker"]["pid"] for t in study.trials()}
        assert len(workers) == 2  # two autotune workers, each with its warm trial process
        assert_front_consistent(study)


def test_ray_needs_a_shared_storage(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from autotune.launch._ray import run_on_ray, shares

    assert shares(10, 3) == [4, 3, 3] and shares(None, 2) == [None, None]
    url = f"sqlite:///{tmp_path}/ray.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url) as study, \
            pytest.raises(StudyError, match="cannot share the SQLite file"):
        run_on_ray(study, "auto", jobs=2, n_trials=2, timeout=None, recheck_every=0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_worker_is_proposed_only_its_own_devices() -> None:
    """``--devices cuda:1``: Optuna's PartialFixedSampler pins the device of every trial
    this worker asks for, whatever TPE would have proposed."""
    from types import SimpleNamespace

    from autotune._trial_runner import _device_pin

    data = fast_space()
    data["params"]["device"] = ["cpu", "cuda:0", "cuda:1"]
    space = parse_space(data)
    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study = SimpleNamespace(space=space)
    assert _device_pin(study, ostudy, ["cpu", "cuda:0", "cuda:1"]) is None  # nothing to pin
    pin = _device_pin(study, ostudy, worker_devices(space, ["cuda:1", "npu:0"]))
    assert pin is not None

    def devices_asked(pin: Any, n: int) -> list[str]:
        seen = []
        for _ in range(n):
            pin()
            trial = ostudy.ask(space.distributions())
            seen.append(trial.params["device"])
            ostudy.tell(trial, 1.0)
        return seen

    assert devices_asked(pin, 6) == ["cuda:1"] * 6
    both = _device_pin(study, ostudy, ["cuda:0", "cuda:1"])
    assert both is not None
    assert devices_asked(both, 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]  # in turn


def test_a_worker_whose_trial_was_reaped_meanwhile_goes_on(tmp_path: Path) -> None:
    """Cut off from the database past the grace period, a worker finds its trial reaped
    when it records it: it is the retry's to measure, not an error that stops the worker."""
    from autotune._run import run_config, trial_config
    from autotune._trial_runner import _ReapedMeanwhile, _recorder

    url = f"sqlite:///{tmp_path}/meanwhile.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url,
                               seed=0) as study:
        study.storage.prepare_for_writing()
        ostudy = study._optuna_study()
        trial = ostudy.ask(study.space.distributions())
        recorder = _recorder(study, ostudy)
        config = trial_config(study.space, trial.params, seed=0)
        run = run_config(config, FakeLauncher())
        ostudy._storage.set_trial_state_values(trial._trial_id,
                                               optuna.trial.TrialState.FAIL)  # the reaper
        with pytest.raises(_ReapedMeanwhile):
            recorder.record(trial, config, run)
        results = study.optimize(n_trials=2, launcher=FakeLauncher(), recheck_every=0)
        assert [r.state for r in results] == ["ok", "ok"]  # the study goes on


def _claimed_trial(study: autotune.Study, ostudy: Any) -> Any:
    """A trial asked and claimed as the trial loop does, whose worker then "dies"."""
    machine = study.storage.upsert_machine(machine_fingerprint(), "test-machine")
    trial = ostudy.ask(study.space.distributions())
    trial.set_user_attr(MACHINE_ATTR, machine)
    trial.set_user_attr(WORKER_ATTR, "node-7:4242")
    ostudy._storage.record_heartbeat(trial._trial_id)
    return trial


def test_a_reaper_that_died_after_failing_a_trial_leaves_it_to_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The state change is committed, the record is not (the reaper was killed, or the
    reply was lost): the next reaper records it and queues it once, and of two reapers
    recording it at once only the one whose row is stored queues it."""
    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")
    url = f"sqlite:///{tmp_path}/died.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url,
                               seed=0) as study:
        study.storage.prepare_for_writing()
        ostudy = study._optuna_study()
        first, second = _claimed_trial(study, ostudy), _claimed_trial(study, ostudy)
        for trial in (first, second):  # what the dead reaper managed to do
            ostudy._storage.set_trial_state_values(trial._trial_id,
                                                   optuna.trial.TrialState.FAIL)
        # one reaper records trial 1 while another, racing it, already stored its row
        # for trial 2 (its own token): this one must not queue trial 2 as well
        other = optuna.load_study(study_name="fleet", storage=study.storage.optuna)
        from autotune._liveness import _record_lost
        assert _record_lost(study, other, ostudy.get_trials()[second.number])
        assert Reaper(study, ostudy).reap() == [first.number]
        assert Reaper(study, ostudy).reap() == []  # recorded: nothing to do again
        lost = {t.number: t for t in study.trials()}
        assert lost[first.number].failure_kind == lost[second.number].failure_kind \
            == "worker_lost"
        queued = [t.user_attrs[RETRY_ATTR] for t in ostudy.get_trials()
                  if t.state == optuna.trial.TrialState.WAITING]
        assert sorted(queued) == [first.number, second.number]  # each once


def test_a_retried_enqueue_whose_reply_was_lost_queues_once(tmp_path: Path) -> None:
    from sqlalchemy.exc import OperationalError

    url = f"sqlite:///{tmp_path}/enqueue.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url) as study:
        ostudy = study._optuna_study()
        real = ostudy.enqueue_trial
        calls = []

        def committed_then_lost(*args: Any, **kwargs: Any) -> None:
            calls.append(1)
            real(*args, **kwargs)
            if len(calls) == 1:  # the commit went through; its reply did not
                raise OperationalError("COMMIT", {}, Exception("server closed the "
                                                               "connection unexpectedly"))

        ostudy.enqueue_trial = committed_then_lost
        params = {"batch_size": 8, "learning_rate": 0.01}
        assert enqueue_once(ostudy, params, {RETRY_ATTR: 3}, RETRY_ATTR, 3, budget_s=10) \
            is False  # the retry found the first attempt's trial
        assert len(calls) == 1 and len(ostudy.get_trials()) == 1
        assert not enqueue_once(ostudy, params, {RETRY_ATTR: 3}, RETRY_ATTR, 3, budget_s=10)


def test_orphans_are_timed_by_the_reaper_and_a_queued_one_is_put_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ask whose reply was lost: nobody claims the trial. It is failed after the
    reaper watched it for the orphan period, by its own clock (a start time from a
    machine in another time zone says nothing), and a trial that came from the queue
    goes back there, still a retry."""
    import datetime

    from autotune import _liveness

    monkeypatch.setenv("AUTOTUNE_HEARTBEAT_S", "1")
    monkeypatch.setattr(_liveness, "orphan_after_s", lambda: 2)
    url = f"sqlite:///{tmp_path}/orphan.db"
    with autotune.create_study("fleet", parse_space(fast_space()), storage=url) as study:
        study.storage.prepare_for_writing()
        ostudy = study._optuna_study()
        ostudy.enqueue_trial({"batch_size": 16, "learning_rate": 0.01},
                             user_attrs={RETRY_ATTR: 0})
        popped = ostudy.ask(study.space.distributions())  # its reply "lost": never claimed
        fresh = ostudy.ask(study.space.distributions())
        from optuna.storages._rdb import models

        with study.storage.optuna.scoped_session() as session:  # asked on a clock 9 h behind
            row = session.get(models.TrialModel, popped._trial_id)
            row.datetime_start = datetime.datetime.now() - datetime.timedelta(hours=9)
            session.commit()
        reaper = Reaper(study, ostudy)
        assert reaper.reap() == []  # first seen now: watched, not judged by the start time
        time.sleep(2.5)
        assert reaper.reap() == sorted([popped.number, fresh.number])
        trials = {t.number: t for t in ostudy.get_trials()}
        assert trials[popped.number].state == trials[fresh.number].state == \
            optuna.trial.TrialState.FAIL
        back = [t for t in trials.values() if t.state == optuna.trial.TrialState.WAITING]
        assert len(back) == 1 and back[0].params == {}  # queued: params fixed, not suggested
        assert back[0].system_attrs["fixed_params"] == {"batch_size": 16,
                                                         "learning_rate": 0.01}
        assert back[0].user_attrs[RETRY_ATTR] == 0  # still the retry of trial 0
        assert back[0].user_attrs[REQUEUE_ATTR] == popped.number
        reasons = {t.number: t.reason for t in study.trials()}
        assert reasons[popped.number].endswith("put back in the queue")
        assert reasons[fresh.number].endswith("not queued again: it never ran")


def test_a_pinned_worker_leaves_other_devices_queued_trials_alone() -> None:
    """A retry keeps its device (queued parameters win over the sampler): a worker
    pinned to other devices leaves it in the queue for a worker that has its device."""
    from types import SimpleNamespace

    from autotune._trial_runner import _device_pin

    data = fast_space()
    data["params"]["device"] = ["cpu", "cuda:0"]
    space = parse_space(data)
    storage = optuna.storages.RDBStorage("sqlite:///:memory:")
    ostudy = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(0))
    ostudy.enqueue_trial({"device": "cuda:0", "batch_size": 8}, user_attrs={RETRY_ATTR: 0})
    ostudy.enqueue_trial({"device": "cpu", "batch_size": 16}, user_attrs={RETRY_ATTR: 1})
    pin = _device_pin(SimpleNamespace(space=space), ostudy, ["cpu"])
    assert pin is not None
    asked = []
    for _ in range(3):
        pin()
        trial = ostudy.ask(space.distributions())
        asked.append((trial.params["device"], trial.user_attrs.get(RETRY_ATTR)))
        ostudy.tell(trial, 1.0)
    assert asked == [("cpu", 1), ("cpu", None), ("cpu", None)]
    waiting = ostudy.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs[RETRY_ATTR] for t in waiting] == [0]  # cuda:0's worker runs it
    cuda = optuna.load_study(study_name=ostudy.study_name, storage=storage)
    trial = cuda.ask(space.distributions())  # an unpinned worker takes it
    assert trial.params["device"] == "cuda:0" and trial.user_attrs[RETRY_ATTR] == 0


def test_an_interrupted_run_of_several_jobs_records_its_trials_interrupted(
        tmp_path: Path) -> None:
    """Ctrl-C (here SIGTERM, handled the same) ends every job's worker: their trials are
    ``interrupted``, not crashes, and nothing is queued to run again."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    url = f"sqlite:///{tmp_path}/stop.db"
    space = {"workload": "autotune.testing.workloads:hanging", "mode": "train",
             "objectives": {"throughput_sps": "maximize"}, "params": {"threads": 1},
             "budget": {"trial_seconds": 60}}
    autotune.create_study("fleet", parse_space(space), storage=url).close()
    driver = subprocess.Popen([sys.executable, "-m", "autotune", "study", "run", "fleet",
                               "--storage", url, "--jobs", "2", "--n-trials", "4",
                               "--quiet", "--recheck-every", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_until(lambda: states(url).get("RUNNING", 0) == 2, 60, "both jobs to start a trial")
    time.sleep(2)  # the hanging workload is inside its step now
    driver.send_signal(signal.SIGTERM)
    code, out = finish(driver, timeout=60)
    assert code == 130 and "interrupted" in out and "Traceback" not in out, out
    with optuna_storage(url) as storage:
        trials = optuna.load_study(study_name="fleet", storage=storage).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"], (out, [t.user_attrs for t in trials])
    assert [t.user_attrs["failure_kind"] for t in trials] == ["interrupted"] * 2
