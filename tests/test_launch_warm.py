"""Warm workers: reuse, isolation, replacement, hung and killed workers, no orphans.

These run real worker processes with the numpy fake backend (no framework import, so a
worker starts in well under a second) and the misbehaving workloads of
:mod:`autotune.testing.workloads`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import autotune
from autotune.config import TrialConfig
from autotune.launch import ProcessLauncher, WarmLauncher
from autotune.space import Budget
from tests.processes import alive, group_members, process_state

NUMPY = "autotune.testing.fake_backend:NumpyBackend"
TINY = "autotune.testing.workloads:tiny"
BUDGET = Budget(trial_seconds=8.0, warmup_max_s=0.3, window_min_s=0.05, window_min_steps=8,
                window_max_s=0.2, train_epochs=1)


def _config(workload: str = TINY, *, threads: int | None = 1, batch_size: int = 16,
            trial_seconds: float | None = None) -> TrialConfig:
    budget = BUDGET if trial_seconds is None else dataclasses.replace(
        BUDGET, trial_seconds=trial_seconds)
    return TrialConfig(workload=workload, mode="train", backend=NUMPY, device="cpu",
                       batch_size=batch_size, precision="fp32", learning_rate=0.01,
                       optimizer="sgd", pruning_ratio=0.0, threads=threads, budget=budget,
                       execution="eager")


@pytest.fixture
def launcher() -> Iterator[WarmLauncher]:
    with WarmLauncher() as warm:
        yield warm


def test_trials_share_a_warm_worker_and_report_its_start_once(launcher: WarmLauncher) -> None:
    first, second = launcher.run(_config()), launcher.run(_config(batch_size=32))
    assert first.status == second.status == "ok", (first.reason, second.reason)
    assert first.result["worker"]["pid"] == second.result["worker"]["pid"]
    assert (first.result["worker"]["trial"], second.result["worker"]["trial"]) == (1, 2)
    assert first.result["import_s"] > 0 and first.result["process_start_s"] > 0
    # the second trial pays neither process start nor import
    assert second.result["import_s"] == 0 and second.result["process_start_s"] == 0
    assert launcher.started == 1
    # each trial's peak memory is its own (the kernel's peak mark is reset per trial)
    assert second.result["peak_rss_scope"] == "trial"
    # and the reproducibility record is there
    assert second.result["environment"]["OMP_NUM_THREADS"] == "1"


def test_a_prestarted_worker_serves_the_first_trial(launcher: WarmLauncher) -> None:
    """prestart spawns the worker without waiting; the first trial of that key uses it
    (no second start) and still reports its start-up, once."""
    from autotune.launch._warm import worker_key

    launcher.prestart(worker_key(_config()))
    assert len(launcher.worker_pids()) == 1 and launcher.started == 1
    launcher.prestart(worker_key(_config()))  # already there: nothing more
    assert launcher.started == 1
    outcome = launcher.run(_config())
    assert outcome.status == "ok", outcome.reason
    assert outcome.result["worker"]["pid"] == launcher.worker_pids()[0]
    assert outcome.result["import_s"] > 0 and launcher.started == 1


def test_the_shared_worker_key_is_known_only_when_every_trial_has_it() -> None:
    from autotune.launch._warm import THREADS_PER_TRIAL, shared_worker_key

    def space(**params: object) -> autotune.SearchSpace:
        return autotune.parse_space({"workload": "mlp", "mode": "infer",
                                     "objectives": {"throughput_sps": "maximize"},
                                     "params": {"batch_size": [8, 16], **params}})

    # torch changes its thread count in place: one worker for every count
    assert shared_worker_key(space(backend="torch", threads=[1, 2])) == \
        ("torch", "cpu", THREADS_PER_TRIAL, None)
    assert shared_worker_key(space(backend="tensorflow", threads=1)) == \
        ("tensorflow", "cpu", 1, None)
    # a worker per thread count, or per backend: not known before the sampler asks
    assert shared_worker_key(space(backend="tensorflow", threads=[1, 2])) is None
    assert shared_worker_key(space(backend=["torch", "tensorflow"], threads=1)) is None


def test_idle_worker_is_stopped_between_trials(launcher: WarmLauncher) -> None:
    assert launcher.run(_config()).status == "ok"
    (pid,) = launcher.worker_pids()
    # stopped (T): an idle framework's thread pools cannot steal CPU from a measuring worker
    # (SIGSTOP is delivered asynchronously: give the kernel a moment)
    deadline = time.monotonic() + 2.0
    while process_state(pid) != "T" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process_state(pid) == "T"
    assert launcher.run(_config()).status == "ok"


def test_one_worker_per_thread_count(launcher: WarmLauncher) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    one, two = launcher.run(_config(threads=1)), launcher.run(_config(threads=2))
    assert one.status == two.status == "ok"
    assert one.result["worker"]["pid"] != two.result["worker"]["pid"]
    assert len(launcher.worker_pids()) == 2


def test_least_recently_used_worker_is_closed_beyond_max_workers() -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    with WarmLauncher(max_workers=1) as warm:
        first = warm.run(_config(threads=1))
        old = first.result["worker"]["pid"]
        assert warm.run(_config(threads=2)).status == "ok"
        assert warm.worker_pids() != [old]
        assert not alive(old)


def test_worker_is_recycled_after_n_trials() -> None:
    with WarmLauncher(recycle_after=2) as warm:
        pids = [warm.run(_config()).result["worker"]["pid"] for _ in range(3)]
        assert pids[0] == pids[1] != pids[2]
        assert not alive(pids[0])
        assert warm.started == 2


def test_failed_trial_replaces_the_worker(launcher: WarmLauncher) -> None:
    ok = launcher.run(_config())
    raised = launcher.run(_config("autotune.testing.workloads:raising"))
    assert raised.status == "fail" and raised.failure_kind == "model_error"
    assert "data file is corrupt" in raised.reason and "Traceback" in raised.traceback
    assert not alive(ok.result["worker"]["pid"])  # a failed worker is never reused
    after = launcher.run(_config())
    assert after.status == "ok"
    assert after.result["worker"]["pid"] != ok.result["worker"]["pid"]


def test_infeasible_trial_replaces_the_worker(launcher: WarmLauncher) -> None:
    ok = launcher.run(_config())
    # the numpy backend refuses bf16: an "unsupported" outcome, data for the sampler
    odd = launcher.run(dataclasses.replace(_config(), precision="bf16"))
    assert odd.status == "infeasible" and odd.failure_kind == "unsupported"
    assert not alive(ok.result["worker"]["pid"])


def test_segfaulting_worker_is_reported_and_replaced(launcher: WarmLauncher) -> None:
    crashed = launcher.run(_config("autotune.testing.workloads:crashing"))
    assert crashed.status == "fail" and crashed.failure_kind == "crash"
    assert "SIGSEGV" in crashed.reason
    assert launcher.run(_config()).status == "ok"


def test_hung_trial_is_killed_within_its_budget(launcher: WarmLauncher) -> None:
    start = time.perf_counter()
    hung = launcher.run(_config("autotune.testing.workloads:hanging", trial_seconds=2.0))
    elapsed = time.perf_counter() - start
    assert hung.status == "fail" and hung.failure_kind == "timeout"
    assert "2 s budget" in hung.reason
    assert elapsed < 2.0 + 3.0  # worker start-up is not part of the trial's budget
    assert launcher.worker_pids() == []  # the hung worker is gone, group and all
    assert launcher.run(_config()).status == "ok"


def test_killed_worker_is_recorded_within_two_seconds(launcher: WarmLauncher) -> None:
    assert launcher.run(_config()).status == "ok"
    (pid,) = launcher.worker_pids()
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(0.5)  # the worker is now inside the hanging trial
        killed_at.append(time.perf_counter())
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    outcome = launcher.run(_config("autotune.testing.workloads:hanging", trial_seconds=30.0))
    noticed = time.perf_counter()
    killer.join()
    assert outcome.status == "fail" and outcome.failure_kind == "killed"
    assert noticed - killed_at[0] < 2.0
    assert launcher.run(_config()).status == "ok"  # the study goes on with a new worker


def test_close_leaves_no_process_behind() -> None:
    warm = WarmLauncher()
    assert warm.run(_config()).status == "ok"
    (pid,) = warm.worker_pids()
    assert alive(pid)
    warm.close()
    assert not alive(pid)
    assert group_members(pid) == []
    assert warm.worker_pids() == []


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rpartition(")")[2].split()[1])  # the field after the state


def _ours(pid: int) -> bool:
    """Whether ``pid`` descends from this test process (another test run on the same
    machine has worker processes of its own)."""
    me = os.getpid()
    for _ in range(8):
        pid = _parent(pid)
        if pid in (0, 1):
            return False
        if pid == me:
            return True
    return False


def _worker_processes() -> set[int]:
    """Live worker processes started by this test process (found by their command line)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"autotune.launch._worker" in cmdline and alive(int(entry.name)) and \
                    _ours(int(entry.name)):
                found.add(int(entry.name))
    return found


