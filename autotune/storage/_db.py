"""Access to one database: Optuna's storage and the ``autotune_*`` tables beside it."""

from __future__ import annotations

import functools
import json
import logging
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    delete,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from autotune.exceptions import StorageError
from autotune.storage._models import (
    Base,
    FrontSnapshotRow,
    MachineRow,
    MeasurementRow,
    ParetoPointRow,
    RecheckRow,
    SchemaVersionRow,
    StudyRow,
)
from autotune.storage._retry import retrying
from autotune.storage._url import check_sqlite_writable, resolve_storage_url, sqlite_path

_logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Version of the autotune_* tables. Bump it with every change and add the upgrade step
#: from the previous version to :data:`UPGRADES`.
SCHEMA_VERSION = 2


def _upgrade_1_to_2(conn: Connection) -> None:
    """v2 adds ``autotune_front_snapshots`` (the front's history and hypervolume)."""
    # The table as the v2 model defines it. Should a later version change this table, pin
    # its v2 definition here and let that version's own step alter it.
    Base.metadata.tables[FrontSnapshotRow.__tablename__].create(conn, checkfirst=True)


#: Upgrade steps: ``UPGRADES[v]`` takes a database from schema version ``v`` to ``v + 1``.
#: They run in order in one transaction that also sets the version row. Write them to be
#: idempotent: SQLite's driver runs DDL outside that transaction, so a step interrupted
#: there leaves its tables but not the new version, and the next write runs it again.
UPGRADES: Mapping[int, Callable[[Connection], None]] = {1: _upgrade_1_to_2}


def _retried(method: Callable[..., T]) -> Callable[..., T]:
    """Run the method again through transient faults (a lost connection, a busy SQLite
    file) for the storage's ``retry_s`` seconds (see :mod:`autotune.storage._retry`)."""
    @functools.wraps(method)
    def wrapper(self: AutotuneStorage, *args: Any, **kwargs: Any) -> T:
        return retrying(lambda: method(self, *args, **kwargs),
                        f"{method.__name__} on {self.url}", budget_s=self.retry_s)
    return wrapper


#: PostgreSQL advisory lock key of autotune's schema creation (any fixed 64-bit integer).
_SCHEMA_LOCK_KEY = 0x6175746F74756E65  # "autotune"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing) for the block."""
    import fcntl

    try:
        handle = open(path, "a+b")  # noqa: SIM115 (closed below, after the unlock)
    except OSError:  # a read-only folder: nothing will be created there either
        yield
        return
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _one_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0] if text else type(error).__name__


