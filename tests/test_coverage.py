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
    # every runnable arm, in the order the study's seed draws
    order = [(a["device"], a["precision"]) for a in _coverage.arms(space, seed=5)]
    assert [(p["device"], p["precision"]) for p in first] == [a for a in order
                                                              if a in runnable]
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
    nxt = types.SimpleNamespace(number=len(results), system_attrs={})
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


def test_a_knob_listed_with_one_value_is_the_trials_own_in_the_start_up(
        tmp_path: Path) -> None:
    """``device: [sim:big]`` is left out of the proposals (nothing to choose): the
    pre-screen must check the arms on it, not on the default device."""
    space = _space(params={"backend": "sim", "device": ["sim:big"],
                           "batch_size": {"low": 1, "high": 8192, "log": True},
                           "precision": ["fp32", "bf16"]})
    study = autotune.create_study("one", space, storage=f"sqlite:///{tmp_path}/o.db",
                                  seed=0)
    results = study.optimize(n_trials=3, recheck_every=0)
    assert [r.start_up for r in results] == [True, True, False]
    assert {r.params["precision"] for r in results[:2]} == {"fp32", "bf16"}
    assert all(r.params["batch_size"] == 8192 for r in results[:2])


def test_a_data_parallel_arm_starts_at_a_batch_its_replicas_split(tmp_path: Path) -> None:
    """The largest batch of ``{2..1023}`` does not split over 2 replicas: the start-up
    asks for the largest that does, instead of finding the arm unable to run."""
    from autotune.testing import FakeLauncher

    space = parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"backend": "torch", "batch_size": {"low": 2, "high": 1023},
                   "data_parallel": [1, 2], "threads": 1}})
    study = autotune.create_study("dp", space, storage=f"sqlite:///{tmp_path}/d.db", seed=0)
    results = study.optimize(n_trials=2, recheck_every=0, launcher=FakeLauncher())
    assert [r.start_up for r in results] == [True, True]
    assert {r.params["data_parallel"]: r.params["batch_size"] for r in results} == \
        {1: 1023, 2: 1022}


def test_an_arm_whose_first_trial_ran_out_of_memory_is_measured_again_lower(
        tmp_path: Path) -> None:
    """Without a memory model the first batch may not fit: the out-of-memory trial does
    not cover its arm; the next proposal of the arm is below the batch that ran out."""
    from autotune.testing import FakeLauncher

    space = parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"backend": "torch", "batch_size": {"low": 1, "high": 4096, "log": True},
                   "threads": [1, 2]}})
    study = autotune.create_study("oom", space, storage=f"sqlite:///{tmp_path}/m.db", seed=0)
    launcher = FakeLauncher(infeasible=lambda c: c.batch_size > 300)
    results = study.optimize(n_trials=4, recheck_every=0, launcher=launcher)
    assert [r.start_up for r in results] == [True] * 4
    trials = [(r.params["threads"], r.params["batch_size"], r.state) for r in results]
    assert trials[0][1:] == (4096, "infeasible")  # the space's largest: ran out
    for threads in (1, 2):  # each arm ends measured, below every batch that ran out
        arm = [(batch, state) for t, batch, state in trials if t == threads]
        assert arm[-1][1] == "ok", trials
        ran_out = [batch for batch, state in arm if state == "infeasible"]
        assert all(arm[-1][0] < batch for batch in ran_out), trials
    # a lowered batch halves the doubt (in log scale), not one batch at a time
    assert all(batch <= 512 for _, batch, state in trials[1:]), trials


def test_jobs_with_their_own_devices_cover_each_arm_once(tmp_path: Path) -> None:
    """Two jobs, each pinned to its devices, ask at once: each arm is claimed once, and
    on a device of the job that ran it."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores")
    space = _space()
    study = autotune.create_study("jobs", space, storage=f"sqlite:///{tmp_path}/j.db",
                                  seed=1)
    results = study.optimize(n_trials=10, recheck_every=0, jobs=2,
                             devices=["sim:tiny", "sim:big"])
    arms = [(r.params["device"], r.params["precision"]) for r in results if r.start_up]
    assert len(arms) == len(set(arms)), arms  # no arm twice
    runnable = {("sim:tiny", "fp32"), ("sim:tiny", "bf16")} | {
        ("sim:big", p) for p in ("fp32", "bf16", "fp16", "int8")}
    assert set(arms) == runnable
    assert all(r.params["device"] in ("sim:tiny", "sim:big") for r in results)
    # Study.trials() reads the marker back from storage
    assert sum(t.start_up for t in study.trials()) == len(runnable)


def test_a_trial_queued_with_some_knobs_gets_a_start_up_batch_for_its_own_arm(
        tmp_path: Path) -> None:
    """Optuna asks the sampler for the knobs a queued trial leaves out: the start-up fills
    them for the queued arm, not for the next arm in its order."""
    import optuna

    from autotune import simulation
    from autotune._run import trial_config

    space = _space()
    study = autotune.create_study("queued", space, storage=f"sqlite:///{tmp_path}/q.db",
                                  seed=0)
    optuna.load_study(study_name="queued", storage=study.storage.url).enqueue_trial(
        {"device": "sim:tiny", "precision": "fp32"})
    [result] = study.optimize(n_trials=1, recheck_every=0)
    assert (result.params["device"], result.params["precision"]) == ("sim:tiny", "fp32")
    assert result.start_up and result.state in ("ok", "pruned"), result.reason
    sim = simulation.parse_simulator(space.workload_kwargs)
    config = trial_config(space, result.params, seed=0)
    assert simulation.memory_bytes(sim, config) <= simulation.memory_limit_bytes(sim, config)


def test_a_pinned_device_holds_on_the_uniform_fallback_too(tmp_path: Path) -> None:
    """When the base sampler's draws are refused, the pre-screen draws uniformly: a job
    pinned to ``sim:mid`` (fp32 only) must still get ``sim:mid``, not another job's
    device."""
    import optuna

    from autotune._feasibility import feasible_sampler

    class Int8Only(optuna.samplers.RandomSampler):  # a base whose draws never run on mid
        def sample_independent(self, study: Any, trial: Any, name: str,
                               distribution: Any) -> Any:
            return "int8" if name == "precision" else super().sample_independent(
                study, trial, name, distribution)

    space = _space()
    ostudy = optuna.create_study(storage=f"sqlite:///{tmp_path}/u.db",
                                 directions=space.directions)
    for seed in range(5):
        sampler = feasible_sampler(Int8Only(seed=seed), space, seed=seed,
                                   fixed={"device": "sim:mid"})
        late = types.SimpleNamespace(number=100, system_attrs={})  # past the start-up
        params = sampler.sample_relative(ostudy, late, space.distributions())
        assert params["device"] == "sim:mid" and params["precision"] == "fp32", params
        assert sampler.rejected >= 4  # the base's draws were refused: the fallback ran