@pytest.mark.slow
def test_study_leaves_no_worker_behind(tmp_path: Path) -> None:
    space = autotune.parse_space({
        "workload": TINY, "mode": "train", "objectives": {"throughput_sps": "maximize"},
        "params": {"backend": "torch", "batch_size": [16, 32], "threads": 1},
        "budget": {"trial_seconds": 8, "warmup_max_s": 0.3, "window_min_s": 0.05,
                   "window_min_steps": 8, "window_max_s": 0.2, "train_epochs": 1,
                   "early_stop": False},
    })
    study = autotune.create_study("warm", space, storage=f"sqlite:///{tmp_path / 's.db'}")
    before = _worker_processes()
    seen: set[int] = set()
    results = study.optimize(n_trials=3, callbacks=[lambda r: seen.update(_worker_processes())])
    assert [r.state for r in results] == ["ok"] * 3
    assert len(seen - before) == 1  # one warm worker served all three trials
    assert _worker_processes() - before == set()  # and it is gone
    study.storage.engine.dispose()


def test_fresh_and_warm_launchers_agree_on_the_result_shape() -> None:
    fresh = ProcessLauncher().run(_config())
    with WarmLauncher() as warm:
        warm_outcome = warm.run(_config())
    assert fresh.status == warm_outcome.status == "ok"
    assert set(fresh.result) == set(warm_outcome.result)
    assert fresh.result["worker"]["warm"] is False and warm_outcome.result["worker"]["warm"]


