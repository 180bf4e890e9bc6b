"""End to end with real PyTorch trials in worker processes (a few seconds each).

These are the product's own path: CLI or API -> Optuna -> worker process -> torch on this
CPU -> storage. Nothing here is faked.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import optuna
import psutil
import pytest
import yaml

import autotune
from autotune.cli import main
from autotune.launch import ProcessLauncher

pytestmark = pytest.mark.slow

#: early stopping off: these tests check each trial's full measurement (the one below checks
#: that a dominated real trial is stopped)
FAST_BUDGET = {"trial_seconds": 40, "warmup_max_s": 1, "window_min_s": 0.3,
               "window_max_s": 1, "window_min_steps": 10, "train_epochs": 1,
               "early_stop": False}


def _space(tmp_path: Path, **overrides: Any) -> Path:
    space: dict[str, Any] = {
        "workload": "digits_mlp",
        "mode": "train",
        "objectives": {"throughput_sps": "maximize", "accuracy": "maximize"},
        "constraints": {"accuracy": ">= 0.5"},
        "params": {"batch_size": [32, 64], "threads": [1], "optimizer": ["adam"],
                   "learning_rate": 0.003},
        "budget": FAST_BUDGET,
    }
    space.update(overrides)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.fixture
def new_children() -> Callable[[], list[psutil.Process]]:
    """Processes started by this test and still alive: the session's shared warm framework
    workers (stopped between trials, started by other tests) are not this test's."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    return lambda: [p for p in psutil.Process().children(recursive=True)
                    if p.pid not in before]


