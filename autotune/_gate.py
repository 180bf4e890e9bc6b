"""A pre-launch check for CI: is the configuration about to ship as good as the study says
it could be?

:func:`gate` measures the configuration (exactly as a trial of the study would: the study's
budget, seed and execution rules) or reads metrics measured before, then judges it:

* ``fail`` when it violates a study constraint (or an extra condition), or when a
  configuration of the study's Pareto front beats it by more than ``tolerance`` on *every*
  objective (relative, in each objective's direction): shipping it leaves that much on the
  table everywhere at once;
* ``inconclusive`` when it would fail only on timings (throughput, latency, energy)
  measured while another process used its cores: contention makes a configuration look
  slower than it is, so the verdict says so instead of blocking a release on it; also
  when no front configuration is comparable (none yet, or none with the same energy
  source): a gate with nothing to compare with must not pass a slow configuration;
* ``unmeasurable`` when it cannot run (out of memory, unsupported, crash, timeout) or a
  metric a condition needs was not measured;
* ``pass`` otherwise.

Each verdict has its exit code (:data:`EXIT_CODES`), documented for CI in ``autotune gate
--help`` and the README.

A configuration file is YAML with ``workload``, ``mode`` (both must be the study's) and
knob values named as in a space file (``batch_size: 128``); knobs not given take the
study's fixed values, then the same defaults as a space file. ``description`` is allowed
as free text. ``Recommendation.gate_config()`` writes one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autotune._recommend import parse_condition
from autotune.config import KNOB_DEFAULTS
from autotune.exceptions import GateError
from autotune.launch import Launcher, ProcessLauncher
from autotune.objectives import METRICS, Constraint, Direction
from autotune.space import one_line

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.study import FrontPoint, Study

#: Exit code per verdict (``autotune gate``). As ``autotune verify``: 0 the check held, 1 it
#: did not (an error autotune reports, e.g. an unknown study or an invalid config file,
#: is 1 too; with --json a verdict is on stdout, an error only on stderr), 2 a usage
#: error; then 3 the configuration could not be measured, 4 inconclusive (it would fail
#: only on timings measured under contention).
EXIT_CODES: Mapping[str, int] = {"pass": 0, "fail": 1, "unmeasurable": 3, "inconclusive": 4}

#: Default tolerance: a front configuration must be more than 5 % better on every objective
#: to fail the gate (below the 10 % spread at which a measurement is already "noisy").
DEFAULT_TOLERANCE = 0.05

#: Metrics that another process on the trial's cores makes worse; accuracy and memory
#: do not depend on it.
CONTENTION_SENSITIVE = frozenset({"throughput_sps", "latency_p50_ms", "latency_p90_ms",
                                  "latency_p95_ms", "latency_p99_ms", "power_w",
                                  "energy_per_sample_j"})

_FILE_KEYS = ("workload", "mode", "description")


# -- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Beat:
    """A front configuration compared with the gated one.

    ``margins``: per objective, how much better the front configuration is, relative to
    the gated configuration's value in the objective's direction (0.25 = 25 % better;
    negative = worse). ``values``: the front configuration's objective values.
    """

    trial_number: int
    config: dict[str, Any]
    values: dict[str, float]
    margins: dict[str, float]

    @property
    def min_margin(self) -> float:
        """The smallest margin: it beats the gated configuration by at least this much on
        every objective."""
        return min(self.margins.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON form (infinite margins as ``"inf"``/``"-inf"``)."""
        return {"trial": self.trial_number, "config": self.config, "values": self.values,
                "margins": {k: _json_float(v) for k, v in self.margins.items()},
                "min_margin": _json_float(self.min_margin)}


