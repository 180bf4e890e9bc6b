"""Schema versions of the autotune tables: an older database is read as it is and upgraded
by the first write; a newer one is refused with a message that says what to do."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError

import autotune
from autotune.cli import main
from autotune.storage import SCHEMA_VERSION, AutotuneStorage
from autotune.storage import _db as db_module
from autotune.study import Study
from tests.fakes import FakeLauncher

SPACE: dict[str, Any] = {
    "workload": "mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
    "params": {"batch_size": [16, 32, 64], "threads": {"low": 1, "high": 2}},
    "budget": {"trial_seconds": 20},
}
SNAPSHOTS = "autotune_front_snapshots"
V1_TRIALS = 3
NEWER = 99
REFUSAL = (rf"autotune schema version {NEWER}, newer than this autotune understands "
           rf"\({SCHEMA_VERSION}\); upgrade autotune")


def _space() -> autotune.SearchSpace:
    return autotune.parse_space(SPACE)


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute(sql, args).fetchall()


def _execute(db: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        for sql in statements:
            conn.execute(sql)


def _tables(db: Path) -> set[str]:
    return {r[0] for r in _query(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _close(*studies: Study) -> None:
    for s in studies:
        s.storage.close()


@pytest.fixture
def v1_db(tmp_path: Path) -> tuple[Path, str]:
    """A database as autotune with schema version 1 left it: a study with trials, no front
    history table, version row 1 (made with today's code, then taken back with raw SQL)."""
    db = tmp_path / "v1.db"
    url = f"sqlite:///{db}"
    study = autotune.create_study("old", _space(), storage=url, seed=0)
    study.optimize(n_trials=V1_TRIALS, launcher=FakeLauncher(), recheck_every=0)
    _close(study)
    _execute(db, f"DROP TABLE {SNAPSHOTS}", "UPDATE autotune_schema SET version = 1")
    assert SNAPSHOTS not in _tables(db)
    return db, url


def test_current_version_and_an_upgrade_step_from_every_older_one() -> None:
    assert SCHEMA_VERSION == 2
    # a version bump without its step would leave older databases stuck
    assert set(db_module.UPGRADES) == set(range(1, SCHEMA_VERSION))


def test_v1_database_is_read_as_it_is(v1_db: tuple[Path, str],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    db, url = v1_db
    digest = _digest(db)
    study = autotune.load_study("old", storage=url)
    try:
        assert len(study.trials()) == V1_TRIALS
        assert study.pareto_front()  # the old front is still there
        assert study.storage.front_trial_numbers(study._row.id) == \
            [p.trial_number for p in study.pareto_front()]
        assert study.front_history() == []  # no history was kept then
        assert study.hypervolume() is None
        assert [s.name for s in autotune.list_studies(storage=url)] == ["old"]
    finally:
        _close(study)
    assert main(["study", "show", "old", "--history", "--storage", url]) == 0
    assert "no front history" in capsys.readouterr().out
    # reading wrote nothing: still version 1, no new table
    assert _digest(db) == digest
    assert _query(db, "SELECT version FROM autotune_schema") == [(1,)]
    assert SNAPSHOTS not in _tables(db)


def test_v1_database_is_upgraded_by_the_first_write(v1_db: tuple[Path, str]) -> None:
    db, url = v1_db
    measurements = _query(db, "SELECT * FROM autotune_measurements ORDER BY id")
    studies = _query(db, "SELECT * FROM autotune_studies")
    study = autotune.load_study("old", storage=url)
    try:
        study.optimize(n_trials=2, launcher=FakeLauncher(), recheck_every=0)
        assert _query(db, "SELECT id, version FROM autotune_schema") == [(1, SCHEMA_VERSION)]
        assert SNAPSHOTS in _tables(db)
        # the old rows are untouched; the new trials come after them
        assert _query(db, "SELECT * FROM autotune_measurements ORDER BY id")[:V1_TRIALS] == \
            measurements
        assert _query(db, "SELECT * FROM autotune_studies") == studies
        assert len(study.trials()) == V1_TRIALS + 2
        # history from the upgrade on, with the front over all trials, old ones included
        history = study.front_history()
        assert [h.trial_number for h in history] == [V1_TRIALS, V1_TRIALS + 1]
        assert history[-1].front == [p.trial_number for p in study.pareto_front()]
        assert study.hypervolume() == history[-1].hypervolume is not None
    finally:
        _close(study)


def test_prepare_for_writing_upgrades_once(v1_db: tuple[Path, str]) -> None:
    db, url = v1_db
    store = AutotuneStorage(url)
    try:
        store.prepare_for_writing()
        store.prepare_for_writing()  # already current: nothing to do
    finally:
        store.close()
    assert _query(db, "SELECT version FROM autotune_schema") == [(SCHEMA_VERSION,)]
    assert SNAPSHOTS in _tables(db)
    indexes = {r[0] for r in _query(db, "SELECT name FROM sqlite_master WHERE type = 'index' "
                                        "AND tbl_name = ?", SNAPSHOTS)}
    assert "ix_autotune_front_snapshots_study" in indexes


def test_delete_study_in_a_v1_database(v1_db: tuple[Path, str]) -> None:
    db, url = v1_db
    autotune.delete_study("old", storage=url)
    assert _query(db, "SELECT COUNT(*) FROM autotune_measurements") == [(0,)]
    assert autotune.list_studies(storage=url) == []


def test_failed_upgrade_keeps_the_old_version(v1_db: tuple[Path, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db, url = v1_db
    real = db_module.UPGRADES[1]

    def broken(conn: Connection) -> None:
        real(conn)
        raise OperationalError("ALTER TABLE", {}, Exception("disk I/O error"))

    monkeypatch.setitem(db_module.UPGRADES, 1, broken)
    store = AutotuneStorage(url)
    try:
        with pytest.raises(autotune.StorageError, match="disk I/O error"):
            store.prepare_for_writing()
        assert _query(db, "SELECT version FROM autotune_schema") == [(1,)]
        monkeypatch.setitem(db_module.UPGRADES, 1, real)
        store.prepare_for_writing()  # steps are idempotent: a retry completes it
        assert _query(db, "SELECT version FROM autotune_schema") == [(SCHEMA_VERSION,)]
    finally:
        store.close()


def test_missing_upgrade_step_is_named(v1_db: tuple[Path, str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db, url = v1_db
    monkeypatch.delitem(db_module.UPGRADES, 1)
    store = AutotuneStorage(url)
    try:
        with pytest.raises(autotune.StorageError,
                           match=rf"version 1 and this autotune has no upgrade from it to "
                                 rf"{SCHEMA_VERSION}"):
            store.prepare_for_writing()
    finally:
        store.close()
    assert _query(db, "SELECT version FROM autotune_schema") == [(1,)]


def test_newer_database_is_refused_with_both_versions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "future.db"
    url = f"sqlite:///{db}"
    study = autotune.create_study("s", _space(), storage=url)
    study.optimize(n_trials=1, launcher=FakeLauncher(), recheck_every=0)
    _close(study)
    _execute(db, f"UPDATE autotune_schema SET version = {NEWER}")
    digest = _digest(db)

    with pytest.raises(autotune.StorageError, match=REFUSAL) as refused:
        autotune.load_study("s", storage=url)
    assert "\n" not in str(refused.value)
    with pytest.raises(autotune.StorageError, match=REFUSAL):
        autotune.list_studies(storage=url)
    with pytest.raises(autotune.StorageError, match=REFUSAL):
        autotune.create_study("another", _space(), storage=url)
    with pytest.raises(autotune.StorageError, match=REFUSAL):
        study.optimize(n_trials=1, launcher=FakeLauncher(), recheck_every=0)
    store = AutotuneStorage(url)
    try:
        for check in (store.check_readable, store.prepare_for_writing):
            with pytest.raises(autotune.StorageError, match=REFUSAL):
                check()
    finally:
        store.close()
        _close(study)
    assert main(["study", "show", "s", "--history", "--storage", url]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "upgrade autotune" in err
    assert _digest(db) == digest  # refused before anything was written


# -- PostgreSQL ---------------------------------------------------------------------------------

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on the local server, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")

    def admin() -> Any:
        return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres",
                               autocommit=True, connect_timeout=3)

    try:
        with contextlib.closing(admin()):
            pass
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL server on {PG_HOST}:{PG_PORT} is unreachable ({e})")
    name = f"autotune_upgrade_{uuid.uuid4().hex[:8]}"
    with contextlib.closing(admin()) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with contextlib.closing(admin()) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _pg(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER,
                         dbname=url.rsplit("/", 1)[1], autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


@pytest.mark.postgres
def test_postgres_v1_upgrade_and_newer_refusal(pg_url: str) -> None:
    study = autotune.create_study("old", _space(), storage=pg_url, seed=0)
    study.optimize(n_trials=2, launcher=FakeLauncher(), recheck_every=0)
    _close(study)
    _pg(pg_url, f"DROP TABLE {SNAPSHOTS}")
    _pg(pg_url, "UPDATE autotune_schema SET version = 1")

    study = autotune.load_study("old", storage=pg_url)
    try:
        assert study.front_history() == [] and len(study.trials()) == 2
        assert _pg(pg_url, "SELECT version FROM autotune_schema") == [(1,)]
        study.optimize(n_trials=1, launcher=FakeLauncher(), recheck_every=0)
        assert _pg(pg_url, "SELECT version FROM autotune_schema") == [(SCHEMA_VERSION,)]
        assert [h.trial_number for h in study.front_history()] == [2]
    finally:
        _close(study)

    _pg(pg_url, f"UPDATE autotune_schema SET version = {NEWER}")
    with pytest.raises(autotune.StorageError, match=REFUSAL):
        autotune.load_study("old", storage=pg_url)
