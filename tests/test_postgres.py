"""The study round trip against the real PostgreSQL server on 127.0.0.1:5432.

Each module run creates a fresh database with a unique name and drops it afterwards.
Trials run through :class:`autotune.testing.FakeLauncher` (synthetic outcomes, no workers);
the database comes from :class:`autotune.testing.StorageSupplier`. When the server is
unreachable these tests are skipped, unless ``AUTOTUNE_REQUIRE_POSTGRES=1`` (CI sets it):
then they fail, so a server that is down cannot pass for a green run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import socket
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
import psycopg
import pytest

import autotune
from autotune import cli
from autotune.storage import SCHEMA_VERSION
from autotune.testing import FakeLauncher, StorageSupplier, dispose, on_calls, optuna_storage
from autotune.testing.storages import HOST, PORT, REQUIRE_ENV, USER, connect_or_skip

pytestmark = pytest.mark.postgres

SPACE_DATA: dict[str, Any] = {
    "workload": "mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
    "constraints": {"accuracy": ">= 0.8"},
    "params": {
        "batch_size": [16, 32, 64, 128],
        "threads": {"low": 1, "high": 4},
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
    },
    "budget": {"trial_seconds": 20},
}


@contextlib.contextmanager
def _leaky() -> Iterator[None]:
    """Around public calls that open a storage of their own. They close it now (pinned by
    ``test_public_functions_close_their_connections``); this guard only keeps a regression
    there from failing the functional checks below at a random later point (a pooled psycopg
    connection warns, ResourceWarning, when garbage-collected): leaks are collected here,
    with that warning ignored, and reported by that one test alone."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with StorageSupplier("postgresql") as url:
        yield url


@pytest.mark.parametrize(("require", "outcome"), [("1", pytest.fail.Exception),
                                                   ("", pytest.skip.Exception)],
                         ids=["required-fails", "optional-skips"])
def test_unreachable_server_fails_when_required(monkeypatch: pytest.MonkeyPatch, require: str,
                                               outcome: type[BaseException]) -> None:
    with contextlib.closing(socket.socket()) as sock:  # a port nothing listens on
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(REQUIRE_ENV, require)
    with pytest.raises(outcome, match=f"{HOST}:{port} is unreachable"):
        connect_or_skip(port=port)