@dataclass(frozen=True)
class GateResult:
    """How the gated configuration compares with the study.

    ``verdict`` is ``pass``, ``fail``, ``inconclusive`` or ``unmeasurable``
    (:attr:`exit_code` maps it). ``violations`` are the conditions it violates, one line
    each; ``beaten_by`` the front configurations that beat it by more than ``tolerance``
    on every objective, most convincing first; ``closest`` the front configuration that
    comes closest to that (``None`` without a comparable front point). ``source`` is
    ``measured`` (run now) or ``read`` (metrics given). ``notes`` say what makes the
    comparison weaker (contention, noise, another machine, knobs outside the space).
    """

    study: str
    workload: str
    mode: str
    verdict: str
    tolerance: float
    config: dict[str, Any]
    constraints: tuple[str, ...]
    objectives: dict[str, Direction]
    metrics: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    violations: tuple[str, ...] = ()
    beaten_by: tuple[Beat, ...] = ()
    closest: Beat | None = None
    source: str = "measured"
    contended: bool = False
    failure_kind: str | None = None
    reason: str = ""
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """Whether the configuration passed the gate."""
        return self.verdict == "pass"

    @property
    def exit_code(self) -> int:
        """The ``autotune gate`` exit code of this verdict (:data:`EXIT_CODES`)."""
        return EXIT_CODES[self.verdict]

    def summary_line(self) -> str:
        """The verdict in one line (what ``autotune gate`` prints last)."""
        pct = _pct(self.tolerance)
        if self.verdict == "unmeasurable":
            return f"UNMEASURABLE: the configuration did not run ({self.failure_kind}: " \
                   f"{one_line(self.reason)})"
        why = [f"violates {v}" for v in self.violations]
        if self.beaten_by:
            top = self.beaten_by[0]
            why.append(f"trial {top.trial_number} of the front beats it on every objective "
                       f"by more than {pct} ({_margins(top)})")
        if self.verdict == "fail":
            return "FAIL: " + "; ".join(why)
        if self.verdict == "inconclusive" and not why:
            return ("INCONCLUSIVE: no front configuration to compare with (no feasible "
                    "trial yet, or none with the same energy source)")
        if self.verdict == "inconclusive":
            return ("INCONCLUSIVE: would fail (" + "; ".join(why) + ") but only on timings "
                    "measured while another process used the configuration's cores; "
                    "measure again on a quiet machine")
        text = f"PASS: satisfies every condition and no front configuration beats it by " \
               f"more than {pct} on every objective"
        if self.closest is not None:
            text += f" (closest: trial {self.closest.trial_number}, {_margins(self.closest)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (what ``autotune gate --json`` prints)."""
        return {
            "study": self.study, "workload": self.workload, "mode": self.mode,
            "verdict": self.verdict, "exit_code": self.exit_code,
            "tolerance": self.tolerance, "config": self.config,
            "constraints": list(self.constraints), "objectives": dict(self.objectives),
            "values": self.values, "metrics": self.metrics,
            "violations": list(self.violations),
            "beaten_by": [b.to_dict() for b in self.beaten_by],
            "closest": self.closest.to_dict() if self.closest else None,
            "source": self.source, "contended": self.contended,
            "failure_kind": self.failure_kind, "reason": self.reason,
            "notes": list(self.notes), "summary": self.summary_line(),
        }


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def _margins(beat: Beat) -> str:
    return ", ".join(f"{k} {'+inf' if math.isinf(v) else f'{v * 100:+.1f}'} %"
                     for k, v in beat.margins.items())


# -- the configuration file -------------------------------------------------------------------


