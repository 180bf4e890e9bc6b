"""Start-up coverage: every runnable arm measured once before the model-based search."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

import autotune
from autotune import _coverage
from autotune.space import SearchSpace, parse_space
from tests.test_feasibility import TIGHT
from tests.test_simulation import MODEL, sim_space

#: three simulated devices, four precisions: 12 arms, of which 3 cannot run
#: (``sim:mid`` has fp32 only, ``sim:tiny`` no fp16/int8)
DEVICES = {**TIGHT, "big": {"flops": {"fp32": 1e14, "bf16": 4e14, "fp16": 4e14,
                                      "int8": 8e14},
                            "memory_gb": 80, "bandwidth_gbs": 3000, "noise": 0.03}}


def _space(mode: str = "infer", **changes: Any) -> SearchSpace:
    data = sim_space(
        workload={"factory": "simulated", "kwargs": {"model": MODEL, "devices": DEVICES}},
        mode=mode, objectives={"throughput_sps": "maximize", "latency_p95_ms": "minimize"},
        params={"backend": "sim", "device": ["sim:tiny", "sim:mid", "sim:big"],
                "batch_size": {"low": 1, "high": 8192, "log": True},
                "precision": ["fp32", "bf16", "fp16", "int8"]},
        budget={"trial_seconds": 600, "train_epochs": 1})
    data.update(changes)
    return parse_space(data)


def test_the_arms_are_the_categorical_knobs_else_the_hardware_ones_else_none() -> None:
    space = _space()
    assert _coverage.arm_knobs(space) == ("device", "precision")
    arms = _coverage.arms(space, seed=0)
    assert len(arms) == 12 and len({tuple(a.values()) for a in arms}) == 12
    assert arms == _coverage.arms(space, seed=0) != _coverage.arms(space, seed=1)
    # a categorical batch is a size, not an arm; a fixed knob is no choice
    listed = _space(params={"backend": "sim", "device": ["sim:big"],
                            "batch_size": [8, 64, 512], "precision": ["fp32", "bf16"]})
    assert _coverage.arm_knobs(listed) == ("precision",)
    # 4 x 3 x 2 = 24 arms with the threads: over the cap, only the hardware knobs
    wide = _space(params={**_space().to_dict()["params"], "threads": [1, 2]})
    assert _coverage.arm_knobs(wide) == ("device", "precision")
    # hardware arms over the cap: nothing covered (the sampler's own start-up)
    many = [f"sim:d{i}" for i in range(5)]
    crowded = _space(workload={"factory": "simulated", "kwargs": {
        "model": MODEL, "devices": {d[4:]: DEVICES["big"] for d in many}}},
        params={"backend": "sim", "device": many, "batch_size": 8,
                "precision": ["fp32", "bf16", "fp16", "int8"]})
    assert _coverage.arm_knobs(crowded) == () and _coverage.arms(crowded, 0) == []


def test_the_largest_batch_only_where_it_cannot_change_what_is_measured_against() -> None:
    assert _coverage.starts_at_largest_batch(_space())
    # training: the batch changes the number of optimizer steps, hence the quality
    train = _space("train", objectives={"throughput_sps": "maximize"},
                   params={"backend": "sim", "device": ["sim:big"],
                           "batch_size": {"low": 1, "high": 8192, "log": True},
                           "precision": ["fp32", "bf16"], "learning_rate": 1e-3})
    assert not _coverage.starts_at_largest_batch(train)
    # a latency bound the largest batch would break
    assert not _coverage.starts_at_largest_batch(_space(constraints={"latency_p95_ms": "<= 5"}))
    # nothing the batch improves among the objectives
    assert not _coverage.starts_at_largest_batch(
        _space(objectives={"latency_p95_ms": "minimize"}))


def test_every_runnable_arm_is_measured_once_first_at_the_largest_batch_that_fits(
        tmp_path: Path) -> None:
    from autotune import simulation
    from autotune._run import trial_config

    space = _space()
    sim = simulation.parse_simulator(space.workload_kwargs)
    study = autotune.create_study("cover", space, storage=f"sqlite:///{tmp_path}/c.db",
                                  seed=5)
    results = study.optimize(n_trials=10, recheck_every=0)
    runnable = {("sim:tiny", "fp32"), ("sim:tiny", "bf16"), ("sim:mid", "fp32")} | {
        ("sim:big", p) for p in ("fp32", "bf16", "fp16", "int8")}
    first = [dict(r.params) for r in results[:len(runnable)]]
    assert [(p["device"], p["precision"]) for p in first] != sorted(runnable)  # seeded order
    assert sorted((p["device"], p["precision"]) for p in first) == sorted(runnable)
    # marked, so the trial line says why they look as they do; the rest are the sampler's
    from autotune.cli._render import _trial_line

    assert [r.start_up for r in results] == [True] * len(runnable) + \
        [False] * (len(results) - len(runnable))
    assert _trial_line(results[0]).endswith(" (start-up: each arm once)")
    assert "start-up" not in _trial_line(results[-1])
    # each ran (early stopping may cut a dominated one short): none refused
    assert all(r.state in ("ok", "pruned") for r in results[:len(runnable)]), \
        [(r.params, r.reason) for r in results]

    def fits(params: dict[str, Any], batch: int) -> bool:
        config = trial_config(space, {**params, "batch_size": batch}, seed=0)
        return simulation.memory_bytes(sim, config) <= \
            simulation.memory_limit_bytes(sim, config)

    for params in first:
        if params["device"] == "sim:big":  # 80 GB: the space's largest batch fits
            assert params["batch_size"] == 8192
        else:  # lowered by the memory model to the largest that fits
            assert fits(params, params["batch_size"]) and \
                not fits(params, params["batch_size"] + 1), params
    # then the search is the sampler's: no arm is left to cover (the 5 that cannot run
    # are found so and left out)
    import optuna

    from autotune._feasibility import feasible_sampler

    ostudy = optuna.load_study(study_name="cover", storage=study.storage.url)
    sampler = feasible_sampler(optuna.samplers.RandomSampler(seed=0), space, seed=5)
    nxt = types.SimpleNamespace(number=len(results))
    assert sampler._cover(ostudy, nxt, space.distributions(), sampler._boundaries(ostudy)) \
        is None
    assert len(sampler.coverage.dead) == 12 - len(runnable)


def test_the_start_up_leaves_out_arms_others_are_measuring_and_keeps_a_pinned_device(
        tmp_path: Path) -> None:
    """A running trial's arm (another worker's) is not proposed again; a worker pinned
    to a device covers only that device's arms."""
    import optuna

    from autotune._feasibility import feasible_sampler

    space = _space()
    ostudy = optuna.create_study(storage=f"sqlite:///{tmp_path}/p.db",
                                 directions=space.directions)
    ostudy.enqueue_trial({"device": "sim:big", "precision": "int8", "batch_size": 64})
    running = ostudy.ask(space.distributions())  # another worker's trial, still running
    assert running.params["precision"] == "int8"
    sampler = feasible_sampler(optuna.samplers.RandomSampler(seed=0), space, seed=0,
                               fixed={"device": "sim:big"})
    pending = sampler.coverage.pending(ostudy, trial_number=1, fixed=sampler.fixed)
    assert [a["device"] for a in pending] == ["sim:big"] * 3
    assert {a["precision"] for a in pending} == {"fp32", "bf16", "fp16"}  # int8 is running
    # past the start-up (more than twice as many trials as arms) the trials are not read
    unread = types.SimpleNamespace(get_trials=lambda **_: pytest.fail("trials read"))
    assert sampler.coverage.pending(unread, trial_number=25, fixed={}) == []
    assert sampler.coverage.pending(ostudy, trial_number=24, fixed={})
