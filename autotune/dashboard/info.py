"""What each dashboard view shows, computed from a study: plain dataclasses, no plotting.

Every function here takes a :class:`~autotune.study.Study` and returns data that
:mod:`autotune.dashboard.figures` renders. Keeping this step free of plotly means a web
app (or a test) can reuse it, and the numbers can be checked without reading figures.

Hover texts are plotly pseudo-HTML: plotly.js renders ``<b>``, ``<br>`` and entities in
them, so every user-controlled string put into one (reasons, parameter values, workload
names) is escaped here with :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune.objectives import ENERGY_METRICS

if TYPE_CHECKING:
    from autotune.study import FrontPoint, Study, TrialResult

#: Knobs shown on a log scale in parallel coordinates (they span orders of magnitude).
_LOG_KNOBS = frozenset({"batch_size", "learning_rate"})


@dataclass(frozen=True)
class Axis:
    """One objective as a figure axis. ``estimated``: some energy values are estimates."""

    name: str
    direction: str
    label: str
    estimated: bool = False


@dataclass(frozen=True)
class ScatterPoint:
    """One trial in the Pareto scatter.

    ``group``: ``front``, ``dominated`` (feasible, beaten) or ``infeasible`` (could not
    run, or violates a constraint; infeasible runs sit at their recorded worst values).
    ``errors``: per axis, ``(minus, plus)`` error-bar lengths or ``None``.
    """

    trial_number: int
    group: str
    backend: str
    device: str
    coords: list[float]
    errors: list[tuple[float, float] | None]
    hover: str
    reason: str = ""


@dataclass(frozen=True)
class ParetoInfo:
    """The Pareto scatter: axes (2 or 3 objectives) and every completed trial."""

    axes: list[Axis]
    points: list[ScatterPoint]

    def group(self, name: str) -> list[ScatterPoint]:
        """The points of one group; the front is sorted along the first axis."""
        points = [p for p in self.points if p.group == name]
        return sorted(points, key=lambda p: p.coords[0]) if name == "front" else points


@dataclass(frozen=True)
class Dimension:
    """One parallel-coordinates axis. Categorical knobs are integer codes with labels."""

    label: str
    values: list[float]
    tickvals: list[float] | None = None
    ticktext: list[str] | None = None


@dataclass(frozen=True)
class ParallelInfo:
    """Parallel coordinates: searched knobs then objectives, one value per ok trial."""

    dimensions: list[Dimension]
    color: list[float]
    color_label: str
    trial_numbers: list[int]


@dataclass(frozen=True)
class HypervolumeInfo:
    """The front's hypervolume after every completed trial (``None``: undefined)."""

    trial_numbers: list[int]
    hypervolumes: list[float | None]
    front_sizes: list[int]
    mixed_energy: list[bool]


@dataclass(frozen=True)
class StepTimesInfo:
    """One trial's step times. ``warmup_s`` holds per-step warm-up times when stored;
    otherwise only ``warmup_steps`` and ``warmup_total_s`` are known."""

    trial_number: int
    measured_s: list[float]
    warmup_s: list[float] | None
    warmup_steps: int
    warmup_total_s: float | None
    unit: str
    message: str = ""


@dataclass(frozen=True)
class ImportanceInfo:
    """Parameter importances for one objective, or a message saying why there are none."""

    objective: str
    importances: dict[str, float] = field(default_factory=dict)
    message: str = ""


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML and plotly hover text."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _knobs(study: Study, trial: TrialResult) -> dict[str, Any]:
    """Every knob of a trial: the space's fixed values, the defaults, the sampled params."""
    from autotune.config import TrialConfig

    fixed = TrialConfig.from_params(study.space, {}).knobs()
    return {**fixed, **trial.params}


def _axes(study: Study, names: Sequence[str], trials: Sequence[TrialResult]) -> list[Axis]:
    directions = dict(study.space.objectives)
    axes = []
    for name in names:
        estimated = name in ENERGY_METRICS and any(
            t.metrics.get("energy_source") == "estimated" for t in trials)
        arrow = "↑" if directions[name] == "maximize" else "↓"
        label = f"{name} {arrow}" + (" (est)" if estimated else "")
        axes.append(Axis(name, directions[name], label, estimated))
    return axes


def _violated(study: Study, trial: TrialResult) -> str:
    bad = [str(c) for c in study.space.constraints
           if c.violation(trial.metrics.get(c.metric)) > 0]
    return "violates " + ", ".join(bad) if bad else "infeasible"


