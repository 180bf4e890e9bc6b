"""Typed SQLAlchemy 2.0 models of the ``autotune_*`` tables.

Optuna owns its own tables in the same database; ours reference Optuna's studies and trials
by name and number (not by foreign key), so stock Optuna tools keep working unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of the autotune tables."""


class SchemaVersionRow(Base):
    """One row: the schema version of the ``autotune_*`` tables."""

    __tablename__ = "autotune_schema"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class StudyRow(Base):
    """An autotune study: its search space (stored with it) and sampler settings."""

    __tablename__ = "autotune_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), unique=True)
    space_json: Mapped[str] = mapped_column(Text)
    space_source: Mapped[str] = mapped_column(Text)
    space_fingerprint: Mapped[str] = mapped_column(String(64))
    sampler: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    autotune_version: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=_now)


class MachineRow(Base):
    """A machine's hardware fingerprint (CPU, cores, memory, framework versions)."""

    __tablename__ = "autotune_machines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint_hash: Mapped[str] = mapped_column(String(32), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    cpu_model: Mapped[str] = mapped_column(String(255))
    logical_cores: Mapped[int] = mapped_column(Integer)
    memory_total_mb: Mapped[int] = mapped_column(Integer)
    fingerprint_json: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(default=_now)


class MeasurementRow(Base):
    """One trial's outcome: config, metrics with provenance, raw step times, failure."""

    __tablename__ = "autotune_measurements"
    __table_args__ = (
        UniqueConstraint("study_id", "trial_number"),
        Index("ix_autotune_measurements_study", "study_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("autotune_studies.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    machine_id: Mapped[int] = mapped_column(ForeignKey("autotune_machines.id"))
    state: Mapped[str] = mapped_column(String(16))  # ok | infeasible | fail
    failure_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    traceback: Mapped[str] = mapped_column(Text, default="")
    config_json: Mapped[str] = mapped_column(Text)
    metrics_json: Mapped[str] = mapped_column(Text)  # summary: metrics + provenance
    raw_json: Mapped[str] = mapped_column(Text)  # Measurement.to_dict(), raw step times
    wall_s: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=_now)


class ParetoPointRow(Base):
    """A trial on the study's current Pareto front (replaced after every completed trial)."""

    __tablename__ = "autotune_pareto_front"
    __table_args__ = (Index("ix_autotune_pareto_front_study", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("autotune_studies.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    values_json: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=_now)


class RecheckRow(Base):
    """A later re-measurement of a front configuration, to catch drift.

    Additive: older code ignores this table, and ``create_all`` adds it to older databases.
    """

    __tablename__ = "autotune_rechecks"
    __table_args__ = (Index("ix_autotune_rechecks_study", "study_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("autotune_studies.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)
    after_trials: Mapped[int] = mapped_column(Integer)  # the study's trial count then
    state: Mapped[str] = mapped_column(String(16))  # ok | infeasible | fail
    verdict: Mapped[str] = mapped_column(String(16))  # stable | drifting | inconclusive
    ratio: Mapped[float | None] = mapped_column(Float, nullable=True)  # new / original
    metrics_json: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=_now)


class FrontSnapshotRow(Base):
    """The Pareto front right after one completed trial, and its hypervolume (schema v2).

    One row per completed trial, never updated: the history of the front. ``front_json``
    lists the trial numbers on the front; ``reference_json`` maps each objective to the
    reference value the hypervolume was measured from (fixed physical worst cases, see
    :func:`autotune.pareto.reference_point`), so every stored number says what it means.
    """

    __tablename__ = "autotune_front_snapshots"
    __table_args__ = (Index("ix_autotune_front_snapshots_study", "study_id", "trial_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("autotune_studies.id", ondelete="CASCADE"))
    trial_number: Mapped[int] = mapped_column(Integer)  # the trial after which
    front_json: Mapped[str] = mapped_column(Text)  # [trial number, ...]
    # None when undefined (an infinite value on the front makes the volume unbounded).
    hypervolume: Mapped[float | None] = mapped_column(Float, nullable=True)
    reference_json: Mapped[str] = mapped_column(Text)  # {objective: reference value}
    energy_sources_json: Mapped[str] = mapped_column(Text, default="[]")  # on the front
    created_at: Mapped[datetime] = mapped_column(default=_now)
