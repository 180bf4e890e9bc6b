"""The feasibility pre-screen: the sampler stops proposing what is known not to run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
