"""Studies stored in SQLite: Optuna's tables plus the autotune_* tables, kept consistent.

Trials run through :class:`autotune.testing.FakeLauncher` (synthetic outcomes at the process
boundary), so these tests exercise the study/storage logic in milliseconds per trial;
storages come from :mod:`autotune.testing.storages`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest

import autotune
from autotune.pareto import pareto_front
from autotune.profiling.fingerprint import machine_fingerprint
from autotune.profiling.measurement import Measurement
from autotune.storage import SCHEMA_VERSION, AutotuneStorage
from autotune.study import FAILURE_CONSTRAINT, Study, TrialResult
from autotune.testing import (
    STORAGE_MODES,
    FakeLauncher,
    StorageSupplier,
    dispose,
    on_calls,
    optuna_storage,
)
from autotune.testing.storages import sqlite_url

SPACE_DATA: dict[str, Any] = {
    "workload": "mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
    # The fake's accuracy is 0.95 at lr 1e-3, 0.80 one decade away: some trials violate it.
    "constraints": {"accuracy": ">= 0.8"},
    "params": {
        "batch_size": [16, 32, 64, 128],
        "threads": {"low": 1, "high": 4},
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
        "precision": "fp32",
    },
    "budget": {"trial_seconds": 20, "window_min_steps": 24},
    "description": "storage test space",
}
N_TRIALS = 8
OOM_CALL, CRASH_CALL = 2, 4
AUTOTUNE_TABLES = {"autotune_studies", "autotune_machines", "autotune_measurements",
                   "autotune_pareto_front", "autotune_schema"}


def _space() -> autotune.SearchSpace:
    return autotune.parse_space(SPACE_DATA)


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def _table_dump(db: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return list(conn.iterdump())


@contextlib.contextmanager
def _optuna_study(url: str, name: str) -> Iterator[Any]:
    """Stock Optuna's view of study ``name``."""
    with optuna_storage(url) as storage:
        yield optuna.load_study(study_name=name, storage=storage)


@dataclass
class Run:
    """The main study of this module, after one optimize() call."""

    db: Path
    url: str
    study: Study
    launcher: FakeLauncher
    results: list[TrialResult]
    # per callback: (trial number, stored front, Study.pareto_front() numbers)
    fronts_seen: list[tuple[int, list[int], list[int]]] = field(default_factory=list)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    supplier = StorageSupplier("sqlite", tmp_path_factory.mktemp("storage"))
    with supplier as url:
        assert supplier.path is not None
        study = autotune.create_study("main", _space(), storage=url, seed=0)
        launcher = FakeLauncher(infeasible=on_calls(OOM_CALL), fail=on_calls(CRASH_CALL))
        fronts: list[tuple[int, list[int], list[int]]] = []

        def callback(result: TrialResult) -> None:
            stored = study.storage.front_trial_numbers(study._row.id)
            fronts.append((result.number, stored,
                           sorted(p.trial_number for p in study.pareto_front())))

        results = study.optimize(n_trials=N_TRIALS, launcher=launcher, callbacks=[callback])
        yield Run(supplier.path, url, study, launcher, results, fronts)
        dispose(study)


# -- the run itself ------------------------------------------------------------------------------


def test_run_outcomes(run: Run) -> None:
    assert [r.number for r in run.results] == list(range(N_TRIALS))
    assert len(run.launcher.calls) == N_TRIALS
    states = [r.state for r in run.results]
    assert states[OOM_CALL] == "infeasible"
    assert states[CRASH_CALL] == "fail"
    assert all(s == "ok" for i, s in enumerate(states) if i not in (OOM_CALL, CRASH_CALL))
    assert any(r.feasible for r in run.results)
    # the constraint is real: at least one measured trial violates it (seed 0)
    assert any(r.state == "ok" and not r.feasible for r in run.results)


# -- (a) the autotune_* tables ---------------------------------------------------------------


