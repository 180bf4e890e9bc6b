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
    # its simulated steps are slow (tens of ms): screened at the early rung, 8 steps
    assert poor.metrics["fidelity"] == "screen" and poor.metrics["steps_measured"] == 8
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


# -- deferred confirmation ---------------------------------------------------------------------

MODELS = Path(__file__).parent / "models"


def _screened_window(step_s: float, defer_after_s: float | None,
                     monkeypatch: pytest.MonkeyPatch,
                     front: tuple[tuple[float, ...], ...] = ()) -> dict[str, object]:
    """One window of constant ``step_s`` steps on the virtual clock of ``test_loop``,
    with a p95 objective (136 steps), ``front`` (default empty), deferral at
    ``defer_after_s``."""
    import dataclasses

    from autotune.profiling import loop
    from tests.test_loop import _budget, _Clock, _config, _run, _Stub

    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    screen = Screen(("throughput_sps", "latency_p95_ms"), ("maximize", "minimize"), front,
                    defer_after_s=defer_after_s)
    budget = _budget(window_min_s=0.2, window_min_steps=136, window_max_s=4.0)
    backend = _Stub(clock, lambda i: step_s)
    config = dataclasses.replace(_config(budget), screen=screen.to_dict())
    monkeypatch.setattr("tests.test_loop._config", lambda b: config)
    return _run(backend, budget)


def test_a_survivor_with_a_long_window_left_stops_at_the_screen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """10 ms steps: the 120 steps a p95 still needs would take 1.2 s; deferred at 16."""
    raw = _screened_window(0.010, 0.3, monkeypatch)
    assert raw["stop_reason"] == "screened" and raw["pruned"] is None
    steps = raw["step_times_s"]
    assert isinstance(steps, list) and len(steps) == 16
    screened = raw["screened"]
    assert isinstance(screened, dict) and screened["steps"] == 16
    assert screened["deferred_s"] == pytest.approx(120 * 0.010, rel=0.01)
    throughput, p95 = screened["corner"]
    assert throughput == pytest.approx(8 / 0.010, rel=0.01)  # 8 samples a step
    assert p95 == pytest.approx(10.0, rel=0.01)  # lower bound of the p95, in ms


@pytest.mark.parametrize(("step_s", "first_screen"), [(0.020, 8), (0.005, 16)],
                         ids=["slow_steps_at_8", "fast_steps_at_16"])
def test_slow_steps_are_screened_after_8_steps_fast_ones_after_16(
        monkeypatch: pytest.MonkeyPatch, step_s: float, first_screen: int) -> None:
    """8 steps of 20 ms (0.16 s) are screened at once: the front's point beats them by
    far; 8 steps of 5 ms (40 ms) wait for the usual 16."""
    raw = _screened_window(step_s, None, monkeypatch, front=((1e6, 0.001),))
    assert raw["stop_reason"] == "pruned"
    pruned = raw["pruned"]
    assert isinstance(pruned, dict) and pruned["steps"] == first_screen
    steps = raw["step_times_s"]
    assert isinstance(steps, list) and len(steps) == first_screen


def test_a_short_window_or_no_deferral_is_measured_in_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """1 ms steps: the rest costs 0.12 s, not worth a second warm-up later; and without
    ``defer_after_s`` even a long window is measured in full."""
    short = _screened_window(0.001, 0.3, monkeypatch)
    assert short["stop_reason"] == "ci_met" and short["screened"] is None
    long_ = _screened_window(0.010, None, monkeypatch)
    assert long_["stop_reason"] == "ci_met" and long_["screened"] is None
    steps = long_["step_times_s"]
    assert isinstance(steps, list) and len(steps) >= 136


