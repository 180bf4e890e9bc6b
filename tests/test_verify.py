"""``verify``: re-measure the front's top configurations longer, in isolation, and say
whether the screened ranking held. Studies are built with the synthetic FakeLauncher."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import autotune
from autotune import _verify as verify_module
from autotune._verify import (
    MIN_KENDALL_TAU,
    VerifyRun,
    confirmation_budget,
    kendall_tau,
    spearman_rho,
    verify,
)
from autotune.cli import main
from autotune.config import TrialConfig
from autotune.launch import WorkerOutcome
from autotune.space import minimum_trial_seconds
from autotune.testing import FakeLauncher, dispose
from autotune.testing.storages import sqlite_url

# Throughput grows with the batch size, memory too: a front of several batch sizes.
SPACE: dict[str, Any] = {
    "workload": "mlp", "mode": "infer",
    "objectives": {"throughput_sps": "maximize", "peak_memory_mb": "minimize"},
    "params": {"batch_size": {"low": 8, "high": 512, "log": True}, "threads": [2]},
    "budget": {"trial_seconds": 20, "warmup_max_s": 2, "window_min_s": 0.5,
               "window_max_s": 3, "window_min_steps": 20},
}


def _url(tmp_path: Path) -> str:
    return sqlite_url(tmp_path / "v.db")


@pytest.fixture
def study(tmp_path: Path) -> Iterator[autotune.Study]:
    """A study of 10 synthetic trials with a front of several batch sizes."""
    s = autotune.create_study("v", autotune.parse_space(SPACE), storage=_url(tmp_path),
                              seed=5)
    s.optimize(n_trials=10, launcher=FakeLauncher(), recheck_every=0)
    assert len(s.pareto_front()) >= 3, "the fixture needs a front of 3 or more"
    try:
        yield s
    finally:
        dispose(s)


def _by_throughput(study: autotune.Study) -> list[autotune.FrontPoint]:
    return sorted(study.pareto_front(), key=lambda p: -p.values["throughput_sps"])


@dataclass
class RetimedLauncher(FakeLauncher):
    """Re-measures the given batch sizes at the given throughputs (samples/s)."""

    throughput: dict[int, float] = field(default_factory=dict)

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        result = super().raw_result(config)
        target = self.throughput.get(config.batch_size)
        if target is not None:
            times = result["step_times_s"]
            median = sorted(times)[len(times) // 2]
            factor = config.batch_size / target / median
            result["step_times_s"] = [t * factor for t in times]
            result["window_s"] *= factor
        return result


# -- rank correlation ---------------------------------------------------------------------------


def test_kendall_and_spearman_on_known_rankings() -> None:
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == (1.0, "")
    assert kendall_tau([1, 2, 3], [30, 20, 10])[0] == -1.0
    assert kendall_tau([1, 2, 3], [10, 30, 20])[0] == pytest.approx(1 / 3)
    assert spearman_rho([1, 2, 3], [10, 20, 30])[0] == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [1, 3, 2, 4])[0] == pytest.approx(0.8)
    # tau-b: a tie is neither agreement nor disagreement
    tau, _ = kendall_tau([1, 2, 3], [10, 10, 20])
    assert tau == pytest.approx(2 / math.sqrt(6))


def test_correlation_is_undefined_below_two_points_or_without_a_ranking() -> None:
    tau, why = kendall_tau([1.0], [2.0])
    assert tau is None and "at least 2" in why
    assert spearman_rho([], [])[0] is None
    tau, why = kendall_tau([1, 1], [2, 3])
    assert tau is None and "same value" in why


# -- the longer budget --------------------------------------------------------------------------


def test_confirmation_budget_scales_the_window_and_leaves_room() -> None:
    base = autotune.Budget(trial_seconds=20, warmup_max_s=2, window_min_s=0.5,
                           window_max_s=3, window_min_steps=20, target_ci=0.02)
    longer = confirmation_budget(base, 3.0)
    assert longer.window_min_s == pytest.approx(1.5)
    assert longer.window_max_s == pytest.approx(9)
    assert longer.window_min_steps == 60
    assert longer.trial_seconds >= 60
    assert longer.trial_seconds >= minimum_trial_seconds(longer)
    assert longer.trial_seconds > longer.warmup_max_s + longer.window_max_s
    # what ends warm-up and a stable window is unchanged
    assert (longer.warmup_max_s, longer.target_ci, longer.train_epochs) == (2, 0.02, 3)
    assert confirmation_budget(base, 1.0) == base


# -- verify ---------------------------------------------------------------------------------


def test_a_steady_front_holds(study: autotune.Study) -> None:
    launcher = FakeLauncher()
    report = verify(study, top=3, launcher=launcher)
    ranked = _by_throughput(study)
    assert report.verdict == "held" and report.held
    assert report.metric == "throughput_sps" and report.direction == "maximize"
    assert report.original_ranking == tuple(p.trial_number for p in ranked[:3])
    assert report.confirmed_ranking == report.original_ranking
    assert report.kendall_tau == pytest.approx(1.0)
    assert report.spearman_rho == pytest.approx(1.0)
    assert report.reasons == () and report.moved == []
    for p in report.points:
        assert p.ratio == pytest.approx(1.0, rel=0.03)
        assert p.moved is False and p.drift_verdict == "stable"
        assert p.confirmed_ci_sps is not None and p.original_ci_sps is not None
        assert p.original_rank == p.confirmed_rank
        assert len(p.runs) == 1 and p.runs[0].state == "ok"
    assert not launcher.closed  # a launcher passed in stays the caller's


def test_swapped_speeds_change_the_ranking(study: autotune.Study) -> None:
    first, second, third = _by_throughput(study)[:3]
    t1, t3 = first.values["throughput_sps"], third.values["throughput_sps"]
    assert t1 / t3 > 1.1, "the fixture's first and third must be more than 10 % apart"
    launcher = RetimedLauncher(throughput={first.config["batch_size"]: t3,
                                           third.config["batch_size"]: t1})
    report = verify(study, top=3, launcher=launcher)
    assert report.verdict == "changed" and not report.held
    assert report.confirmed_ranking == (third.trial_number, second.trial_number,
                                        first.trial_number)
    assert report.kendall_tau == pytest.approx(-1.0)
    assert any(f"trial {third.trial_number} leads" in r for r in report.reasons)
    assert any("Kendall tau -1.00" in r for r in report.reasons)
    assert set(report.moved) == {first.trial_number, third.trial_number}
    by_number = {p.trial_number: p for p in report.points}
    assert by_number[first.trial_number].outside_ci is True
    assert by_number[first.trial_number].ratio == pytest.approx(t3 / t1, rel=1e-3)
    assert by_number[second.trial_number].moved is False


def test_a_swap_within_ten_percent_changes_the_leader_but_moves_nothing(
        study: autotune.Study) -> None:
    first, second = _by_throughput(study)[:2]
    t1, t2 = first.values["throughput_sps"], second.values["throughput_sps"]
    assert t1 / t2 < 1.1
    report = verify(study, top=2, launcher=RetimedLauncher(
        throughput={first.config["batch_size"]: t2, second.config["batch_size"]: t1}))
    assert report.verdict == "changed" and report.moved == []
    assert report.kendall_tau == pytest.approx(-1.0)
    # outside the screening interval, but by less than the drift threshold
    assert all(p.outside_ci for p in report.points)


def test_a_point_that_collapses_moved_and_is_flagged_drifting(study: autotune.Study) -> None:
    points = _by_throughput(study)[:3]
    last = points[-1]
    launcher = RetimedLauncher(throughput={
        last.config["batch_size"]: last.values["throughput_sps"] * 0.5})
    report = verify(study, top=3, launcher=launcher)
    assert report.moved == [last.trial_number]
    assert report.verdict == "changed"
    assert any(f"trial {last.trial_number} moved: 0.50x" in r for r in report.reasons)
    # stored as a recheck: the front now says the point drifts
    standing = {p.trial_number: p.stability for p in study.pareto_front()}
    assert standing[last.trial_number] == "drifting"
    assert standing[points[0].trial_number] == "stable"


def test_reruns_are_longer_with_the_same_knobs_seed_and_execution(
        study: autotune.Study) -> None:
    launcher = FakeLauncher()
    report = verify(study, top=2, scale=4.0, launcher=launcher)
    assert len(launcher.calls) == 2
    for config, point in zip(launcher.calls, report.points, strict=True):
        row = study.storage.measurement(study.id, point.trial_number)
        assert row is not None
        stored = TrialConfig.from_dict(json.loads(row.config_json))
        assert config.knobs() == stored.knobs()
        assert (config.seed, config.execution, config.workload, config.mode) == \
            (stored.seed, stored.execution, stored.workload, stored.mode)
        assert config.budget.window_min_s == pytest.approx(stored.budget.window_min_s * 4)
        assert config.budget.window_max_s == pytest.approx(stored.budget.window_max_s * 4)
        assert config.budget.window_min_steps == stored.budget.window_min_steps * 4
        assert config.budget.trial_seconds >= stored.budget.trial_seconds * 4
        assert point.budget["window_max_s"] == pytest.approx(config.budget.window_max_s)


def test_rounds_are_interleaved_and_the_median_kept(study: autotune.Study) -> None:
    launcher = FakeLauncher()
    report = verify(study, top=3, rounds=3, launcher=launcher)
    batches = [c.batch_size for c in launcher.calls]
    order = [p.config["batch_size"] for p in report.points]
    assert batches == order * 3  # A B C A B C A B C
    for p in report.points:
        assert [r.round for r in p.runs] == [1, 2, 3]
        assert p.confirmed_throughput_sps == pytest.approx(
            sorted(r.throughput_sps or 0 for r in p.runs)[1])


def test_top_larger_than_the_front_is_clipped_with_a_note(study: autotune.Study) -> None:
    size = len(study.pareto_front())
    report = verify(study, top=50, launcher=FakeLauncher())
    assert report.top == size and report.requested_top == 50
    assert any(f"front has {size} configuration(s)" in n for n in report.notes)


def test_top_one_has_no_correlation_but_can_hold(study: autotune.Study) -> None:
    report = verify(study, top=1, launcher=FakeLauncher())
    assert report.kendall_tau is None and report.spearman_rho is None
    assert "at least 2" in report.correlation_note
    assert report.verdict == "held"


def test_ranking_by_another_objective(study: autotune.Study) -> None:
    report = verify(study, top=3, by="peak_memory_mb", launcher=FakeLauncher())
    assert report.metric == "peak_memory_mb" and report.direction == "minimize"
    values = [p.original_value for p in report.points]
    assert values == sorted(values)  # least memory first
    assert report.verdict == "held"


def test_confirmations_are_stored_as_verify_rechecks(study: autotune.Study) -> None:
    report = verify(study, top=3, rounds=2, launcher=FakeLauncher())
    rows = study.storage.rechecks(study.id)
    assert len(rows) == 3  # one per configuration, not per round
    assert [r.trial_number for r in rows] == list(report.original_ranking)
    for row in rows:
        assert row.reason.startswith("verify:")
        assert row.verdict == "stable" and row.state == "ok"
        assert row.after_trials == 10
        stored = json.loads(row.metrics_json)
        assert stored["verify"]["rounds"] == 2 and len(stored["verify"]["runs"]) == 2
        original = next(p.original_throughput_sps for p in report.points
                        if p.trial_number == row.trial_number)
        assert row.ratio is not None and original is not None
        assert stored["throughput_sps"] == pytest.approx(row.ratio * original)
    standing = {p.trial_number: p.stability for p in study.pareto_front()}
    assert all(standing[n] == "stable" for n in report.original_ranking)


def test_a_failed_rerun_is_reported_not_raised(study: autotune.Study) -> None:
    second = _by_throughput(study)[1]
    batch = second.config["batch_size"]
    seen: list[VerifyRun] = []
    launcher = FakeLauncher(fail=lambda c: c.batch_size == batch, fail_kind="timeout")
    report = verify(study, top=3, launcher=launcher, on_run=seen.append)
    failed = next(p for p in report.points if p.trial_number == second.trial_number)
    assert not failed.confirmed and failed.confirmed_rank is None and not failed.moved
    assert "timeout" in failed.reason
    assert any(f"trial {second.trial_number} not confirmed" in n for n in report.notes)
    assert len(report.confirmed_ranking) == 2
    assert report.verdict == "held"  # the other two kept their order
    assert [r.state for r in seen].count("fail") == 1 and len(seen) == 3
    row = next(r for r in study.storage.rechecks(study.id)
               if r.trial_number == second.trial_number)
    assert row.state == "fail" and row.verdict == "inconclusive"
    assert row.reason.startswith("verify:")


def test_a_failed_leader_is_inconclusive(study: autotune.Study) -> None:
    batch = _by_throughput(study)[0].config["batch_size"]
    report = verify(study, top=3,
                    launcher=FakeLauncher(fail=lambda c: c.batch_size == batch))
    assert report.verdict == "inconclusive" and not report.held
    assert "could not be re-measured" in report.reasons[0]


def test_every_rerun_failing_raises_after_storing(study: autotune.Study) -> None:
    with pytest.raises(autotune.AutotuneError, match="every re-measurement"):
        verify(study, top=2, launcher=FakeLauncher(fail=lambda c: True))
    rows = study.storage.rechecks(study.id)
    assert len(rows) == 2 and {r.verdict for r in rows} == {"inconclusive"}


def test_bad_arguments_and_a_study_without_a_feasible_trial(tmp_path: Path,
                                                            study: autotune.Study) -> None:
    for kwargs in ({"top": 0}, {"rounds": 0}, {"scale": 0.5}, {"by": "accuracy"}):
        with pytest.raises(autotune.StudyError):
            verify(study, launcher=FakeLauncher(), **kwargs)
    empty = autotune.create_study("empty", autotune.parse_space(SPACE), storage=_url(tmp_path))
    try:
        with pytest.raises(autotune.StudyError, match=r"no feasible trial.*study run empty"):
            verify(empty, launcher=FakeLauncher())
    finally:
        dispose(empty)


def test_report_is_json_serialisable(study: autotune.Study) -> None:
    data = json.loads(json.dumps(verify(study, top=2, launcher=FakeLauncher()).to_dict()))
    assert data["verdict"] == "held" and data["held"] is True
    assert data["min_kendall_tau"] == MIN_KENDALL_TAU
    assert len(data["points"]) == 2 and data["points"][0]["runs"][0]["state"] == "ok"


# -- the CLI ------------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _fake_process_launcher(monkeypatch: pytest.MonkeyPatch, launcher: FakeLauncher) -> None:
    """The CLI re-measures in fresh processes; here the fake stands in for them."""
    monkeypatch.setattr(verify_module, "ProcessLauncher", lambda: launcher)


def test_cli_json_and_exit_code_when_held(study: autotune.Study, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = FakeLauncher()
    _fake_process_launcher(monkeypatch, launcher)
    code, out, err = _cli(capsys, "verify", "v", "--top", "2", "--scale", "2", "--json",
                          "--storage", _url(tmp_path))
    assert code == 0, err
    data = json.loads(out)
    assert data["verdict"] == "held" and data["top"] == 2 and data["scale"] == 2.0
    assert data["kendall_tau"] == pytest.approx(1.0)
    assert "round 1/1" in err  # progress goes to stderr with --json
    assert launcher.closed  # the CLI's own launcher is released


def test_cli_table_and_exit_code_when_changed(study: autotune.Study, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    first = _by_throughput(study)[0]
    _fake_process_launcher(monkeypatch, RetimedLauncher(throughput={
        first.config["batch_size"]: first.values["throughput_sps"] * 0.3}))
    code, out, err = _cli(capsys, "verify", "v", "--storage", _url(tmp_path))
    assert code == 1, err
    assert "verdict: changed" in out and f"trial {first.trial_number} moved" in out
    assert "Kendall tau" in out and "yes" in out


def test_cli_errors(study: autotune.Study, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str],
                    monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_process_launcher(monkeypatch, FakeLauncher())
    url = _url(tmp_path)
    for argv in (("--top", "0"), ("--scale", "0.5"), ("--rounds", "x")):
        code, _, err = _cli(capsys, "verify", "v", *argv, "--storage", url)
        assert code == 2 and err.startswith("autotune: error:"), err
    code, _, err = _cli(capsys, "verify", "nope", "--storage", url)
    assert code == 1 and "no study named 'nope'" in err and "Traceback" not in err
    code, _, err = _cli(capsys, "verify", "v", "--by", "accuracy", "--storage", url)
    assert code == 1 and "not an objective" in err
    assert _cli(capsys, "study", "create", "empty", "--space",
                str(_space_file(tmp_path)), "--storage", url)[0] == 0
    code, _, err = _cli(capsys, "verify", "empty", "--storage", url)
    assert code == 1 and "no feasible trial" in err and len(err.strip().splitlines()) == 1


def _space_file(tmp_path: Path) -> Path:
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


# -- real trials ------------------------------------------------------------------------------


@pytest.mark.slow
def test_verify_real_torch_trials(tmp_path: Path, framework_workers: Any) -> None:
    """Two real screening trials, then confirmation runs in fresh worker processes."""
    space = {
        "workload": "mlp", "mode": "infer",
        "objectives": {"throughput_sps": "maximize", "peak_memory_mb": "minimize"},
        "params": {"batch_size": [16, 256], "threads": [1]},
        "budget": {"trial_seconds": 15, "warmup_max_s": 0.5, "window_min_s": 0.2,
                   "window_max_s": 0.5, "window_min_steps": 10},
    }
    study = autotune.create_study("real", autotune.parse_space(space),
                                  storage=_url(tmp_path), seed=1, sampler="random")
    try:
        study.optimize(n_trials=3, recheck_every=0, launcher=framework_workers)
        report = verify(study, top=2, scale=2.0)
        assert report.verdict in ("held", "changed")
        for p in report.points:
            assert p.confirmed, p.reason
            assert p.runs[0].window_s is not None
            assert p.budget["window_min_s"] == pytest.approx(0.4)
        rows = study.storage.rechecks(study.id)
        assert len(rows) == report.top
        assert all(r.reason.startswith("verify:") for r in rows)
    finally:
        dispose(study)


def test_disturbed_or_failed_rounds_are_left_out_of_the_median(
        study: autotune.Study) -> None:
    leader = _by_throughput(study)[0]
    batch = leader.config["batch_size"]

    @dataclass
    class Mixed(FakeLauncher):
        """The leader's 1st round is disturbed and 5x slow, its 2nd fails, 3rd is clean."""

        leader_runs: int = 0

        def run(self, config: TrialConfig) -> WorkerOutcome:
            if config.batch_size == batch:
                self.leader_runs += 1
                if self.leader_runs == 2:
                    return WorkerOutcome("fail", failure_kind="crash", reason="boom")
            return super().run(config)

        def raw_result(self, config: TrialConfig) -> dict[str, Any]:
            result = super().raw_result(config)
            if config.batch_size == batch and self.leader_runs == 1:
                result["step_times_s"] = [t * 5 for t in result["step_times_s"]]
                result["contention"] = {**result["contention"], "contended": True}
            return result

    report = verify(study, top=3, rounds=3, launcher=Mixed())
    point = report.points[0]
    assert [r.state for r in point.runs] == ["ok", "fail", "ok"]
    assert point.runs[0].contended and not point.contended
    assert point.ratio == pytest.approx(1.0, rel=0.03)  # the clean round only
    assert report.verdict == "held"
    assert any("1 of 3 round(s) disturbed" in n for n in report.notes)
    assert any("1 of 3 round(s) failed (crash: boom)" in n for n in report.notes)