def load_gate_config(config: Mapping[str, Any] | str | Path, study: Study) -> dict[str, Any]:
    """Validate a gate configuration (a mapping or a YAML file) against ``study``.

    Returns the knobs it gives (not the defaults). Raises :class:`GateError` naming the
    file, the key, what was given and what is allowed: an unknown knob, a value the knob
    does not allow, a training knob in infer mode, a missing or different workload or mode.
    """
    from autotune.space import _knob_checks, _UniqueKeyLoader, _yaml_off, mode_knob_error

    if isinstance(config, Mapping):
        source, data = "config", config
    else:
        path = Path(config)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GateError(f"{source}: config file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise GateError(f"{source}: cannot read config file ({e})") from None
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise GateError(one_line(f"{source}: malformed YAML{at}: {problem}")) from None
    if not isinstance(data, Mapping):
        raise GateError(f"{source}: a gate config must be a mapping of workload, mode and "
                        f"knobs, got {type(data).__name__}")

    def fail(key: str, message: str) -> GateError:
        return GateError(one_line(f"{source}: {key}: {message}"))

    space = study.space
    for key in data:
        if key not in _FILE_KEYS and key not in KNOB_DEFAULTS:
            raise fail(str(key), f"unknown knob; allowed: {', '.join(KNOB_DEFAULTS)} "
                                 f"(and {', '.join(_FILE_KEYS)})")
    for key, theirs in (("workload", space.workload), ("mode", space.mode)):
        if key not in data:
            raise fail(key, f"is required (study {study.name!r} tunes {space.workload} in "
                            f"{space.mode} mode)")
        if data[key] != theirs:
            raise fail(key, f"{data[key]!r}, but study {study.name!r} tunes {key} "
                            f"{theirs!r}; gate it against a study of the same workload and "
                            "mode")
    checks = _knob_checks()
    knobs: dict[str, Any] = {}
    for key, value in data.items():
        if key in _FILE_KEYS:
            continue
        wrong_mode = mode_knob_error(key, space.mode, where="study")
        if wrong_mode is not None:
            raise fail(key, wrong_mode)
        value = _yaml_off(key, value)  # YAML reads a bare `off` as false
        if key == "threads" and value is None:  # null: every core, as a space's default
            knobs[key] = None
            continue
        ok, allowed = checks[key]
        if isinstance(value, list | dict) or not ok(value):
            raise fail(key, f"got {value!r}; allowed: a single value, {allowed}")
        knobs[key] = value
    return knobs


def _outside_space(knobs: Mapping[str, Any], study: Study) -> list[str]:
    """Notes for knob values the study never searched (the front says nothing there)."""
    notes = []
    for name, value in knobs.items():
        spec = study.space.param(name)
        if spec is None:
            default = KNOB_DEFAULTS[name]
            outside = value != default
            searched = f"kept at its default {default!r}"
        elif spec.kind in ("categorical", "fixed"):
            outside = value not in spec.choices
            searched = f"searched {', '.join(map(repr, spec.choices))}"
        else:
            assert spec.low is not None and spec.high is not None
            outside = not spec.low <= value <= spec.high
            searched = f"searched {spec.low:g} to {spec.high:g}"
        if outside:
            notes.append(f"{name}={value!r} is outside what the study {searched}: the front "
                         "has no configuration near it")
    return notes


# -- the gate ---------------------------------------------------------------------------------


def gate(study: Study, config: Mapping[str, Any] | str | Path, *,
         tolerance: float = DEFAULT_TOLERANCE,
         constraints: Iterable[str | Constraint] = (),
         launcher: Launcher | None = None,
         measured: Mapping[str, Any] | None = None) -> GateResult:
    """Judge the configuration about to ship against ``study``.

    Args:
        study: a loaded study with a front (:func:`autotune.load_study`).
        config: a mapping or a YAML file: ``workload`` and ``mode`` (the study's) and knob
            values (see :func:`load_gate_config`).
        tolerance: how much better (relative, e.g. ``0.05``) a front configuration must
            be on every objective to fail the gate.
        constraints: extra conditions (``"latency_p95_ms<=20"``) on top of the study's.
        launcher: runs the measurement (default: a fresh worker process, as
            ``autotune measure``); ignored with ``measured``.
        measured: metrics measured before instead of measuring now: a
            ``Measurement.summary()`` mapping, or ``autotune measure --json`` output
            (its workload, mode and knobs must match ``config``).

    Returns a :class:`GateResult`. Raises :class:`GateError` for an invalid configuration
    or tolerance, one for another workload or mode, and metrics that do not match it.
    """
    from autotune._run import trial_config as make_config

    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or \
            not math.isfinite(tolerance) or tolerance < 0:
        raise GateError(f"tolerance must be a fraction >= 0 (0.05 = 5 %), got {tolerance!r}")
    knobs = load_gate_config(config, study)
    extra = [parse_condition(c, GateError) for c in constraints]
    applied = list(dict.fromkeys([*study.space.constraints, *extra]))
    trial_config = make_config(study.space, knobs, seed=study.seed or 0,
                               budget=study._effective_budget())
    shown = _shown_knobs(trial_config)
    base: dict[str, Any] = {
        "study": study.name, "workload": study.space.workload, "mode": study.space.mode,
        "tolerance": float(tolerance), "config": shown,
        "constraints": tuple(str(c) for c in applied),
        "objectives": dict(study.space.objectives)}
    notes = _outside_space(knobs, study)

    if measured is not None:
        metrics = _read_metrics(measured, trial_config)
        source = "read"
    else:
        outcome_or_metrics = _measure(trial_config, launcher)
        if isinstance(outcome_or_metrics, tuple):
            kind, reason = outcome_or_metrics
            return GateResult(**base, verdict="unmeasurable", failure_kind=kind,
                              reason=reason, notes=tuple(notes))
        metrics = outcome_or_metrics
        source = "measured"
        notes.extend(_machine_notes(study))

    missing = [o for o in study.space.objective_names if _num(metrics.get(o)) is None]
    if missing:
        reasons = metrics.get("missing") or {}
        return GateResult(
            **base, verdict="unmeasurable", metrics=_headline(metrics), source=source,
            failure_kind="missing_metric",
            reason="; ".join(f"{o}: {reasons.get(o, 'not measured')}" for o in missing),
            notes=tuple(notes))
    values = {o: float(metrics[o]) for o in study.space.objective_names}

    unmeasured = [c for c in applied if _num(metrics.get(c.metric)) is None]
    if unmeasured:
        reasons = metrics.get("missing") or {}
        return GateResult(
            **base, verdict="unmeasurable", metrics=_headline(metrics), source=source,
            failure_kind="missing_metric",
            reason="; ".join(f"{c.metric} (for {c}): {reasons.get(c.metric, 'not measured')}"
                             for c in unmeasured),
            notes=tuple(notes))
    violations = []
    for c in applied:
        value = _num(metrics.get(c.metric))
        if not c.is_satisfied(value):
            shown_value = "not measured" if value is None else f"{value:.6g}"
            violations.append(f"{c} ({c.metric} {shown_value})")

    beats = _compare_with_front(study, metrics, values, extra)
    beaten = tuple(sorted((b for b in beats if b.min_margin > tolerance),
                          key=lambda b: (-b.min_margin, b.trial_number)))
    closest = max(beats, key=lambda b: (b.min_margin, -b.trial_number), default=None)
    if not beats:
        notes.append("no front configuration to compare with (no feasible trial yet, or "
                      "none with the same energy source and the extra conditions)")
    contended = bool(metrics.get("contended"))
    if metrics.get("noise") in ("noisy", "very_noisy"):
        notes.append(f"the measurement was {metrics['noise']} (spread "
                     f"{_num(metrics.get('spread')) or 0:.3f}): its timings are less certain")
    if contended:
        notes.append("another process used the configuration's cores while it was measured "
                     f"(foreign CPU {_num(metrics.get('foreign_cpu_fraction')) or 0:.0%}): "
                     "its timings are pessimistic")

    if not violations and not beats:
        # Nothing to compare with is not a pass: a slow configuration would sail through.
        verdict = "inconclusive"
    elif not violations and not beaten:
        verdict = "pass"
    else:
        # Contention only makes timings worse: a failure that timings alone explain is not
        # trusted on a contended measurement.
        sensitive = [any(m in CONTENTION_SENSITIVE for m in study.space.objective_names)] \
            if beaten else []
        sensitive += [c.metric in CONTENTION_SENSITIVE for c in applied
                      if not c.is_satisfied(_num(metrics.get(c.metric)))]
        verdict = "inconclusive" if contended and all(sensitive) else "fail"
    return GateResult(**base, verdict=verdict, metrics=_headline(metrics), values=values,
                      violations=tuple(violations), beaten_by=beaten, closest=closest,
                      source=source, contended=contended, notes=tuple(notes))


def _shown_knobs(config: TrialConfig) -> dict[str, Any]:
    return config.mode_knobs()


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("missing", "energy_model")}