def test_a_screened_measurement_reports_no_percentile_but_estimates_one() -> None:
    from autotune.config import TrialConfig
    from autotune.testing.launchers import FakeLauncher  # the worker result's real shape

    space = parse_space({"workload": "mlp", "mode": "infer",
                         "objectives": {"throughput_sps": "maximize"}})
    raw = FakeLauncher().raw_result(TrialConfig.from_params(space, {"batch_size": 8,
                                                                   "threads": 1}))
    times = [0.001 * (1 + (i % 5) / 10) for i in range(16)]
    raw.update(step_times_s=times, stop_reason="screened",
               screened={"corner": [1.0, 1.0], "steps": 16, "deferred_s": 1.0})
    from autotune.profiling.measurement import Measurement

    m = Measurement.from_worker(raw, samples_per_step=8, mode="infer")
    assert m.fidelity == "screen"
    assert m.summary()["latency_p95_ms"] is None  # 16 steps: no p95 is reported
    assert m.screen_estimate("latency_p95_ms") == pytest.approx(
        float(np.percentile(times, 95)) * 1e3)
    assert m.screen_estimate("throughput_sps") == m.summary()["throughput_sps"]


def _sleepy_study(tmp_path: Path, name: str, kwargs: dict[str, float],
                  batches: list[int]) -> autotune.Study:
    space = parse_space({
        "workload": {"factory": f"{MODELS / 'user_torch.py'}:sleepy", "kwargs": kwargs},
        "mode": "infer",
        "objectives": {"throughput_sps": "maximize", "latency_p95_ms": "minimize"},
        "params": {"backend": "torch", "batch_size": sorted(batches), "threads": 1},
        "budget": {"trial_seconds": 30, "warmup_max_s": 0.5},
    })
    url = f"sqlite:///{tmp_path}/{name}.db"
    study = autotune.create_study(name, space, storage=url, seed=0)
    ostudy = optuna.load_study(study_name=name, storage=url)
    for batch in batches:
        ostudy.enqueue_trial({"batch_size": batch})
    return study


@pytest.mark.slow
def test_a_screened_trial_that_could_lead_is_confirmed_in_full_at_the_end(
        tmp_path: Path) -> None:
    """Real torch; each step waits 1 ms + 3 us a sample. Batch 1024 (4 ms steps) has the
    higher throughput, so it can be on the front: screened first (its 120 missing steps
    would take 0.5 s), then measured in full at the end as a trial of its own."""
    from autotune.launch import WarmLauncher

    study = _sleepy_study(tmp_path, "confirm", {"base_ms": 1.0, "per_sample_us": 3.0},
                          [1024, 8])
    launcher = WarmLauncher()  # one worker for both runs
    try:
        results = study.optimize(n_trials=2, recheck_every=0, launcher=launcher)
        summary = study.summary()["trials"]
        front = [p.trial_number for p in study.pareto_front()]
        stored = {t.number: t for t in study.trials()}
        # the next run does not confirm the same trial again
        again = study.optimize(n_trials=1, recheck_every=0, launcher=launcher)
    finally:
        launcher.close()
    big, small, confirmation = results
    assert all(r.confirms != big.number for r in again)
    assert (summary["ok"], summary["screened"]) == (2, 1)
    assert big.state == "screened" and big.metrics["fidelity"] == "screen", big.reason
    assert big.metrics["stop_reason"] == "screened"
    assert big.metrics["latency_p95_ms"] is None and not big.feasible
    assert small.state == "ok" and small.metrics["fidelity"] == "confirmed", small.reason
    assert confirmation.confirms == big.number and confirmation.state == "ok"
    assert confirmation.params == big.params
    assert confirmation.metrics["fidelity"] == "confirmed"
    assert confirmation.metrics["steps_measured"] >= 132
    assert sorted(front) == [small.number, confirmation.number]  # never the screened one
    assert stored[big.number].state == "screened"
    assert stored[big.number].reason.endswith(f"measured in full as trial "
                                              f"{confirmation.number}")
    assert stored[confirmation.number].confirms == big.number


