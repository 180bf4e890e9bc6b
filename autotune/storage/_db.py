"""Access to one database: Optuna's storage and the ``autotune_*`` tables beside it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

from sqlalchemy import Engine, create_engine, delete, inspect, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from autotune.exceptions import StorageError
from autotune.storage._models import (
    Base,
    MachineRow,
    MeasurementRow,
    ParetoPointRow,
    RecheckRow,
    SchemaVersionRow,
    StudyRow,
)
from autotune.storage._url import check_sqlite_writable, resolve_storage_url, sqlite_path

#: Version of the autotune_* tables. Bump it with every change and add the upgrade step.
SCHEMA_VERSION = 1


def _one_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0] if text else type(error).__name__


class AutotuneStorage:
    """One database URL: Optuna's ``RDBStorage`` plus the autotune tables.

    Nothing is written at construction. ``exists`` tells whether there is a database to
    read at all (a SQLite file that is missing is not created by read-only commands).
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_storage_url(url)

    @property
    def exists(self) -> bool:
        """False only for a SQLite file that does not exist yet."""
        path = sqlite_path(self.url)
        return path is None or path.exists()

    def _engine_kwargs(self) -> dict[str, Any]:
        # NullPool: a connection lives for one transaction. A study spends seconds per trial
        # in a worker, so pooling saves nothing, while pooled connections would stay open on
        # a PostgreSQL server (and warn when collected) after a CLI command or API call.
        kwargs: dict[str, Any] = {"poolclass": NullPool}
        if sqlite_path(self.url) is not None:
            kwargs["connect_args"] = {"timeout": 30}
        return kwargs

    @cached_property
    def engine(self) -> Engine:
        """The SQLAlchemy engine of the autotune tables."""
        return create_engine(self.url, **self._engine_kwargs())

    @cached_property
    def optuna(self) -> Any:
        """Optuna's storage on the same database (creates Optuna's tables if missing)."""
        import optuna

        try:
            return optuna.storages.RDBStorage(self.url, engine_kwargs=self._engine_kwargs())
        except (SQLAlchemyError, RuntimeError) as e:
            raise StorageError(f"storage {self.url!r}: {_one_line(e)}") from None

    def close(self) -> None:
        """Dispose of both engines (idempotent; the storage reconnects if used again)."""
        if "engine" in self.__dict__:
            self.__dict__.pop("engine").dispose()
        if "optuna" in self.__dict__:
            engine = getattr(self.__dict__.pop("optuna"), "engine", None)
            if engine is not None:
                engine.dispose()

    def prepare_for_writing(self) -> None:
        """Check the location, create missing tables and check the schema version."""
        check_sqlite_writable(self.url, create_parent=True)
        _ = self.optuna
        with self._errors():
            tables = set(inspect(self.engine).get_table_names())
            if "autotune_schema" in tables:
                self._check_version()
            Base.metadata.create_all(self.engine)
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                if s.scalar(select(SchemaVersionRow)) is None:
                    s.add(SchemaVersionRow(id=1, version=SCHEMA_VERSION))

    def check_readable(self) -> None:
        """Refuse a database whose autotune schema is newer than this code."""
        with self._errors():
            if "autotune_schema" in inspect(self.engine).get_table_names():
                self._check_version()

    def _check_version(self) -> None:
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(SchemaVersionRow))
        version = row.version if row else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"storage {self.url!r} has autotune schema version {version}, newer than this "
                f"autotune understands ({SCHEMA_VERSION}); upgrade autotune")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as e:
            raise StorageError(f"storage {self.url!r}: {_one_line(e)}") from None

    def has_autotune_tables(self) -> bool:
        """Whether the autotune tables exist (False for a fresh or foreign database)."""
        if not self.exists:
            return False
        with self._errors():
            return "autotune_studies" in inspect(self.engine).get_table_names()

    # -- studies ---------------------------------------------------------------------------

    def add_study(self, row: StudyRow) -> None:
        """Insert a study record."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.add(row)

    def get_study(self, name: str) -> StudyRow | None:
        """The study record called ``name``, if any."""
        if not self.has_autotune_tables():
            return None
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(StudyRow).where(StudyRow.study_name == name))
            if row is not None:
                s.expunge(row)
            return row

    def list_studies(self) -> list[StudyRow]:
        """Every study record, oldest first."""
        if not self.has_autotune_tables():
            return []
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            rows = list(s.scalars(select(StudyRow).order_by(StudyRow.id)))
            for row in rows:
                s.expunge(row)
            return rows

    def delete_study_rows(self, study_id: int) -> None:
        """Delete a study's autotune rows in one transaction."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.execute(delete(ParetoPointRow).where(ParetoPointRow.study_id == study_id))
            if "autotune_rechecks" in inspect(s.connection()).get_table_names():
                s.execute(delete(RecheckRow).where(RecheckRow.study_id == study_id))
            s.execute(delete(MeasurementRow).where(MeasurementRow.study_id == study_id))
            s.execute(delete(StudyRow).where(StudyRow.id == study_id))

    # -- machines and measurements -------------------------------------------------------

    def upsert_machine(self, fingerprint: dict[str, Any], fingerprint_hash: str) -> int:
        """The id of this machine's row, inserting it on first sight."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            row = s.scalar(select(MachineRow).where(
                MachineRow.fingerprint_hash == fingerprint_hash))
            if row is None:
                row = MachineRow(
                    fingerprint_hash=fingerprint_hash, hostname=fingerprint["hostname"],
                    cpu_model=fingerprint["cpu_model"],
                    logical_cores=fingerprint["logical_cores"],
                    memory_total_mb=fingerprint["memory_total_mb"],
                    fingerprint_json=json.dumps(fingerprint, sort_keys=True),
                )
                s.add(row)
                s.flush()
            return row.id

    def get_machine(self, machine_id: int) -> dict[str, Any]:
        """A machine's full fingerprint."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            row = s.get(MachineRow, machine_id)
            return json.loads(row.fingerprint_json) if row else {}

    def add_measurement(self, row: MeasurementRow) -> None:
        """Store one trial's outcome."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.add(row)

    def measurements(self, study_id: int) -> list[MeasurementRow]:
        """A study's measurement rows in trial order."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            rows = list(s.scalars(select(MeasurementRow)
                                  .where(MeasurementRow.study_id == study_id)
                                  .order_by(MeasurementRow.trial_number)))
            for row in rows:
                s.expunge(row)
            return rows

    def replace_front(self, study_id: int, points: Sequence[tuple[int, list[float]]]) -> None:
        """Make ``points`` (trial number, objective values) the study's current front."""
        now = datetime.now(UTC).replace(tzinfo=None)
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.execute(delete(ParetoPointRow).where(ParetoPointRow.study_id == study_id))
            s.add_all(ParetoPointRow(study_id=study_id, trial_number=n,
                                     values_json=json.dumps(v), updated_at=now)
                      for n, v in points)

    def front_trial_numbers(self, study_id: int) -> list[int]:
        """Trial numbers on the stored front."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(ParetoPointRow.trial_number)
                                  .where(ParetoPointRow.study_id == study_id)
                                  .order_by(ParetoPointRow.trial_number)))

    # -- drift rechecks --------------------------------------------------------------------

    def add_recheck(self, row: RecheckRow) -> None:
        """Store one re-measurement of a front configuration."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.add(row)

    def rechecks(self, study_id: int) -> list[RecheckRow]:
        """A study's rechecks, oldest first (none for a database that predates them)."""
        with self._errors():
            if "autotune_rechecks" not in inspect(self.engine).get_table_names():
                return []
            with Session(self.engine, expire_on_commit=False) as s:
                rows = list(s.scalars(select(RecheckRow)
                                      .where(RecheckRow.study_id == study_id)
                                      .order_by(RecheckRow.id)))
                for row in rows:
                    s.expunge(row)
                return rows

    def measurement(self, study_id: int, trial_number: int) -> MeasurementRow | None:
        """One trial's measurement row, if it has one."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(MeasurementRow).where(
                MeasurementRow.study_id == study_id,
                MeasurementRow.trial_number == trial_number))
            if row is not None:
                s.expunge(row)
            return row