def test_cli_study_runs_real_trials_and_stores_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        new_children: Callable[[], list[psutil.Process]]) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    space = _space(tmp_path)
    assert main(["study", "create", "e2e", "--space", str(space), "--storage", url,
                 "--seed", "3"]) == 0
    capsys.readouterr()
    assert main(["study", "run", "e2e", "--n-trials", "2", "--storage", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run"]["trials"] == 2
    assert out["trials"]["ok"] == 2
    assert out["front_size"] >= 1
    point = out["front"][0]
    metrics = point["metrics"]
    # Real measurements: positive throughput, an accuracy learned from real digits.
    assert metrics["throughput_sps"] > 0
    assert 0.5 <= metrics["accuracy"] <= 1.0
    assert metrics["energy_source"] == "estimated"
    assert metrics["latency_unit"] == "per optimizer step"
    assert point["config"]["backend"] == "torch" and point["config"]["device"] == "cpu"
    assert point["config"]["batch_size"] in (32, 64)

    # show --json reports the same front; the table names the trial.
    assert main(["study", "show", "e2e", "--storage", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [p["trial"] for p in shown["front"]] == [p["trial"] for p in out["front"]]
    assert main(["study", "show", "e2e", "--storage", url]) == 0
    table = capsys.readouterr().out
    assert "Pareto front of 'e2e'" in table and "est" in table

    # The autotune tables hold raw step times, the machine and the front.
    with closing(sqlite3.connect(f"{tmp_path}/s.db")) as db:
        rows = db.execute("SELECT state, raw_json, config_json FROM autotune_measurements "
                          "ORDER BY trial_number").fetchall()
        front = [r[0] for r in db.execute("SELECT trial_number FROM autotune_pareto_front")]
        machine = db.execute("SELECT cpu_model, logical_cores FROM autotune_machines").fetchone()
    assert [r[0] for r in rows] == ["ok", "ok"]
    raw = json.loads(rows[0][1])
    assert len(raw["step_times_s"]) >= FAST_BUDGET["window_min_steps"]
    assert all(t > 0 for t in raw["step_times_s"])
    assert raw["warmup_steps"] >= 1 and raw["import_s"] > 0
    assert raw["threads"] == 1
    assert sorted(front) == sorted(p["trial"] for p in out["front"])
    assert machine[1] >= 1 and machine[0]

    # Stock Optuna reads it.
    ostudy = optuna.load_study(study_name="e2e", storage=url)
    assert {t.number for t in ostudy.best_trials} == {p["trial"] for p in out["front"]}
    assert ostudy.trials[0].user_attrs["throughput_sps"] > 0
    assert not new_children()


def test_a_real_trial_the_front_dominates_is_stopped_early(tmp_path: Path) -> None:
    """Early stopping on by default, real torch: one sample per batch cannot come near the
    throughput of 256 per batch, so the second trial is stopped at its first screen."""
    space = autotune.parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"batch_size": [1, 256], "threads": 1},
        "budget": {k: v for k, v in FAST_BUDGET.items() if k != "early_stop"},
    })
    url = f"sqlite:///{tmp_path}/p.db"
    study = autotune.create_study("prune", space, storage=url, seed=0)
    ostudy = optuna.load_study(study_name="prune", storage=url)
    ostudy.enqueue_trial({"batch_size": 256})
    ostudy.enqueue_trial({"batch_size": 1})
    big, small = study.optimize(n_trials=2, recheck_every=0)
    assert big.state == "ok" and big.metrics["fidelity"] == "confirmed", big.reason
    assert small.state == "pruned", (small.state, small.reason)
    assert small.reason.startswith("dominated by a front point")
    assert small.metrics["fidelity"] == "screen"
    assert [p.trial_number for p in study.pareto_front()] == [big.number]


def test_infer_int8_and_pruning_are_real(tmp_path: Path) -> None:
    space = autotune.parse_space({
        "workload": "mlp", "mode": "infer",
        "objectives": {"throughput_sps": "maximize", "latency_p95_ms": "minimize"},
        "params": {"precision": ["int8"], "batch_size": 64, "pruning_ratio": 0.5,
                   "threads": 1},
        "budget": FAST_BUDGET,
    })
    study = autotune.create_study("infer", space, storage=f"sqlite:///{tmp_path}/i.db")
    [result] = study.optimize(n_trials=1)
    assert result.state == "ok", result.reason
    assert result.metrics["latency_unit"] == "per batch"
    assert result.metrics["latency_p95_ms"] >= result.metrics["latency_p50_ms"] > 0
    assert result.metrics["steps_measured"] >= 20  # p95 is an objective: enough samples
    row = study.storage.measurements(study._row.id)[0]
    raw = json.loads(row.raw_json)
    assert raw["model"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert raw["versions"]["quantized_engine"] in ("x86", "onednn", "fbgemm", "qnnpack")
    assert 0.0 < result.metrics["accuracy"] <= 1.0


@pytest.mark.parametrize(
    ("name", "overrides", "kind"),
    [
        # int8 training does not exist in torch: rejected without starting a worker.
        ("unsupported", {"params": {"precision": "int8", "threads": 1}}, "unsupported"),
        # A 16 MB memory cap cannot hold 8192 x 1000 activations: a real allocation failure.
        ("oom", {"workload": "mlp", "constraints": {},
                 "params": {"batch_size": 8192, "threads": 1},
                 "budget": {**FAST_BUDGET, "memory_mb": 16}}, "oom"),
        # SGD at learning rate 1000 diverges within a few steps.
        ("nan", {"params": {"optimizer": "sgd", "learning_rate": 1000.0, "threads": 1}},
         "nan_loss"),
    ],
)
def test_infeasible_kinds_are_complete_trials_with_violated_constraint(
        tmp_path: Path, name: str, overrides: dict[str, Any], kind: str) -> None:
    url = f"sqlite:///{tmp_path}/f.db"
    study = autotune.create_study(name, _space(tmp_path, **overrides), storage=url)
    started = time.perf_counter()
    [result] = study.optimize(n_trials=1)
    assert result.state == "infeasible" and result.failure_kind == kind, result.reason
    assert result.reason
    if kind == "unsupported":
        assert time.perf_counter() - started < 2  # no worker was started
    [trial] = optuna.load_study(study_name=name, storage=url).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.constraints["measurable"] > 0
    assert trial.values[0] == 0.0  # worst-case throughput
    assert trial.user_attrs["failure_kind"] == kind
    assert study.pareto_front() == []


def test_crash_is_fail_retried_once_and_study_goes_on(
        tmp_path: Path, new_children: Callable[[], list[psutil.Process]]) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    study = autotune.create_study(
        "crash", _space(tmp_path, workload="autotune.testing.workloads:crashing",
                        constraints={}, params={"threads": 1}), storage=url)
    results = study.optimize(n_trials=3)
    assert [r.state for r in results] == ["fail", "fail", "fail"]
    assert all(r.failure_kind == "crash" and "SIGSEGV" in r.reason for r in results)
    trials = optuna.load_study(study_name="crash", storage=url).trials
    assert all(t.state == optuna.trial.TrialState.FAIL for t in trials[:3])
    # Trial 0 is retried once (trial 1); trial 1, itself a retry, is not retried again.
    assert trials[1].user_attrs.get("autotune_retry_of") == 0
    assert "autotune_retry_of" not in trials[2].user_attrs
    # Trial 2's retry did not fit in this run: it waits for the next one.
    assert len(trials) == 4 and trials[3].state == optuna.trial.TrialState.WAITING
    assert trials[3].user_attrs.get("autotune_retry_of") == 2
    assert not new_children()


def test_hung_trial_is_killed_at_its_budget(
        tmp_path: Path, new_children: Callable[[], list[psutil.Process]]) -> None:
    budget = {**FAST_BUDGET, "trial_seconds": 5}
    study = autotune.create_study(
        "hang", _space(tmp_path, workload="autotune.testing.workloads:hanging",
                       constraints={}, params={"threads": 1}, budget=budget),
        storage=f"sqlite:///{tmp_path}/h.db")
    started = time.perf_counter()
    # A fresh worker's budget includes its start-up, so the kill time is exact here (a warm
    # worker's start-up comes before the budget: tests/test_launch_warm.py covers that).
    [result] = study.optimize(n_trials=1, launcher=ProcessLauncher())
    elapsed = time.perf_counter() - started
    assert result.state == "fail" and result.failure_kind == "timeout"
    assert elapsed < budget["trial_seconds"] + 2  # killed within budget plus a little
    assert not new_children()  # no orphan worker left behind


def test_a_factory_that_raises_is_a_fail_with_its_traceback_not_retried(
        tmp_path: Path, new_children: Callable[[], list[psutil.Process]]) -> None:
    url = f"sqlite:///{tmp_path}/r.db"
    study = autotune.create_study(
        "raise", _space(tmp_path, workload="autotune.testing.workloads:raising",
                        constraints={}, params={"threads": 1}), storage=url)
    [result] = study.optimize(n_trials=1)
    assert result.state == "fail" and result.failure_kind == "model_error"
    assert result.reason.startswith("factory autotune.testing.workloads:raising raised "
                                    "RuntimeError: workload bug: data file is corrupt")
    [row] = study.storage.measurements(study._row.id)
    assert "Traceback" in row.traceback and "in raising" in row.traceback
    # the user's bug would strike again: no retry is queued
    trials = optuna.load_study(study_name="raise", storage=url).trials
    assert [t.state.name for t in trials] == ["FAIL"]
    assert not new_children()


def test_a_factory_returning_the_wrong_type_fails_each_trial_and_the_study_goes_on(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    study = autotune.create_study(
        "wrong", _space(tmp_path, workload="autotune.testing.workloads:not_a_workload",
                        constraints={}, params={"threads": 1, "batch_size": [8, 16]}),
        storage=url)
    results = study.optimize(n_trials=2)
    assert [r.failure_kind for r in results] == ["model_error", "model_error"]
    assert all("returned dict, not an autotune.ModelSpec" in r.reason for r in results)
    assert len(optuna.load_study(study_name="wrong", storage=url).trials) == 2


def test_a_torch_worker_imports_dynamo_only_when_a_trial_needs_it() -> None:
    """torch._dynamo costs 1.1-2 s: an inference worker never needs it, the first
    optimizer brings it."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from autotune.backends._torch import TorchBackend\n"
            "b = TorchBackend()\n"
            "before = 'torch._dynamo' in sys.modules\n"
            "import torch\n"
            "b.model = torch.nn.Linear(4, 2)\n"
            "b.make_optimizer('sgd', 0.1)\n"
            "print(before, 'torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "True"]