def test_tables_exist_with_schema_version(run: Run) -> None:
    tables = {r[0] for r in _query(run.db, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables >= AUTOTUNE_TABLES
    assert {"studies", "trials", "trial_values"} <= tables  # Optuna's own, same database
    assert _query(run.db, "SELECT id, version FROM autotune_schema") == [(1, SCHEMA_VERSION)]


def test_study_row(run: Run) -> None:
    rows = _query(run.db, "SELECT study_name, space_json, space_source, space_fingerprint, "
                          "sampler, seed, autotune_version FROM autotune_studies")
    assert len(rows) == 1
    name, space_json, source, fingerprint, sampler, seed, version = rows[0]
    space = _space()
    assert name == "main"
    assert json.loads(space_json) == space.to_dict()
    assert autotune.parse_space(json.loads(source)) == space
    assert fingerprint == space.fingerprint()
    assert (sampler, seed) == ("tpe", 0)
    assert version


def test_machine_row(run: Run) -> None:
    rows = _query(run.db, "SELECT id, fingerprint_hash, cpu_model, logical_cores, "
                          "memory_total_mb, fingerprint_json FROM autotune_machines")
    assert len(rows) == 1
    machine_id, fp_hash, cpu_model, cores, memory_mb, fp_json = rows[0]
    here = machine_fingerprint()
    assert cpu_model == here["cpu_model"]
    assert cores == os.cpu_count() == here["logical_cores"]
    assert memory_mb == here["memory_total_mb"] > 0
    stored = json.loads(fp_json)
    assert stored["framework_versions"] == here["framework_versions"]
    assert stored["framework_versions"]["optuna"] == optuna.__version__
    assert len(fp_hash) == 16
    assert run.study.storage.get_machine(machine_id) == stored
    measured_on = _query(run.db, "SELECT DISTINCT machine_id FROM autotune_measurements")
    assert measured_on == [(machine_id,)]


def test_measurement_rows(run: Run) -> None:
    study_id = run.study._row.id
    rows = _query(run.db, "SELECT study_id, trial_number, state, failure_kind, reason, "
                          "traceback, config_json, metrics_json, raw_json, wall_s "
                          "FROM autotune_measurements ORDER BY trial_number")
    assert [r[1] for r in rows] == list(range(N_TRIALS))  # one row per trial
    for (sid, number, state, kind, reason, tb, config_json, metrics_json, raw_json,
         wall_s), result, config in zip(rows, run.results, run.launcher.calls, strict=True):
        assert (sid, number) == (study_id, result.number)
        assert state == result.state
        assert (tb != "") == (state == "fail")
        assert kind == result.failure_kind
        # stored without the screen it was measured against (a re-run measures in full)
        assert json.loads(config_json) == dataclasses.replace(config, screen=None).to_dict()
        assert json.loads(config_json)["budget"]["window_min_steps"] == 24
        assert wall_s == pytest.approx(result.wall_s)
        if state == "ok":
            raw = run.launcher.raw_result(config)  # deterministic per config
            stored = json.loads(raw_json)
            assert stored["step_times_s"] == raw["step_times_s"]  # raw samples kept
            assert len(stored["step_times_s"]) >= 24
            assert stored["samples_per_step"] == config.batch_size
            metrics = json.loads(metrics_json)
            expected = Measurement.from_worker(raw, samples_per_step=config.batch_size,
                                               mode="train")
            assert metrics["throughput_sps"] == pytest.approx(expected.throughput_sps)
            assert metrics["energy_source"] == "estimated"
            assert metrics == result.metrics
            assert (kind, reason) == (None, "")
        else:
            assert json.loads(raw_json) == {} and json.loads(metrics_json) == {}
            assert reason
    by_number = {r[1]: r for r in rows}
    assert by_number[OOM_CALL][3] == "oom"
    assert by_number[CRASH_CALL][3] == "crash"
    assert "synthetic crash" in by_number[CRASH_CALL][5]  # traceback kept
    assert run.study.storage.measurements(study_id)[OOM_CALL].failure_kind == "oom"


# -- (b) the stored front ------------------------------------------------------------------------


def test_stored_front_equals_study_front(run: Run) -> None:
    front = run.study.pareto_front()
    assert front
    numbers = sorted(p.trial_number for p in front)
    assert run.study.storage.front_trial_numbers(run.study._row.id) == numbers
    stored = _query(run.db, "SELECT trial_number, values_json FROM autotune_pareto_front "
                            "WHERE study_id = ? ORDER BY trial_number", run.study._row.id)
    values = {p.trial_number: [p.values["throughput_sps"], p.values["latency_p50_ms"]]
              for p in front}
    assert {n: json.loads(v) for n, v in stored} == values
    for p in front:
        assert set(p.values) == {"throughput_sps", "latency_p50_ms"}
        assert p.config["precision"] == "fp32"  # fixed knobs included
        assert set(p.config) >= {"batch_size", "threads", "learning_rate", "backend"}
        assert p.metrics["throughput_sps"] == p.values["throughput_sps"]


def test_front_updated_after_each_trial(run: Run) -> None:
    assert [n for n, _, _ in run.fronts_seen] == list(range(N_TRIALS))
    for i, (number, stored, computed) in enumerate(run.fronts_seen):
        assert stored == computed, f"after trial {number}"
        # independent reference: the front of the feasible trials finished so far
        done = [r for r in run.results[:i + 1] if r.feasible and r.values is not None]
        expected = pareto_front([(r.number, r.values or []) for r in done],
                                ["maximize", "minimize"])
        assert stored == sorted(expected), f"after trial {number}"
    assert run.fronts_seen[-1][1] == sorted(p.trial_number for p in run.study.pareto_front())


# -- (c) infeasible and failed trials --------------------------------------------------------


def test_infeasible_trial_is_complete_with_violated_constraint(run: Run) -> None:
    with _optuna_study(run.url, "main") as ostudy:
        t = ostudy.trials[OOM_CALL]
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.constraints[FAILURE_CONSTRAINT] > 0
        assert t.user_attrs["failure_kind"] == "oom"
        assert "out of memory" in t.user_attrs["reason"]
        # worst-case, finite values the samplers can learn from
        assert t.values == [0.0, SPACE_DATA["budget"]["trial_seconds"] * 1000.0]
        assert all(math.isfinite(v) for v in t.values)
        for ok in (x for x in ostudy.trials if x.number not in (OOM_CALL, CRASH_CALL)):
            assert ok.constraints[FAILURE_CONSTRAINT] == 0
    result = run.study.trials()[OOM_CALL]
    assert (result.state, result.feasible, result.failure_kind) == ("infeasible", False, "oom")
    assert OOM_CALL not in [p.trial_number for p in run.study.pareto_front()]
    assert all(OOM_CALL not in stored for _, stored, _ in run.fronts_seen)


def test_crash_is_fail_and_retried_once(run: Run) -> None:
    with _optuna_study(run.url, "main") as ostudy:
        crashed = ostudy.trials[CRASH_CALL]
        assert crashed.state == optuna.trial.TrialState.FAIL
        assert crashed.user_attrs["failure_kind"] == "crash"
        assert "synthetic crash" in crashed.user_attrs["reason"]
        retries = [t for t in ostudy.trials if "autotune_retry_of" in t.user_attrs]
        assert len(retries) == 1
        retry = retries[0]
        assert retry.user_attrs["autotune_retry_of"] == CRASH_CALL
        assert retry.number == CRASH_CALL + 1  # the enqueued trial runs next
        assert retry.params == crashed.params
        assert retry.state == optuna.trial.TrialState.COMPLETE
    assert run.launcher.calls[CRASH_CALL + 1].knobs() == run.launcher.calls[CRASH_CALL].knobs()
    result = run.study.trials()[CRASH_CALL]
    assert (result.state, result.failure_kind, result.values) == ("fail", "crash", None)
    assert "synthetic crash" in result.reason


def test_crash_of_a_retry_is_not_retried_again(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    study = autotune.create_study("always-crashes", _space(), storage=url, seed=1)
    try:
        results = study.optimize(n_trials=2, launcher=FakeLauncher(fail=lambda cfg: True))
        assert [r.state for r in results] == ["fail", "fail"]
        with _optuna_study(url, "always-crashes") as ostudy:
            trials = ostudy.trials
            assert trials[1].user_attrs.get("autotune_retry_of") == 0
            # the retry crashed too: nothing more was enqueued for it
            assert not [t for t in trials if t.user_attrs.get("autotune_retry_of") == 1]
    finally:
        dispose(study)


def test_timeout_is_fail_and_not_retried(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    study = autotune.create_study("times-out", _space(), storage=url, seed=2)
    try:
        launcher = FakeLauncher(fail=on_calls(0), fail_kind="timeout")
        results = study.optimize(n_trials=2, launcher=launcher)
        assert results[0].state == "fail" and results[0].failure_kind == "timeout"
        assert "budget" in results[0].reason
        assert results[1].state == "ok"
        assert launcher.calls[1].knobs() != launcher.calls[0].knobs()  # a new sample
        assert [t.state for t in study.trials()] == ["fail", "ok"]
    finally:
        dispose(study)


# -- (d) stock Optuna reads the study --------------------------------------------------------


def test_stock_optuna_reads_the_study(run: Run) -> None:
    with optuna_storage(run.url) as storage:
        assert optuna.get_all_study_names(storage) == ["main"]
    with _optuna_study(run.url, "main") as ostudy:
        assert ostudy.directions == [optuna.study.StudyDirection.MAXIMIZE,
                                     optuna.study.StudyDirection.MINIMIZE]
        assert ostudy.metric_names == ["throughput_sps", "latency_p50_ms"]
        assert ostudy.user_attrs["autotune_space"] == _space().to_dict()
        assert len(ostudy.trials) == N_TRIALS
        ok = [t for t in ostudy.trials if "failure_kind" not in t.user_attrs]
        assert len(ok) == N_TRIALS - 2
        for t in ok:
            attrs = t.user_attrs
            assert attrs["throughput_sps"] == pytest.approx(t.values[0])
            assert attrs["metrics"]["latency_p50_ms"] == pytest.approx(t.values[1])
            assert attrs["energy_source"] == "estimated"
            assert 0 < attrs["accuracy"] <= 1
            assert "latency_p95_ms" in attrs
            assert attrs["fixed_knobs"] == {"precision": "fp32"}
            assert set(t.params) == {"batch_size", "threads", "learning_rate"}
        best = {t.number for t in ostudy.best_trials}
        assert best == {p.trial_number for p in run.study.pareto_front()}
        assert best


# -- (e) load_study round trip ---------------------------------------------------------------


def test_load_study_round_trips(run: Run) -> None:
    loaded = autotune.load_study("main", storage=run.url)
    try:
        space = _space()
        assert loaded.space == space
        assert loaded.space.fingerprint() == space.fingerprint()
        assert loaded.space.description == "storage test space"
        assert (loaded.name, loaded.sampler, loaded.seed) == ("main", "tpe", 0)
        loaded.check_space(space)  # does not raise
        assert [t.number for t in loaded.trials()] == list(range(N_TRIALS))
        assert [(t.state, t.values) for t in loaded.trials()] == \
            [(t.state, t.values) for t in run.study.trials()]
        assert loaded.pareto_front() == run.study.pareto_front()
        summary = loaded.summary()
        counts = summary["trials"]
        assert (counts["ok"], counts["infeasible"], counts["fail"]) == (N_TRIALS - 2, 1, 1)
        assert sum(counts.values()) == N_TRIALS
        assert summary["front_size"] == len(run.study.pareto_front())
        assert [s.name for s in autotune.list_studies(storage=run.url)] == ["main"]
        other = autotune.parse_space({**SPACE_DATA, "params": {"batch_size": [8, 16]}})
        with pytest.raises(autotune.SpaceMismatchError):
            loaded.check_space(other)
    finally:
        dispose(loaded)


def test_load_missing_study_names_the_storage(run: Run) -> None:
    with pytest.raises(autotune.StudyNotFoundError, match="no study named 'nope'") as info:
        autotune.load_study("nope", storage=run.url)
    assert run.url in str(info.value) and "main" in str(info.value)


def test_load_from_missing_file_does_not_create_it(tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    with pytest.raises(autotune.StudyNotFoundError):
        autotune.load_study("x", storage=sqlite_url(db))
    assert autotune.list_studies(storage=sqlite_url(db)) == []
    assert not db.exists()


# -- (f) delete_study --------------------------------------------------------------------------


def _rows_of(db: Path, study_id: int) -> dict[str, int]:
    return {
        table: _query(db, f"SELECT COUNT(*) FROM {table} WHERE {col} = ?", study_id)[0][0]
        for table, col in (("autotune_studies", "id"), ("autotune_measurements", "study_id"),
                           ("autotune_pareto_front", "study_id"))
    }


def test_delete_study_removes_only_that_study(tmp_path: Path) -> None:
    db = tmp_path / "two.db"
    url = sqlite_url(db)
    doomed = autotune.create_study("doomed", _space(), storage=url, seed=3)
    kept = autotune.create_study("kept", _space(), storage=url, seed=4)
    try:
        doomed.optimize(n_trials=3, launcher=FakeLauncher())
        kept.optimize(n_trials=3, launcher=FakeLauncher(infeasible=on_calls(1)))
        doomed_id, kept_id = doomed._row.id, kept._row.id
        assert _rows_of(db, doomed_id)["autotune_measurements"] == 3
        kept_before = _rows_of(db, kept_id)
        kept_dump = _query(db, "SELECT * FROM autotune_measurements WHERE study_id = ?",
                           kept_id)
        kept_front = kept.pareto_front()
        assert kept_before["autotune_pareto_front"] == len(kept_front) > 0

        autotune.delete_study("doomed", storage=url)

        assert _rows_of(db, doomed_id) == {"autotune_studies": 0,
                                           "autotune_measurements": 0,
                                           "autotune_pareto_front": 0}
        assert _rows_of(db, kept_id) == kept_before
        assert _query(db, "SELECT * FROM autotune_measurements WHERE study_id = ?",
                      kept_id) == kept_dump
        assert [r[0] for r in _query(db, "SELECT study_name FROM studies")] == ["kept"]
        assert _query(db, "SELECT COUNT(*) FROM autotune_machines") == [(1,)]
        with pytest.raises(autotune.StudyNotFoundError):
            autotune.load_study("doomed", storage=url)
        reloaded = autotune.load_study("kept", storage=url)
        try:
            assert reloaded.pareto_front() == kept_front
            assert len(reloaded.trials()) == 3
        finally:
            dispose(reloaded)
        assert [s.name for s in autotune.list_studies(storage=url)] == ["kept"]
        # the name is free again
        again = autotune.create_study("doomed", _space(), storage=url)
        try:
            assert again.trials() == []
            assert again.storage.front_trial_numbers(again._row.id) == []
        finally:
            dispose(again)
    finally:
        dispose(doomed, kept)


# -- (g) schema version ------------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_newer_schema_is_refused_without_writing(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    url = sqlite_url(db)
    study = autotune.create_study("s", _space(), storage=url)
    study.optimize(n_trials=1, launcher=FakeLauncher())
    dispose(study)
    newer = SCHEMA_VERSION + 1
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE autotune_schema SET version = ?", (newer,))
    digest, dump = _digest(db), _table_dump(db)

    pattern = rf"schema version {newer}.*newer.*\({SCHEMA_VERSION}\).*upgrade autotune"
    with pytest.raises(autotune.StorageError, match=pattern):
        autotune.load_study("s", storage=url)
    with pytest.raises(autotune.StorageError, match=pattern):
        autotune.list_studies(storage=url)
    store = AutotuneStorage(url)
    try:
        with pytest.raises(autotune.StorageError, match=pattern):
            store.prepare_for_writing()
        with pytest.raises(autotune.StorageError, match=pattern):
            store.check_readable()
    finally:
        dispose(store)
    # a Study object made before the upgrade refuses to run trials
    with pytest.raises(autotune.StorageError, match=pattern):
        study.optimize(n_trials=1, launcher=FakeLauncher())
    # creating another study there is refused before anything is written
    with pytest.raises(autotune.StorageError, match=pattern):
        autotune.create_study("another", _space(), storage=url)
    dispose(study)

    assert _table_dump(db) == dump
    assert _digest(db) == digest
    assert [r[0] for r in _query(db, "SELECT study_name FROM studies")] == ["s"]


def test_create_exist_ok_refuses_newer_schema(tmp_path: Path) -> None:
    db = tmp_path / "future.db"
    url = sqlite_url(db)
    dispose(autotune.create_study("s", _space(), storage=url))
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE autotune_schema SET version = ?", (SCHEMA_VERSION + 1,))
    study = None
    try:
        with pytest.raises(autotune.StorageError, match=f"schema version {SCHEMA_VERSION + 1}"):
            study = autotune.create_study("s", _space(), storage=url, exist_ok=True)
    finally:
        if study is not None:
            dispose(study)


def test_same_schema_version_is_accepted(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "db.sqlite")
    study = autotune.create_study("s", _space(), storage=url)
    dispose(study)
    loaded = autotune.load_study("s", storage=url)
    try:
        loaded.storage.prepare_for_writing()
        assert _query(tmp_path / "db.sqlite", "SELECT version FROM autotune_schema") == \
            [(SCHEMA_VERSION,)]
    finally:
        dispose(loaded)


# -- (h) timeout -------------------------------------------------------------------------------


def test_timeout_stops_starting_trials(tmp_path: Path) -> None:
    study = autotune.create_study("timed", _space(), storage=sqlite_url(tmp_path / "t.db"), seed=5)
    try:
        launcher = FakeLauncher(sleep_s=0.15)
        timeout = 0.5
        start = time.monotonic()
        results = study.optimize(timeout=timeout, launcher=launcher)
        elapsed = time.monotonic() - start
        assert 1 <= len(results) <= math.ceil(timeout / launcher.sleep_s) + 1
        assert len(results) == len(launcher.calls)
        # The timeout is checked before each ask, so only the last launch may begin past it (a
        # slow ask on a loaded machine can push that one over); none follows a late one.
        late = [t - start >= timeout for t in launcher.call_times]
        assert not any(late[:-1])
        assert elapsed >= timeout
        assert elapsed < timeout + launcher.sleep_s + 2.0
        assert len(study.trials()) == len(results)
    finally:
        dispose(study)


def test_n_trials_and_timeout_whichever_first(tmp_path: Path) -> None:
    study = autotune.create_study("both", _space(), storage=sqlite_url(tmp_path / "t.db"), seed=6)
    try:
        results = study.optimize(n_trials=2, timeout=60, launcher=FakeLauncher())
        assert len(results) == 2
        with pytest.raises(autotune.StudyError, match="timeout"):
            study.optimize(timeout=0, launcher=FakeLauncher())
        with pytest.raises(autotune.StudyError, match="n_trials"):
            study.optimize(n_trials=0, launcher=FakeLauncher())
    finally:
        dispose(study)


# -- (i) create twice --------------------------------------------------------------------------


def test_create_twice_raises_and_keeps_the_first(tmp_path: Path) -> None:
    db = tmp_path / "dup.db"
    url = sqlite_url(db)
    first = autotune.create_study("dup", _space(), storage=url, seed=7)
    try:
        first.optimize(n_trials=2, launcher=FakeLauncher())
        before = _table_dump(db)
        with pytest.raises(autotune.StudyExistsError, match="'dup' already exists"):
            autotune.create_study("dup", _space(), storage=url, seed=7)
        other_space = autotune.parse_space({**SPACE_DATA, "params": {"batch_size": [8]}})
        with pytest.raises(autotune.StudyExistsError):
            autotune.create_study("dup", other_space, storage=url, sampler="random")
        assert _table_dump(db) == before
        loaded = autotune.load_study("dup", storage=url)
        try:
            assert loaded.space == _space()
            assert (loaded.sampler, loaded.seed) == ("tpe", 7)
            assert len(loaded.trials()) == 2
        finally:
            dispose(loaded)
        # exist_ok returns the existing study for the same space, refuses another space
        same = autotune.create_study("dup", _space(), storage=url, exist_ok=True)
        try:
            assert same._row.id == first._row.id
            assert len(same.trials()) == 2
        finally:
            dispose(same)
        with pytest.raises(autotune.SpaceMismatchError):
            autotune.create_study("dup", other_space, storage=url, exist_ok=True)
        assert _table_dump(db) == before
    finally:
        dispose(first)


def test_foreign_optuna_study_name_is_refused(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "foreign.db")
    with optuna_storage(url) as storage:
        optuna.create_study(study_name="plain-optuna", storage=storage)
        with pytest.raises(autotune.StudyExistsError, match="not made by autotune"):
            autotune.create_study("plain-optuna", _space(), storage=url)
        assert autotune.list_studies(storage=url) == []


# -- every storage backend -------------------------------------------------------------------


@pytest.mark.parametrize("mode", [pytest.param(m, marks=[pytest.mark.postgres]
                                               if m == "postgresql" else [])
                                  for m in STORAGE_MODES])
def test_round_trip_on_every_storage(mode: str, tmp_path: Path) -> None:
    """The same study on each supported storage: run, reload, front and rows agree."""
    with StorageSupplier(mode, tmp_path) as url:
        study = autotune.create_study("every", _space(), storage=url, seed=3)
        try:
            results = study.optimize(n_trials=3, recheck_every=0,
                                     launcher=FakeLauncher(infeasible=on_calls(1)))
            assert [r.state for r in results] == ["ok", "infeasible", "ok"]
            loaded = autotune.load_study("every", storage=url)
            try:
                assert loaded.trials() == study.trials()
                assert loaded.pareto_front() == study.pareto_front()
                assert [r.trial_number for r in loaded.storage.measurements(loaded.id)] == \
                    [0, 1, 2]
            finally:
                dispose(loaded)
            with _optuna_study(url, "every") as ostudy:
                assert ostudy.trials[1].user_attrs["failure_kind"] == "oom"
        finally:
            dispose(study)
