"""``autotune study export`` / ``import``: a study copied between storages loses nothing.

The source study has ok, infeasible (oom) and failed (crash) trials, a crash's queued retry
(WAITING), drift rechecks and the front's history. Trials run through
:class:`autotune.testing.FakeLauncher` (synthetic outcomes, no worker processes).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

import autotune
from autotune.cli import main
from autotune.exceptions import StudyError, StudyExistsError
from autotune.storage import AutotuneStorage
from autotune.study import Study
from autotune.testing import FakeLauncher, StorageSupplier, on_calls, optuna_storage
from autotune.testing.storages import sqlite_url
from autotune.transfer import (
    FORMAT_VERSION,
    ExportFormatError,
    export_dict,
    export_study,
    import_study,
)

SPACE_DATA: dict[str, Any] = {
    "workload": "mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
    # the fake's accuracy falls off away from lr 1e-3: some trials violate this
    "constraints": {"accuracy": ">= 0.8"},
    "params": {
        "batch_size": [16, 32, 64, 128],
        "threads": {"low": 1, "high": 4},
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
        "precision": "fp32",
    },
    "budget": {"trial_seconds": 20, "window_min_steps": 24},
}
N_TRIALS = 8
OOM_CALL, CRASH_CALLS = 2, (4, 7)  # call 5 runs the retry of 4; 7's retry stays queued
# what two exports of the same study may differ in (see autotune.transfer)
VOLATILE = ("exported_at",)


def _table_dump(db: Path) -> list[str]:
    """Every row of every table (empty for a database that does not exist)."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in VOLATILE}


@dataclass
class Source:
    db: Path
    url: str
    text: str  # the JSON export
    data: dict[str, Any]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    db = tmp_path_factory.mktemp("source") / "studies.db"
    url = sqlite_url(db)
    with autotune.create_study("main", autotune.parse_space(SPACE_DATA), storage=url,
                               seed=0) as study:
        study.optimize(n_trials=N_TRIALS, recheck_every=0, launcher=FakeLauncher(
            infeasible=on_calls(OOM_CALL), fail=on_calls(*CRASH_CALLS)))
        assert study.recheck_front(FakeLauncher(), after_trials=N_TRIALS)  # recheck rows
    text = export_study("main", storage=url)
    yield Source(db, url, text, json.loads(text))