def _measure(config: TrialConfig, launcher: Launcher | None) -> dict[str, Any] | tuple[str, str]:
    """Measure ``config`` as a trial would; ``(failure_kind, reason)`` when it cannot run."""
    from autotune._run import launcher_for, run_config

    with launcher_for(launcher, ProcessLauncher) as active:  # one passed in stays open
        run = run_config(config, active)
    if not run.ok:
        return run.failure_kind or run.state, run.reason
    return run.summary()


def _read_metrics(measured: Mapping[str, Any], config: TrialConfig) -> dict[str, Any]:
    """Metrics given instead of measured: ``autotune measure --json`` output (checked
    against ``config``) or a plain mapping of metric names to values."""
    from autotune.backends import resolve_execution

    if not isinstance(measured, Mapping):
        raise GateError(f"measured metrics must be a mapping, got {type(measured).__name__}")
    if isinstance(measured.get("metrics"), Mapping):
        for key in ("workload", "mode"):
            if key in measured and measured[key] != getattr(config, key):
                raise GateError(f"the metrics were measured for {key} {measured[key]!r}, the "
                                f"config says {getattr(config, key)!r}")
        theirs = dict(measured.get("knobs") or {})
        if "config" not in measured:
            # plain `autotune measure --json` lists only the flags given; the others took
            # the defaults, and a config that differs from those is another configuration
            from autotune.config import KNOB_DEFAULTS

            theirs = {**KNOB_DEFAULTS, **theirs}
        for name, value in theirs.items():
            ours = getattr(config, name, None)
            if name == "execution":
                value = resolve_execution(str(theirs.get("backend", config.backend)), value,
                                          config.mode)
            if value != ours:
                raise GateError(f"the metrics were measured with {name}={value!r}, the "
                                f"config says {name}={ours!r}; measure the config itself")
        measured = measured["metrics"]
    known = [k for k in measured if k in METRICS]
    if not known:
        raise GateError("the measured metrics name no metric; expected `autotune measure "
                        f"--json` output or a mapping of {', '.join(METRICS)}")
    return dict(measured)


