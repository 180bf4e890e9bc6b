"""`autotune measure --from-trial STUDY:NUMBER` / autotune.measure_trial: re-run a stored
trial with its exact configuration and say what differs from when it was stored.

Studies run through :class:`tests.fakes.FakeLauncher`, and so do the re-runs (the API takes
``launcher=``; the CLI's fresh-process launcher is replaced by the fake), so these tests run
in milliseconds per trial. One slow test re-runs a real torch trial end to end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

import autotune
from autotune.cli import main
from autotune.config import TrialConfig
from autotune.exceptions import (
    AutotuneError,
    OutOfMemoryError,
    StudyError,
    StudyNotFoundError,
)
from autotune.profiling.fingerprint import machine_fingerprint
from tests.fakes import FakeLauncher, on_calls

measure_module = importlib.import_module("autotune._measure")

SPACE: dict[str, Any] = {
    "workload": "mlp",
    "mode": "train",
    # p95 latency makes the study raise window_min_steps above the space's 24: the re-run
    # must use the budget the trial ran with, not the space's.
    "objectives": {"throughput_sps": "maximize", "latency_p95_ms": "minimize"},
    "params": {
        "batch_size": [16, 32, 64],
        "threads": {"low": 1, "high": 2},
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
        "optimizer": ["sgd", "adam"],
        "precision": "fp32",
    },
    "budget": {"trial_seconds": 20, "window_min_steps": 24},
}
SEED = 5
OOM_TRIAL, CRASH_TRIAL, RETRY_TRIAL = 2, 4, 5
OK_TRIALS = (0, 1, 3)


class WarmFake(FakeLauncher):
    """Reports its trials as a warm worker would (a study's default launcher)."""

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        raw = super().raw_result(config)
        raw["worker"] = {"pid": 1234, "trial": len(self.calls), "warm": True}
        return raw


class ElsewhereFake(FakeLauncher):
    """A worker whose conditions differ: one thread more, other OMP/KMP variables and
    another framework version than the stored trial's."""

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        raw = super().raw_result(config)
        raw["threads"] += 1
        raw["environment"] = {"OMP_NUM_THREADS": str(raw["threads"]), "KMP_AFFINITY": "compact"}
        raw["versions"] = {"fake": "1 (synthetic)"}
        return raw


class SlowerFake(FakeLauncher):
    """Every step 1.5x slower than the stored trial's: throughput at 2/3."""

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        raw = super().raw_result(config)
        raw["step_times_s"] = [t * 1.5 for t in raw["step_times_s"]]
        raw["window_s"] *= 1.5
        return raw


class RefusingLauncher(FakeLauncher):
    """Fails the test if anything is run (bad input must be refused before any worker)."""

    def run(self, config: TrialConfig) -> Any:
        raise AssertionError("a worker was started")


@dataclass
class Stored:
    """The module's database: study 'main' (6 trials, see test_study_as_stored), study
    'broken' (a trial that failed before it was recorded, one still running) and 'empty'."""

    db: Path
    url: str
    launcher: WarmFake


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    db = tmp_path_factory.mktemp("from-trial") / "studies.db"
    url = f"sqlite:///{db}"
    launcher = WarmFake(infeasible=on_calls(OOM_TRIAL), fail=on_calls(CRASH_TRIAL))
    with autotune.create_study("main", autotune.parse_space(SPACE), storage=url,
                               seed=SEED) as study:
        # The crash on the last call leaves its retry queued (WAITING) as trial 5.
        study.optimize(n_trials=5, launcher=launcher)

    class Boom(FakeLauncher):
        def run(self, config: TrialConfig) -> Any:
            raise RuntimeError("boom")

    with autotune.create_study("broken", autotune.parse_space(SPACE), storage=url) as broken, \
            pytest.raises(RuntimeError, match="boom"):
        broken.optimize(n_trials=1, launcher=Boom())
    storage = optuna.storages.RDBStorage(url)
    optuna.load_study(study_name="broken", storage=storage).ask()  # trial 1: RUNNING
    storage.engine.dispose()
    with autotune.create_study("empty", autotune.parse_space(SPACE), storage=url):
        pass
    yield Stored(db, url, launcher)


@pytest.fixture
def db(stored: Stored, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A private copy of the module's database, checked unchanged afterwards: re-running
    a trial reads the storage and never writes it, whether it succeeds or not."""
    path = tmp_path / "copy.db"
    shutil.copyfile(stored.db, path)
    before = _dump(path)
    yield path, f"sqlite:///{path}"
    assert _dump(path) == before, "measure --from-trial modified the database"


def _dump(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return "\n".join(conn.iterdump())


def _stored_config(path: Path, study: str, number: int) -> TrialConfig:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (text,) = conn.execute(
            "SELECT m.config_json FROM autotune_measurements m JOIN autotune_studies s "
            "ON s.id = m.study_id WHERE s.study_name = ? AND m.trial_number = ?",
            (study, number)).fetchone()
    return TrialConfig.from_dict(json.loads(text))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, expected_code: int, *needles: str) -> str:
    assert code == expected_code, (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("autotune: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# -- the stored study -------------------------------------------------------------------------


def test_study_as_stored(stored: Stored) -> None:
    with autotune.load_study("main", storage=stored.url) as study:
        states = [t.state for t in study.trials()]
    assert states == ["ok", "ok", "infeasible", "ok", "fail", "waiting"]


# -- the exact configuration ------------------------------------------------------------------


@pytest.mark.parametrize("number", [*OK_TRIALS, OOM_TRIAL, CRASH_TRIAL])
def test_rerun_runs_the_stored_config_exactly(stored: Stored, db: tuple[Path, str],
                                              number: int) -> None:
    path, url = db
    launcher = FakeLauncher()
    result = autotune.measure_trial("main", number, storage=url, launcher=launcher)
    # what the study's launcher was given, less the screen it was measured against (a
    # re-run measures the configuration in full)
    ran = dataclasses.replace(stored.launcher.calls[number], screen=None)
    assert launcher.calls == [ran]
    assert result.config == ran == _stored_config(path, "main", number)
    assert not launcher.closed  # a launcher passed in belongs to the caller
    with autotune.load_study("main", storage=url) as study:
        params = study.trials()[number].params
    assert {k: v for k, v in ran.knobs().items() if k in params} == params
    # everything beyond the sampled knobs, as resolved when the trial ran
    assert ran.seed == SEED and ran.execution == "eager" and ran.precision == "fp32"
    assert ran.budget.window_min_steps == 132 > SPACE["budget"]["window_min_steps"]
    assert ran.budget.trial_seconds == 20


def test_same_conditions_report_only_the_fresh_process(db: tuple[Path, str]) -> None:
    _, url = db
    result = autotune.measure_trial("main", 3, storage=url, launcher=FakeLauncher())
    assert [(d.kind, d.name) for d in result.differences] == [("worker", "worker")]
    assert result.differences[0].message == (
        "worker: 'warm worker, its trial 4' when stored, 'fresh process' now "
        "(start-up costs differ; the measured window should not)")
    # the fake is deterministic per config: the same step times, ratio 1
    assert result.throughput_ratio == pytest.approx(1.0)
    comparison = result.comparison()
    assert list(comparison) == ["throughput_sps", "latency_p95_ms"]
    assert result.verdict.verdict == "stable"
    assert result.stored.state == "ok" and result.stored.measurement is not None
    assert result.stored.measurement.step_times_s == result.measurement.step_times_s


def test_differences_name_machine_versions_threads_and_environment(
        db: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = db
    here = machine_fingerprint()
    elsewhere = {**here, "hostname": "elsewhere", "cpu_model": "Other CPU 9000",
                 "framework_versions": {**here["framework_versions"], "torch": "9.9.9"}}
    monkeypatch.setattr(measure_module, "machine_fingerprint", lambda: elsewhere)
    result = autotune.measure_trial("main", 0, storage=url, launcher=ElsewhereFake())
    found = {(d.kind, d.name): d for d in result.differences}
    threads = result.stored.measurement.threads if result.stored.measurement else 0
    assert found[("machine", "cpu_model")].now == "Other CPU 9000"
    assert found[("machine", "hostname")].now == "elsewhere"
    assert found[("framework", "torch")].now == "9.9.9"
    assert found[("framework", "fake")].message == \
        "framework fake: '0 (synthetic)' when stored, '1 (synthetic)' now"
    assert found[("threads", "threads")].message == \
        f"threads: {threads} when stored, {threads + 1} now"
    assert found[("environment", "OMP_NUM_THREADS")].stored == str(threads)
    assert found[("environment", "KMP_AFFINITY")].message == \
        "environment KMP_AFFINITY: unset when stored, 'compact' now"
    out = result.to_dict()
    assert out["machine"]["stored_hash"] != out["machine"]["now_hash"]
    assert {d["message"] for d in out["differences"]} == \
        {d.message for d in result.differences}


def test_a_slower_rerun_is_judged_like_a_drift_recheck(db: tuple[Path, str]) -> None:
    _, url = db
    result = autotune.measure_trial("main", 1, storage=url, launcher=SlowerFake())
    assert result.throughput_ratio == pytest.approx(2 / 3)
    assert result.verdict.verdict == "drifting"
    assert result.comparison()["latency_p95_ms"]["ratio"] == pytest.approx(1.5)
    assert result.to_dict()["verdict"]["verdict"] == "drifting"


def test_same_hardware_on_another_host_is_a_note(db: tuple[Path, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = db
    monkeypatch.setattr(measure_module, "machine_fingerprint",
                        lambda: {**machine_fingerprint(), "hostname": "twin"})
    result = autotune.measure_trial("main", 0, storage=url, launcher=WarmFake())
    assert [d.message for d in result.differences] == [
        f"machine hostname: {result.stored.machine['hostname']!r} when stored, 'twin' now "
        "(same hardware and software)"]


def test_an_infeasible_trial_can_be_rerun(db: tuple[Path, str]) -> None:
    """Its config is stored: the re-run may reproduce the failure or show it went away."""
    _, url = db
    result = autotune.measure_trial("main", OOM_TRIAL, storage=url, launcher=WarmFake())
    assert result.throughput_ratio is None  # nothing stored to compare with
    outcome = [d for d in result.differences if d.kind == "outcome"]
    assert len(outcome) == 1 and "infeasible (oom: out of memory" in outcome[0].message
    with pytest.raises(OutOfMemoryError) as info:
        autotune.measure_trial("main", OOM_TRIAL, storage=url,
                               launcher=FakeLauncher(infeasible=lambda c: True))
    assert str(info.value).startswith(f"re-run of trial {OOM_TRIAL} of 'main': out of memory")
    assert "(stored: infeasible (oom: out of memory" in str(info.value)


def test_a_crashed_trial_reproduces_its_crash(db: tuple[Path, str]) -> None:
    _, url = db
    with pytest.raises(AutotuneError, match=r"measurement failed \(crash\).*stored: fail "
                                            r"\(crash: RuntimeError: synthetic crash"):
        autotune.measure_trial("main", CRASH_TRIAL, storage=url,
                               launcher=FakeLauncher(fail=lambda c: True))


def test_stored_trial_reads_without_running(db: tuple[Path, str]) -> None:
    _, url = db
    trial = measure_module.stored_trial("main", 1, storage=url)
    assert trial.state == "ok" and trial.metrics["throughput_sps"] > 0
    assert trial.machine["hostname"] == machine_fingerprint()["hostname"]
    assert trial.compared_metrics == ("throughput_sps", "latency_p95_ms")


def test_unreadable_stored_config(db: tuple[Path, str]) -> None:
    path, url = db
    with contextlib.closing(sqlite3.connect(path)) as conn:
        (text,) = conn.execute("SELECT config_json FROM autotune_measurements "
                               "WHERE trial_number = 0").fetchone()
        conn.execute("UPDATE autotune_measurements SET config_json = ? WHERE trial_number = 0",
                     (json.dumps({**json.loads(text), "colour": "blue"}),))
        conn.commit()
    try:
        with pytest.raises(StudyError, match="stored configuration of trial 0 of 'main' "
                                             "cannot be read by this autotune version"):
            autotune.measure_trial("main", 0, storage=url, launcher=RefusingLauncher())
    finally:  # the fixture checks the database is unchanged: undo the edit
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("UPDATE autotune_measurements SET config_json = ? "
                         "WHERE trial_number = 0", (text,))
            conn.commit()


@pytest.mark.parametrize("number", [-1, True, "0"])
def test_api_refuses_bad_numbers(stored: Stored, number: Any) -> None:
    with pytest.raises(StudyError, match="trial numbers are integers from 0"):
        autotune.measure_trial("main", number, storage=stored.url)


def test_api_unknown_study(stored: Stored) -> None:
    with pytest.raises(StudyNotFoundError, match=r"no study named 'nope'.*main"):
        autotune.measure_trial("nope", 0, storage=stored.url)


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def fake_fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI re-runs in a fresh process (ProcessLauncher): make that the fake."""
    monkeypatch.setattr(measure_module, "ProcessLauncher", FakeLauncher)


@pytest.mark.usefixtures("fake_fresh_process")
def test_cli_json(capsys: pytest.CaptureFixture[str], stored: Stored,
                  db: tuple[Path, str]) -> None:
    path, url = db
    code, out, err = _cli(capsys, "measure", "--from-trial", "main:3", "--storage", url,
                          "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["study"] == "main" and data["trial"] == 3
    assert data["config"] == dataclasses.replace(stored.launcher.calls[3],
                                                 screen=None).to_dict()
    assert data["config"] == _stored_config(path, "main", 3).to_dict()
    assert data["knobs"] == stored.launcher.calls[3].knobs()
    assert data["workload"] == "mlp" and data["mode"] == "train"
    assert data["stored"]["state"] == "ok"
    assert data["stored"]["threads"] == data["measurement"]["threads"]
    assert data["comparison"]["throughput_sps"]["ratio"] == pytest.approx(1.0)
    assert data["verdict"]["verdict"] == "stable"
    assert data["metrics"]["throughput_sps"] == pytest.approx(
        data["comparison"]["throughput_sps"]["now"])
    assert [d["kind"] for d in data["differences"]] == ["worker"]
    assert data["machine"]["stored_hash"] == data["machine"]["now_hash"]


def test_cli_prints_differences_as_warnings_and_the_ratio(
        capsys: pytest.CaptureFixture[str], db: tuple[Path, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = db
    monkeypatch.setattr(measure_module, "ProcessLauncher", ElsewhereFake)
    code, out, err = _cli(capsys, "measure", "--from-trial", "main:0", "--storage", url)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("re-ran trial 0 of 'main' (stored: ok): mlp train | "
                               "backend=torch device=cpu")
    assert f"seed={SEED}" in lines[0]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert any(line.startswith("warning: threads: ") for line in warnings)
    assert "warning: environment KMP_AFFINITY: unset when stored, 'compact' now" in warnings
    assert any(line.startswith("throughput: ") and " stored, ratio 1.000: stable (" in line
               for line in lines)


@pytest.mark.usefixtures("fake_fresh_process")
def test_cli_rerun_of_an_infeasible_trial(capsys: pytest.CaptureFixture[str],
                                          db: tuple[Path, str]) -> None:
    _, url = db
    code, out, _ = _cli(capsys, "measure", "--from-trial", f"main:{OOM_TRIAL}", "--storage",
                        url, "--json")
    assert code == 0
    assert json.loads(out)["stored"]["failure_kind"] == "oom"


def test_cli_reproduced_failure_is_one_line(capsys: pytest.CaptureFixture[str],
                                            db: tuple[Path, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = db
    monkeypatch.setattr(measure_module, "ProcessLauncher",
                        lambda: FakeLauncher(infeasible=lambda c: True))
    code, _, err = _cli(capsys, "measure", "--from-trial", f"main:{OOM_TRIAL}", "--storage",
                        url, "--json")
    _one_line_error(code, err, 1, f"re-run of trial {OOM_TRIAL} of 'main': out of memory",
                    "stored: infeasible (oom")


BAD_REFS = ["main", "main:", ":3", "main:x", "main:-1", "main:1.5", "main:٣"]


@pytest.mark.usefixtures("db")
@pytest.mark.parametrize("ref", BAD_REFS)
def test_cli_malformed_reference(capsys: pytest.CaptureFixture[str], ref: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure_module, "ProcessLauncher", RefusingLauncher)
    code, _, err = _cli(capsys, "measure", "--from-trial", ref)
    _one_line_error(code, err, 2, "--from-trial", "expected STUDY:NUMBER", "e.g. quick:3",
                    repr(ref))


# (reference, substrings of the error line)
BAD_TRIALS = [
    ("nope:0", ("no study named 'nope'", "studies there: main, broken, empty")),
    ("main:99", ("study 'main' has no trial 99: it has trials 0-5",
                 "`autotune study show main --all` lists them")),
    (f"main:{RETRY_TRIAL}", (f"trial {RETRY_TRIAL} of 'main' is waiting", "nothing to re-run")),
    ("broken:0", ("trial 0 of 'broken' failed (storage: RuntimeError: boom) before its "
                  "configuration was stored; nothing to re-run",)),
    ("broken:1", ("trial 1 of 'broken' is still running",)),
    ("empty:0", ("study 'empty' has no trials yet", "autotune study run empty")),
]


@pytest.mark.parametrize(("ref", "needles"), BAD_TRIALS, ids=[r for r, _ in BAD_TRIALS])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_trial_that_cannot_be_rerun(capsys: pytest.CaptureFixture[str],
                                        db: tuple[Path, str], monkeypatch: pytest.MonkeyPatch,
                                        ref: str, needles: tuple[str, ...],
                                        as_json: bool) -> None:
    _, url = db
    monkeypatch.setattr(measure_module, "ProcessLauncher", RefusingLauncher)
    code, out, err = _cli(capsys, "measure", "--from-trial", ref, "--storage", url,
                          *(["--json"] if as_json else []))
    _one_line_error(code, err, 1, *needles)
    assert out == ""


def test_cli_missing_database_creates_nothing(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    code, _, err = _cli(capsys, "measure", "--from-trial", "main:0", "--storage",
                        f"sqlite:///{tmp_path}/none.db")
    _one_line_error(code, err, 1, "no study named 'main'")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("db")
@pytest.mark.parametrize(("extra", "flags"), [
    (["--batch-size", "8"], "--batch-size cannot"),
    (["--threads", "2", "--precision", "bf16"], "--precision, --threads cannot"),
    (["--workload", "mlp", "--mode", "train"], "--workload, --mode cannot"),
    (["--trial-seconds", "5"], "--trial-seconds cannot"),
])
def test_cli_knob_flags_conflict_with_from_trial(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 extra: list[str], flags: str) -> None:
    monkeypatch.setattr(measure_module, "ProcessLauncher", RefusingLauncher)
    code, _, err = _cli(capsys, "measure", "--from-trial", "main:0", *extra)
    _one_line_error(code, err, 2, flags, "combined with --from-trial",
                    "see `autotune measure --help`")


@pytest.mark.parametrize(("argv", "needle"), [
    (["--mode", "train"], "required: --workload (or --from-trial STUDY:NUMBER)"),
    ([], "required: --workload, --mode"),
    (["--workload", "mlp", "--mode", "train", "--storage", "sqlite:///x.db"],
     "--storage is only used with --from-trial"),
])
def test_cli_measure_without_from_trial_usage(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              argv: list[str], needle: str) -> None:
    monkeypatch.setattr(measure_module, "ProcessLauncher", RefusingLauncher)
    code, _, err = _cli(capsys, "measure", *argv)
    _one_line_error(code, err, 2, needle)


def test_cli_help_mentions_from_trial(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    out = capsys.readouterr().out
    for option in ("--from-trial", "STUDY:NUMBER", "--storage", "--json", "--debug"):
        assert option in out


# -- the public name --------------------------------------------------------------------------


@pytest.mark.parametrize("code", [
    "from autotune._measure import Remeasurement\nimport autotune",
    "import autotune\nautotune.measure_trial",
    "import autotune._measure\nimport autotune",
])
def test_measure_stays_the_function(code: str) -> None:
    """autotune.measure is a function; its module is private (``autotune._measure``) so
    that importing the module never replaces the function."""
    probe = f"{code}\nassert callable(autotune.measure), autotune.measure\n" \
            "assert autotune.measure.__name__ == 'measure'\n" \
            "assert autotune.measure_trial.__name__ == 'measure_trial'"
    subprocess.run([sys.executable, "-c", probe], check=True)


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_torch_trial_rerun_via_cli(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/real.db"
    space = {"workload": "mlp", "mode": "infer", "objectives": {"throughput_sps": "maximize"},
             "params": {"batch_size": 32, "threads": 1},
             "budget": {"trial_seconds": 40, "warmup_max_s": 0.5, "window_min_s": 0.2,
                        "window_max_s": 0.5, "window_min_steps": 10, "train_epochs": 1}}
    with autotune.create_study("real", autotune.parse_space(space), storage=url,
                               seed=1) as study:
        (first,) = study.optimize(n_trials=1)
    assert first.state == "ok", first.reason
    code, out, err = _cli(capsys, "measure", "--from-trial", "real:0", "--storage", url,
                          "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["config"]["batch_size"] == 32 and data["config"]["threads"] == 1
    assert data["config"]["seed"] == 1 and data["measurement"]["threads"] == 1
    assert data["stored"]["versions"]["torch"] == data["measurement"]["versions"]["torch"]
    assert data["comparison"]["throughput_sps"]["ratio"] > 0
    kinds = {d["kind"] for d in data["differences"]}
    assert "worker" in kinds  # the study ran on a warm worker, the re-run in a fresh process
    assert not kinds & {"machine", "framework", "threads", "environment"}, data["differences"]


def test_difference_is_a_value() -> None:
    d = measure_module.Difference("threads", "threads", 4, None)
    assert d.message == "threads: 4 when stored, unset now"
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.now = 2
