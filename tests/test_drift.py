"""Drift rechecks of front points, and fronts that never compare energy across sources."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import autotune
from autotune import drift
from autotune.config import TrialConfig
from autotune.launch import WorkerOutcome
from autotune.testing import FakeLauncher, dispose
from autotune.testing.storages import sqlite_url

SPACE = {
    "workload": "mlp", "mode": "train",
    "objectives": {"throughput_sps": "maximize", "accuracy": "maximize"},
    "params": {"batch_size": {"low": 8, "high": 512, "log": True},
               "optimizer": ["sgd", "adam"], "threads": [1, 2]},
}


@pytest.fixture(autouse=True)
def _no_recheck_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake trials take milliseconds: re-checks here follow the trial count alone."""
    monkeypatch.setattr(drift, "RECHECK_MIN_INTERVAL_S", 0.0)


def _study(tmp_path: Path, data: dict[str, Any] = SPACE) -> autotune.Study:
    return autotune.create_study("d", autotune.parse_space(data),
                                 storage=sqlite_url(tmp_path / 'd.db'), seed=3)


# -- the verdict ------------------------------------------------------------------------------


def _summary(throughput: float, ci: tuple[float, float] | None = None,
             contended: bool = False) -> dict[str, Any]:
    return {"throughput_sps": throughput, "contended": contended,
            "throughput_ci_sps": list(ci) if ci else None}


def test_same_speed_is_stable() -> None:
    v = drift.compare(_summary(1000, (980, 1020)), _summary(1010))
    assert v.verdict == "stable" and v.ratio == pytest.approx(1.01)


def test_far_outside_the_interval_is_drifting() -> None:
    v = drift.compare(_summary(1000, (980, 1020)), _summary(400))
    assert v.verdict == "drifting" and v.ratio == pytest.approx(0.4)
    assert "0.40x" in v.reason


def test_large_change_inside_a_wide_interval_is_not_drift() -> None:
    # a noisy original whose interval covers the re-measurement proves nothing
    assert drift.compare(_summary(1000, (700, 1300)), _summary(850)).verdict == "stable"


def test_small_change_outside_a_tight_interval_is_not_drift() -> None:
    assert drift.compare(_summary(1000, (995, 1005)), _summary(950)).verdict == "stable"


def test_contended_or_empty_remeasurement_is_inconclusive() -> None:
    assert drift.compare(_summary(1000), _summary(300, contended=True)).verdict == \
        "inconclusive"
    assert drift.compare(_summary(1000), {}).verdict == "inconclusive"


def test_stability_is_sticky_once_drifting() -> None:
    assert drift.stability([]) == "unchecked"
    assert drift.stability(["stable", "stable"]) == "stable"
    assert drift.stability(["stable", "drifting", "stable"]) == "drifting"
    assert drift.stability(["inconclusive"]) == "inconclusive"


def test_least_checked_points_are_picked_first_in_given_order() -> None:
    assert drift.pick_for_recheck([5, 3, 9], {5: 1}, 2) == [3, 9]
    assert drift.pick_for_recheck([5, 3, 9], {5: 1, 3: 1, 9: 1}, 2) == [5, 3]
    assert drift.pick_for_recheck([], {}, 2) == []


# -- in a study ---------------------------------------------------------------------------


@dataclass
class DriftingLauncher(FakeLauncher):
    """Measures every configuration ``factor`` times slower from call ``after`` on."""

    after: int = 10**9
    factor: float = 2.5

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        result = super().raw_result(config)
        if len(self.calls) > self.after:
            result["step_times_s"] = [t * self.factor for t in result["step_times_s"]]
        return result


def test_study_rechecks_front_points_and_stores_stable_verdicts(tmp_path: Path) -> None:
    study = _study(tmp_path)
    try:
        launcher = FakeLauncher(noise=0.0)
        results = study.optimize(n_trials=6, launcher=launcher, recheck_every=3)
        assert len(results) == 6
        rows = study.storage.rechecks(study._row.id)
        # up to two rechecks after trial 3 and after trial 6, each one more launcher call
        first_round = [r for r in rows if r.after_trials == 3]
        assert 1 <= len(first_round) <= 2 and 2 <= len(rows) <= 4
        assert len(launcher.calls) == 6 + len(rows)
        assert {r.verdict for r in rows} == {"stable"}
        assert all(r.ratio == pytest.approx(1.0) for r in rows)
        front = study.pareto_front()
        assert any(p.stability == "stable" for p in front)
        # a recheck re-runs exactly the stored trial's configuration
        by_number = {r.number: r for r in study.trials()}
        recheck_calls = launcher.calls[3:3 + len(first_round)]
        for row, config in zip(first_round, recheck_calls, strict=True):
            trial = by_number[row.trial_number]
            assert config.batch_size == trial.params["batch_size"]
            assert config.optimizer == trial.params["optimizer"]
    finally:
        dispose(study)


