"""The Measurement record built from a worker's raw result, and the power meters."""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import pytest

from autotune.config import TrialConfig
from autotune.objectives import METRICS
from autotune.profiling import power
from autotune.profiling.loop import run_profile
from autotune.profiling.measurement import Measurement
from autotune.profiling.power import (
    DEFAULT_WATTS_PER_CORE,
    EnergyReading,
    EstimatedCpuMeter,
    NullMeter,
    combine,
    rated_cpu_power_w,
    watts_per_core,
)
from autotune.space import Budget, parse_space
from tests.fakes import SYNTHETIC_NOTE, FakeLauncher, on_calls

# 25 step times: p50 is defined; p90 (needs 64), p95 (132) and p99 (662) are not.
STEP_TIMES = [0.010 + 0.0001 * i for i in range(25)]
SAMPLES_PER_STEP = 32


def _raw(**overrides: Any) -> dict[str, Any]:
    """A worker's ``status: ok`` result, as _worker.run_trial + loop.run_profile build it."""
    raw: dict[str, Any] = {
        "step_times_s": list(STEP_TIMES),
        "warmup_step_times_s": [0.05, 0.03, 0.02, 0.012, 0.011, 0.010],
        "samples": SAMPLES_PER_STEP * len(STEP_TIMES),
        "window_s": sum(STEP_TIMES),
        "warmup_s": 0.133,
        "eval_s": 0.02,
        "stop_reason": "ci_met",
        "train_steps": 300,
        "budget_steps": 300,
        "accuracy": 0.91,
        "energy": {"energy_j": 5.0, "source": "estimated", "window_s": 0.5, "samples": 2,
                   "model": "process CPU time x 10 W per busy core"},
        "warnings": ["something to say"],
        "process_start_s": 0.08,
        "import_s": 1.5,
        "data_s": 0.25,
        "setup_s": 0.5,
        "status": "ok",
        "threads": 4,
        "model": {"parameters": 1234, "flops_per_sample": 5678},
        "versions": {"torch": "2.13.0"},
        "peak_rss_bytes": 300 * 2**20,
        "device_peak_memory_bytes": None,
    }
    raw.update(overrides)
    return raw


def _measure(raw: dict[str, Any] | None = None, mode: str = "train") -> Measurement:
    return Measurement.from_worker(raw or _raw(), samples_per_step=SAMPLES_PER_STEP, mode=mode)


# -- Measurement.from_worker ------------------------------------------------------------------


def test_fields_copied_from_raw() -> None:
    m = _measure()
    assert m.step_times_s == tuple(STEP_TIMES)
    assert m.samples_per_step == SAMPLES_PER_STEP
    assert m.warmup_steps == 6
    assert m.setup_s == pytest.approx(0.5)  # model build (and base model in infer mode)
    assert m.data_s == pytest.approx(0.25)
    assert set(m.phases_s) == {"process_start", "framework_import", "data", "model_build",
                               "first_step_compile", "warmup", "measured", "evaluation"}
    assert m.phases_s["model_build"] == m.setup_s and m.phases_s["measured"] == m.window_s
    assert m.import_s == 1.5
    assert m.process_start_s == 0.08
    assert m.energy_j == 5.0
    assert m.energy_source == "estimated"
    assert m.energy_window_s == 0.5
    assert m.energy_samples == 2
    assert m.accuracy == 0.91
    assert m.threads == 4
    assert m.stop_reason == "ci_met"
    assert m.versions == {"torch": "2.13.0"}
    assert m.warnings == ("something to say",)


def test_throughput_is_samples_per_median_step() -> None:
    m = _measure()
    median = statistics.median(STEP_TIMES)
    assert m.median_step_s == pytest.approx(median)
    assert m.throughput_sps == pytest.approx(SAMPLES_PER_STEP / median)


def test_throughput_ci_brackets_throughput() -> None:
    m = _measure()
    ci = m.throughput_ci_sps
    assert ci is not None
    assert ci[0] <= m.throughput_sps <= ci[1]
    few = _measure(_raw(step_times_s=STEP_TIMES[:5]))
    assert few.throughput_ci_sps is None


def test_latency_percentiles_in_ms() -> None:
    m = _measure()
    assert m.latency_ms(50) == pytest.approx(float(np.percentile(STEP_TIMES, 50)) * 1000)
    assert m.latency_ms(90) is None  # 25 < 64 samples
    assert m.latency_ms(99) is None  # 25 < 662 samples
    metrics = m.metrics()
    assert metrics["latency_p50_ms"] == pytest.approx(11.2)  # 10 ms + 12 x 0.1 ms
    assert metrics["latency_p90_ms"] is None
    assert metrics["latency_p99_ms"] is None
    many = [0.010 + 0.0001 * i for i in range(64)]
    m64 = _measure(_raw(step_times_s=many))
    assert m64.latency_ms(90) == pytest.approx(float(np.percentile(many, 90)) * 1000)
    assert m64.latency_ms(95) is None