class AutotuneStorage:
    """One database URL: Optuna's ``RDBStorage`` plus the autotune tables.

    Nothing is written at construction. ``exists`` tells whether there is a database to
    read at all (a SQLite file that is missing is not created by read-only commands).
    """

    def __init__(self, url: str | None = None, *, retry_s: float = 0.0) -> None:
        self.url = resolve_storage_url(url)
        self._pooled, self._pool_jobs = False, 1
        #: Seconds a transient fault is retried for (0: a command's first contact fails at
        #: once, with one line; a running study sets the budget of a long-lived worker).
        self.retry_s = retry_s

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
        if self._pooled:
            # a long-lived worker: connecting costs more than the statements it runs (34
            # connects per trial, a third of a fast trial's driver time, measured); a
            # connection the server dropped is noticed by the ping, not by a trial
            # per job: its loop, its heartbeat thread and the front's lock (whose holder
            # reads through both engines while the others wait)
            kwargs = {"pool_size": 2, "max_overflow": 4 * self._pool_jobs + 4,
                      "pool_pre_ping": True, "pool_recycle": 300}
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

        from autotune._liveness import grace_period_s, heartbeat_interval_s

        def connect() -> Any:
            # heartbeats: experimental since Optuna 2.9, still so
            with self._schema_lock(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    self.url, engine_kwargs=self._engine_kwargs(),
                    heartbeat_interval=heartbeat_interval_s(),
                    grace_period=grace_period_s())

        try:  # reconnecting after pooled() ends may meet a lost connection too
            return retrying(connect, f"connecting to {self.url}", budget_s=self.retry_s)
        except (SQLAlchemyError, RuntimeError) as e:
            raise StorageError(f"storage {self.url!r}: {_one_line(e)}") from None

    @contextmanager
    def pooled(self, jobs: int = 1) -> Iterator[None]:
        """Keep connections open between transactions inside the block (a running study
        talks to the database every few milliseconds; ``jobs`` of them at once); they are
        closed at its end."""
        if self._pooled:
            yield
            return
        self.close()
        self._pooled, self._pool_jobs = True, max(1, jobs)
        try:
            yield
        finally:
            self.close()
            self._pooled = False

    def close(self) -> None:
        """Dispose of both engines (idempotent; the storage reconnects if used again)."""
        if "engine" in self.__dict__:
            self.__dict__.pop("engine").dispose()
        if "optuna" in self.__dict__:
            engine = getattr(self.__dict__.pop("optuna"), "engine", None)
            if engine is not None:
                engine.dispose()

    @_retried
    def prepare_for_writing(self) -> None:
        """Check the location and the schema version, upgrade an older schema to
        :data:`SCHEMA_VERSION` and create missing tables.

        A schema newer than this code is refused before anything is written.
        """
        check_sqlite_writable(self.url, create_parent=True)
        if sqlite_path(self.url) is not None:
            self._use_wal()
        _ = self.optuna
        with self._errors(), self._schema_lock():
            tables = set(inspect(self.engine).get_table_names())
            version = self._check_version() if "autotune_schema" in tables else None
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                if version is not None and version < SCHEMA_VERSION:
                    # Two writers starting together: the second waits on this row lock
                    # (PostgreSQL; SQLite serialises writers anyway) and finds it done.
                    row = s.scalar(select(SchemaVersionRow).with_for_update())
                    version = row.version if row is not None else version
                if version is not None and version < SCHEMA_VERSION:
                    self._upgrade(s.connection(), version)
                Base.metadata.create_all(s.connection())
                if s.scalar(select(SchemaVersionRow)) is None:
                    s.add(SchemaVersionRow(id=1, version=SCHEMA_VERSION))

    @contextmanager
    def _schema_lock(self) -> Iterator[None]:
        """Serialise table creation with every other process on the database (ten
        ``study create`` at once on a fresh database: PostgreSQL's concurrent CREATE TABLE
        fails on its catalog's unique keys, SQLite's on "already exists"). A session-level
        advisory lock on PostgreSQL, an exclusive lock on a file beside a SQLite database."""
        path = sqlite_path(self.url)
        if path is not None:
            if not path.parent.is_dir():
                yield  # nothing to create here yet (a read of a missing file)
                return
            with _file_lock(path.with_name(path.name + ".lock")):
                yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                             {"key": _SCHEMA_LOCK_KEY})
                conn.commit()

    def _use_wal(self) -> None:
        """Put a SQLite file in write-ahead-log mode (kept by the file): readers never
        block the one writer and the writer never blocks readers, so the jobs of one
        machine share a study file; writers still take turns (the 30 s busy timeout)."""
        with self._errors(), self.engine.connect() as conn:
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            if str(mode).lower() != "wal":
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")

    def _upgrade(self, conn: Connection, version: int) -> None:
        """Run the upgrade steps from ``version`` to :data:`SCHEMA_VERSION` on ``conn``."""
        start = version
        while version < SCHEMA_VERSION:
            step = UPGRADES.get(version)
            if step is None:  # a bug of ours, not of the database: say which step is missing
                raise StorageError(
                    f"storage {self.url!r} has autotune schema version {version} and this "
                    f"autotune has no upgrade from it to {SCHEMA_VERSION}")
            step(conn)
            version += 1
            conn.execute(update(SchemaVersionRow).values(version=version))
        _logger.info("upgraded the autotune schema of %s from version %d to %d",
                     self.url, start, version)

    @_retried
    def check_readable(self) -> None:
        """Refuse a database whose autotune schema is newer than this code.

        An older schema is readable as it is (what it lacks reads as empty, e.g. no front
        history); it is upgraded by the first command that writes.
        """
        with self._errors():
            if "autotune_schema" in inspect(self.engine).get_table_names():
                self._check_version()

    def _check_version(self) -> int:
        """The stored schema version; :class:`StorageError` if it is newer than this code."""
        with Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(SchemaVersionRow))
        version = row.version if row else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"storage {self.url!r} has autotune schema version {version}, newer than this "
                f"autotune understands ({SCHEMA_VERSION}); upgrade autotune")
        return version

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as e:
            raise StorageError(f"storage {self.url!r}: {_one_line(e)}") from None

    @_retried
    def has_autotune_tables(self) -> bool:
        """Whether the autotune tables exist (False for a fresh or foreign database)."""
        if not self.exists:
            return False
        with self._errors():
            return "autotune_studies" in inspect(self.engine).get_table_names()

    # -- studies ---------------------------------------------------------------------------

    @_retried
    def add_study(self, row: StudyRow) -> None:
        """Insert a study record."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.add(row)

    @_retried
    def get_study(self, name: str) -> StudyRow | None:
        """The study record called ``name``, if any."""
        if not self.has_autotune_tables():
            return None
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(StudyRow).where(StudyRow.study_name == name))
            if row is not None:
                s.expunge(row)
            return row

    @_retried
    def list_studies(self) -> list[StudyRow]:
        """Every study record, oldest first."""
        if not self.has_autotune_tables():
            return []
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            rows = list(s.scalars(select(StudyRow).order_by(StudyRow.id)))
            for row in rows:
                s.expunge(row)
            return rows

    @_retried
    def delete_study_rows(self, study_id: int) -> None:
        """Delete a study's autotune rows in one transaction."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.execute(delete(ParetoPointRow).where(ParetoPointRow.study_id == study_id))
            tables = inspect(s.connection()).get_table_names()
            if "autotune_rechecks" in tables:
                s.execute(delete(RecheckRow).where(RecheckRow.study_id == study_id))
            if "autotune_front_snapshots" in tables:  # absent in a schema v1 database
                s.execute(delete(FrontSnapshotRow).where(FrontSnapshotRow.study_id == study_id))
            s.execute(delete(MeasurementRow).where(MeasurementRow.study_id == study_id))
            s.execute(delete(StudyRow).where(StudyRow.id == study_id))

    # -- machines and measurements -------------------------------------------------------

    @_retried
    def upsert_machine(self, fingerprint: dict[str, Any], fingerprint_hash: str) -> int:
        """The id of this machine's row, inserting it on first sight.

        Two workers of one machine starting together both find no row and both insert:
        the loser's unique-key violation means the row is there now, and it is read."""
        with self._errors():
            try:
                return self._upsert_machine(fingerprint, fingerprint_hash)
            except IntegrityError:
                with Session(self.engine, expire_on_commit=False) as s:
                    found = s.scalar(select(MachineRow.id).where(
                        MachineRow.fingerprint_hash == fingerprint_hash))
                if found is None:
                    raise
                return int(found)

    def _upsert_machine(self, fingerprint: dict[str, Any], fingerprint_hash: str) -> int:
        with Session(self.engine, expire_on_commit=False) as s, s.begin():
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

    @_retried
    def get_machine(self, machine_id: int) -> dict[str, Any]:
        """A machine's full fingerprint."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            row = s.get(MachineRow, machine_id)
            return json.loads(row.fingerprint_json) if row else {}

    @_retried
    def add_measurement(self, row: MeasurementRow) -> bool:
        """Store one trial's outcome, once. Returns whether the stored row is this one:
        ``True`` when it was inserted now or by an earlier attempt whose commit reply was
        lost (a retry finds it there), ``False`` when another writer's row (another
        ``raw_json``) holds the trial's place."""
        with self._errors():
            try:
                with Session(self.engine, expire_on_commit=False) as s, s.begin():
                    s.add(row)
                return True
            except IntegrityError:
                stored = self.measurement(row.study_id, row.trial_number)
                if stored is None:
                    raise
                return stored.raw_json == row.raw_json and stored.reason == row.reason

    @_retried
    def measurements(self, study_id: int,
                     trial_numbers: Sequence[int] | None = None) -> list[MeasurementRow]:
        """A study's measurement rows in trial order (only ``trial_numbers``'s, when
        given: one query for a few rows, whatever the study's size)."""
        query = select(MeasurementRow).where(MeasurementRow.study_id == study_id)
        if trial_numbers is not None:
            query = query.where(MeasurementRow.trial_number.in_(list(trial_numbers)))
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            rows = list(s.scalars(query.order_by(MeasurementRow.trial_number)))
            for row in rows:
                s.expunge(row)
            return rows

    @_retried
    def update_front(self, study_id: int, compute: Callable[[], tuple[
            Sequence[tuple[int, list[float]]], FrontSnapshotRow | None]]) -> None:
        """Replace the study's stored front with what ``compute()`` returns (trial number,
        objective values) and add its snapshot for the history, holding the study's lock
        from before ``compute`` reads the trials until the write commits.

        Every completion calls this after its own ``tell()`` committed, so whoever takes the
        lock last sees every completed trial: concurrent completions never lose a front
        point, and the current front and its latest snapshot never disagree. The lock is a
        row lock (``SELECT ... FOR UPDATE`` on the study's row) on PostgreSQL and a write
        transaction (``BEGIN IMMEDIATE``) on SQLite.
        """
        now = datetime.now(UTC).replace(tzinfo=None)
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            self._lock_study(s, study_id)
            points, snapshot = compute()
            s.execute(delete(ParetoPointRow).where(ParetoPointRow.study_id == study_id))
            s.add_all(ParetoPointRow(study_id=study_id, trial_number=n,
                                     values_json=json.dumps(v), updated_at=now)
                      for n, v in points)
            if snapshot is not None:
                s.add(snapshot)
            s.commit()

    def _lock_study(self, session: Session, study_id: int) -> None:
        if sqlite_path(self.url) is not None:
            # the first statement of the transaction: SQLite takes its write lock now, not
            # at the first write, so two holders cannot both read before either writes
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        else:
            session.execute(select(StudyRow.id).where(StudyRow.id == study_id)
                            .with_for_update())

    @_retried
    def front_trial_numbers(self, study_id: int) -> list[int]:
        """Trial numbers on the stored front."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(ParetoPointRow.trial_number)
                                  .where(ParetoPointRow.study_id == study_id)
                                  .order_by(ParetoPointRow.trial_number)))

    # -- front history (schema v2) ---------------------------------------------------------

    @_retried
    def add_front_snapshot(self, row: FrontSnapshotRow) -> None:
        """Store one snapshot of a study's front (see also :meth:`update_front`)."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.add(row)

    def front_snapshots(self, study_id: int) -> list[FrontSnapshotRow]:
        """A study's front snapshots, oldest first (none in a schema v1 database)."""
        return self._snapshots(study_id, last_only=False)

    def latest_front_snapshot(self, study_id: int) -> FrontSnapshotRow | None:
        """A study's most recent front snapshot, if any."""
        rows = self._snapshots(study_id, last_only=True)
        return rows[0] if rows else None

    @_retried
    def _snapshots(self, study_id: int, *, last_only: bool) -> list[FrontSnapshotRow]:
        with self._errors():
            # A v1 database is read without upgrading it: no table means no history yet.
            if "autotune_front_snapshots" not in inspect(self.engine).get_table_names():
                return []
            # By id, i.e. in the order trials completed (trial numbers are given at ask()
            # time, so with several workers a later number can complete first).
            query = select(FrontSnapshotRow).where(FrontSnapshotRow.study_id == study_id)
            if last_only:
                query = query.order_by(FrontSnapshotRow.id.desc()).limit(1)
            else:
                query = query.order_by(FrontSnapshotRow.id)
            with Session(self.engine, expire_on_commit=False) as s:
                rows = list(s.scalars(query))
                for row in rows:
                    s.expunge(row)
                return rows

    # -- drift rechecks --------------------------------------------------------------------

    @_retried
    def add_recheck(self, row: RecheckRow) -> None:
        """Store one re-measurement of a front configuration."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            s.add(row)

    @_retried
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

    @_retried
    def measurement(self, study_id: int, trial_number: int) -> MeasurementRow | None:
        """One trial's measurement row, if it has one."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            row = s.scalar(select(MeasurementRow).where(
                MeasurementRow.study_id == study_id,
                MeasurementRow.trial_number == trial_number))
            if row is not None:
                s.expunge(row)
            return row

    # -- export / import (autotune.transfer) -------------------------------------------------

    @_retried
    def machine_rows(self, machine_ids: Collection[int]) -> list[MachineRow]:
        """The machine rows with these ids, by id."""
        if not machine_ids:
            return []
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            rows = list(s.scalars(select(MachineRow).where(MachineRow.id.in_(machine_ids))
                                  .order_by(MachineRow.id)))
            for row in rows:
                s.expunge(row)
            return rows

    @_retried
    def front_rows(self, study_id: int) -> list[ParetoPointRow]:
        """The stored front of a study (trial numbers with their values), by trial number."""
        with self._errors(), Session(self.engine, expire_on_commit=False) as s:
            rows = list(s.scalars(select(ParetoPointRow)
                                  .where(ParetoPointRow.study_id == study_id)
                                  .order_by(ParetoPointRow.trial_number, ParetoPointRow.id)))
            for row in rows:
                s.expunge(row)
            return rows

    @_retried
    def has_table(self, table: str) -> bool:
        """Whether the database has ``table`` (False when there is no database yet)."""
        if not self.exists:
            return False
        with self._errors():
            return table in inspect(self.engine).get_table_names()

    @_retried
    def study_table_rows(self, table: str, study_id: int) -> list[dict[str, Any]]:
        """A study's rows of the autotune table ``table`` (keyed by ``study_id``), as
        column -> value without the primary key and ``study_id``, in primary-key order
        (insertion order). Empty when the database predates the table."""
        model = Base.metadata.tables[table]
        with self._errors():
            if not self.has_table(table):
                return []
            skip = {c.name for c in model.primary_key.columns} | {"study_id"}
            query = select(model).where(model.c.study_id == study_id) \
                .order_by(*model.primary_key.columns)
            with self.engine.connect() as conn:
                return [{k: v for k, v in row.items() if k not in skip}
                        for row in conn.execute(query).mappings()]

    @_retried
    def import_study_records(
            self, study: StudyRow, *, machines: Sequence[MachineRow],
            measurements: Sequence[tuple[MeasurementRow, str]],
            rechecks: Sequence[RecheckRow], front: Sequence[ParetoPointRow],
            extra: Mapping[str, Sequence[Mapping[str, Any]]]) -> int:
        """Insert a study with all its records in one transaction: all of it or nothing.

        ``machines`` are inserted unless a machine with the same fingerprint hash exists;
        each measurement comes with its machine's fingerprint hash. ``study_id`` (and
        ``machine_id``) of the records are set here. ``extra``: rows of other autotune
        tables keyed by ``study_id``, by table name, as column -> value (as
        :meth:`study_table_rows` reads them). Returns the new study's id.
        """
        with self._errors(), Session(self.engine, expire_on_commit=False) as s, s.begin():
            machine_ids: dict[str, int] = {}
            for machine in machines:
                found = s.scalar(select(MachineRow.id).where(
                    MachineRow.fingerprint_hash == machine.fingerprint_hash))
                if found is None:
                    s.add(machine)
                    s.flush()
                    found = machine.id
                machine_ids[machine.fingerprint_hash] = found
            s.add(study)
            s.flush()
            for row, machine_hash in measurements:
                row.study_id, row.machine_id = study.id, machine_ids[machine_hash]
            for recheck in rechecks:
                recheck.study_id = study.id
            for point in front:
                point.study_id = study.id
            s.add_all([row for row, _ in measurements])
            s.add_all([*rechecks, *front])
            for table, rows in extra.items():
                if rows:
                    s.execute(Base.metadata.tables[table].insert(),
                              [{**row, "study_id": study.id} for row in rows])
            return study.id