def _torch_config(**knobs: object) -> TrialConfig:
    space = autotune.parse_space({
        "workload": "digits_mlp", "mode": "train", "objectives": {"accuracy": "maximize"},
        "params": {"backend": "torch", "threads": 1, "batch_size": 64, "optimizer": "adam",
                   "learning_rate": 1e-3},
        "budget": {"trial_seconds": 60, "warmup_max_s": 0.5, "window_min_s": 0.2,
                   "window_max_s": 0.5, "train_epochs": 1}})
    return dataclasses.replace(TrialConfig.from_params(space, {}, seed=11), **knobs)


@pytest.mark.slow
def test_a_warm_trial_measures_what_a_fresh_one_does_after_other_trials() -> None:
    """Nothing a trial leaves behind (a compiled model, a grad scaler, an epoch counter)
    reaches the next trial on the same worker: after a graph trial and an fp16 trial, an
    eager fp32 trial trains exactly as in a fresh process (same seed, same data order)."""
    eager = _torch_config(execution="eager")
    fresh = ProcessLauncher().run(eager)
    with WarmLauncher() as warm:
        before = [warm.run(_torch_config(execution="graph")),
                  warm.run(_torch_config(execution="eager", precision="fp16"))]
        after = warm.run(eager)
    assert fresh.status == after.status == "ok", (fresh.reason, after.reason)
    assert all(o.status == "ok" for o in before), [o.reason for o in before]
    assert after.result["worker"]["trial"] == 3
    assert after.result["model"]["execution"] == "eager"
    assert after.result["train_steps"] >= after.result["budget_steps"]
    # same seed, same data order, same arithmetic: the same model comes out
    assert after.result["accuracy"] == pytest.approx(fresh.result["accuracy"], abs=0.01)
    assert after.result["accuracy"] > 0.5  # trained, not a stale compiled model's chance


