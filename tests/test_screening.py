"""Multi-objective early stopping: a trial whose confidence box the front dominates is
stopped and recorded pruned (never on the front); the others are measured in full."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

import autotune
from autotune.exceptions import SpaceError
from autotune.profiling.screening import (
    Screen,
    dominated_by,
    optimistic_corner,
    quantile_ci,
)
from autotune.space import parse_space
from tests.test_simulation import sim_space

FAST = {"throughput_sps": "maximize", "latency_p50_ms": "minimize"}
GOOD = {"device": "sim:big", "batch_size": 8, "precision": "int8"}
POOR = {"device": "sim:small", "batch_size": 8, "precision": "fp32"}


def test_quantile_interval_covers_the_true_quantile() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):
        sample = rng.lognormal(0.0, 0.2, 40)
        low, high = quantile_ci(sample, 0.9)
        covered += low <= math.exp(1.2816 * 0.2) <= high
    assert covered >= 180  # a 95 % interval, up to the normal approximation
    assert quantile_ci([1.0] * 10, 0.99)[1] == math.inf  # too few steps to bound it above


def test_unknown_objectives_never_let_a_trial_be_pruned() -> None:
    times = [0.01] * 32
    corner = optimistic_corner(("throughput_sps", "accuracy"), ("maximize", "maximize"),
                               times, 8, {}, None, 256)
    assert corner[0] == pytest.approx(800.0) and corner[1] == math.inf
    screen = Screen(("throughput_sps", "accuracy"), ("maximize", "maximize"),
                    ((10_000.0, 0.99),))
    assert dominated_by(screen, corner) is None  # accuracy not measured yet: no verdict
    known = optimistic_corner(("throughput_sps", "accuracy"), ("maximize", "maximize"),
                              times, 8, {"accuracy": 0.9}, None, 256)
    assert dominated_by(screen, known) == (10_000.0, 0.99)


def _seeded_study(tmp_path: Path, name: str, **budget: object) -> autotune.Study:
    space = parse_space(sim_space(objectives=FAST,
                                  budget={"trial_seconds": 600, **budget}))
    url = f"sqlite:///{tmp_path}/{name}.db"
    study = autotune.create_study(name, space, storage=url, seed=0)
    ostudy = optuna.load_study(study_name=name, storage=url)
    ostudy.enqueue_trial(GOOD)
    ostudy.enqueue_trial(POOR)
    return study


def test_a_dominated_trial_is_pruned_with_its_reason_and_never_on_the_front(
        tmp_path: Path) -> None:
    study = _seeded_study(tmp_path, "prune")
    good, poor = study.optimize(n_trials=2, recheck_every=0)
    assert good.state == "ok" and good.metrics["fidelity"] == "confirmed"
    assert poor.state == "pruned"
    assert poor.reason.startswith("dominated by a front point even at the best of its 95 % "
                                  "box (throughput_sps")
    assert poor.metrics["fidelity"] == "screen" and poor.metrics["steps_measured"] == 16
    assert [p.trial_number for p in study.pareto_front()] == [good.number]
    trials = optuna.load_study(study_name="prune", storage=study.storage.url).trials
    assert trials[1].state == optuna.trial.TrialState.PRUNED
    row = study.storage.measurement(study.id, poor.number)
    assert row is not None and row.state == "pruned"
    raw = json.loads(row.raw_json)
    assert raw["stop_reason"] == "pruned"
    assert raw["pruned"]["dominated_by"] == pytest.approx(
        [good.metrics["throughput_sps"], good.metrics["latency_p50_ms"]])
    # the stored configuration carries no screen: a re-run measures it in full
    assert json.loads(row.config_json)["screen"] is None
    assert study.summary()["trials"]["pruned"] == 1


def test_early_stop_off_measures_every_trial_in_full(tmp_path: Path) -> None:
    study = _seeded_study(tmp_path, "full", early_stop=False)
    results = study.optimize(n_trials=2, recheck_every=0)
    assert [r.state for r in results] == ["ok", "ok"]
    assert all(r.metrics["fidelity"] == "confirmed" for r in results)


def test_early_stop_must_be_a_boolean() -> None:
    with pytest.raises(SpaceError, match=r"budget\.early_stop: must be true or false, got 'no'"):
        parse_space(sim_space(budget={"trial_seconds": 600, "early_stop": "no"}))


def test_the_screen_is_the_stored_front_read_in_one_query(tmp_path: Path) -> None:
    """What a trial is screened against is the front stored under the lock, read without
    walking every trial: the same points the front recomputed from every trial has."""
    from autotune._trial_runner import screen_for
    from autotune.config import TrialConfig

    study = _seeded_study(tmp_path, "stored", early_stop=False)
    study.optimize(n_trials=4, recheck_every=0)
    names = study.space.objective_names
    screen = screen_for(study, TrialConfig.from_params(study.space, GOOD))
    assert screen is None  # early stopping off: nothing to screen against
    on = _seeded_study(tmp_path, "stored_on")
    on.optimize(n_trials=4, recheck_every=0)
    recomputed = sorted(tuple(p.values[n] for n in names) for p in on.pareto_front())
    screen = screen_for(on, TrialConfig.from_params(on.space, GOOD))
    assert screen is not None and sorted(map(tuple, screen["front"])) == recomputed
    front = on.storage.front_trial_numbers(on.id)
    rows = on.storage.measurements(on.id, front)
    assert [r.trial_number for r in rows] == front
