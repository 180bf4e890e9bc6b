"""The feasibility pre-screen: the sampler stops proposing what is known not to run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import autotune
from autotune._feasibility import OutOfMemoryBoundaries
from autotune.config import TrialConfig
from autotune.space import parse_space
from autotune.testing import FakeLauncher
from tests.test_simulation import MODEL, sim_space

#: a wide batch range on small simulated devices: most large batches do not fit
TIGHT = {
    "tiny": {"flops": {"fp32": 1.0e13, "bf16": 8.0e13}, "memory_gb": 0.5,
             "bandwidth_gbs": 400, "noise": 0.03},
    "mid": {"flops": {"fp32": 2.0e13}, "memory_gb": 2, "bandwidth_gbs": 900, "noise": 0.03},
}


def test_boundaries_follow_memory_growing_with_the_batch() -> None:
    b = OutOfMemoryBoundaries()
    group = ("torch", "cpu", "fp32", "eager")
    b.observe(group, 512, out_of_memory=True)
    assert b.reason(group, 1024) == "batch 1024 >= 512, which ran out of memory on cpu"
    assert b.reason(group, 256) is None and b.reason(("x",) * 4, 4096) is None
    b.observe(group, 600, out_of_memory=False)  # a larger batch ran: memory did not decide
    assert b.reason(group, 1024) is None


def _infeasible_share(results: list[Any]) -> float:
    return sum(r.state == "infeasible" for r in results) / len(results)


def test_at_most_a_quarter_of_100_trials_infeasible_on_a_tight_simulated_space(
        tmp_path: Path) -> None:
    space = parse_space(sim_space(
        workload={"factory": "simulated", "kwargs": {"model": MODEL, "devices": TIGHT}},
        mode="train", objectives={"throughput_sps": "maximize", "accuracy": "maximize"},
        params={"backend": "sim", "device": ["sim:tiny", "sim:mid"],
                "batch_size": {"low": 1, "high": 8192, "log": True},
                "precision": ["fp32", "bf16"], "learning_rate": 1e-3},
        budget={"trial_seconds": 600, "train_epochs": 1}))
    study = autotune.create_study("tight", space, storage=f"sqlite:///{tmp_path}/t.db",
                                  seed=0)
    results = study.optimize(n_trials=100, recheck_every=0)
    assert len(results) == 100
    assert _infeasible_share(results) <= 0.25, [r.reason for r in results
                                                if r.state == "infeasible"]


def test_out_of_memory_seen_in_the_study_is_not_proposed_again(tmp_path: Path) -> None:
    """No memory model here: the boundary is learned from the trials that ran out."""
    space = parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"batch_size": {"low": 1, "high": 4096, "log": True}, "threads": 1},
    })
    study = autotune.create_study("learn", space, storage=f"sqlite:///{tmp_path}/l.db",
                                  seed=3)
    launcher = FakeLauncher(infeasible=lambda c: c.batch_size >= 256)
    results = study.optimize(n_trials=100, recheck_every=0, launcher=launcher)
    ran_out = [r for r in results if r.state == "infeasible"]
    assert ran_out and all(r.failure_kind == "oom" for r in ran_out)
    assert _infeasible_share(results) <= 0.25
    # without the pre-screen the sampler keeps proposing them: a third of the log range
    config = TrialConfig.from_params(space, {"batch_size": 4096})
    assert launcher.infeasible is not None and launcher.infeasible(config)


def test_the_pre_screen_reads_each_completed_trial_once(tmp_path: Path,
                                                        monkeypatch: Any) -> None:
    """The driver's work per proposal must not grow with the study: a completed trial does
    not change, so the boundaries it teaches are read from it once, not at every ask."""
    import optuna

    from autotune import _run
    from autotune._feasibility import feasible_sampler

    space = parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"batch_size": {"low": 1, "high": 4096, "log": True}, "threads": 1},
    })
    study = autotune.create_study("once", space, storage=f"sqlite:///{tmp_path}/o.db", seed=0)
    study.optimize(n_trials=12, recheck_every=0,
                   launcher=FakeLauncher(infeasible=lambda c: c.batch_size >= 256))
    ostudy = optuna.load_study(study_name="once", storage=study.storage.url)
    sampler = feasible_sampler(optuna.samplers.RandomSampler(seed=0), space)
    reads: list[dict[str, Any]] = []
    original = _run.trial_config
    monkeypatch.setattr(_run, "trial_config",
                        lambda s, params, **kw: reads.append(params) or original(s, params, **kw))
    first = sampler._boundaries(ostudy)
    assert len(reads) == 12  # every completed trial, once
    assert first.oom  # and what they taught: the batch that ran out
    assert sampler._boundaries(ostudy) is first and len(reads) == 12  # nothing new: no reads


# -- the bounded memory probe -------------------------------------------------------------------


def test_the_probe_bisects_to_within_5_percent_in_a_few_steps() -> None:
    import time

    from autotune._memory_probe import bisect

    tried: list[int] = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch < 700

    found = bisect(fits, {"low": 16, "low_fits": True, "high": 4096, "max_attempts": 10},
                   time.perf_counter() + 10)
    assert found["fits"] < 700 <= found["oom"] and found["oom"] <= found["fits"] * 1.05 + 1
    assert [b for b, _ in found["attempts"]] == tried and len(tried) <= 10
    # a smallest batch not known to fit is tried first; when it does not, the probe stops
    nothing = bisect(lambda b: False, {"low": 8, "low_fits": False, "high": 64},
                     time.perf_counter() + 10)
    assert nothing == {"fits": None, "oom": 8, "attempts": [[8, False]]}
    # bounded: at most max_attempts steps
    few = bisect(fits, {"low": 1, "low_fits": True, "high": 1 << 20, "max_attempts": 2},
                 time.perf_counter() + 10)
    assert len(few["attempts"]) == 2


def test_one_probe_after_the_first_out_of_memory_trial_steers_the_sampler(
        tmp_path: Path) -> None:
    """With a memory cap (a full device), the first out-of-memory trial of a group starts
    one probe; what it finds is stored on the study and no later proposal of the group is
    at or above the batch it found not to fit."""
    import optuna

    space = parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"batch_size": {"low": 1, "high": 4096, "log": True}, "threads": 1},
        "budget": {"memory_mb": 512},
    })
    study = autotune.create_study("probe", space, storage=f"sqlite:///{tmp_path}/p.db",
                                  seed=3)
    launcher = FakeLauncher(infeasible=lambda c: c.batch_size >= 300)
    results = study.optimize(n_trials=40, recheck_every=0, launcher=launcher)
    assert len(launcher.probes) == 1  # one group, one probe
    attrs = optuna.load_study(study_name="probe", storage=study.storage.url).user_attrs
    probe = attrs["memory_probe:torch|cpu|fp32|eager"]
    assert probe["fits"] < 300 <= probe["oom"] and probe["oom"] <= probe["fits"] * 1.05 + 1
    first = next(i for i, r in enumerate(results) if r.failure_kind == "oom")
    later = [r.params["batch_size"] for r in results[first + 1:]]
    assert later and max(later) < probe["oom"]
    assert sum(r.state == "infeasible" for r in results) == 1  # only the one that taught it


def test_no_probe_of_a_cpus_own_memory_without_a_cap(tmp_path: Path) -> None:
    space = parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"batch_size": {"low": 1, "high": 4096, "log": True}, "threads": 1},
    })
    study = autotune.create_study("nocap", space, storage=f"sqlite:///{tmp_path}/n.db",
                                  seed=3)
    launcher = FakeLauncher(infeasible=lambda c: c.batch_size >= 300)
    study.optimize(n_trials=15, recheck_every=0, launcher=launcher)
    assert launcher.probes == []


@pytest.mark.slow
def test_a_real_probe_finds_where_a_torch_model_fits_under_the_cap() -> None:
    """Real torch in a worker under a 128 MB cap: the mlp fits at small batches and not
    at large ones; the probe steps the trial's own code path and stops within 5 %."""
    import dataclasses

    from autotune.launch import WarmLauncher

    space = parse_space({
        "workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
        "params": {"batch_size": 16, "threads": 1},
        "budget": {"memory_mb": 128, "trial_seconds": 60},
    })
    config = TrialConfig.from_params(space, {})
    request = {"low": 64, "low_fits": True, "high": 1 << 16, "max_attempts": 12,
               "max_s": 40}
    with WarmLauncher() as launcher:
        outcome = launcher.run(dataclasses.replace(config, memory_probe=request))
        assert "memory_probe" in (outcome.result or {}), (outcome.status, outcome.reason,
                                                          outcome.traceback[-2000:])
        found = outcome.result["memory_probe"]
        assert outcome.status == "infeasible" and outcome.failure_kind == "oom", outcome.reason
    assert found["fits"] is not None and 16 <= found["fits"] < found["oom"]
    assert found["oom"] <= found["fits"] * 1.05 + 1
    fitted = [b for b, ok in found["attempts"] if ok]
    ran_out = [b for b, ok in found["attempts"] if not ok]
    assert max(fitted) == found["fits"] and min(ran_out) == found["oom"]
    # the boundary is real: a trial well above it runs out in a fresh worker too (the
    # edge itself moves by tens of % between processes: the cap counts from the worker's
    # address space when a trial starts, which earlier allocations and the allocator's
    # per-thread arenas change)
    with WarmLauncher() as fresh:
        above = fresh.run(dataclasses.replace(config, batch_size=found["oom"] * 8))
    assert above.status == "infeasible" and above.failure_kind == "oom", above.reason