def pareto_info(study: Study, objectives: Sequence[str] | None = None) -> ParetoInfo:
    """The Pareto scatter of ``objectives`` (default: the first two, or all three when
    the study has three).

    Raises:
        ValueError: an objective the study does not have, or not 2 or 3 of them.
    """
    names = list(objectives) if objectives else study.space.objective_names[:3]
    if len(names) == 1:  # a single-objective study: plot it against trial number
        raise ValueError("a Pareto scatter needs at least two objectives")
    unknown = [n for n in names if n not in study.space.objective_names]
    if unknown or len(names) not in (2, 3):
        raise ValueError(f"choose 2 or 3 of the study's objectives "
                         f"{study.space.objective_names}, got {names}")
    index = [study.space.objective_names.index(n) for n in names]
    trials = [t for t in study.trials()
              if t.state in ("ok", "infeasible") and t.values is not None]
    front = {p.trial_number for p in study.pareto_front()}
    axes = _axes(study, names, trials)
    points = []
    for t in trials:
        knobs = _knobs(study, t)
        values = t.values or []
        coords = [float(values[i]) for i in index]
        group = "front" if t.number in front else "dominated" if t.feasible else "infeasible"
        reason = "" if group != "infeasible" else (
            t.reason or _violated(study, t))
        errors: list[tuple[float, float] | None] = []
        for name, value in zip(names, coords, strict=True):
            ci = t.metrics.get("throughput_ci_sps") if name == "throughput_sps" else None
            if t.state == "ok" and isinstance(ci, list | tuple) and len(ci) == 2 \
                    and all(isinstance(c, int | float) for c in ci):
                errors.append((max(0.0, value - ci[0]), max(0.0, ci[1] - value)))
            else:
                errors.append(None)
        lines = [f"<b>trial {t.number}</b> ({esc(group)})"]
        for axis, value in zip(axes, coords, strict=True):
            worst = " (worst: not measured)" if t.state == "infeasible" else ""
            est = " (est)" if axis.name in ENERGY_METRICS and \
                t.metrics.get("energy_source") == "estimated" else ""
            lines.append(f"{esc(axis.name)}: {_fmt(value)}{est}{worst}")
        lines += [f"{esc(k)}: {esc(_fmt(v))}" for k, v in knobs.items() if v is not None]
        if reason:
            lines.append(f"reason: {esc(reason)}")
        points.append(ScatterPoint(
            trial_number=t.number, group=group, backend=str(knobs.get("backend")),
            device=str(knobs.get("device")), coords=coords, errors=errors,
            hover="<br>".join(lines), reason=reason))
    return ParetoInfo(axes=axes, points=points)


def parallel_info(study: Study) -> ParallelInfo:
    """Searched knobs and objectives of every measured trial (state ``ok``)."""
    trials = [t for t in study.trials() if t.state == "ok" and t.values is not None]
    dims = []
    for spec in study.space.params:
        if spec.kind == "fixed":
            continue
        raw = [t.params.get(spec.name) for t in trials]
        numeric = spec.kind in ("int", "float") or all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in spec.choices)
        if numeric:
            log = spec.log or spec.name in _LOG_KNOBS
            vals = [math.log10(v) if log and v else float(v) if v is not None else math.nan
                    for v in raw]
            if log:  # ticks at the values tried, labelled with the values themselves
                seen = sorted({v for v in raw if v})
                ticks = [math.log10(v) for v in seen] if len(seen) <= 8 else None
                dims.append(Dimension(f"log10({spec.name})", vals, ticks,
                                      [_fmt(v) for v in seen] if ticks else None))
            else:
                dims.append(Dimension(spec.name, vals))
        else:
            choices = [str(c) for c in spec.choices]
            codes = [float(choices.index(str(v))) if str(v) in choices else math.nan
                     for v in raw]
            dims.append(Dimension(spec.name, codes, [float(i) for i in range(len(choices))],
                                  [esc(c) for c in choices]))
    for i, name in enumerate(study.space.objective_names):
        dims.append(Dimension(name, [float((t.values or [])[i]) for t in trials]))
    first = study.space.objective_names[0]
    return ParallelInfo(dimensions=dims, color=[float((t.values or [])[0]) for t in trials],
                        color_label=first, trial_numbers=[t.number for t in trials])


def hypervolume_info(study: Study) -> HypervolumeInfo:
    """The hypervolume history, one entry per :meth:`Study.front_history` snapshot."""
    history = study.front_history()
    return HypervolumeInfo(
        trial_numbers=[s.trial_number for s in history],
        hypervolumes=[s.hypervolume for s in history],
        front_sizes=[len(s.front) for s in history],
        mixed_energy=[len(s.energy_sources) > 1 for s in history])