def test_power_and_energy_per_sample() -> None:
    m = _measure()
    assert m.power_w == pytest.approx(5.0 / 0.5)
    # the window's energy over the window's samples (slow steps included)
    assert m.energy_per_sample_j == pytest.approx(5.0 / (SAMPLES_PER_STEP * len(STEP_TIMES)))
    assert m.sustained_throughput_sps == pytest.approx(
        SAMPLES_PER_STEP * len(STEP_TIMES) / sum(STEP_TIMES))
    # the median-based throughput ignores the slowest steps, the sustained one does not
    assert m.sustained_throughput_sps <= m.throughput_sps


def test_no_energy_gives_none_power() -> None:
    raw = _raw(energy={"energy_j": None, "source": "none", "window_s": 0.5, "samples": 0})
    m = _measure(raw)
    assert m.power_w is None
    assert m.energy_per_sample_j is None
    assert m.energy_model == ""
    reasons = m.missing_reasons()
    assert reasons["power_w"] == reasons["energy_per_sample_j"] == "no energy source"
    assert m.summary()["energy_source"] == "none"


def test_zero_energy_window_gives_none_power() -> None:
    raw = _raw(energy={"energy_j": 1.0, "source": "estimated", "window_s": 0.0, "samples": 2})
    assert _measure(raw).power_w is None


def test_memory_source() -> None:
    m = _measure()
    assert m.memory_source == "process_peak_rss"
    assert m.peak_memory_bytes == 300 * 2**20
    assert m.metrics()["peak_memory_mb"] == pytest.approx(300.0)
    d = _measure(_raw(device_peak_memory_bytes=2 * 2**30))
    assert d.memory_source == "device_peak"
    assert d.peak_memory_bytes == 2 * 2**30
    assert d.metrics()["peak_memory_mb"] == pytest.approx(2048.0)
    # a device that reports 0 bytes is still the device's number
    assert _measure(_raw(device_peak_memory_bytes=0)).memory_source == "device_peak"


def test_missing_reasons_explain_none_metrics() -> None:
    m = _measure(_raw(accuracy=None))
    metrics, reasons = m.metrics(), m.missing_reasons()
    assert "latency_p50_ms" not in reasons
    assert reasons["latency_p90_ms"] == "25 steps measured; p90 needs 64"
    assert reasons["latency_p99_ms"] == "25 steps measured; p99 needs 662"
    assert "accuracy" in reasons and "training budget" in reasons["accuracy"]
    # every None metric has a reason; no reason for a metric that is present
    for name, value in metrics.items():
        assert (value is None) == (name in reasons), name
    few = _measure(_raw(step_times_s=STEP_TIMES[:10]))
    assert few.missing_reasons()["latency_p95_ms"] == "10 steps measured; p95 needs 132"


def test_summary_names_and_provenance() -> None:
    m = _measure()
    s = m.summary()
    assert set(METRICS) <= set(s)
    assert set(m.metrics()) == set(METRICS)
    assert s["energy_source"] == "estimated"
    assert "W per busy core" in s["energy_model"]
    assert s["memory_source"] == "process_peak_rss"
    assert s["steps_measured"] == 25
    assert s["latency_unit"] == "per optimizer step"
    assert s["threads"] == 4
    assert s["stop_reason"] == "ci_met"
    assert s["noise"] in ("ok", "noisy", "very_noisy")
    assert s["missing"] == m.missing_reasons()
    assert _measure(mode="infer").summary()["latency_unit"] == "per batch"


def test_noise_flag() -> None:
    steady = _measure(_raw(step_times_s=[0.01] * 30))
    assert steady.spread == 0.0 and steady.noise_flag == "ok"
    noisy = _measure(_raw(step_times_s=[0.01, 0.0115] * 15))
    assert noisy.noise_flag == "noisy"
    wild = _measure(_raw(step_times_s=[0.01, 0.02] * 15))
    assert wild.noise_flag == "very_noisy"


def test_to_dict_keeps_raw_step_times_and_is_json() -> None:
    import json

    m = _measure()
    d = json.loads(json.dumps(m.to_dict()))
    assert d["step_times_s"] == STEP_TIMES
    assert d["energy_source"] == "estimated"
    assert json.loads(json.dumps(m.summary()))["throughput_sps"] == pytest.approx(
        m.throughput_sps)


# -- the fake's result has the shape of a real one ---------------------------------------------