@pytest.fixture
def target(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "target" / "studies.db"
    return db, sqlite_url(db)


# -- the export ---------------------------------------------------------------------------------


def test_export_holds_every_kind_of_record(source: Source) -> None:
    data = source.data
    assert data["autotune_export"] == FORMAT_VERSION
    assert data["study"]["name"] == "main" and data["study"]["seed"] == 0
    assert data["study"]["directions"] == ["maximize", "minimize"]
    assert data["study"]["user_attrs"]["autotune_space"]
    trials = data["trials"]
    assert [t["number"] for t in trials] == list(range(len(trials)))
    states = [t["state"] for t in trials]
    assert states.count("WAITING") == 1 and states[-1] == "WAITING"  # the queued retry
    assert states.count("FAIL") == 2
    by_kind = {t["user_attrs"].get("failure_kind"): t for t in trials}
    oom, crash = by_kind["oom"], by_kind["crash"]
    assert oom["state"] == "COMPLETE" and oom["constraints"]["measurable"] == 1.0
    assert oom["measurement"]["state"] == "infeasible"
    assert crash["measurement"]["state"] == "fail"
    assert "RuntimeError" in crash["measurement"]["traceback"]
    ok = trials[0]
    assert ok["state"] == "COMPLETE" and len(ok["values"]) == 2
    assert set(ok["params"]) == set(ok["distributions"]) == {"batch_size", "threads",
                                                             "learning_rate"}
    m = ok["measurement"]
    assert m["machine"] == data["machines"][0]["fingerprint_hash"]
    assert len(m["raw"]["step_times_s"]) >= 24 and m["metrics"]["energy_source"]
    assert m["config"]["batch_size"] == ok["params"]["batch_size"]
    assert trials[-1]["measurement"] is None  # a queued retry has not run
    assert data["pareto_front"] and data["rechecks"] and data["front_snapshots"]
    assert len(data["machines"]) == 1


# -- round trip -----------------------------------------------------------------------------------


def test_round_trip_is_lossless(source: Source, target: tuple[Path, str]) -> None:
    _, url = target
    with import_study(source.text, storage=url) as imported:
        assert imported.name == "main"
    again = export_dict("main", storage=url)
    assert _comparable(again) == _comparable(source.data)
    # and the text itself, once the export time is set aside
    again["exported_at"] = source.data["exported_at"]
    assert json.dumps(again, indent=2) + "\n" == source.text


def test_imported_study_reads_the_same(source: Source, target: tuple[Path, str]) -> None:
    _, url = target
    with import_study(Path(_write(target[0].parent, source.text)), storage=url) as copy, \
            autotune.load_study("main", storage=source.url) as original:
        assert copy.trials() == original.trials()
        assert copy.pareto_front() == original.pareto_front()
        assert copy.summary() == original.summary()  # created_at is carried over too
        assert copy.stability() == original.stability()
        assert copy.space == original.space
        assert copy.front_history() == original.front_history()
        front = {p.trial_number for p in copy.pareto_front()}
        assert front
    ours, theirs = _optuna_trials(url), _optuna_trials(source.url)
    assert {t.number for t in ours[1]} == front  # stock Optuna agrees on the front
    assert ours[0] == theirs[0]
    for a, b in zip(ours[0], theirs[0], strict=True):
        assert (a.datetime_start, a.datetime_complete, a.system_attrs, a.user_attrs) == \
            (b.datetime_start, b.datetime_complete, b.system_attrs, b.user_attrs)


def _write(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "export.json"
    path.write_text(text, encoding="utf-8")
    return path


def _optuna_trials(url: str) -> tuple[list[Any], list[Any]]:
    """(all trials, best trials) of study "main" as stock Optuna reads them."""
    with optuna_storage(url) as storage:
        ostudy = optuna.load_study(study_name="main", storage=storage)
        return ostudy.get_trials(), ostudy.best_trials


def test_imported_study_runs_on(source: Source, target: tuple[Path, str]) -> None:
    """The queued retry runs first and numbers go on from the source's."""
    _, url = target
    with import_study(source.text, storage=url) as copy:
        n = len(copy.trials())
        results = copy.optimize(n_trials=2, recheck_every=0, launcher=FakeLauncher())
        assert [r.number for r in results] == [n - 1, n]
        queued = source.data["trials"][-1]  # the retry: its params are fixed when asked
        assert results[0].params == queued["system_attrs"]["fixed_params"]
        assert all(r.state == "ok" for r in results)


def test_import_under_another_name_into_the_same_storage(source: Source,
                                                          tmp_path: Path) -> None:
    db = tmp_path / "copy.db"
    db.write_bytes(source.db.read_bytes())
    url = sqlite_url(db)
    with import_study(source.text, storage=url, name="main-copy") as copy:
        assert copy.name == "main-copy"
    data = export_dict("main-copy", storage=url)
    assert data["study"].pop("name") == "main-copy"
    expected = _comparable(source.data)
    expected["study"] = {k: v for k, v in expected["study"].items() if k != "name"}
    assert _comparable(data) == expected
    assert sorted(s.name for s in autotune.list_studies(storage=url)) == ["main",
                                                                         "main-copy"]
    with contextlib.closing(sqlite3.connect(db)) as conn:  # the machine is shared
        assert conn.execute("SELECT COUNT(*) FROM autotune_machines").fetchone() == (1,)


def test_running_trial_is_imported_as_failed(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "a.db")
    with autotune.create_study("live", autotune.parse_space(SPACE_DATA), storage=url,
                               seed=1) as study:
        study.optimize(n_trials=2, recheck_every=0, launcher=FakeLauncher())
        with optuna_storage(url) as storage:  # asked, never told: its process died
            optuna.load_study(study_name="live", storage=storage).ask()
    text = export_study("live", storage=url)
    assert [t["state"] for t in json.loads(text)["trials"]] == ["COMPLETE", "COMPLETE",
                                                                "RUNNING"]
    with import_study(text, storage=sqlite_url(tmp_path / "b.db")) as copy:
        trials = copy.trials()
        assert [t.state for t in trials] == ["ok", "ok", "fail"]
        assert trials[2].number == 2 and trials[2].failure_kind == "interrupted"
        assert "running" in trials[2].reason


# -- CSV ------------------------------------------------------------------------------------------


def test_csv_has_one_row_per_trial(source: Source) -> None:
    text = export_study("main", storage=source.url, format="csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    with autotune.load_study("main", storage=source.url) as study:
        trials = study.trials()
    assert len(rows) == len(trials) == len(source.data["trials"])
    header = list(rows[0])
    assert header[:7] == ["number", "state", "feasible", "failure_kind", "reason", "wall_s",
                          "machine"]
    for column in ("param.batch_size", "param.threads", "param.learning_rate",
                   "value.throughput_sps", "value.latency_p50_ms", "metric.throughput_sps",
                   "metric.energy_source", "metric.noise", "metric.threads"):
        assert column in header
    machine = source.data["machines"][0]["fingerprint_hash"]
    for row, t in zip(rows, trials, strict=True):
        assert int(row["number"]) == t.number and row["state"] == t.state
        assert row["feasible"] == ("true" if t.feasible else "false")
        assert row["failure_kind"] == (t.failure_kind or "")
        # a queued retry has no params yet (they are fixed when it is asked for)
        assert row["param.batch_size"] == str(t.params.get("batch_size", ""))
        assert row["machine"] == ("" if t.state == "waiting" else machine)
        if t.values is not None:
            assert float(row["value.throughput_sps"]) == t.values[0]
        if t.state == "ok":
            assert float(row["metric.throughput_sps"]) == t.metrics["throughput_sps"]
            assert json.loads(row["metric.phases_s"]) == t.metrics["phases_s"]
        else:
            assert row["metric.throughput_sps"] == ""


def test_unknown_format_is_refused(source: Source) -> None:
    with pytest.raises(StudyError, match="unknown export format 'xml'; allowed: json, csv"):
        export_study("main", storage=source.url, format="xml")


# -- refusals: nothing written ----------------------------------------------------------------


def _bad_version(text: str) -> str:
    data = json.loads(text)
    data["autotune_export"] = FORMAT_VERSION + 1
    return json.dumps(data)


def _bad_values(text: str) -> str:
    data = json.loads(text)
    data["trials"][1]["values"] = [1.0]
    return json.dumps(data)


def _bad_machine(text: str) -> str:
    data = json.loads(text)
    data["trials"][0]["measurement"]["machine"] = "feedfeedfeedfeed"
    return json.dumps(data)


def _late_bad_recheck(text: str) -> str:
    """Wrong only at the end of the file: checked before the first trial is written."""
    data = json.loads(text)
    data["rechecks"][-1]["created_at"] = "yesterday"
    return json.dumps(data)


def _bad_snapshot(text: str) -> str:
    data = json.loads(text)
    data["front_snapshots"][0]["volume"] = 1.0
    return json.dumps(data)


@pytest.mark.parametrize(("make", "error", "needle"), [
    (lambda _: "hello, not JSON", ExportFormatError, "is not an autotune export"),
    (lambda _: json.dumps({"study": {}}), ExportFormatError, "is not an autotune export"),
    (lambda _: "[1, 2]", ExportFormatError, "is not an autotune export"),
    (_bad_version, ExportFormatError, "format 2; autotune"),
    (_bad_values, ExportFormatError, "trials[1].values: expected 2 numbers"),
    (_bad_machine, ExportFormatError, "trials[0].measurement.machine"),
    (_late_bad_recheck, ExportFormatError, "created_at: expected an ISO date-time"),
    (_bad_snapshot, ExportFormatError, "front_snapshots[0].volume: not a column of"),
], ids=["not-json", "no-marker", "array", "newer-version", "values", "machine",
        "late-error", "snapshot-column"])
def test_bad_file_writes_nothing(source: Source, tmp_path: Path, make: Any,
                                 error: type[Exception], needle: str) -> None:
    path = _write(tmp_path, make(source.text))
    fresh = tmp_path / "fresh" / "new.db"  # a target that does not exist stays so
    with pytest.raises(error) as caught:
        import_study(path, storage=sqlite_url(fresh))
    assert needle in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not fresh.exists() and not fresh.parent.exists()
    before = _table_dump(source.db)  # and an existing one is left as it was
    with pytest.raises(error):
        import_study(path, storage=source.url, name="other")
    assert _table_dump(source.db) == before


def test_existing_name_writes_nothing(source: Source) -> None:
    before = _table_dump(source.db)
    with pytest.raises(StudyExistsError, match=r"study 'main' already exists in .*--name"):
        import_study(source.text, storage=source.url)
    assert _table_dump(source.db) == before


def test_foreign_optuna_study_name_is_refused(source: Source, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "optuna.db")
    optuna.create_study(study_name="main", storage=url)
    before = _table_dump(tmp_path / "optuna.db")
    with pytest.raises(StudyExistsError, match="not made by autotune"):
        import_study(source.text, storage=url)
    assert _table_dump(tmp_path / "optuna.db") == before


def test_failure_while_writing_leaves_no_study(source: Source, target: tuple[Path, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    db, url = target

    def broken(self: AutotuneStorage, *args: Any, **kwargs: Any) -> int:
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(AutotuneStorage, "import_study_records", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        import_study(source.text, storage=url)
    assert autotune.list_studies(storage=url) == []
    with optuna_storage(url) as storage:
        assert optuna.get_all_study_names(storage) == []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM trials").fetchone() == (0,)
    monkeypatch.undo()  # and the name is free for a retry
    with import_study(source.text, storage=url) as copy:
        assert len(copy.trials()) == len(source.data["trials"])


# -- the CLI --------------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("autotune: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_cli_round_trip(source: Source, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = _cli(capsys, "study", "export", "main", "--storage", source.url)
    assert code == 0, err
    assert _comparable(json.loads(out)) == _comparable(source.data)
    exported = tmp_path / "main.json"
    code, out, err = _cli(capsys, "study", "export", "main", "--storage", source.url,
                          "--output", exported)
    assert code == 0 and str(exported) in out, err
    target = sqlite_url(tmp_path / "target.db")
    code, out, err = _cli(capsys, "study", "import", exported, "--storage", target, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["name"] == "main" and summary["storage"] == target
    assert summary["trials"] == {"ok": 5, "screened": 0, "infeasible": 1, "pruned": 0,
                                 "fail": 2, "running": 0, "waiting": 1}
    assert _comparable(export_dict("main", storage=target)) == _comparable(source.data)
    code, out, err = _cli(capsys, "study", "import", exported, "--storage", target,
                          "--name", "again")
    assert code == 0 and "imported study 'again'" in out and "trial(s)" in out, err
    monkeypatch.setattr("sys.stdin", io.StringIO(source.text))
    code, out, err = _cli(capsys, "study", "import", "-", "--storage", target,
                          "--name", "from-stdin")
    assert code == 0 and "imported study 'from-stdin'" in out, err
    code, out, err = _cli(capsys, "study", "export", "main", "--storage", source.url,
                          "--format", "csv")
    assert code == 0 and len(list(csv.DictReader(io.StringIO(out)))) == \
        len(source.data["trials"])


def test_cli_errors_are_one_line(source: Source, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    exported = _write(tmp_path, source.text)
    before = _table_dump(source.db)
    code, _, err = _cli(capsys, "study", "import", exported, "--storage", source.url)
    _one_line_error(code, err, "'main' already exists", "--name")
    not_export = tmp_path / "notes.txt"
    not_export.write_text("just some notes\n")
    code, _, err = _cli(capsys, "study", "import", not_export, "--storage", source.url)
    _one_line_error(code, err, str(not_export), "is not an autotune export",
                    "autotune_export: 1")
    code, _, err = _cli(capsys, "study", "import", tmp_path / "missing.json",
                        "--storage", source.url)
    _one_line_error(code, err, "cannot read", "missing.json")
    assert _table_dump(source.db) == before
    code, out, err = _cli(capsys, "study", "export", "nope", "--storage", source.url)
    _one_line_error(code, err, "no study named 'nope'")
    assert out == ""
    output = tmp_path / "never.json"
    code, _, err = _cli(capsys, "study", "export", "nope", "--storage", source.url,
                        "--output", output)
    _one_line_error(code, err, "no study named 'nope'")
    assert not output.exists()
    code, _, err = _cli(capsys, "study", "export", "main", "--storage", source.url,
                        "--output", tmp_path / "no" / "dir" / "x.json")
    _one_line_error(code, err, "cannot write", "x.json")
    code, _, err = _cli(capsys, "study", "export", "main", "--format", "xml")
    assert code == 2 and "invalid choice" in err


# -- PostgreSQL as the target ----------------------------------------------------------------------

@pytest.fixture
def pg_url() -> Iterator[str]:
    with StorageSupplier("postgresql", prefix="autotune_transfer") as url:
        yield url


@pytest.mark.postgres
def test_round_trip_sqlite_to_postgresql(source: Source, pg_url: str) -> None:
    copy: Study
    with import_study(source.text, storage=pg_url) as copy, \
            autotune.load_study("main", storage=source.url) as original:
        assert copy.trials() == original.trials()
        assert copy.pareto_front() == original.pareto_front()
        assert copy.summary() == original.summary()
    assert _comparable(export_dict("main", storage=pg_url)) == _comparable(source.data)
    with pytest.raises(StudyExistsError):
        import_study(source.text, storage=pg_url)