@pytest.mark.slow
def test_a_screened_trial_the_confirmed_front_dominates_is_not_measured_again(
        tmp_path: Path) -> None:
    """Each step waits 0.2 ms + 20 ns x batch squared: batch 1024 (21 ms steps) is slower
    per sample AND per batch than batch 64 (0.3 ms), so its best case is dominated."""
    study = _sleepy_study(tmp_path, "dominated", {"base_ms": 0.2, "per_pair_ns": 20.0},
                          [1024, 64])
    results = study.optimize(n_trials=2, recheck_every=0)
    assert [r.state for r in results] == ["screened", "ok"], [r.reason for r in results]
    assert all(r.confirms is None for r in results)
    assert [p.trial_number for p in study.pareto_front()] == [results[1].number]
    assert study.trials()[0].reason.startswith("screen figures only; not measured in full")


def test_defer_confirmation_must_be_a_boolean_and_off_is_stored() -> None:
    with pytest.raises(SpaceError, match=r"budget\.defer_confirmation: must be true or "
                                         r"false, got 1"):
        parse_space(sim_space(budget={"trial_seconds": 600, "defer_confirmation": 1}))
    on = parse_space(sim_space())
    off = parse_space(sim_space(budget={"trial_seconds": 600, "defer_confirmation": False}))
    assert "defer_confirmation" not in on.to_dict()["budget"]
    assert off.to_dict()["budget"]["defer_confirmation"] is False
    assert on.fingerprint() != off.fingerprint()


def test_pruned_and_screened_trials_survive_export_and_import(tmp_path: Path) -> None:
    """A pruned trial's measurement (state ``pruned``) travels like any other; so does a
    screened one's (same table, state ``screened``)."""
    from autotune.transfer import export_study, import_study

    study = _seeded_study(tmp_path, "travel")
    study.optimize(n_trials=2, recheck_every=0)
    text = export_study("travel", storage=study.storage.url)
    assert '"state": "pruned"' in text
    with import_study(text.replace('"state": "pruned"', '"state": "screened"', 1),
                      storage=f"sqlite:///{tmp_path}/copy.db") as copy:
        rows = copy.storage.measurements(copy.id)
        assert sorted(r.state for r in rows) == ["ok", "screened"]
    with import_study(text, storage=f"sqlite:///{tmp_path}/copy2.db") as copy:
        assert [t.state for t in copy.trials()] == ["ok", "pruned"]


def test_a_prune_decided_while_another_process_held_the_cores_is_measured_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """16 steps at 10 ms while a neighbour ran (the monitor says contended) look
    dominated; measured again once the neighbour is gone (1 ms steps) the trial is not."""
    import dataclasses

    from autotune.profiling import loop
    from autotune.profiling.contention import ContentionReading
    from autotune.profiling.power import NullMeter
    from tests.test_loop import BUSY, QUIET, _budget, _Clock, _config, _ScriptedMonitor, _Stub

    clock = _Clock()
    monkeypatch.setattr(loop, "time", clock)
    pace = {"step_s": 0.010}

    class NeighbourLeaves(_ScriptedMonitor):
        def end(self) -> ContentionReading:
            pace["step_s"] = 0.001  # the other process is gone after the first window
            return super().end()

    monitor = NeighbourLeaves([BUSY, QUIET])
    screen = Screen(("throughput_sps",), ("maximize",), ((2000.0,),))  # 8 samples a step
    budget = _budget(window_min_s=0.05, window_min_steps=16, window_max_s=1.0)
    config = dataclasses.replace(_config(budget), screen=screen.to_dict())
    raw = loop.run_profile(_Stub(clock, lambda i: pace["step_s"]), config,  # type: ignore[arg-type]
                           NullMeter(), clock.now + 100, monitor)
    assert monitor.windows == 2 and raw["remeasured"] == 1
    assert raw["pruned"] is None and raw["stop_reason"] == "ci_met"