#: Keys _worker.run_trial adds to run_profile's result.
_WORKER_KEYS = {"process_start_s", "import_s", "data_s", "setup_s", "status", "threads",
                "model", "versions", "peak_rss_bytes", "device_peak_memory_bytes",
                "peak_rss_scope", "environment", "worker"}


class _StubBackend:
    """The smallest backend run_profile can drive: steps take ~1 ms."""

    steps_per_epoch = 2

    def synchronize(self) -> None:
        pass

    def between_steps(self) -> None:
        pass

    def step(self) -> int:
        time.sleep(0.001)
        return 8

    def evaluate(self) -> float:
        return 0.5


def test_fake_launcher_result_has_the_real_shape() -> None:
    space = parse_space({"workload": "mlp", "mode": "train",
                         "objectives": {"throughput_sps": "maximize"}})
    budget = Budget(trial_seconds=5, warmup_max_s=0.3, window_min_s=0.02, window_min_steps=5,
                    window_max_s=0.05, train_epochs=1)
    config = TrialConfig.from_params(space, {"batch_size": 8, "threads": 1})
    config = TrialConfig(**{**vars(config), "budget": budget})
    real = run_profile(_StubBackend(), config, EstimatedCpuMeter(),  # type: ignore[arg-type]
                       time.perf_counter() + 3)
    fake = FakeLauncher().raw_result(config)
    assert set(fake) == set(real) | _WORKER_KEYS
    assert set(fake["energy"]) == set(real["energy"])
    for key in real:
        if real[key] is not None and fake[key] is not None:
            assert isinstance(fake[key], type(real[key])), key
    # and it says it is synthetic
    assert SYNTHETIC_NOTE in fake["warnings"]
    m = Measurement.from_worker(fake, samples_per_step=8, mode="train")
    assert m.throughput_sps > 0
    assert len(m.step_times_s) >= budget.window_min_steps


def test_fake_launcher_outcomes_are_deterministic_and_labelled() -> None:
    space = parse_space({"workload": "mlp", "mode": "train",
                         "objectives": {"throughput_sps": "maximize"}})
    small = TrialConfig.from_params(space, {"batch_size": 16, "threads": 2})
    big = TrialConfig.from_params(space, {"batch_size": 256, "threads": 2})
    launcher = FakeLauncher(infeasible=lambda c: c.batch_size > 128, fail=on_calls(2))
    first, oom, crash, again = (launcher.run(c) for c in (small, big, small, small))
    assert first.status == again.status == "ok"
    assert first.result == again.result  # same config, same synthetic numbers
    assert (oom.status, oom.failure_kind) == ("infeasible", "oom")
    assert (crash.status, crash.failure_kind) == ("fail", "crash") and crash.traceback
    assert launcher.calls == [small, big, small, small]
    timeout = FakeLauncher(fail=on_calls(0), fail_kind="timeout").run(small)
    assert (timeout.status, timeout.failure_kind) == ("fail", "timeout")
    bare = FakeLauncher(with_energy=False, device_peak_memory_bytes=2**30).run(small)
    m = Measurement.from_worker(bare.result, samples_per_step=16, mode="train")
    assert (m.energy_source, m.power_w, m.memory_source) == ("none", None, "device_peak")
    with pytest.raises(ValueError):
        FakeLauncher(fail_kind="segfault")


# -- power meters ------------------------------------------------------------------------------


def _cpu_s() -> float:
    return time.process_time()


def _busy(cpu_seconds: float) -> None:
    """Spin until this process has used ``cpu_seconds`` of CPU (robust on a loaded box)."""
    start, deadline = _cpu_s(), time.perf_counter() + 10
    x = 0
    while _cpu_s() - start < cpu_seconds and time.perf_counter() < deadline:
        x += 1


def test_estimated_meter_over_busy_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOTUNE_CPU_WATTS_PER_CORE", raising=False)
    meter = EstimatedCpuMeter()
    meter.begin()
    _busy(0.1)
    reading = meter.end()
    assert reading.source == "estimated"
    assert reading.energy_j is not None and reading.energy_j > 0
    # Other threads of the test process may add CPU time, so the window can be a little
    # shorter than the CPU time it holds, but not shorter than its share of it.
    assert reading.window_s >= 0.1 / (os.cpu_count() or 1)
    assert "W per busy core" in reading.model
    assert f"{DEFAULT_WATTS_PER_CORE:g} W per busy core" in reading.model
    # one busy thread used >= 0.1 CPU s, and at most the window (+ clock ticks) of it
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    assert reading.energy_j >= (0.1 - tick) * DEFAULT_WATTS_PER_CORE
    # The meter charges every thread of the process (other tests may have left threads
    # running), so the ceiling is every core busy for the whole window.
    cores = os.cpu_count() or 1
    assert reading.energy_j <= (reading.window_s + 2 * tick) * DEFAULT_WATTS_PER_CORE * cores
    assert reading.power_w == pytest.approx(reading.energy_j / reading.window_s)


