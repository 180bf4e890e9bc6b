"""The one way a configuration runs (:mod:`autotune._run`) and the shipped test launcher."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

import autotune
from autotune import backends
from autotune._run import RunResult, launcher_for, precheck, run_config, trial_config
from autotune.config import TrialConfig
from autotune.launch import WorkerOutcome
from autotune.testing import SYNTHETIC_NOTE, FakeLauncher, on_calls

SPACE = {"workload": "mlp", "mode": "train", "objectives": {"throughput_sps": "maximize"},
         "params": {"batch_size": 32, "threads": 1}}


def _config() -> TrialConfig:
    return trial_config(autotune.parse_space(SPACE), {}, seed=0)


def test_ok_outcome_becomes_a_measurement() -> None:
    launcher = FakeLauncher()
    run = run_config(_config(), launcher)
    assert run.ok and run.launched and len(launcher.calls) == 1
    assert run.measurement is not None and run.measurement.samples_per_step == 32
    assert run.summary()["throughput_sps"] > 0
    assert SYNTHETIC_NOTE in run.measurement.warnings
    assert run.describe() == "ok"


def test_failed_outcome_keeps_kind_reason_and_traceback() -> None:
    run = run_config(_config(), FakeLauncher(fail=on_calls(0)))
    assert (run.state, run.failure_kind, run.measurement) == ("fail", "crash", None)
    assert "synthetic crash" in run.reason and "Traceback" in run.traceback
    assert run.summary() == {}
    assert run.describe().startswith("fail (crash): ")


def test_capability_refusal_starts_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    refusal = SimpleNamespace(check=lambda *args: "precision 'fp32' is not supported")
    monkeypatch.setattr(backends, "capabilities", lambda backend, device: refusal)
    launcher = FakeLauncher()
    config = _config()
    assert precheck(config) is not None
    run = run_config(config, launcher)
    assert launcher.calls == []
    assert (run.state, run.failure_kind, run.launched) == ("infeasible", "unsupported", False)
    assert run.reason == f"{config.backend} on {config.device}: precision 'fp32' is not " \
        "supported"


def test_backend_not_installed_starts_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    monkeypatch.setitem(backends.BACKENDS, config.backend, SimpleNamespace(
        is_installed=lambda: False, install_hint="pip install 'autotune[x]'"))
    launcher = FakeLauncher()
    run = run_config(config, launcher)
    assert launcher.calls == [] and not run.launched
    assert run.reason == (f"backend {config.backend!r} is not installed here; install it "
                          "with: pip install 'autotune[x]'")


def test_canned_outcomes_by_call_then_computed() -> None:
    canned = WorkerOutcome("infeasible", failure_kind="oom", reason="canned", wall_s=0.1)
    launcher = FakeLauncher(outcomes=[canned])
    first, second = (run_config(_config(), launcher) for _ in range(2))
    assert (first.state, first.reason) == ("infeasible", "canned")
    assert second.ok


def test_computed_outcomes_see_the_config_and_the_call() -> None:
    seen: list[tuple[int, int]] = []

    def outcome(config: TrialConfig, index: int) -> WorkerOutcome | None:
        seen.append((config.batch_size, index))
        return launcher.ok_outcome(config, window_s=2.0) if index == 1 else None

    launcher = FakeLauncher(outcomes=outcome)
    runs = [run_config(_config(), launcher) for _ in range(2)]
    assert seen == [(32, 0), (32, 1)]
    assert runs[1].measurement is not None and runs[1].measurement.window_s == 2.0
    assert runs[0].measurement is not None and runs[0].measurement.window_s != 2.0


def test_launcher_for_closes_only_its_own() -> None:
    mine = FakeLauncher()
    with launcher_for(mine, FakeLauncher) as active:
        assert active is mine
    assert not mine.closed
    made: list[Any] = []

    def factory() -> FakeLauncher:
        made.append(FakeLauncher())
        return made[-1]

    with launcher_for(None, factory) as active:
        assert active is made[0]
    assert made[0].closed


def test_result_of_an_outcome() -> None:
    config = _config()
    outcome = FakeLauncher().run(config)
    run = RunResult.of(config, outcome)
    assert run.wall_s == outcome.wall_s and run.measurement is not None


def test_an_allocation_failing_without_an_exception_is_oom_only_under_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """C code that fails an allocation without setting MemoryError surfaces as
    ``SystemError: error return without exception set``: under the trial's memory cap that
    is out of memory (data for the sampler), without a cap it stays a crash. The trial
    asks while its cap is on: the worker lifts the cap before its reply is written."""
    from autotune.exceptions import OutOfMemoryError
    from autotune.launch import _worker

    silent = SystemError("error return without exception set")
    monkeypatch.setattr(_worker, "_memory_capped", lambda: True)
    oom = _worker._allocation_failure(silent)
    assert isinstance(oom, OutOfMemoryError)

    def fails() -> dict[str, object]:
        raise oom

    reply = _worker._guarded(fails)
    assert reply["status"] == "infeasible" and reply["failure_kind"] == "oom", reply
    assert "under the trial's memory cap" in str(reply["reason"])
    assert _worker._allocation_failure(SystemError("some other internal error")) is None
    monkeypatch.setattr(_worker, "_memory_capped", lambda: False)
    assert _worker._allocation_failure(silent) is None