def step_times_info(study: Study, trial_number: int) -> StepTimesInfo:
    """Step times of one trial from its stored measurement.

    Raises:
        KeyError: the study has no measurement for ``trial_number``.
    """
    rows = [r for r in study.storage.measurements(study.id) if r.trial_number == trial_number]
    if not rows:
        raise KeyError(f"study {study.name!r} has no measurement for trial {trial_number}")
    raw = json.loads(rows[-1].raw_json or "{}")  # a retried trial: its last measurement
    measured = [float(x) for x in raw.get("step_times_s") or []]
    warmup = raw.get("warmup_step_times_s")
    steps = int(raw.get("warmup_steps") or (len(warmup) if warmup else 0))
    unit = "per optimizer step" if raw.get("mode") == "train" else "per batch"
    message = "" if measured else f"no step times stored (state {rows[-1].state})"
    return StepTimesInfo(
        trial_number=trial_number, measured_s=measured,
        warmup_s=[float(x) for x in warmup] if warmup else None, warmup_steps=steps,
        warmup_total_s=raw.get("warmup_s"), unit=unit, message=message)


def importance_info(study: Study, objective: str | None = None) -> ImportanceInfo:
    """Optuna's parameter importances for ``objective`` (default: the first), computed
    from feasible trials only: infeasible ones carry made-up worst values."""
    import optuna

    name = objective or study.space.objective_names[0]
    index = study.space.objective_names.index(name)
    done = {t.number for t in study.trials() if t.feasible}
    ostudy = study._optuna_study()
    frozen = [t for t in ostudy.get_trials(deepcopy=False) if t.number in done]
    varying = [p for p in study.space.distributions()
               if len({repr(t.params.get(p)) for t in frozen}) > 1]
    if len(frozen) < 2 or not varying:
        return ImportanceInfo(name, message="parameter importances need at least two "
                                            "feasible trials whose parameters differ")
    # An in-memory copy with only the feasible trials: get_param_importances has no filter.
    copy = optuna.create_study(directions=study.space.directions)
    copy.add_trials(frozen)
    # Optuna's default evaluator (PED-ANOVA) explains what makes the target *low*.
    sign = -1.0 if study.space.directions[index] == "maximize" else 1.0
    try:
        with warnings.catch_warnings():  # it warns on any target; the sign handles it
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator",
                                    category=UserWarning)
            found = optuna.importance.get_param_importances(
                copy, params=varying, target=lambda t: sign * t.values[index])
    except (RuntimeError, ValueError) as e:  # e.g. a parameter with a single value left
        return ImportanceInfo(name, message=f"parameter importances unavailable: {e}")
    return ImportanceInfo(name, importances={k: float(v) for k, v in found.items()})


@dataclass(frozen=True)
class HeaderInfo:
    """The report header, as plain (unescaped) text; the renderer escapes it."""

    fields: list[tuple[str, str]]
    front_rows: list[dict[str, str]] = field(default_factory=list)
    front_columns: list[str] = field(default_factory=list)


def header_info(study: Study) -> HeaderInfo:
    """Study name, workload, mode, objectives, constraints, counts, front and best values."""
    s = study.summary()
    hv = study.hypervolume()
    counts = ", ".join(f"{k} {v}" for k, v in s["trials"].items() if v)
    fields = [
        ("study", s["name"]), ("workload", s["workload"]), ("mode", s["mode"]),
        ("objectives", ", ".join(f"{k} ({v})" for k, v in s["objectives"].items())),
        ("constraints", ", ".join(s["constraints"]) or "none"),
        ("trials", counts or "none"), ("front size", str(s["front_size"])),
        ("best", ", ".join(f"{k} {_fmt(v)}" for k, v in s["best"].items()
                           if v is not None) or "-"),
        ("hypervolume", _fmt(hv) if hv is not None else "-"),
    ]
    if s["energy_sources"]:
        fields.append(("energy sources", ", ".join(s["energy_sources"])))
    front = study.pareto_front()
    knobs = [k for k in (front[0].config if front else {})
             if len({repr(p.config.get(k)) for p in front}) > 1 or
             k in ("backend", "device")]
    facts = [name for name in ("params", "GFLOP/s", "% of peak")
             if name not in study.space.objective_names]
    columns = ["trial", *knobs, *study.space.objective_names, *facts, "energy source",
               "stability"]

    def fact(p: FrontPoint, key: str, scale: float = 1.0) -> str:
        value = p.metrics.get(key)
        return _fmt(value * scale if isinstance(value, (int, float)) and scale != 1.0
                    else value)

    rows = [{"trial": str(p.trial_number), **{k: _fmt(p.config.get(k)) for k in knobs},
             **{k: _fmt(v) for k, v in p.values.items()},
             "params": fact(p, "param_count"),
             "GFLOP/s": fact(p, "achieved_flops_per_s", 1e-9),
             "% of peak": fact(p, "pct_of_peak"),
             "energy source": p.energy_source or "-", "stability": p.stability}
            for p in front]
    return HeaderInfo(fields=fields, front_rows=rows, front_columns=columns)
