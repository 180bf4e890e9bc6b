"""Hypervolume, reference points, and the front's history as a study records it."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import autotune
from autotune.cli import main
from autotune.objectives import worst_value
from autotune.pareto import hypervolume, pareto_front, reference_point
from autotune.profiling.power import rated_cpu_power_w
from autotune.study import Study, TrialResult
from autotune.testing import FakeLauncher, StorageSupplier, dispose, on_calls
from autotune.testing.storages import sqlite_url

MIN2 = ["minimize", "minimize"]
MIN3 = ["minimize"] * 3
MAX_MIN = ["maximize", "minimize"]
inf, nan = math.inf, math.nan


def _grid_volume(points: list[list[int]], reference: list[int]) -> int:
    """Reference written independently of the product: count the unit cells of the integer
    grid that some point dominates (minimisation; a cell is dominated when its lower corner
    is at or beyond the point in every objective)."""
    return sum(
        any(all(p[i] <= cell[i] for i in range(len(reference))) for p in points)
        for cell in itertools.product(*(range(r) for r in reference))
    )


# -- hand-computed values ----------------------------------------------------------------------


def test_two_objectives_three_points() -> None:
    # Staircase of (1,3), (2,2), (3,1) under (4,4): slabs x in [1,2) height 1, [2,3) height 2,
    # [3,4) height 3: 1 + 2 + 3 = 6.
    assert hypervolume([[1, 3], [2, 2], [3, 1]], MIN2, [4, 4]) == 6.0


def test_three_objectives_two_points() -> None:
    # Boxes to (4,4,4): (1,2,3) -> 3*2*1 = 6; (2,1,2) -> 2*3*2 = 12; their intersection
    # starts at (2,2,3) -> 2*2*1 = 4. Union 6 + 12 - 4 = 14.
    assert hypervolume([[1, 2, 3], [2, 1, 2]], MIN3, [4, 4, 4]) == 14.0


def test_three_objectives_three_points() -> None:
    # Add (3,3,1) -> 1*1*3 = 3. Pairwise intersections: A&B (2,2,3) 4, A&C (3,3,3) 1,
    # B&C (3,3,2) 2; all three (3,3,3) 1. Inclusion-exclusion: 6+12+3-4-1-2+1 = 15.
    assert hypervolume([[1, 2, 3], [2, 1, 2], [3, 3, 1]], MIN3, [4, 4, 4]) == 15.0


def test_maximize_and_minimize_mixed() -> None:
    # Throughput (max) and latency (min) from the reference (0 samples/s, 100 ms):
    # (10, 50) -> 10*50 = 500; (20, 80) -> 20*20 = 400; both: 10*20 = 200. 500+400-200 = 700.
    assert hypervolume([[10, 50], [20, 80]], MAX_MIN, [0, 100]) == 700.0
    # the same points in the other objective order give the same volume
    assert hypervolume([[50, 10], [80, 20]], ["minimize", "maximize"], [100, 0]) == 700.0


def test_points_outside_the_reference_add_nothing() -> None:
    base = hypervolume([[1, 3], [2, 2], [3, 1]], MIN2, [4, 4])
    beyond = [[5, 0], [0, 5], [4, 1], [1, 4]]  # beyond, or exactly on, a reference value
    assert hypervolume([[1, 3], [2, 2], [3, 1], *beyond], MIN2, [4, 4]) == base
    assert hypervolume(beyond, MIN2, [4, 4]) == 0.0
    # throughput 0 is the reference: a point there (an infeasible trial's value) adds nothing
    assert hypervolume([[0, 10]], MAX_MIN, [0, 100]) == 0.0


def test_duplicates_and_dominated_points_change_nothing() -> None:
    points = [[1, 3], [2, 2], [3, 1]]
    assert hypervolume(points + points + [[2, 2]], MIN2, [4, 4]) == 6.0
    assert hypervolume([*points, [3, 3], [2.5, 2.5]], MIN2, [4, 4]) == 6.0


@pytest.mark.parametrize(("point", "directions", "reference", "volume"), [
    ([2.0], ["minimize"], [5.0], 3.0),
    ([7.0], ["maximize"], [0.0], 7.0),
    ([3.0, 1.0], MAX_MIN, [0.0, 4.0], 9.0),
    ([1.0, 2.0, 3.0], MIN3, [2.0, 4.0, 7.0], 1.0 * 2.0 * 4.0),
    ([100.0, 5.0, 0.5, 300.0], ["maximize", "minimize", "maximize", "minimize"],
     [0.0, 20.0, 0.0, 1000.0], 100.0 * 15.0 * 0.5 * 700.0),
])
def test_single_point_is_its_box(point: list[float], directions: list[str],
                                 reference: list[float], volume: float) -> None:
    assert hypervolume([point], directions, reference) == pytest.approx(volume)


def test_no_points() -> None:
    assert hypervolume([], MAX_MIN, [0.0, 1.0]) == 0.0


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("seed", range(4))
def test_matches_counting_grid_cells(d: int, seed: int) -> None:
    rng = np.random.default_rng(seed * 10 + d)
    reference = [5] * d
    points = rng.integers(0, 6, size=(12, d)).tolist()  # ties, duplicates, some outside
    assert hypervolume(points, ["minimize"] * d, reference) == _grid_volume(points, reference)


def test_order_of_points_does_not_matter() -> None:
    rng = np.random.default_rng(3)
    points = rng.random((40, 3)).tolist()
    directions = ["maximize", "minimize", "maximize"]
    volume = hypervolume(points, directions, [0.0, 1.0, 0.0])
    for _ in range(3):
        rng.shuffle(points)
        assert hypervolume(points, directions, [0.0, 1.0, 0.0]) == pytest.approx(volume)


# -- infinities and NaN ------------------------------------------------------------------------


def test_nan_points_are_skipped() -> None:
    assert hypervolume([[1, 3], [nan, 0], [2, 2], [0, nan], [3, 1]], MIN2, [4, 4]) == 6.0
    assert hypervolume([[nan, nan]], MIN2, [4, 4]) == 0.0


def test_infinitely_bad_values_add_nothing() -> None:
    assert hypervolume([[1, inf], [2, 2]], MIN2, [4, 4]) == 4.0
    assert hypervolume([[-inf, 1]], MAX_MIN, [0, 4]) == 0.0


def test_infinitely_good_values_make_the_volume_unbounded() -> None:
    assert hypervolume([[1, 1], [-inf, 2]], MIN2, [4, 4]) == inf
    assert hypervolume([[inf, 10]], MAX_MIN, [0, 100]) == inf
    # ... unless the point is outside the reference in another objective
    assert hypervolume([[inf, 200]], MAX_MIN, [0, 100]) == 0.0


def test_front_and_hypervolume_agree_on_ties_infinities_and_nan() -> None:
    points = [("a", [10.0, 5.0]), ("b", [10.0, 5.0]), ("c", [5.0, 5.0]), ("d", [nan, 1.0])]
    front = pareto_front(points, MAX_MIN)
    assert front == ["a", "b"]  # identical points are all kept, NaN never
    values = dict(points)
    assert hypervolume([values[k] for k in front], MAX_MIN, [0, 10]) == \
        hypervolume([v for _, v in points], MAX_MIN, [0, 10]) == 50.0
    # an infinitely good point is on the front and leaves the volume unbounded
    with_inf = [*points, ("e", [inf, 9.0])]
    assert pareto_front(with_inf, MAX_MIN) == ["a", "b", "e"]
    assert hypervolume([v for _, v in with_inf], MAX_MIN, [0, 10]) == inf


@pytest.mark.parametrize(("points", "directions", "reference", "message"), [
    ([[1.0]], MIN2, [4.0], "reference values"),
    ([[1.0, 2.0]], ["minimize", "lower"], [4.0, 4.0], "unknown direction"),
    ([[1.0, 2.0]], MIN2, [4.0, inf], "must be finite"),
    ([[1.0, 2.0]], MIN2, [4.0, nan], "must be finite"),
    ([[1.0, 2.0, 3.0]], MIN2, [4.0, 4.0], "2 values"),
])
def test_bad_arguments(points: list[list[float]], directions: list[str],
                       reference: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hypervolume(points, directions, reference)


# -- reference point ---------------------------------------------------------------------------


def test_reference_point_is_each_objectives_physical_worst_case() -> None:
    names = ["throughput_sps", "accuracy", "latency_p50_ms", "latency_p99_ms", "power_w",
             "energy_per_sample_j", "peak_memory_mb"]
    assert reference_point(names, trial_seconds=20, rated_power_w=65.0,
                           memory_total_mb=16000.0) == \
        [0.0, 0.0, 20000.0, 20000.0, 65.0, 1300.0, 16000.0]


# -- through a study ---------------------------------------------------------------------------

SPACE: dict[str, Any] = {
    "workload": "mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
    # The fake's accuracy is 0.95 at lr 1e-3, 0.80 one decade away: some trials violate it.
    "constraints": {"accuracy": ">= 0.85"},
    "params": {
        "batch_size": [16, 32, 64, 128],
        "threads": {"low": 1, "high": 4},
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
        "precision": "fp32",
    },
    "budget": {"trial_seconds": 20, "window_min_steps": 24},
}
N_TRIALS = 12
OOM_CALLS, CRASH_CALL = (0, 3, 7), 5


@dataclass
class Run:
    study: Study
    url: str
    results: list[TrialResult]
    # per completed trial, as seen from its callback: (front numbers, hypervolume)
    seen: list[tuple[int, list[int], float | None]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    with StorageSupplier("sqlite", tmp_path_factory.mktemp("hv")) as url:
        study = autotune.create_study("hv", autotune.parse_space(SPACE), storage=url, seed=1)
        seen: list[tuple[int, list[int], float | None]] = []

        def callback(result: TrialResult) -> None:
            if result.values is not None:
                seen.append((result.number,
                             sorted(p.trial_number for p in study.pareto_front()),
                             study.hypervolume()))

        launcher = FakeLauncher(infeasible=on_calls(*OOM_CALLS), fail=on_calls(CRASH_CALL))
        results = study.optimize(n_trials=N_TRIALS, launcher=launcher, callbacks=[callback],
                                 recheck_every=0)
        yield Run(study, url, results, seen)
        dispose(study)


def test_run_has_feasible_infeasible_violating_and_failed_trials(run: Run) -> None:
    states = [r.state for r in run.results]
    assert states.count("infeasible") == len(OOM_CALLS)
    assert "fail" in states
    assert any(r.feasible for r in run.results)
    assert any(r.state == "ok" and not r.feasible for r in run.results)  # the constraint


def test_one_snapshot_per_completed_trial(run: Run) -> None:
    history = run.study.front_history()
    completed = [r.number for r in run.results if r.values is not None]
    assert [h.trial_number for h in history] == completed
    failed = [r.number for r in run.results if r.state == "fail"]
    assert failed and not {h.trial_number for h in history} & set(failed)
    # each snapshot is the front the study had right after that trial
    assert [(h.trial_number, h.front, h.hypervolume) for h in history] == run.seen


def test_infeasible_trials_never_enter_the_front(run: Run) -> None:
    trials = {t.number: t for t in run.study.trials()}
    infeasible = {n for n, t in trials.items() if not t.feasible}
    assert any(trials[n].state == "infeasible" for n in infeasible)
    assert any(trials[n].state == "ok" for n in infeasible)  # violates the constraint
    for h in run.study.front_history():
        assert not set(h.front) & infeasible
    # the first trial was out of memory: the history starts with an empty front
    first = run.study.front_history()[0]
    assert first.trial_number == OOM_CALLS[0] == 0
    assert (first.front, first.hypervolume) == ([], 0.0)


def test_hypervolume_never_decreases_and_matches_the_front(run: Run) -> None:
    history = run.study.front_history()
    volumes = [h.hypervolume if h.hypervolume is not None else math.nan for h in history]
    assert not any(math.isnan(v) for v in volumes)  # every volume is defined here
    assert volumes == sorted(volumes)
    assert volumes[-1] > 0
    values = {t.number: t.values for t in run.study.trials()}
    names = run.study.space.objective_names
    for h in history:
        reference = [h.reference[n] for n in names]
        assert h.hypervolume == pytest.approx(hypervolume(
            [values[n] or [] for n in h.front], run.study.space.directions, reference))
    assert run.study.hypervolume() == volumes[-1]
    assert history[-1].front == sorted(p.trial_number for p in run.study.pareto_front())


def test_first_feasible_point_volume_is_its_box(run: Run) -> None:
    history = run.study.front_history()
    first = next(h for h in history if h.front)
    assert len(first.front) == 1
    trial = next(t for t in run.study.trials() if t.number == first.front[0])
    throughput, latency = trial.values or []
    # hand-computed: throughput above 0 times latency below the 20 s budget (in ms)
    assert first.hypervolume == pytest.approx(throughput * (20000.0 - latency))


def test_reference_is_the_physical_worst_case(run: Run) -> None:
    h = run.study.front_history()[-1]
    assert h.reference == {"throughput_sps": 0.0, "latency_p50_ms": 20000.0}
    # it is also what infeasible trials were recorded with
    oom = next(t for t in run.study.trials() if t.state == "infeasible")
    assert oom.values == [h.reference["throughput_sps"], h.reference["latency_p50_ms"]]
    assert h.energy_sources == ["estimated"]


def test_cli_history_table_and_json(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "show", "hv", "--history", "--storage", run.url]) == 0
    out = capsys.readouterr().out
    assert "Front history" in out and "hypervolume" in out
    assert "reference point: throughput_sps 0, latency_p50_ms 20,000" in out
    assert main(["study", "show", "hv", "--history", "--json", "--storage", run.url]) == 0
    data = json.loads(capsys.readouterr().out)
    history = run.study.front_history()
    assert [h["trial"] for h in data["history"]] == [h.trial_number for h in history]
    assert [h["hypervolume"] for h in data["history"]] == [h.hypervolume for h in history]
    assert data["history"][-1]["front"] == history[-1].front
    assert data["hypervolume"] == run.study.hypervolume()
    # without --history the JSON stays as it was
    assert main(["study", "show", "hv", "--json", "--storage", run.url]) == 0
    assert "history" not in json.loads(capsys.readouterr().out)


def test_only_infeasible_trials_give_an_empty_front_of_zero_volume(tmp_path: Path) -> None:
    study = autotune.create_study("none", autotune.parse_space(SPACE),
                                  storage=sqlite_url(tmp_path / "n.db"), seed=2)
    try:
        assert study.hypervolume() is None and study.front_history() == []
        study.optimize(n_trials=3, launcher=FakeLauncher(infeasible=lambda c: True),
                       recheck_every=0)
        history = study.front_history()
        assert [(h.front, h.hypervolume) for h in history] == [([], 0.0)] * 3
        assert study.hypervolume() == 0.0
    finally:
        dispose(study)


def test_energy_objective_reference_and_sources(tmp_path: Path) -> None:
    space = {**SPACE, "objectives": {"throughput_sps": "maximize",
                                     "energy_per_sample_j": "minimize"}}
    study = autotune.create_study("energy", autotune.parse_space(space),
                                  storage=sqlite_url(tmp_path / "e.db"), seed=3)
    try:
        study.optimize(n_trials=4, launcher=FakeLauncher(), recheck_every=0)
        last = study.front_history()[-1]
        worst = worst_value("energy_per_sample_j", trial_seconds=20,
                            rated_power_w=rated_cpu_power_w(), memory_total_mb=1.0)
        assert last.reference == {"throughput_sps": 0.0, "energy_per_sample_j": worst}
        assert last.energy_sources == ["estimated"]
        assert last.hypervolume is not None and last.hypervolume > 0
    finally:
        dispose(study)


def test_delete_study_removes_its_history(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "d.db")
    doomed = autotune.create_study("doomed", autotune.parse_space(SPACE), storage=url)
    kept = autotune.create_study("kept", autotune.parse_space(SPACE), storage=url)
    try:
        doomed.optimize(n_trials=2, launcher=FakeLauncher(), recheck_every=0)
        kept.optimize(n_trials=2, launcher=FakeLauncher(), recheck_every=0)
        doomed_id = doomed._row.id
        kept_history = kept.front_history()
        autotune.delete_study("doomed", storage=url)
        assert doomed.storage.front_snapshots(doomed_id) == []
        assert kept.front_history() == kept_history and len(kept_history) == 2
    finally:
        dispose(doomed)
        dispose(kept)
