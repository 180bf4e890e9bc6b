"""`autotune measure` / autotune.measure: one configuration, measured as a trial would be."""

from __future__ import annotations

import json
import time

import pytest

import autotune
from autotune.cli import main

TINY = "autotune.testing.workloads:tiny"
BUDGET = {"trial_seconds": 60, "window_min_s": 0.3, "window_max_s": 0.5, "warmup_max_s": 0.5,
          "train_epochs": 1}


@pytest.mark.slow
def test_measure_api_returns_a_real_measurement() -> None:
    m = autotune.measure(TINY, "train", budget=BUDGET, batch_size=32, threads=1)
    assert m.throughput_sps > 0 and m.energy_source == "estimated"
    assert m.accuracy is not None and 0 <= m.accuracy <= 1
    assert len(m.step_times_s) >= 20 and m.threads == 1


@pytest.mark.slow
def test_measure_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", "--workload", TINY, "--mode", "infer", "--batch-size", "16",
                 "--threads", "1", "--trial-seconds", "60", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["knobs"] == {"batch_size": 16, "threads": 1}
    assert out["metrics"]["throughput_sps"] > 0
    assert out["measurement"]["samples_per_step"] == 16


def test_unsupported_combination_raises_without_a_worker() -> None:
    started = time.perf_counter()
    with pytest.raises(autotune.UnsupportedConfigError, match="int8"):
        autotune.measure(TINY, "train", precision="int8")
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize(("argv", "needle"), [
    (["--mode", "infer", "--optimizer", "adam"], "params.optimizer: is a training knob"),
    (["--mode", "train", "--batch-size", "0"], "params.batch_size: got 0"),
    (["--mode", "train", "--precision", "fp8"], "params.precision: got 'fp8'"),
    (["--mode", "train", "--backend", "jax"], "params.backend: got 'jax'"),
])
def test_bad_knobs_are_one_line_errors_naming_the_knob(
        argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure", "--workload", TINY, *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and needle in err and "Traceback" not in err


def test_missing_workload_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["measure", "--mode", "train"])
    assert info.value.code == 2
    assert "--workload" in capsys.readouterr().err