def test_drifting_point_is_flagged_and_not_crowned(tmp_path: Path) -> None:
    study = _study(tmp_path, {**SPACE, "objectives": {"throughput_sps": "maximize"}})
    try:
        launcher = DriftingLauncher(noise=0.02, after=4)
        study.optimize(n_trials=4, launcher=launcher, recheck_every=4)
        rows = study.storage.rechecks(study._row.id)
        assert rows and rows[0].verdict == "drifting"
        assert rows[0].ratio == pytest.approx(1 / 2.5, rel=0.05)
        (point,) = study.pareto_front()  # one objective: the front is the fastest trial
        assert point.stability == "drifting"
        summary = study.summary()
        assert summary["drifting"] == [point.trial_number]
        # it stays on the front, flagged, but the leader is the best steady trial
        steady = [t for t in study.trials() if t.number != point.trial_number and t.feasible]
        best_steady = max(steady, key=lambda t: t.metrics["throughput_sps"])
        assert summary["leaders"]["throughput_sps"]["trial"] == best_steady.number
        assert summary["best"]["throughput_sps"] == pytest.approx(
            best_steady.metrics["throughput_sps"])
        # a drifting point is not re-measured again
        before = len(launcher.calls)
        study.recheck_front(launcher, points=1)
        assert study.storage.rechecks(study.id)[-1].trial_number != point.trial_number
        assert len(launcher.calls) == before + 1
    finally:
        dispose(study)


def test_contended_original_makes_a_recheck_inconclusive() -> None:
    original = {**_summary(1000, (990, 1010)), "contended": True}
    assert drift.compare(original, _summary(2000)).verdict == "inconclusive"


def test_rechecks_start_no_measurement_after_the_deadline(tmp_path: Path) -> None:
    import time

    study = _study(tmp_path)
    try:
        launcher = FakeLauncher()
        study.optimize(n_trials=3, launcher=launcher, recheck_every=0)
        calls = len(launcher.calls)
        assert study.recheck_front(launcher, deadline=time.monotonic() - 1) == []
        assert len(launcher.calls) == calls
    finally:
        dispose(study)


def test_failed_recheck_is_inconclusive_not_a_crash(tmp_path: Path) -> None:
    study = _study(tmp_path)
    try:
        launcher = FakeLauncher(fail=lambda c: False)

        def broken(config: TrialConfig) -> WorkerOutcome:
            if len(launcher.calls) >= 2:
                return WorkerOutcome("fail", failure_kind="timeout", reason="too slow")
            return FakeLauncher.run(launcher, config)

        launcher.run = broken  # type: ignore[method-assign]
        study.optimize(n_trials=2, launcher=launcher, recheck_every=2)
        rows = study.storage.rechecks(study._row.id)
        assert rows and all(r.verdict == "inconclusive" and r.state == "fail" for r in rows)
        assert "timeout" in rows[0].reason
    finally:
        dispose(study)


def test_a_recheck_waits_for_its_interval(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten fast trials are seconds apart: no re-check until the interval has passed too."""
    monkeypatch.setattr(drift, "RECHECK_MIN_INTERVAL_S", 3600.0)
    study = _study(tmp_path)
    try:
        launcher = FakeLauncher()
        study.optimize(n_trials=4, launcher=launcher, recheck_every=2)
        assert len(launcher.calls) == 4  # trials only: nothing re-measured
        assert study.storage.rechecks(study._row.id) == []
        monkeypatch.setattr(drift, "RECHECK_MIN_INTERVAL_S", 0.0)
        study.optimize(n_trials=2, launcher=launcher, recheck_every=2)
        assert len(launcher.calls) > 6 and study.storage.rechecks(study._row.id)
    finally:
        dispose(study)


def test_recheck_every_zero_never_rechecks(tmp_path: Path) -> None:
    study = _study(tmp_path)
    try:
        launcher = FakeLauncher()
        study.optimize(n_trials=4, launcher=launcher, recheck_every=0)
        assert len(launcher.calls) == 4
        assert study.storage.rechecks(study._row.id) == []
        with pytest.raises(autotune.StudyError, match="recheck_every"):
            study.optimize(n_trials=1, launcher=launcher, recheck_every=-1)
    finally:
        dispose(study)


# -- energy provenance on the front ---------------------------------------------------------


@dataclass
class TwoMetersLauncher(FakeLauncher):
    """Energy from a counter (``rapl``) for 1-thread trials, estimated for the others."""

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        result = super().raw_result(config)
        if config.threads == 1:
            # a counter sees the whole package: ten times the estimate, on purpose
            result["energy"] = {**result["energy"], "source": "rapl",
                                "energy_j": result["energy"]["energy_j"] * 10,
                                "model": "whole CPU packages, all processes"}
        return result


def test_front_never_compares_measured_with_estimated_energy(tmp_path: Path) -> None:
    data = {**SPACE, "objectives": {"throughput_sps": "maximize",
                                    "energy_per_sample_j": "minimize"}}
    study = _study(tmp_path, data)
    try:
        study.optimize(n_trials=12, launcher=TwoMetersLauncher(), recheck_every=0)
        front = study.pareto_front()
        sources = {p.energy_source for p in front}
        # were they compared together, the 10x "more expensive" counter trials would all be
        # dominated by estimated ones; compared within their source, each group has a front
        assert sources == {"rapl", "estimated"}
        assert study.summary()["energy_sources"] == ["estimated", "rapl"]
        for p in front:
            assert p.energy_source == p.metrics["energy_source"]
    finally:
        dispose(study)


def test_front_without_energy_objective_ignores_sources(tmp_path: Path) -> None:
    study = _study(tmp_path, {**SPACE, "objectives": {"throughput_sps": "maximize"}})
    try:
        study.optimize(n_trials=8, launcher=TwoMetersLauncher(), recheck_every=0)
        assert len(study.pareto_front()) == 1  # one objective: one best point
    finally:
        dispose(study)