def test_estimated_meter_idle_window_uses_little_energy() -> None:
    meter = EstimatedCpuMeter(watts=10.0)
    meter.begin()
    time.sleep(0.1)
    reading = meter.end()
    assert reading.energy_j is not None
    assert reading.energy_j < 0.5  # sleeping is not charged like a busy core (1 J)


def test_watts_per_core_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_CPU_WATTS_PER_CORE", "2.5")
    assert watts_per_core() == 2.5
    assert rated_cpu_power_w() == pytest.approx((os.cpu_count() or 1) * 2.5)
    meter = EstimatedCpuMeter()
    assert meter.watts == 2.5
    meter.begin()
    _busy(0.05)
    reading = meter.end()
    assert "2.5 W per busy core" in reading.model
    assert reading.energy_j is not None
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    # the energy is CPU seconds x 2.5 W: within a clock tick of 0.05 s x 2.5 W or more
    cores = os.cpu_count() or 1  # every thread of the process is charged
    assert (0.05 - tick) * 2.5 <= reading.energy_j <= (reading.window_s + 2 * tick) * 2.5 * cores


@pytest.mark.parametrize("bad", ["", "abc", "0", "-3"])
def test_watts_per_core_bad_override_falls_back(monkeypatch: pytest.MonkeyPatch,
                                                bad: str) -> None:
    monkeypatch.setenv("AUTOTUNE_CPU_WATTS_PER_CORE", bad)
    assert watts_per_core() == DEFAULT_WATTS_PER_CORE


def test_explicit_watts_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_CPU_WATTS_PER_CORE", "7")
    assert EstimatedCpuMeter(watts=3.0).watts == 3.0


def test_null_meter() -> None:
    meter = NullMeter()
    meter.begin()
    time.sleep(0.01)
    reading = meter.end()
    assert reading.energy_j is None
    assert reading.source == "none"
    assert reading.samples == 0
    assert reading.window_s >= 0.01
    assert reading.power_w is None
    assert isinstance(meter, power.PowerMeter)


def test_combine() -> None:
    a = EnergyReading(2.0, "estimated", 1.0, 2, "process CPU time x 10 W per busy core")
    b = EnergyReading(3.0, "estimated", 0.5, 2, "process CPU time x 10 W per busy core")
    c = combine([a, b])
    assert c.energy_j == pytest.approx(5.0)
    assert c.window_s == pytest.approx(1.5)
    assert c.samples == 4
    assert c.source == "estimated"
    assert c.model == "process CPU time x 10 W per busy core"  # not repeated
    assert c.power_w == pytest.approx(5.0 / 1.5)
    assert combine([a]) == a


def test_combine_with_missing_energy_and_empty() -> None:
    a = EnergyReading(2.0, "estimated", 1.0, 2, "m")
    none = EnergyReading(None, "none", 1.0, 0)
    assert combine([a, none]).energy_j is None
    empty = combine([])
    assert empty.energy_j is None and empty.source == "none" and empty.window_s == 0.0
    assert empty.samples == 0


class _SlowEvalBackend(_StubBackend):
    """Reaches its training budget inside the measured window; evaluation takes 0.3 s."""

    steps_per_epoch = 400

    def evaluate(self) -> float:
        time.sleep(0.3)
        return 0.5


def test_evaluation_inside_the_window_is_cut_out_of_time_and_energy() -> None:
    space = parse_space({"workload": "mlp", "mode": "train",
                         "objectives": {"throughput_sps": "maximize"}})
    budget = Budget(trial_seconds=30, warmup_max_s=0.3, window_min_s=1.0, window_min_steps=5,
                    window_max_s=1.5, train_epochs=1, target_ci=1e-9)
    config = TrialConfig.from_params(space, {"batch_size": 8, "threads": 1})
    config = TrialConfig(**{**vars(config), "budget": budget})
    raw = run_profile(_SlowEvalBackend(), config, EstimatedCpuMeter(),  # type: ignore[arg-type]
                      time.perf_counter() + 20)
    assert raw["accuracy"] == 0.5 and raw["eval_s"] >= 0.3
    assert raw["train_steps"] > 400  # the evaluation happened inside the window
    # neither the window nor the energy window contains the 0.3 s evaluation
    assert raw["energy"]["window_s"] == pytest.approx(raw["window_s"], abs=0.05)
    assert sum(raw["step_times_s"]) <= raw["window_s"] + 0.01