def _query(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    dbname = url.rsplit("/", 1)[1]
    with psycopg.connect(host=HOST, port=PORT, user=USER, dbname=dbname,
                         autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()  # type: ignore[arg-type]


def test_round_trip(pg_url: str) -> None:
    space = autotune.parse_space(SPACE_DATA)
    study = autotune.create_study("pg-main", space, storage=pg_url, seed=0)
    launcher = FakeLauncher(infeasible=on_calls(1))
    fronts: list[tuple[list[int], list[int]]] = []

    def callback(result: Any) -> None:
        fronts.append((study.storage.front_trial_numbers(study._row.id),
                       sorted(p.trial_number for p in study.pareto_front())))

    try:
        results = study.optimize(n_trials=5, launcher=launcher, callbacks=[callback])
        assert [r.number for r in results] == [0, 1, 2, 3, 4]
        assert results[1].state == "infeasible" and results[1].failure_kind == "oom"
        assert all(stored == computed for stored, computed in fronts)

        front = study.pareto_front()
        assert front
        numbers = sorted(p.trial_number for p in front)
        assert 1 not in numbers
        assert study.storage.front_trial_numbers(study._row.id) == numbers

        # the autotune tables in PostgreSQL
        study_id = study._row.id
        assert _query(pg_url, "SELECT version FROM autotune_schema") == [(SCHEMA_VERSION,)]
        rows = _query(pg_url, "SELECT trial_number, state, config_json, raw_json "
                              "FROM autotune_measurements WHERE study_id = %s "
                              "ORDER BY trial_number", study_id)
        assert [r[0] for r in rows] == [0, 1, 2, 3, 4]
        for (number, state, config_json, raw_json), config in zip(rows, launcher.calls,
                                                                   strict=True):
            assert state == results[number].state
            # stored without the screen it was measured against
            assert json.loads(config_json) == dataclasses.replace(config,
                                                                  screen=None).to_dict()
            if state == "ok":
                assert json.loads(raw_json)["step_times_s"] == \
                    launcher.raw_result(config)["step_times_s"]
        machines = _query(pg_url, "SELECT cpu_model, logical_cores, memory_total_mb, "
                                  "fingerprint_json FROM autotune_machines")
        assert len(machines) == 1
        assert "framework_versions" in json.loads(machines[0][3])
        assert sorted(r[0] for r in _query(
            pg_url, "SELECT trial_number FROM autotune_pareto_front WHERE study_id = %s",
            study_id)) == numbers

        # stock Optuna reads it
        with optuna_storage(pg_url) as storage:
            ostudy = optuna.load_study(study_name="pg-main", storage=storage)
            assert {t.number for t in ostudy.best_trials} == set(numbers)
            assert ostudy.trials[1].user_attrs["failure_kind"] == "oom"
            assert ostudy.trials[1].constraints["measurable"] > 0
            assert "throughput_sps" in ostudy.trials[0].user_attrs

        # a fresh load round-trips the space and the front
        loaded = autotune.load_study("pg-main", storage=pg_url)
        try:
            assert loaded.space == space
            assert loaded.space.fingerprint() == space.fingerprint()
            assert loaded.pareto_front() == front
        finally:
            dispose(loaded)

        listed = autotune.list_studies(storage=pg_url)
        try:
            assert [s.name for s in listed] == ["pg-main"]
            assert listed[0].summary()["front_size"] == len(front)
        finally:
            dispose(*listed)

        with pytest.raises(autotune.StudyExistsError):
            autotune.create_study("pg-main", space, storage=pg_url)
    finally:
        dispose(study)

    with _leaky():
        autotune.delete_study("pg-main", storage=pg_url)
    assert _query(pg_url, "SELECT COUNT(*) FROM autotune_studies") == [(0,)]
    assert _query(pg_url, "SELECT COUNT(*) FROM autotune_measurements") == [(0,)]
    assert _query(pg_url, "SELECT COUNT(*) FROM autotune_pareto_front") == [(0,)]
    assert _query(pg_url, "SELECT study_name FROM studies") == []
    with _leaky():
        assert autotune.list_studies(storage=pg_url) == []
        with pytest.raises(autotune.StudyNotFoundError):
            autotune.load_study("pg-main", storage=pg_url)


def test_cli_study_list(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    space = autotune.parse_space(SPACE_DATA)
    study = autotune.create_study("pg-cli", space, storage=pg_url, seed=1)
    try:
        study.optimize(n_trials=2, launcher=FakeLauncher())
    finally:
        dispose(study)
    capsys.readouterr()
    try:
        with _leaky():
            assert cli.main(["study", "list", "--storage", pg_url, "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [s["name"] for s in listed] == ["pg-cli"]
        assert listed[0]["trials"]["ok"] == 2
        assert listed[0]["front_size"] >= 1
    finally:
        with _leaky():
            autotune.delete_study("pg-cli", storage=pg_url)


def test_public_functions_close_their_connections(pg_url: str) -> None:
    space = autotune.parse_space(SPACE_DATA)
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        study = autotune.create_study("pg-leak", space, storage=pg_url)
        dispose(study)  # the caller closes what it holds...
        del study
        # ...but these open storages of their own and never close them
        autotune.list_studies(storage=pg_url)
        with contextlib.suppress(autotune.StudyNotFoundError):
            autotune.load_study("no-such-study", storage=pg_url)
        with contextlib.suppress(autotune.StudyExistsError):
            autotune.create_study("pg-leak", space, storage=pg_url)
        autotune.delete_study("pg-leak", storage=pg_url)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], f"{len(leaks)} connection(s) left open, e.g. {leaks[0]}"
