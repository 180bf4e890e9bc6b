"""Pick the configuration to ship from a study: the best measured trial under constraints.

:func:`recommend` answers "which configuration should go to production?" from what a study
has already measured. It considers every feasible measured trial, not only the Pareto
front: an extra constraint (``latency_p95_ms<=20``) may exclude every front point while a
trial behind the front still qualifies. A trial flagged ``drifting`` by a recheck
(:mod:`autotune.drift`) is not recommended while a steady one qualifies, because its
figures may come from a fast state it will not stay in.

The answer (:class:`Recommendation`) carries the trial's metrics with their confidence
(throughput 95 % interval, spread and noise flag, contention, energy source, stability)
and :meth:`Recommendation.launch_config`: the knobs spelled as the chosen framework spells
them (dtype, batch size, optimizer class and arguments, thread settings, execution mode,
quantisation, pruning), consistent with how the backends in :mod:`autotune.backends` ran
the trial.

When nothing satisfies the constraints, :class:`~autotune.exceptions.RecommendError`
names the constraint that binds and the nearest trials.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune.exceptions import AutotuneError, RecommendError
from autotune.objectives import DIRECTIONS, METRICS, Constraint, Direction

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.study import Study, TrialResult

#: Candidates within this fraction of the best objective value count as tied, and the
#: ``prefer`` rule picks among them. 2 %: below the 10 % spread that makes a window
#: "noisy", i.e. differences no repeated measurement on a shared machine would uphold.
TIE_TOLERANCE = 0.02

#: ``prefer`` rules besides a metric name: (what is compared, direction).
PREFERENCES: Mapping[str, tuple[str, Direction]] = {
    "lower_memory": ("peak_memory_mb", "minimize"),
    "fewer_threads": ("threads", "minimize"),
    "smaller_batch": ("batch_size", "minimize"),
}

@dataclass(frozen=True)
class SLOPreset:
    """A named latency target for language-model serving, with where it comes from."""

    name: str
    conditions: tuple[str, ...]
    source: str


#: ``recommend --slo NAME``: MLPerf Inference's LLM latency targets. MLPerf bounds the 99th
#: percentiles; autotune applies them to its 95th (``ttft_p95_ms``, ``tpot_p95_ms``: a p99
#: needs 662 requests per trial), which is the looser reading of the same bound.
SLO_PRESETS: Mapping[str, SLOPreset] = {
    p.name: p for p in (
        SLOPreset("interactive", ("ttft_p95_ms<=450", "tpot_p95_ms<=40"),
                  "MLPerf Inference v5.0, Llama-2-70B Interactive scenario: TTFT 450 ms, "
                  "TPOT 40 ms (p99)"),
        SLOPreset("server", ("ttft_p95_ms<=2000", "tpot_p95_ms<=200"),
                  "MLPerf Inference v4.0+, Llama-2-70B Server scenario: TTFT 2 s, TPOT "
                  "200 ms (p99)"),
        SLOPreset("batch", ("ttft_p95_ms<=6000", "tpot_p95_ms<=175"),
                  "MLPerf Inference v5.0, Llama-3.1-405B Server scenario: TTFT 6 s, TPOT "
                  "175 ms (p99)"),
    )
}

#: What a ``--where`` condition looks like: a metric, an operator, a number.
CONDITION_FORM = "METRIC<=VALUE (operators >=, <=, >, <), e.g. latency_p95_ms<=20"
_CONDITION_RE = re.compile(r"^\s*(?P<metric>[^<>=!\s]+)\s*(?P<op>>=|<=|>|<)\s*(?P<bound>\S.*?)\s*$")

#: Metrics whose measured value carries the confidence fields copied into a
#: recommendation (from ``Measurement.summary()``).
_CONFIDENCE_KEYS = ("throughput_ci_sps", "spread", "noise", "contended",
                    "foreign_cpu_fraction", "energy_source", "steps_measured", "threads",
                    "memory_source", "latency_unit", "param_count", "flops_per_sample",
                    "achieved_flops_per_s", "peak_flops_per_s")


# -- parsing ----------------------------------------------------------------------------------


def parse_condition(text: str | Constraint,
                    error: type[AutotuneError] = RecommendError) -> Constraint:
    """``"latency_p95_ms<=20"`` (spaces allowed) -> :class:`Constraint`.

    Raises ``error`` (default :class:`RecommendError`) naming the condition and the
    expected form, or the allowed metrics for an unknown one.
    """
    if isinstance(text, Constraint):
        _check_metric(text.metric, f"condition {str(text)!r}", error)
        return text
    match = _CONDITION_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise error(f"condition {text!r} does not parse; expected {CONDITION_FORM}")
    metric = match["metric"]
    _check_metric(metric, f"condition {text!r}", error)
    try:
        # The space files' own parser: the same operators and numbers are accepted.
        return Constraint.parse(metric, f"{match['op']} {match['bound']}")
    except ValueError:
        raise error(f"condition {text!r}: {match['bound']!r} is not a number; expected "
                    f"{CONDITION_FORM}") from None


def _check_metric(metric: str, where: str, error: type[AutotuneError]) -> None:
    if metric not in METRICS:
        raise error(f"unknown metric {metric!r} in {where}; allowed: {', '.join(METRICS)}")


def parse_objective(objective: str | tuple[str, str] | None,
                    study: Study) -> tuple[str, Direction]:
    """The metric to optimise and its direction.

    ``None``: the study's first objective in its direction. ``"throughput_sps"``: that
    metric in the study's direction for it, else in the metric's natural direction
    (:data:`autotune.objectives.METRICS`). ``"maximize:throughput_sps"`` or
    ``("throughput_sps", "maximize")``: explicit.
    """
    if objective is None:
        return study.space.objectives[0]
    if isinstance(objective, tuple):
        if len(objective) != 2:
            raise RecommendError(f"objective {objective!r}: expected (metric, direction)")
        metric, direction = objective
    elif isinstance(objective, str):
        direction, colon, metric = objective.rpartition(":")
        if not colon:
            direction = ""
    else:
        raise RecommendError(f"objective {objective!r}: expected a metric name, "
                             "'maximize:METRIC' or 'minimize:METRIC'")
    _check_metric(metric, f"objective {objective!r}", RecommendError)
    if not direction:
        direction = dict(study.space.objectives).get(metric, METRICS[metric].better)
    if direction not in DIRECTIONS:
        raise RecommendError(f"objective {objective!r}: unknown direction {direction!r}; "
                             "allowed: maximize, minimize")
    return metric, direction


def parse_prefer(prefer: str | None) -> tuple[str, Direction] | None:
    """A ``prefer`` rule -> (what is compared, direction); ``None`` for no rule.

    One of :data:`PREFERENCES`, a metric (its natural direction) or ``minimize:METRIC`` /
    ``maximize:METRIC``. Raises :class:`RecommendError` listing what is allowed.
    """
    if prefer is None:
        return None
    if prefer in PREFERENCES:
        return PREFERENCES[prefer]
    direction, colon, metric = prefer.rpartition(":")
    if metric in METRICS and (not colon or direction in DIRECTIONS):
        return metric, (direction or METRICS[metric].better)  # type: ignore[return-value]
    raise RecommendError(f"unknown preference {prefer!r}; allowed: "
                         f"{', '.join(PREFERENCES)}, or a metric (optionally "
                         f"'minimize:METRIC' / 'maximize:METRIC'): {', '.join(METRICS)}")


# -- the answer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    """The configuration to ship: the best feasible measured trial under the constraints.

    ``config`` holds every knob as the trial ran (``execution`` resolved, ``threads``
    ``None`` = every core the worker could use; the count it used is in
    ``confidence["threads"]``; no optimizer or learning rate in infer mode, where they
    mean nothing). ``metrics`` holds every metric of
    :data:`~autotune.objectives.METRICS` (``None``: not measured). ``confidence`` says how
    far to trust them: ``throughput_ci_sps`` (95 % interval of the median throughput),
    ``spread`` (IQR/median of step times) and ``noise`` (``ok``/``noisy``/``very_noisy``),
    ``contended`` (another process used the trial's cores), ``energy_source``
    (``estimated`` is a model, not a meter) and ``stability`` (what rechecks said).
    ``ties`` are the candidates within :data:`TIE_TOLERANCE` of the best value, among which
    ``prefer`` chose.
    """

    study: str
    workload: str
    mode: str
    trial_number: int
    objective: str
    direction: Direction
    value: float
    constraints: tuple[str, ...]
    config: dict[str, Any]
    metrics: dict[str, Any]
    confidence: dict[str, Any]
    candidates: int
    prefer: str | None = None
    ties: tuple[int, ...] = ()
    excluded_drifting: tuple[int, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def launch_config(self) -> dict[str, Any]:
        """The knobs spelled as the trial's framework spells them (see :func:`launch_config`)."""
        return launch_config(self.config, mode=self.mode,
                             threads=self.config.get("threads") or self.confidence.get("threads"))

    def gate_config(self) -> dict[str, Any]:
        """The configuration as a ``gate`` config file holds it: workload, mode, knobs."""
        return {"workload": self.workload, "mode": self.mode, **self.config}

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-serialisable form (what ``autotune recommend --json`` prints)."""
        return {
            "study": self.study,
            "workload": self.workload,
            "mode": self.mode,
            "trial": self.trial_number,
            "objective": {"metric": self.objective, "direction": self.direction,
                          "value": self.value},
            "constraints": list(self.constraints),
            "prefer": self.prefer,
            "config": dict(self.config),
            "metrics": dict(self.metrics),
            "confidence": dict(self.confidence),
            "launch": self.launch_config(),
            "candidates": self.candidates,
            "ties": list(self.ties),
            "excluded_drifting": list(self.excluded_drifting),
            "warnings": list(self.warnings),
        }


def recommend(study: Study, objective: str | tuple[str, str] | None = None, *,
              constraints: Iterable[str | Constraint] = (),
              prefer: str | None = None) -> Recommendation:
    """The best configuration of ``study`` under ``constraints``.

    Args:
        study: a loaded study (:func:`autotune.load_study`).
        objective: the metric to optimise: ``None`` (the study's first objective),
            ``"throughput_sps"``, ``"maximize:throughput_sps"`` or
            ``("throughput_sps", "maximize")`` (see :func:`parse_objective`).
        constraints: conditions such as ``"latency_p95_ms<=20"`` or
            :class:`~autotune.objectives.Constraint` objects, applied on top of the
            study's own constraints.
        prefer: tie-break among the candidates within :data:`TIE_TOLERANCE` (2 %) of
            the best value: ``lower_memory``, ``fewer_threads``, ``smaller_batch``, or a
            metric name (in its natural direction, or ``minimize:METRIC`` /
            ``maximize:METRIC``). Without it the best value wins outright.

    Candidates are the feasible measured trials (not only the front). Drifting trials
    are left out while a steady one qualifies. Raises :class:`RecommendError` for an
    unknown metric, an unparsable condition, a study without a measured trial, or when
    no trial satisfies every constraint (naming the binding constraint and the nearest
    trials).
    """
    metric, direction = parse_objective(objective, study)
    extra = [parse_condition(c) for c in constraints]
    rule = parse_prefer(prefer)
    # The study's constraints first: they are what its trials were judged feasible by.
    applied = list(dict.fromkeys([*study.space.constraints, *extra]))
    trials = study.trials()
    measured = [t for t in trials if t.state == "ok"]
    if not measured:
        counts = ", ".join(f"{n} {s}" for s in ("infeasible", "fail", "running", "waiting")
                           if (n := sum(t.state == s for t in trials)))
        has = f" ({len(trials)} trial(s): {counts})" if trials else ""
        raise RecommendError(f"study {study.name!r} has no measured trial yet{has}; run it "
                             f"with `autotune study run {study.name}`")
    feasible = [t for t in measured
                if t.feasible and all(c.is_satisfied(_num(t.metrics.get(c.metric)))
                                      for c in applied)]
    if not feasible:
        raise _no_feasible(study, measured, applied)
    usable = [t for t in feasible if _num(t.metrics.get(metric)) is not None]
    if not usable:
        raise RecommendError(f"no feasible trial of {study.name!r} measured {metric} "
                             f"({len(feasible)} feasible trial(s)); choose another objective")

    standing = study.stability()
    steady = [t for t in usable if standing.get(t.number) != "drifting"]
    warnings: list[str] = []
    excluded = tuple(t.number for t in usable if standing.get(t.number) == "drifting")
    if steady:
        pool = steady
    else:
        pool = usable
        excluded = ()
        warnings.append("every qualifying trial is drifting (re-measured more than 10 % off "
                        "its trial): the figures below may not hold; re-measure with "
                        f"`autotune measure --from-trial {study.name}:N`")

    def score(t: TrialResult) -> float:
        value = _num(t.metrics.get(metric))
        assert value is not None  # pool holds trials that measured it
        return value if direction == "maximize" else -value

    # Best value first; equal values keep trial order (the earlier trial wins).
    ranked = sorted(pool, key=lambda t: (-score(t), t.number))
    best = ranked[0]
    ties: tuple[int, ...] = ()
    if rule is not None:
        top = score(best)
        margin = TIE_TOLERANCE * abs(top)
        tied = [t for t in ranked if score(t) >= top - margin]
        ties = tuple(t.number for t in tied)
        configs = {t.number: _stored_config(study, t) for t in tied}
        best = min(tied, key=lambda t: (_preference_key(t, configs[t.number], rule),
                                        -score(t), t.number))
    config = _stored_config(study, best)
    knobs = config.mode_knobs()  # a mode's foreign knobs mean nothing (gate refuses them)
    value = _num(best.metrics.get(metric))
    assert value is not None
    confidence = {k: best.metrics.get(k) for k in _CONFIDENCE_KEYS}
    confidence["stability"] = standing.get(best.number, "unchecked")
    if confidence.get("contended"):
        warnings.append(f"trial {best.number} was measured while another process used its "
                        "cores: its timings may be pessimistic")
    if confidence.get("noise") in ("noisy", "very_noisy"):
        warnings.append(f"trial {best.number}'s step times were {confidence['noise']} "
                        f"(spread {_show(confidence.get('spread'))}): its throughput is "
                        "less certain")
    return Recommendation(
        study=study.name, workload=study.space.workload, mode=study.space.mode,
        trial_number=best.number, objective=metric, direction=direction, value=value,
        constraints=tuple(str(c) for c in applied), config=knobs,
        metrics={m: best.metrics.get(m) for m in METRICS}, confidence=confidence,
        candidates=len(pool), prefer=prefer, ties=ties, excluded_drifting=excluded,
        warnings=tuple(warnings))


def _num(value: Any) -> float | None:
    """A metric value as a float, ``None`` when missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _measured(trial: TrialResult, metric: str) -> str:
    value = _num(trial.metrics.get(metric))
    return "not measured" if value is None else f"{value:.4g}"


def _show(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _stored_config(study: Study, trial: TrialResult) -> TrialConfig:
    """The trial's exact configuration (resolved execution) as stored; rebuilt from its
    parameters and the space when its row cannot be read."""
    from autotune.config import TrialConfig

    row = study.storage.measurement(study.id, trial.number)
    if row is not None:
        try:
            return TrialConfig.from_dict(json.loads(row.config_json))
        except (TypeError, KeyError, ValueError):  # written by another version
            pass
    return TrialConfig.from_params(study.space, trial.params, seed=study.seed or 0)


def _preference_key(trial: TrialResult, config: TrialConfig,
                    rule: tuple[str, Direction]) -> float:
    name, direction = rule
    if name == "threads":
        value = _num(config.threads) or _num(trial.metrics.get("threads"))
    elif name == "batch_size":
        value = float(config.batch_size)
    else:
        value = _num(trial.metrics.get(name))
    if value is None:  # not measured: after every trial that was
        return math.inf
    return value if direction == "minimize" else -value


# -- nothing feasible -------------------------------------------------------------------------


def _violation(c: Constraint, trial: TrialResult) -> float:
    """Relative violation (<= 0: satisfied; inf: metric not measured): the gap over the
    bound, so milliseconds, samples/s and MB can be compared and added."""
    return c.violation(_num(trial.metrics.get(c.metric))) / max(abs(c.bound), 1e-12)


def _no_feasible(study: Study, measured: Sequence[TrialResult],
                 applied: Sequence[Constraint]) -> RecommendError:
    """The error for "no trial satisfies the constraints", naming the constraint that
    binds and the nearest trials."""
    violated = {t.number: [c for c in applied if _violation(c, t) > 0] for t in measured}
    if not applied or not any(violated.values()):
        # Every measured trial satisfies the constraints yet none is feasible: the study
        # judged them infeasible for another reason (an objective it could not measure).
        return RecommendError(f"no feasible trial in study {study.name!r} "
                              f"({len(measured)} measured); `autotune study show "
                              f"{study.name} --all` says why each is infeasible")

    for c in applied:
        if all(_num(t.metrics.get(c.metric)) is None for t in measured):
            hint = (" (a latency percentile is reported only from enough measured steps: "
                    "put it in the study's objectives or constraints so its trials measure "
                    "that many)") if c.metric.startswith("latency_p") else ""
            return RecommendError(
                f"no trial of study {study.name!r} measured {c.metric}, so {c} cannot be "
                f"checked{hint}", binding=str(c),
                nearest=tuple((t.number, None) for t in measured[:3]))

    def binding_key(c: Constraint) -> tuple[int, int, float]:
        # Binds = relaxing it alone would admit the most trials; then the most excluded;
        # then the one the nearest trial misses by the least.
        only = sum(v == [c] for v in violated.values())
        total = sum(c in v for v in violated.values())
        closest = min((_violation(c, t) for t in measured if c in violated[t.number]),
                      default=math.inf)
        return (only, total, -closest)

    binding = max(applied, key=binding_key)

    def distance(t: TrialResult) -> tuple[int, float]:
        # Fewest violated constraints first, then the smallest total relative violation.
        gaps = [_violation(c, t) for c in violated[t.number]]
        return (len(gaps), sum(gaps))

    nearest = sorted(measured, key=lambda t: (*distance(t), t.number))[:3]

    def describe(t: TrialResult) -> str:
        misses = ", ".join(f"{c.metric} {_measured(t, c.metric)}" for c in violated[t.number])
        return f"trial {t.number} ({misses or 'violates no condition given here'})"

    conditions = ", ".join(str(c) for c in applied)
    excluded = sum(binding in v for v in violated.values())
    return RecommendError(
        f"no trial of study {study.name!r} satisfies {conditions} ({len(measured)} measured "
        f"trial(s)); binding: {binding} (excludes {excluded}); nearest: "
        f"{'; '.join(describe(t) for t in nearest)}",
        binding=str(binding),
        nearest=tuple((t.number, _num(t.metrics.get(binding.metric))) for t in nearest))


# -- launch configurations --------------------------------------------------------------------


def launch_config(config: Mapping[str, Any], *, mode: str,
                  threads: int | None = None) -> dict[str, Any]:
    """``config``'s knobs spelled as its backend's framework spells them.

    Mirrors what the backend did when it measured the trial (:mod:`autotune.backends`):
    torch (fused optimizers, autocast in training, weights converted for inference,
    ``quantize_dynamic`` for int8, ``torch.compile`` for graph), TensorFlow (Keras dtype
    policies, Keras optimizers with torch's eps, ``tf.function``/``jit_compile``, TFLite
    for int8) and MindSpore (``set_context`` mode, ``amp.auto_mixed_precision`` "O2",
    ``nn`` optimizers). ``threads``: the thread count to spell (the count the trial's
    worker used when ``config["threads"]`` is ``None``). Infer mode has no optimizer.
    """
    from autotune.backends import BackendLookupError, get_spec

    backend = config.get("backend")
    n = threads if threads is not None else config.get("threads")
    common: dict[str, Any] = {"framework": backend, "mode": mode,
                              "batch_size": config.get("batch_size")}
    try:
        spec = get_spec(str(backend))
    except BackendLookupError:  # a backend not importable here: the knobs as autotune names them
        return {**common, "knobs": dict(config)}
    # each backend's spec spells its framework (autotune/backends/_spec_*.py); a
    # third-party backend without a spelling gets the knobs as autotune names them
    return {**common, **spec.launch_config(config, mode=mode, threads=n)}


__all__ = ["CONDITION_FORM", "PREFERENCES", "TIE_TOLERANCE", "Recommendation",
           "launch_config", "parse_condition", "parse_objective", "parse_prefer", "recommend"]