def _comparable_front(study: Study, metrics: Mapping[str, Any],
                      extra: Sequence[Constraint]) -> list[FrontPoint]:
    """Front points to compare with: steady ones (drifting ones only when nothing else is
    left), that satisfy the extra conditions, with the same energy source when an
    objective is energy (energy from a meter and from a CPU-time model do not compare)."""
    from autotune.objectives import ENERGY_METRICS

    front = study.pareto_front()
    # As the study's leaders: the front the trials would have without the drifting ones.
    drifting = frozenset(p.trial_number for p in front if p.stability == "drifting")
    points = (study.pareto_front(exclude=drifting) if drifting else front) or front
    points = [p for p in points
              if all(c.is_satisfied(_num(p.metrics.get(c.metric))) for c in extra)]
    if any(o in ENERGY_METRICS for o in study.space.objective_names):
        source = metrics.get("energy_source")
        points = [p for p in points if p.energy_source == source]
    return points


def _gain(front: float, mine: float, direction: Direction) -> float:
    """How much better ``front`` is than ``mine``, relative to ``mine``."""
    diff = front - mine if direction == "maximize" else mine - front
    if mine == 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / abs(mine)


def _compare_with_front(study: Study, metrics: Mapping[str, Any], values: Mapping[str, float],
                        extra: Sequence[Constraint]) -> list[Beat]:
    out = []
    for p in _comparable_front(study, metrics, extra):
        margins = {o: _gain(p.values[o], values[o], d) for o, d in study.space.objectives}
        out.append(Beat(p.trial_number, dict(p.config), dict(p.values), margins))
    return out


def _machine_notes(study: Study) -> list[str]:
    """A note when the study's trials ran on another machine than this measurement."""
    from autotune.profiling.fingerprint import fingerprint_hash, machine_fingerprint

    here = fingerprint_hash(machine_fingerprint())
    hosts = set()
    for point in study.pareto_front():
        row = study.storage.measurement(study.id, point.trial_number)
        if row is None:
            continue
        machine = study.storage.get_machine(row.machine_id)
        if machine and fingerprint_hash(machine) != here:
            hosts.add(f"{machine.get('hostname', '?')}, {machine.get('cpu_model', '?')}")
    if not hosts:
        return []
    return [f"the front was measured on another machine or software ({'; '.join(sorted(hosts))}"
            "): this measurement ran here, so the comparison mixes machines"]


def parse_tolerance(text: str) -> float:
    """``"5%"`` or ``"0.05"`` -> 0.05. A bare number of 1 or more is refused as ambiguous
    (``5`` could mean 5 % or 500 %). Raises ``ValueError`` saying the accepted forms."""
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise ValueError(f"expected a tolerance like 5% or 0.05, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"expected a tolerance >= 0 like 5% or 0.05, got {text!r}")
    if not percent and value >= 1:
        raise ValueError(f"tolerance {text!r} is ambiguous: write {value:g}% for a "
                         f"percentage or a fraction below 1 such as {value / 100:g}")
    return value / 100 if percent else value


def load_metrics_file(path: str | Path) -> dict[str, Any]:
    """Read metrics measured before (JSON or YAML: ``autotune measure --json`` output or a
    mapping of metric names to values). Raises :class:`GateError` naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML
    except FileNotFoundError:
        raise GateError(f"{path}: metrics file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise GateError(one_line(f"{path}: cannot read metrics file ({e})")) from None
    if not isinstance(data, Mapping):
        raise GateError(f"{path}: expected a mapping (autotune measure --json output), got "
                        f"{type(data).__name__}")
    return dict(data)


__all__ = ["CONTENTION_SENSITIVE", "DEFAULT_TOLERANCE", "EXIT_CODES", "Beat", "GateResult",
           "gate", "load_gate_config", "load_metrics_file", "parse_tolerance"]
