"""Export a study to a file and import it into another storage, losing nothing.

JSON is the lossless format: one document with the study (its stored space, sampler, seed,
Optuna directions and study attributes), the machines its trials ran on, every trial as
Optuna holds it (state, params with their distributions, values, constraints, user and
system attributes, intermediate values, start/complete times) together with autotune's
measurement (config, metrics with provenance, raw step times, failure kind, reason,
traceback, wall time, machine), the stored Pareto front, the drift rechecks and the front
snapshots (the front's history; empty from a schema v1 database). Every timestamp is
carried over (the study's ``created_at`` included). Importing it and exporting again gives
the same document apart from ``exported_at`` and ``autotune_version`` (the exporter's
version); storage ids (Optuna's study and trial ids, autotune row ids) are never exported.
A machine the target already knows keeps the target's ``first_seen``. Non-finite numbers
(an infinite constraint violation) are written as ``Infinity`` as Python's json does.

CSV is a flat, lossy view for spreadsheets: one row per trial with its autotune state,
failure kind and reason, the searched params, the objective values, the headline metrics
(nested ones as JSON text), wall time and machine hash. It cannot be imported.

Import validates the whole file before it writes anything. One decision is not a copy:
a trial ``RUNNING`` in the source (its process was still running, or died without telling)
is imported as ``FAIL`` with ``failure_kind: interrupted`` (unless it had one): in the
target no process will ever finish it, and a trial that stays running forever would be
counted as running and make the sampler believe work is in flight. It is not skipped, so
trial numbers stay those of the source. ``WAITING`` trials (a crashed trial's queued retry)
are imported as they are: the next run in the target runs them first.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from autotune.exceptions import SpaceError, StudyError, StudyExistsError

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from autotune.objectives import Direction
    from autotune.storage import AutotuneStorage
    from autotune.storage._models import (
        MachineRow,
        MeasurementRow,
        ParetoPointRow,
        RecheckRow,
        StudyRow,
    )
    from autotune.study import Study

#: Version of the export document. Bump it with every incompatible change.
FORMAT_VERSION = 1
FORMATS = ("json", "csv")
_MARKER = "autotune_export"
#: Further autotune tables keyed by ``study_id``, by export key: copied column by column
#: (all but the primary key and ``study_id``) as their model defines them, so a column
#: added to the model later travels without a change here.
_EXTRA_TABLES = {"front_snapshots": "autotune_front_snapshots"}
#: A measurement's autotune state (``autotune_measurements.state``).
_MEASUREMENT_STATES = ("ok", "screened", "infeasible", "pruned", "fail")
_INTERRUPTED_REASON = ("was running in the source storage when it was exported; imported "
                       "as failed (no process will finish it here)")


class ExportFormatError(StudyError, ValueError):
    """A file to import is not an autotune export, or not one this autotune reads."""


# -- export ---------------------------------------------------------------------------------


def export_dict(name: str, *, storage: str | None = None) -> dict[str, Any]:
    """Everything about study ``name`` as one JSON-serialisable dict (see the module doc)."""
    import optuna
    from optuna.distributions import distribution_to_json

    from autotune.study import _version, load_study

    with load_study(name, storage=storage) as study:
        store, row = study.storage, study._row
        ostorage = store.optuna
        ostudy = optuna.load_study(study_name=name, storage=ostorage)
        optuna_id = ostorage.get_study_id_from_name(name)
        measurements = {m.trial_number: m for m in store.measurements(row.id)}
        machines = store.machine_rows({m.machine_id for m in measurements.values()})
        hash_of = {m.id: m.fingerprint_hash for m in machines}
        trials = ostudy.get_trials(deepcopy=False)
        stray = sorted(set(measurements) - {t.number for t in trials})
        if stray:  # cannot happen through autotune; exporting would drop them silently
            raise StudyError(f"study {name!r} in {store.url} has measurements of trial(s) "
                             f"{stray} that Optuna does not have; cannot export it whole")
        data: dict[str, Any] = {
            _MARKER: FORMAT_VERSION,
            "autotune_version": _version(),
            "exported_at": datetime.now(UTC).isoformat(),
            "study": {
                "name": row.study_name,
                "space_json": row.space_json,
                "space_source": row.space_source,
                "space_fingerprint": row.space_fingerprint,
                "sampler": row.sampler,
                "seed": row.seed,
                "autotune_version": row.autotune_version,
                "created_at": row.created_at.isoformat(),
                "directions": [d.name.lower() for d in ostudy.directions],
                "user_attrs": ostorage.get_study_user_attrs(optuna_id),
                "system_attrs": ostorage.get_study_system_attrs(optuna_id),
            },
            "machines": [_machine_dict(m) for m in machines],
            "trials": [{
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "distributions": {k: json.loads(distribution_to_json(d))
                                  for k, d in t.distributions.items()},
                "values": t.values,
                # derived from system_attrs (where Optuna keeps them), for readers; import
                # takes the system attrs
                "constraints": t.constraints,
                "user_attrs": t.user_attrs,
                "system_attrs": t.system_attrs,
                "intermediate_values": {str(k): v for k, v in t.intermediate_values.items()},
                "datetime_start": _iso(t.datetime_start),
                "datetime_complete": _iso(t.datetime_complete),
                "measurement": _measurement_dict(measurements[t.number], hash_of)
                if t.number in measurements else None,
            } for t in trials],
            "pareto_front": [{"trial_number": p.trial_number,
                              "values": json.loads(p.values_json),
                              "updated_at": p.updated_at.isoformat()}
                             for p in store.front_rows(row.id)],
            "rechecks": [{"trial_number": r.trial_number, "after_trials": r.after_trials,
                          "state": r.state, "verdict": r.verdict, "ratio": r.ratio,
                          "metrics": json.loads(r.metrics_json), "reason": r.reason,
                          "created_at": r.created_at.isoformat()}
                         for r in store.rechecks(row.id)],
        }
        for key, table in _EXTRA_TABLES.items():  # empty in a schema v1 database
            data[key] = [{k: _jsonable(v) for k, v in r.items()}
                         for r in store.study_table_rows(table, row.id)]
        return data


def export_study(name: str, *, storage: str | None = None, format: str = "json",
                 output: str | Path | IO[str] | None = None) -> str:
    """Study ``name`` as JSON (lossless, importable) or CSV (one row per trial, lossy).

    Returns the text; with ``output`` (a path or a text stream) also writes it there. A
    path is written whole or not at all (a temporary file renamed into place).
    """
    if format not in FORMATS:
        raise StudyError(f"unknown export format {format!r}; allowed: {', '.join(FORMATS)}")
    if format == "json":
        text = json.dumps(export_dict(name, storage=storage), indent=2) + "\n"
    else:
        text = _export_csv(name, storage)
    if output is not None:
        _write(output, text)
    return text


def _export_csv(name: str, storage: str | None) -> str:
    from autotune.study import load_study

    with load_study(name, storage=storage) as study:
        trials = study.trials()
        rows = {m.trial_number: m for m in study.storage.measurements(study._row.id)}
        machines = study.storage.machine_rows({m.machine_id for m in rows.values()})
        hash_of = {m.id: m.fingerprint_hash for m in machines}
        space_params = [p.name for p in study.space.params]
        objectives = study.space.objective_names
    params = list(dict.fromkeys([*(p for p in space_params if any(p in t.params
                                                                   for t in trials)),
                                 *(k for t in trials for k in t.params)]))
    metrics = list(dict.fromkeys(k for t in trials for k in t.metrics))
    header = ["number", "state", "feasible", "failure_kind", "reason", "wall_s", "machine",
              *(f"param.{p}" for p in params), *(f"value.{o}" for o in objectives),
              *(f"metric.{m}" for m in metrics)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for t in trials:
        measured = rows.get(t.number)
        values = t.values if t.values is not None else [None] * len(objectives)
        writer.writerow([_cell(v) for v in (
            t.number, t.state, t.feasible, t.failure_kind, t.reason, t.wall_s,
            hash_of.get(measured.machine_id) if measured else None,
            *(t.params.get(p) for p in params), *values,
            *(t.metrics.get(m) for m in metrics))])
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell: empty for None, true/false, JSON text for lists and dicts (the phases,
    the throughput CI, the worker), the value itself otherwise."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def _write(output: str | Path | IO[str], text: str) -> None:
    if not isinstance(output, str | Path):
        output.write(text)
        return
    path = Path(output)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".",
                                   prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as e:
        raise StudyError(f"cannot write {path}: {e.strerror or e}") from None


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _jsonable(value: Any) -> Any:
    """A column value as JSON: datetimes as ISO text (converted back on import)."""
    return value.isoformat() if isinstance(value, datetime) else value


def _machine_dict(m: MachineRow) -> dict[str, Any]:
    return {"fingerprint_hash": m.fingerprint_hash, "hostname": m.hostname,
            "cpu_model": m.cpu_model, "logical_cores": m.logical_cores,
            "memory_total_mb": m.memory_total_mb,
            "fingerprint": json.loads(m.fingerprint_json),
            "first_seen": m.first_seen.isoformat()}


def _measurement_dict(m: MeasurementRow, hash_of: Mapping[int, str]) -> dict[str, Any]:
    return {"state": m.state, "failure_kind": m.failure_kind, "reason": m.reason,
            "traceback": m.traceback, "config": json.loads(m.config_json),
            "metrics": json.loads(m.metrics_json), "raw": json.loads(m.raw_json),
            "wall_s": m.wall_s, "machine": hash_of[m.machine_id],
            "created_at": m.created_at.isoformat()}


# -- import ---------------------------------------------------------------------------------


@dataclass
class _Plan:
    """A validated export, ready to write; building it touched no database."""

    name: str
    directions: list[Direction]
    user_attrs: dict[str, Any]
    system_attrs: dict[str, Any]
    trials: list[FrozenTrial]
    study: StudyRow
    machines: list[MachineRow]
    measurements: list[tuple[MeasurementRow, str]]
    rechecks: list[RecheckRow]
    front: list[ParetoPointRow]
    extra: dict[str, list[dict[str, Any]]]


def import_study(source: str | Path | IO[str], *, storage: str | None = None,
                 name: str | None = None) -> Study:
    """Import a JSON export (a path, the JSON text itself, or a text stream) as a new study.

    ``name`` imports it under another name. The whole file is validated, and the name is
    checked to be free in the target storage, before anything is written; a failure while
    writing removes what was written (the autotune rows go in one transaction, after
    Optuna's). Returns the imported study (close it when done).
    """
    from autotune.storage import AutotuneStorage
    from autotune.study import Study

    text, where = _read(source)
    plan = _plan(_parse(text, where), where, name)
    store = AutotuneStorage(storage)
    try:
        _write_plan(store, plan, where)
    except BaseException:
        store.close()  # no study to hand back: release the connections now
        raise
    return Study(plan.study, store)


def _write_plan(store: AutotuneStorage, plan: _Plan, where: str) -> None:
    import optuna

    orphan = _check_target(store, plan)
    store.prepare_for_writing()
    if orphan is not None:  # rows of a study deleted with Optuna's tools, as create_study
        store.delete_study_rows(orphan.id)
    try:
        ostudy = optuna.create_study(study_name=plan.name, storage=store.optuna,
                                     directions=plan.directions)
    except optuna.exceptions.DuplicatedStudyError:  # created since the check above
        raise _exists(plan.name, store.url) from None
    try:
        ostorage = store.optuna
        optuna_id = ostorage.get_study_id_from_name(plan.name)
        for key, value in plan.user_attrs.items():
            ostorage.set_study_user_attr(optuna_id, key, value)
        for key, value in plan.system_attrs.items():  # metric names live here
            ostorage.set_study_system_attr(optuna_id, key, value)
        # Optuna numbers a study's trials 0, 1, 2... in the order they are added, so adding
        # them in number order to this new study keeps every number.
        for trial in plan.trials:
            ostudy.add_trial(trial)
        numbers = [t.number for t in ostudy.get_trials(deepcopy=False)]
        if numbers != list(range(len(plan.trials))):
            raise StudyError(f"importing {where} into {store.url}: trials were numbered "
                             f"{numbers[:10]}..., not in the file's order (another process "
                             f"wrote to study {plan.name!r}?); nothing was imported")
        store.import_study_records(plan.study, machines=plan.machines,
                                   measurements=plan.measurements, rechecks=plan.rechecks,
                                   front=plan.front, extra=plan.extra)
    except BaseException:
        # The autotune rows are all or nothing; Optuna's study is removed here, so the
        # target has no partial study. Best effort: the original error matters more.
        with contextlib.suppress(Exception):
            optuna.delete_study(study_name=plan.name, storage=store.optuna)
        raise


def _exists(name: str, url: str) -> StudyExistsError:
    return StudyExistsError(f"study {name!r} already exists in {url}; import it under "
                            "another name with --name NEW (name= in Python)")


def _check_target(store: AutotuneStorage, plan: _Plan) -> StudyRow | None:
    """Refuse a name in use (reads only). Returns the autotune row of a study Optuna no
    longer has (to delete before writing), if any."""
    import optuna

    if not store.exists:
        return None
    store.check_readable()
    # Reading Optuna's study names through RDBStorage would create Optuna's tables in a
    # database that lacks them: look for its `studies` table first, so a refused import
    # leaves such a database untouched.
    names = set(optuna.get_all_study_names(store.optuna)) if store.has_table("studies") \
        else set()
    row = store.get_study(plan.name)
    if plan.name in names:
        if row is None:
            raise StudyExistsError(f"an Optuna study named {plan.name!r} (not made by "
                                   f"autotune) already exists in {store.url}; import under "
                                   "another name with --name NEW (name= in Python)")
        raise _exists(plan.name, store.url)
    return row


def _read(source: str | Path | IO[str]) -> tuple[str, str]:
    """(text, where): ``where`` names the source in errors."""
    if isinstance(source, Path) or (isinstance(source, str)
                                    and not source.lstrip().startswith("{")):
        path = Path(source)
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError:
            return "", str(path)  # binary: reported as not an export
        except OSError as e:
            raise StudyError(f"cannot read {path}: {e.strerror or e}") from None
    if isinstance(source, str):
        return source, "<text>"
    where = str(getattr(source, "name", "<stream>"))
    try:
        return source.read(), where
    except UnicodeDecodeError:
        return "", where


def _parse(text: str, where: str) -> dict[str, Any]:
    from autotune.study import _version

    not_export = ExportFormatError(f"{where} is not an autotune export (expected JSON with "
                                   f"{_MARKER}: {FORMAT_VERSION})")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise not_export from None
    if not isinstance(data, dict) or _MARKER not in data:
        raise not_export
    version = data[_MARKER]
    if type(version) is not int or version != FORMAT_VERSION:
        newer = type(version) is int and version > FORMAT_VERSION
        raise ExportFormatError(
            f"{where} is an autotune export of format {version!r}; autotune {_version()} "
            f"reads format {FORMAT_VERSION}" + ("; upgrade autotune" if newer else ""))
    return data


#: Field kinds of an export: (test, what is expected). ``bool`` is not an integer here.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: type(v) is int, "an integer"),
    "number": (lambda v: type(v) in (int, float), "a number"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "datetime": (lambda v: isinstance(v, str), "an ISO date-time"),
}


class _Checker:
    """Typed field access with one-line errors naming the file and the key path."""

    def __init__(self, where: str) -> None:
        self.where = where

    def error(self, path: str, message: str) -> ExportFormatError:
        return ExportFormatError(f"{self.where}: {path}: {message}")

    def field(self, obj: Mapping[str, Any], key: str, path: str, kind: str, *,
              nullable: bool = False, max_len: int | None = None) -> Any:
        at = f"{path}.{key}" if path else key
        test, what = _KINDS[kind]
        what = f"{what} or null" if nullable else what
        if key not in obj:
            raise self.error(at, f"missing (expected {what})")
        value = obj[key]
        if value is None and nullable:
            return None
        if not test(value):
            raise self.error(at, f"expected {what}, got {_short(value)}")
        if max_len is not None and len(value) > max_len:
            raise self.error(at, f"longer than {max_len} characters")
        if kind == "datetime":
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                raise self.error(at, f"expected {what}, got {_short(value)}") from None
        return value

    def items(self, obj: Mapping[str, Any], key: str, path: str) -> list[dict[str, Any]]:
        """A list of objects (an absent optional list is empty)."""
        at = f"{path}.{key}" if path else key
        values: list[dict[str, Any]] = self.field(obj, key, path, "list")
        for i, item in enumerate(values):
            if not isinstance(item, dict):
                raise self.error(f"{at}[{i}]", f"expected an object, got {_short(item)}")
        return values


def _short(value: Any) -> str:
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and not (isinstance(value, float) and math.isnan(value))


def _plan(data: dict[str, Any], where: str, name: str | None) -> _Plan:
    """Validate the whole export and build what import writes (nothing is written)."""
    from autotune.space import parse_space
    from autotune.storage._models import ParetoPointRow, RecheckRow, StudyRow
    from autotune.study import SAMPLERS, _check_name

    c = _Checker(where)
    s = c.field(data, "study", "", "dict")
    target = name if name is not None else c.field(s, "name", "study", "str")
    _check_name(target)
    space_json = c.field(s, "space_json", "study", "str")
    try:
        space = parse_space(json.loads(space_json), source=f"{where} study.space_json",
                            check_files=False)
    except SpaceError as e:
        raise ExportFormatError(str(e)) from None
    except (ValueError, RecursionError):
        raise c.error("study.space_json", "expected a search space as JSON text") from None
    directions = c.field(s, "directions", "study", "list")
    if directions != list(space.directions):
        raise c.error("study.directions", f"expected {space.directions} (the directions of "
                                          f"the space's objectives), got {_short(directions)}")
    sampler = c.field(s, "sampler", "study", "str")
    if sampler not in SAMPLERS:
        raise c.error("study.sampler", f"unknown sampler {sampler!r}; allowed: "
                                       f"{', '.join(SAMPLERS)}")
    study = StudyRow(
        study_name=target, space_json=space_json,
        space_source=c.field(s, "space_source", "study", "str"),
        space_fingerprint=c.field(s, "space_fingerprint", "study", "str", max_len=64),
        sampler=sampler, seed=c.field(s, "seed", "study", "int", nullable=True),
        autotune_version=c.field(s, "autotune_version", "study", "str", max_len=32),
        created_at=c.field(s, "created_at", "study", "datetime"))
    machines = [_machine_row(c, m, f"machines[{i}]")
                for i, m in enumerate(c.items(data, "machines", ""))]
    hashes = [m.fingerprint_hash for m in machines]
    if len(set(hashes)) != len(hashes):
        raise c.error("machines", "the same fingerprint_hash is listed twice")
    now = datetime.now()  # Optuna's own times are local and naive
    trials: list[FrozenTrial] = []
    measurements: list[tuple[MeasurementRow, str]] = []
    for i, t in enumerate(c.items(data, "trials", "")):
        trials.append(_frozen_trial(c, t, i, len(directions), now))
        m = c.field(t, "measurement", f"trials[{i}]", "dict", nullable=True)
        if m is not None:
            measurements.append(_measurement_row(c, m, f"trials[{i}].measurement", i,
                                                 set(hashes)))
    n = len(trials)

    def trial_number(obj: Mapping[str, Any], path: str) -> int:
        number: int = c.field(obj, "trial_number", path, "int")
        if not 0 <= number < n:
            raise c.error(f"{path}.trial_number", f"{number} is not a trial of the export "
                                                  f"(0 to {n - 1})")
        return number

    front = []
    for i, p in enumerate(c.items(data, "pareto_front", "")):
        path = f"pareto_front[{i}]"
        values = c.field(p, "values", path, "list")
        if len(values) != len(directions) or not all(_is_number(v) for v in values):
            raise c.error(f"{path}.values", f"expected {len(directions)} numbers (one per "
                                            f"objective), got {_short(values)}")
        front.append(ParetoPointRow(trial_number=trial_number(p, path),
                                    values_json=json.dumps(values),
                                    updated_at=c.field(p, "updated_at", path, "datetime")))
    rechecks = []
    for i, r in enumerate(c.items(data, "rechecks", "")):
        path = f"rechecks[{i}]"
        rechecks.append(RecheckRow(
            trial_number=trial_number(r, path),
            after_trials=c.field(r, "after_trials", path, "int"),
            state=c.field(r, "state", path, "str", max_len=16),
            verdict=c.field(r, "verdict", path, "str", max_len=16),
            ratio=c.field(r, "ratio", path, "number", nullable=True),
            metrics_json=json.dumps(c.field(r, "metrics", path, "dict")),
            reason=c.field(r, "reason", path, "str"),
            created_at=c.field(r, "created_at", path, "datetime")))
    # by table name, as import_study_records takes them
    extra = {table: _table_rows(c, data, key, table) for key, table in _EXTRA_TABLES.items()}
    return _Plan(name=target, directions=list(space.directions),
                 user_attrs=c.field(s, "user_attrs", "study", "dict"),
                 system_attrs=c.field(s, "system_attrs", "study", "dict"),
                 trials=trials, study=study, machines=machines, measurements=measurements,
                 rechecks=rechecks, front=front, extra=extra)


def _table_rows(c: _Checker, data: Mapping[str, Any], key: str,
                table: str) -> list[dict[str, Any]]:
    """Rows of ``table`` as its model defines it: known columns only, types checked, ISO
    text back to datetimes (an absent list is empty)."""
    from autotune.storage._models import Base

    model = Base.metadata.tables[table]
    columns = {col.name: col for col in model.columns
               if not col.primary_key and col.name != "study_id"}
    kinds = {datetime: "datetime", int: "int", float: "number", str: "str"}
    rows = []
    for i, item in enumerate(c.items(data, key, "") if key in data else []):
        path = f"{key}[{i}]"
        unknown = sorted(set(item) - set(columns))
        if unknown:
            raise c.error(f"{path}.{unknown[0]}", f"not a column of {table}; its columns: "
                                                  f"{', '.join(columns)}")
        row = {}
        for name, col in columns.items():
            if name not in item and (col.nullable or col.default is not None):
                continue  # the table's default, as when autotune writes the row
            try:
                kind = kinds.get(col.type.python_type)
            except NotImplementedError:
                kind = None
            row[name] = item[name] if kind is None and name in item else \
                c.field(item, name, path, kind or "str", nullable=bool(col.nullable))
        rows.append(row)
    return rows


def _machine_row(c: _Checker, m: Mapping[str, Any], path: str) -> MachineRow:
    from autotune.storage._models import MachineRow

    fingerprint_hash = c.field(m, "fingerprint_hash", path, "str", max_len=32)
    if not fingerprint_hash:
        raise c.error(f"{path}.fingerprint_hash", "empty")
    return MachineRow(
        fingerprint_hash=fingerprint_hash,
        hostname=c.field(m, "hostname", path, "str", max_len=255),
        cpu_model=c.field(m, "cpu_model", path, "str", max_len=255),
        logical_cores=c.field(m, "logical_cores", path, "int"),
        memory_total_mb=c.field(m, "memory_total_mb", path, "int"),
        # sorted keys: how upsert_machine stores a fingerprint
        fingerprint_json=json.dumps(c.field(m, "fingerprint", path, "dict"), sort_keys=True),
        first_seen=c.field(m, "first_seen", path, "datetime"))


def _measurement_row(c: _Checker, m: Mapping[str, Any], path: str, number: int,
                     machines: set[str]) -> tuple[MeasurementRow, str]:
    from autotune.storage._models import MeasurementRow

    state = c.field(m, "state", path, "str")
    if state not in _MEASUREMENT_STATES:
        raise c.error(f"{path}.state", f"unknown state {state!r}; allowed: "
                                       f"{', '.join(_MEASUREMENT_STATES)}")
    machine = c.field(m, "machine", path, "str")
    if machine not in machines:
        raise c.error(f"{path}.machine", f"{machine!r} is not the fingerprint_hash of any "
                                         "entry in machines")
    row = MeasurementRow(
        trial_number=number, state=state,
        failure_kind=c.field(m, "failure_kind", path, "str", nullable=True, max_len=32),
        reason=c.field(m, "reason", path, "str"),
        traceback=c.field(m, "traceback", path, "str"),
        config_json=json.dumps(c.field(m, "config", path, "dict")),
        metrics_json=json.dumps(c.field(m, "metrics", path, "dict")),
        raw_json=json.dumps(c.field(m, "raw", path, "dict")),
        wall_s=c.field(m, "wall_s", path, "number"),
        created_at=c.field(m, "created_at", path, "datetime"))
    return row, machine


def _frozen_trial(c: _Checker, t: Mapping[str, Any], index: int, n_objectives: int,
                  now: datetime) -> FrozenTrial:
    from optuna.distributions import json_to_distribution
    from optuna.trial import FrozenTrial, TrialState

    path = f"trials[{index}]"
    number = c.field(t, "number", path, "int")
    if number != index:
        raise c.error(f"{path}.number", f"expected {index} (trials are numbered 0, 1, 2... "
                                        f"in order), got {number}")
    state_name = c.field(t, "state", path, "str")
    try:
        state = TrialState[state_name]
    except KeyError:
        raise c.error(f"{path}.state", f"unknown trial state {state_name!r}; allowed: "
                                       f"{', '.join(s.name for s in TrialState)}") from None
    distributions = {}
    for key, raw in c.field(t, "distributions", path, "dict").items():
        try:
            distributions[key] = json_to_distribution(json.dumps(raw))
        except Exception as e:  # Optuna raises ValueError, KeyError or TypeError here
            raise c.error(f"{path}.distributions.{key}",
                          f"not an Optuna distribution ({type(e).__name__}: {e})") from None
    values = c.field(t, "values", path, "list", nullable=True)
    if values is not None and (len(values) != n_objectives
                               or not all(_is_number(v) for v in values)):
        raise c.error(f"{path}.values", f"expected {n_objectives} numbers (one per "
                                        f"objective) or null, got {_short(values)}")
    intermediate: dict[int, float] = {}
    for step, value in c.field(t, "intermediate_values", path, "dict").items():
        if not step.lstrip("-").isdigit() or type(value) not in (int, float):
            raise c.error(f"{path}.intermediate_values",
                          f"expected integer steps with numbers, got {step!r}: {_short(value)}")
        intermediate[int(step)] = value
    user_attrs = c.field(t, "user_attrs", path, "dict")
    start = c.field(t, "datetime_start", path, "datetime", nullable=True)
    complete = c.field(t, "datetime_complete", path, "datetime", nullable=True)
    if state == TrialState.RUNNING:  # see the module docstring: nothing here will finish it
        state, complete = TrialState.FAIL, now
        user_attrs = {"failure_kind": "interrupted", "reason": _INTERRUPTED_REASON,
                      **user_attrs}
    trial = FrozenTrial(
        number=index, state=state, value=None, datetime_start=start,
        datetime_complete=complete, params=c.field(t, "params", path, "dict"),
        distributions=distributions, user_attrs=user_attrs,
        system_attrs=c.field(t, "system_attrs", path, "dict"),
        intermediate_values=intermediate, trial_id=index, values=values)
    try:
        # The check Study.add_trial makes: run it now, so no trial is refused midway.
        trial._validate()
    except ValueError as e:
        raise c.error(path, f"Optuna would refuse this trial: {e}") from None
    return trial
