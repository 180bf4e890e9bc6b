"""The simulator: sim:NAME devices declared in a space file, run on a virtual clock through
the real worker and measured loop, labelled simulated everywhere, with an exact front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import autotune
from autotune import simulation
from autotune.cli import main
from autotune.config import TrialConfig
from autotune.exceptions import SpaceError
from autotune.pareto import hypervolume
from autotune.space import parse_space

MODEL = {"flops_per_sample": 2.0e9, "params": 5.0e6, "activation_bytes_per_sample": 4.0e6,
         "quality": 0.9}
DEVICES = {
    "big": {"flops": {"fp32": 2.0e13, "bf16": 1.6e14, "int8": 3.2e14}, "memory_gb": 16,
            "bandwidth_gbs": 900, "idle_w": 50, "max_w": 300, "noise": 0.03},
    "small": {"flops": {"fp32": 2.0e12}, "memory_gb": 1, "bandwidth_gbs": 100,
              "idle_w": 10, "max_w": 60, "noise": 0.05},
}


def sim_space(**overrides: Any) -> dict[str, Any]:
    """An infer-mode simulated space: throughput up, p95 latency down."""
    space: dict[str, Any] = {
        "workload": {"factory": "simulated", "kwargs": {"model": MODEL, "devices": DEVICES}},
        "mode": "infer",
        "objectives": {"throughput_sps": "maximize", "latency_p95_ms": "minimize"},
        "params": {"backend": "sim", "device": ["sim:big", "sim:small"],
                   "batch_size": {"low": 1, "high": 4096, "log": True},
                   "precision": ["fp32", "bf16", "int8"]},
        # simulated seconds cost no real time: a budget no slow simulated device ends
        "budget": {"trial_seconds": 600},
    }
    space.update(overrides)
    return space


def write(tmp_path: Path, space: dict[str, Any]) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_a_simulated_study_is_labelled_simulated_and_matches_its_model(tmp_path: Path) -> None:
    study = autotune.create_study("sim", parse_space(sim_space()),
                                  storage=f"sqlite:///{tmp_path}/s.db", seed=1)
    results = study.optimize(n_trials=12, recheck_every=0)
    sim = simulation.parse_simulator({"model": MODEL, "devices": DEVICES})
    ok = [r for r in results if r.state == "ok"]
    assert ok, [r.reason for r in results]
    for r in ok:
        m = r.metrics
        assert m["simulated"] is True and m["energy_source"] == "simulated"
        config = TrialConfig.from_params(study.space, r.params)
        expected = simulation.expected_metrics(sim, config)
        assert expected is not None
        # the median of the noisy steps estimates the noise-free step time
        assert m["throughput_sps"] == pytest.approx(expected["throughput_sps"], rel=0.06)
    rows = study.storage.measurements(study.id)
    raw = json.loads(next(r.raw_json for r in rows if r.state == "ok"))
    assert simulation.SIMULATED_NOTE in raw["warnings"]
    # what cannot run is known without a worker: sim:small has no bf16, and 1 GiB
    for r in results:
        if r.state == "infeasible":
            assert r.failure_kind in ("unsupported", "oom")
            assert "simulated device" in r.reason


def test_the_cli_says_simulated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    space = write(tmp_path, sim_space(objectives={"throughput_sps": "maximize",
                                                  "energy_per_sample_j": "minimize"}))
    assert main(["study", "create", "c", "--space", str(space), "--storage", url]) == 0
    assert main(["study", "run", "c", "--n-trials", "6", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "(simulated)" in out and "SIMULATED, not measured" in out and " sim " in out


@pytest.mark.parametrize(("change", "message"), [
    ({"params": {"backend": "sim", "device": ["sim:huge"]}},
     "device 'sim:huge' is not declared in the simulated workload; declared: sim:big, "
     "sim:small"),
    ({"workload": {"factory": "simulated", "kwargs": {"model": {"params": 1e6},
                                                      "devices": DEVICES}}},
     "workload.kwargs.model.flops_per_sample: is required"),
    ({"workload": {"factory": "simulated", "kwargs": {
        "model": MODEL, "devices": {"x": {"flops": {"fp64": 1e12}}}}}},
     "workload.kwargs.devices.x.flops.fp64: unknown key"),
    ({"params": {"backend": "torch", "device": ["sim:big"]}},
     "the simulated workload runs on backend 'sim' and simulated devices only"),
])
def test_bad_simulator_declarations_are_one_line(change: dict[str, Any], message: str) -> None:
    with pytest.raises(SpaceError) as error:
        parse_space(sim_space(**change))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_simulated_device_needs_the_simulated_workload() -> None:
    with pytest.raises(SpaceError, match="sim:big is a simulated device: it needs workload "
                                         "'simulated'"):
        parse_space({"workload": "mlp", "mode": "infer",
                     "objectives": {"throughput_sps": "maximize"},
                     "params": {"device": ["sim:big"]}})


def test_the_true_front_is_exact_and_bounds_what_a_study_finds(tmp_path: Path) -> None:
    space = parse_space(sim_space())
    truth = simulation.true_front(space, points=48)
    assert truth.points and truth.feasible < truth.evaluated  # some configurations OOM
    # no enumerated feasible configuration beats a true front point
    sim = simulation.parse_simulator(space.workload_kwargs)
    best = max(truth.points, key=lambda p: p[1][0])
    assert best[0]["device"] == "sim:big" and best[0]["precision"] == "int8"
    study = autotune.create_study("t", space, storage=f"sqlite:///{tmp_path}/t.db", seed=0)
    study.optimize(n_trials=15, recheck_every=0)
    found = []
    for point in study.pareto_front():
        config = TrialConfig.from_params(space, point.config)
        metrics = simulation.expected_metrics(sim, config)
        assert metrics is not None
        found.append([metrics[n] for n in space.objective_names])
    found_volume = hypervolume(found, space.directions, truth.reference)
    assert 0 < found_volume <= truth.hypervolume * (1 + 1e-9)


def test_physics_monotone_where_it_must_be() -> None:
    sim = simulation.parse_simulator({"model": MODEL, "devices": DEVICES})
    space = parse_space(sim_space())

    def config(**knobs: Any) -> Any:
        return TrialConfig.from_params(space, {"device": "sim:big", **knobs})

    small, large = config(batch_size=8), config(batch_size=512)
    # bigger batches: more throughput (utilisation), longer steps, more memory
    assert simulation.expected_step_s(sim, large) > simulation.expected_step_s(sim, small)
    assert large.batch_size / simulation.expected_step_s(sim, large) > \
        small.batch_size / simulation.expected_step_s(sim, small)
    assert simulation.memory_bytes(sim, large) > simulation.memory_bytes(sim, small)
    # lower precision: faster and smaller, a little less accurate
    bf16 = config(batch_size=512, precision="bf16")
    assert simulation.expected_step_s(sim, bf16) < simulation.expected_step_s(sim, large)
    assert simulation.quality(sim, bf16) < simulation.quality(sim, large)
    idle, busy = DEVICES["big"]["idle_w"], DEVICES["big"]["max_w"]
    assert idle <= simulation.power_w(sim, small) < simulation.power_w(sim, large) <= busy