@pytest.mark.slow
def test_what_outlives_a_trial_is_frozen_so_the_next_collections_are_cheap() -> None:
    """A first torch trial imports modules lazily and fills caches (~120k objects): unless
    they are frozen like the imports, every later trial's two collections walk them
    (0.09 s a trial, measured). Real torch, since the fake backend imports nothing."""
    script = textwrap.dedent(f"""
        import dataclasses, gc, json, time
        import autotune
        from autotune._run import trial_config
        from autotune.config import Budget
        from autotune.launch._worker import WorkerState, run_trial
        space = autotune.parse_space({{"workload": "mlp", "mode": "infer",
            "objectives": {{"throughput_sps": "maximize"}},
            "params": {{"batch_size": 32, "threads": 1}}}})
        config = dataclasses.replace(trial_config(space, {{}}, seed=0), budget={BUDGET!r})
        state = WorkerState("torch", 1)
        run_trial(config.to_dict(), state, time.perf_counter() + 30)
        print(json.dumps({{"tracked": len(gc.get_objects()),
                          "frozen": gc.get_freeze_count()}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True)
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts["frozen"] > 100_000, counts  # torch's modules, frozen at start
    assert counts["tracked"] < 5_000, counts  # what the first trial left is frozen too


def _task_cpus(pid: int) -> list[set[int]]:
    """The cores each thread of process ``pid`` may run on."""
    sets = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                cores: set[int] = set()
                for part in line.split(":", 1)[1].strip().split(","):
                    low, _, high = part.partition("-")
                    cores.update(range(int(low), int(high or low) + 1))
                sets.append(cores)
    return sets


@pytest.mark.slow
def test_a_torch_worker_changes_its_thread_count_in_place() -> None:
    """torch resizes its pool in place: one worker serves 1, 2 and again 1 thread, and
    each time every thread of the process (the pool's included) is on that many cores."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    cores = sorted(os.sched_getaffinity(0))[:2]
    with WarmLauncher(cpus=cores) as warm:
        outcomes = []
        for threads in (1, 2, 1):
            outcome = warm.run(_torch_config(threads=threads))
            assert outcome.status == "ok", outcome.reason
            assert outcome.result["threads"] == threads
            assert outcome.result["worker"]["cpus"] == cores[:threads]
            # stopped between trials: its threads are where the trial ran them
            tasks = _task_cpus(outcome.result["worker"]["pid"])
            assert len(tasks) >= threads and all(t == set(cores[:threads]) for t in tasks)
            outcomes.append(outcome)
        assert len({o.result["worker"]["pid"] for o in outcomes}) == 1
        assert warm.started == 1
        assert outcomes[1].result["import_s"] == 0.0  # no second framework import


def test_study_run_prestarts_its_one_worker_unless_a_peak_is_to_be_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`study run` starts the worker every trial shares before it loads Optuna; not when
    the trials need several workers, nor when this machine's peak is still to be measured
    (a worker importing beside the peak measurement would disturb it)."""
    import argparse

    from autotune.cli._study import _prestarted
    from autotune.profiling import peak

    url = f"sqlite:///{tmp_path}/s.db"
    space = {"workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
             "params": {"backend": "torch", "batch_size": [8, 16], "threads": [1, 2]}}
    autotune.create_study("one", autotune.parse_space(space), storage=url)
    autotune.create_study("two", autotune.parse_space(
        {**space, "params": {**space["params"], "backend": ["torch", "tensorflow"]}}),
        storage=url)

    def args(name: str, jobs: int = 1) -> argparse.Namespace:
        return argparse.Namespace(name=name, storage=url, fresh_workers=False, jobs=jobs,
                                  ray=None, devices=None)

    monkeypatch.setattr(peak, "peak_missing", lambda *a: False)
    launcher = _prestarted(args("one"))
    try:
        assert launcher is not None and len(launcher.worker_pids()) == 1
    finally:
        launcher.close()
    assert _prestarted(args("one", jobs=2)) is None
    assert _prestarted(args("two")) is None
    assert _prestarted(args("missing")) is None
    monkeypatch.setattr(peak, "peak_missing", lambda *a: True)
    assert _prestarted(args("one")) is None
