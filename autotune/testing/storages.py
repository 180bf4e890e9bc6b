"""Storages for tests: a fresh SQLite file or PostgreSQL database per use.

After Optuna's ``optuna.testing.storages``::

    @pytest.mark.parametrize("mode", STORAGE_MODES)
    def test_something(mode: str, tmp_path: Path) -> None:
        with StorageSupplier(mode, tmp_path) as url:
            study = autotune.create_study("s", space, storage=url)
            ...

PostgreSQL means the server on 127.0.0.1:5432, user ``postgres``, trust authentication:
each supplier creates a uniquely named database and drops it on exit. When the server is
unreachable (or psycopg is not installed) the test is skipped, unless
``AUTOTUNE_REQUIRE_POSTGRES=1`` (CI sets it): then it fails, so a server that is down
cannot pass for a green run. Needs pytest (imported when a test is skipped or failed).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

#: Every storage backend autotune supports (``StorageSupplier`` modes).
STORAGE_MODES = ["sqlite", "postgresql"]

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"
#: Set to 1 (CI does) to fail, not skip, when the PostgreSQL server is unreachable.
REQUIRE_ENV = "AUTOTUNE_REQUIRE_POSTGRES"


def sqlite_url(path: str | Path) -> str:
    """The storage URL of the SQLite file at ``path``."""
    return f"sqlite:///{path}"


def postgres_url(database: str, *, host: str = HOST, port: int = PORT,
                 user: str = USER) -> str:
    """The storage URL of ``database`` on the PostgreSQL server (psycopg 3 driver)."""
    return f"postgresql+psycopg://{user}@{host}:{port}/{database}"


def _unavailable(message: str) -> NoReturn:
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message}; {REQUIRE_ENV}=1 requires it", pytrace=False)
    pytest.skip(f"{message}; set {REQUIRE_ENV}=1 to fail instead")


def admin_connect(*, host: str = HOST, port: int = PORT, user: str = USER,
                  dbname: str = "postgres") -> Any:
    """An autocommit psycopg connection to the server (the ``postgres`` database)."""
    import psycopg

    return psycopg.connect(host=host, port=port, user=user, dbname=dbname,
                           autocommit=True, connect_timeout=3)


def connect_or_skip(*, host: str = HOST, port: int = PORT, user: str = USER) -> None:
    """Skip the calling test when the server is unreachable or psycopg is missing; fail
    it instead when :data:`REQUIRE_ENV` is ``1``."""
    try:
        import psycopg
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'autotune[postgres]')")
    try:
        with contextlib.closing(admin_connect(host=host, port=port, user=user)):
            pass
    except psycopg.OperationalError as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        _unavailable(f"PostgreSQL server on {host}:{port} is unreachable ({detail})")


class StorageSupplier:
    """A context manager giving a ready, empty storage URL of ``mode``.

    ``sqlite``: a new file under ``tmp_path`` (required). ``postgresql``: a uniquely named
    database (``prefix`` + 8 hex digits), dropped on exit with every connection to it.
    """

    def __init__(self, mode: str, tmp_path: Path | None = None, *,
                 prefix: str = "autotune_test") -> None:
        if mode not in STORAGE_MODES:
            raise ValueError(f"unknown storage mode {mode!r}; allowed: "
                             f"{', '.join(STORAGE_MODES)}")
        if mode == "sqlite" and tmp_path is None:
            raise ValueError("an SQLite storage needs tmp_path (a directory for its file)")
        self.mode = mode
        self.tmp_path = tmp_path
        self.prefix = prefix
        self.url = ""
        #: the SQLite file (``sqlite``) / the database's name (``postgresql``)
        self.path: Path | None = None
        self.database: str | None = None

    def __enter__(self) -> str:
        if self.mode == "sqlite":
            assert self.tmp_path is not None
            self.tmp_path.mkdir(parents=True, exist_ok=True)
            self.path = self.tmp_path / f"{self.prefix}_{uuid.uuid4().hex[:8]}.db"
            self.url = sqlite_url(self.path)
            return self.url
        connect_or_skip()
        name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        with contextlib.closing(admin_connect()) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.database = name
        self.url = postgres_url(name)
        return self.url

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.database is not None:
            with contextlib.closing(admin_connect()) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.database = None


def dispose(*holders: Any) -> None:
    """Close the database connections of studies, autotune storages or Optuna
    ``RDBStorage`` objects (a study or autotune storage reconnects if used again)."""
    for holder in holders:
        storage = getattr(holder, "storage", holder)  # a Study holds an AutotuneStorage
        if hasattr(storage, "close"):
            storage.close()
        elif hasattr(storage, "engine"):  # optuna.storages.RDBStorage
            storage.engine.dispose()


@contextlib.contextmanager
def optuna_storage(url: str) -> Iterator[Any]:
    """Stock Optuna's ``RDBStorage`` of ``url``, its engine disposed on exit."""
    import optuna

    storage = optuna.storages.RDBStorage(url)
    try:
        yield storage
    finally:
        storage.engine.dispose()


__all__ = ["HOST", "PORT", "REQUIRE_ENV", "STORAGE_MODES", "USER", "StorageSupplier",
           "admin_connect", "connect_or_skip", "dispose", "optuna_storage", "postgres_url",
           "sqlite_url"]
