"""Search-space files: YAML in, a validated :class:`SearchSpace` and Optuna distributions out.

A space file (see ``search_spaces/quickstart.yaml``) has these top-level keys:

``workload``
    a built-in workload name (``autotune.workloads.BUILTIN``: ``mlp``, ``digits_mlp``,
    ``cnn``), a factory ``"models/my_cnn.py:build"`` (relative to the space file) or
    ``"my_package.models:build"``, or a mapping ``{factory: ..., kwargs: {...}}``. The
    factory is checked here without being imported (the worker imports it).
``mode``
    ``train`` (optimizer steps, accuracy after the training budget) or ``infer``
    (forward passes on a trained model).
``objectives``
    1 to 4 ``metric: maximize|minimize`` entries; metrics from :data:`autotune.objectives.METRICS`.
``constraints``
    ``metric: "<op> <number>"`` entries, e.g. ``accuracy: ">= 0.9"``.
``params``
    knobs to search. A list is a categorical choice, a mapping ``{low, high, log?, step?}`` an
    int or float range (int when both bounds are ints), a scalar a fixed value.
``budget``
    per-trial limits, see :class:`Budget`.
``description``
    free text.

Every error names the file, the key path, what was given and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from autotune.config import (
    ATTENTIONS,
    CHECKPOINTINGS,
    EXECUTIONS,
    GENERATE_ONLY_KNOBS,
    KV_CACHES,
    MEMORY_FORMATS,
    MIN_SETUP_S,
    MODES,
    OPTIMIZERS,
    PRECISIONS,
    PRUNING_STRUCTURES,
    SAFETY_MARGIN_S,
    TRAIN_ONLY_KNOBS,
    WEIGHT_QUANTS,
    Budget,
    Mode,
)
from autotune.config import KNOB_DEFAULTS as KNOB_DEFAULTS  # re-export: tests import it
from autotune.exceptions import SpaceError
from autotune.objectives import DIRECTIONS, METRICS, MODE_METRICS, Constraint, Direction

_DEVICE_RE = re.compile(r"^(cpu|(cuda|tpu|npu):\d+|sim:[A-Za-z0-9_-]+)$")
_TOP_LEVEL_KEYS = ("workload", "mode", "objectives", "constraints", "params", "budget",
                   "description")


@dataclass(frozen=True)
class ParamSpec:
    """One knob of the space: categorical choices, an int/float range, or a fixed value."""

    name: str
    kind: Literal["categorical", "int", "float", "fixed"]
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def to_distribution(self) -> Any:
        """The Optuna distribution for this knob (``None`` for a fixed value)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        if self.kind == "float":
            return FloatDistribution(self.low or 0.0, self.high or 0.0, log=self.log,
                                     step=self.step)
        return None

    def values_for_check(self) -> list[Any]:
        """Representative values that must all be valid for the knob (choices or bounds)."""
        if self.kind in ("categorical", "fixed"):
            return list(self.choices)
        return [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. Build it with :func:`load_space` or :func:`parse_space`."""

    workload: str
    mode: Mode
    objectives: tuple[tuple[str, Direction], ...]
    constraints: tuple[Constraint, ...] = ()
    params: tuple[ParamSpec, ...] = ()
    budget: Budget = field(default_factory=Budget)
    description: str = ""
    #: the factory's keyword arguments (JSON-able)
    workload_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def workload_label(self) -> str:
        """The workload as shown to people: the factory and its kwargs."""
        from autotune.workloads import WorkloadRef

        return WorkloadRef(self.workload, self.workload_kwargs).label()

    @property
    def objective_names(self) -> list[str]:
        """Metric names of the objectives, in order."""
        return [name for name, _ in self.objectives]

    @property
    def directions(self) -> list[Direction]:
        """Optuna directions of the objectives, in order."""
        return [direction for _, direction in self.objectives]

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the searched knobs (fixed knobs are not searched)."""
        return {p.name: p.to_distribution() for p in self.params if p.kind != "fixed"}

    def fixed_params(self) -> dict[str, Any]:
        """Knobs given a single value in the file."""
        return {p.name: p.choices[0] for p in self.params if p.kind == "fixed"}

    def one_valued_params(self) -> dict[str, Any]:
        """Every knob the space allows one value of: the fixed ones and those listed with
        one choice or a range of one value (searched, so Optuna records the value on each
        trial, but a configuration built from partial parameters has it all the same)."""
        out = {}
        for p in self.params:
            if p.kind in ("fixed", "categorical") and len(p.choices) == 1:
                out[p.name] = p.choices[0]
            elif p.kind in ("int", "float") and p.low is not None and p.low == p.high:
                out[p.name] = int(p.low) if p.kind == "int" else p.low
        return out

    def param(self, name: str) -> ParamSpec | None:
        """The spec of knob ``name``, or ``None`` when the space leaves it at its default."""
        return next((p for p in self.params if p.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """A canonical, JSON-serialisable form (what is stored with a study)."""
        params: dict[str, Any] = {}
        for p in self.params:
            if p.kind == "fixed":
                params[p.name] = p.choices[0]
            elif p.kind == "categorical":
                params[p.name] = list(p.choices)
            else:
                rng: dict[str, Any] = {"low": p.low, "high": p.high}
                if p.log:
                    rng["log"] = True
                if p.step is not None:
                    rng["step"] = p.step
                params[p.name] = rng
        workload: Any = self.workload
        if self.workload_kwargs:
            workload = {"factory": self.workload, "kwargs": dict(self.workload_kwargs)}
        return {
            "workload": workload,
            "mode": self.mode,
            "objectives": dict(self.objectives),
            "constraints": {c.metric: f"{c.op} {c.bound!r}" for c in self.constraints},
            "params": params,
            # early_stop and defer_confirmation only when off: spaces stored before they
            # existed keep their fingerprint (they searched with the same default)
            "budget": {k: v for k, v in asdict(self.budget).items()
                       if v is not None and not (k in _BOOLEAN_BUDGET_KEYS and v)},
            "description": self.description,
        }

    def fingerprint(self) -> str:
        """SHA-256 of the canonical form: equal for spaces that search the same thing."""
        canonical = self.to_dict()
        canonical.pop("description", None)  # wording does not change what is searched
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Parsing


def one_line(text: str) -> str:
    """``text`` with newlines and other control characters escaped."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


class _Where:
    """Builds error messages that name the file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key_path: str, message: str) -> SpaceError:
        where = f"{self.source}: {key_path}" if key_path else self.source
        # Keys and values come from the user's file: escape control characters so the
        # message stays one line whatever the file contains.
        return SpaceError(one_line(f"{where}: {message}"))


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file. Raises :class:`SpaceError` naming the problem.

    A factory file named relative to the space file is resolved against its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpaceError(f"{path}: space file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpaceError(f"{path}: cannot read space file ({e})") from None
    return parse_space_text(text, source=str(path), base_dir=path.resolve().parent)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (plain YAML silently keeps the last one)."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


def parse_space_text(text: str, *, source: str = "<space>",
                     base_dir: Path | None = None) -> SearchSpace:
    """Parse YAML text (safe-loaded, duplicate keys refused) into a validated space."""
    where = _Where(source)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise where.fail("", f"malformed YAML{at}: {problem}") from None
    if data is None:
        raise where.fail("", "the space file is empty; it needs at least workload, mode and "
                             "objectives")
    if not isinstance(data, Mapping):
        raise where.fail("", f"a space file must be a YAML mapping, got {type(data).__name__}")
    return parse_space(data, source=source, base_dir=base_dir)


def parse_space(data: Mapping[str, Any], *, source: str = "<space>",
                base_dir: Path | None = None, check_files: bool = True) -> SearchSpace:
    """Validate a mapping (as loaded from YAML) into a :class:`SearchSpace`.

    ``base_dir`` resolves relative factory paths (default: the working directory).
    ``check_files=False`` reads a *stored* space: its factory file is not looked up (nor a
    third-party ``package.module:Class`` backend imported), so a study stays readable
    (list, show, export, dashboard) where the file is absent.
    """
    from autotune.workloads import parse_workload

    where = _Where(source)
    for key in data:
        if key not in _TOP_LEVEL_KEYS:
            raise where.fail(str(key), f"unknown key; allowed: {', '.join(_TOP_LEVEL_KEYS)}")
    for key in ("workload", "mode", "objectives"):
        if key not in data:
            raise where.fail(key, "is required")

    try:
        ref = parse_workload(data["workload"], base_dir or Path.cwd(), check=check_files)
    except ValueError as e:
        raise where.fail("workload", str(e)) from None

    mode = data["mode"]
    if mode not in MODES:
        raise where.fail("mode", f"got {mode!r}; allowed: {', '.join(MODES)}")

    objectives = _parse_objectives(data["objectives"], where)
    # An absent (or empty, `key:`) section means none; any other non-mapping is an error.
    def section(key: str) -> Any:
        value = data.get(key)
        return {} if value is None else value

    constraints = _parse_constraints(section("constraints"), where)
    params = _parse_params(section("params"), mode, where, check_files)
    _check_mode_metrics(mode, objectives, constraints, where)
    if ref.factory == "gpt":
        _check_gpt_lengths(ref.kwargs, mode, params, where)
    _check_simulated(ref.factory, ref.kwargs, params, where)
    budget = _parse_budget(section("budget"), where, stored=not check_files)
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise where.fail("description", "must be text")
    space = SearchSpace(
        workload=ref.factory, workload_kwargs=dict(ref.kwargs), mode=mode,
        objectives=objectives, constraints=constraints, params=params, budget=budget,
        description=description,
    )
    from autotune._data_parallel import check_space

    problem = check_space(space)
    if problem is not None:
        raise where.fail(*problem)
    return space


def _parse_objectives(raw: Any, where: _Where) -> tuple[tuple[str, Direction], ...]:
    if not isinstance(raw, Mapping) or not 1 <= len(raw) <= 4:
        raise where.fail("objectives", "must map 1 to 4 metric names to maximize|minimize, "
                                       f"got {raw!r}")
    out: list[tuple[str, Direction]] = []
    for metric, direction in raw.items():
        if metric not in METRICS:
            raise where.fail(f"objectives.{metric}",
                             f"unknown metric; allowed: {', '.join(METRICS)}")
        if direction not in DIRECTIONS:
            raise where.fail(f"objectives.{metric}",
                             f"unknown direction {direction!r}; allowed: maximize, minimize")
        out.append((metric, direction))
    return tuple(out)


def _parse_constraints(raw: Any, where: _Where) -> tuple[Constraint, ...]:
    if not isinstance(raw, Mapping):
        raise where.fail("constraints", f"must map metric names to bounds, got {raw!r}")
    out = []
    for metric, text in raw.items():
        if metric not in METRICS:
            raise where.fail(f"constraints.{metric}",
                             f"unknown metric; allowed: {', '.join(METRICS)}")
        try:
            out.append(Constraint.parse(metric, text))
        except ValueError as e:
            raise where.fail(f"constraints.{metric}", str(e)) from None
    return tuple(out)


def _check_mode_metrics(mode: str, objectives: Sequence[tuple[str, str]],
                        constraints: Sequence[Constraint], where: _Where) -> None:
    """An objective or SLO on a metric the mode never produces could never be met."""
    allowed = MODE_METRICS[mode]
    for section, names in (("objectives", [m for m, _ in objectives]),
                           ("constraints", [c.metric for c in constraints])):
        for name in names:
            if name not in allowed:
                other = "generate" if mode != "generate" else "train or infer"
                raise where.fail(f"{section}.{name}",
                                 f"is not produced in {mode} mode (only in {other} mode)")


def _largest(params: Sequence[ParamSpec], name: str, default: int) -> int:
    spec = next((p for p in params if p.name == name), None)
    if spec is None:
        return default
    return int(max(v for v in spec.values_for_check()))


def _check_gpt_lengths(kwargs: Mapping[str, Any], mode: str, params: Sequence[ParamSpec],
                       where: _Where) -> None:
    """The built-in gpt's lengths against its context, known before any trial."""
    from autotune.config import KNOB_DEFAULTS

    context = kwargs.get("context", 128)
    if not _is_int(context) or context < 1:
        raise where.fail("workload.kwargs.context", f"must be a positive integer, got "
                                                    f"{context!r}")
    seq_len = kwargs.get("seq_len", 64)
    if mode != "generate" and (not _is_int(seq_len) or not 1 <= seq_len <= context):
        raise where.fail("workload.kwargs.seq_len",
                         f"got {seq_len!r}; allowed: an integer in [1, context={context}]")
    if mode == "generate":
        prompt = _largest(params, "prompt_len", KNOB_DEFAULTS["prompt_len"])
        new = _largest(params, "new_tokens", KNOB_DEFAULTS["new_tokens"])
        if prompt + new > context:
            raise where.fail("params.new_tokens",
                             f"prompt_len + new_tokens reaches {prompt} + {new} = "
                             f"{prompt + new}, beyond the model's context of {context} "
                             "(workload.kwargs.context)")


def _check_simulated(workload: str, kwargs: Mapping[str, Any], params: Sequence[ParamSpec],
                     where: _Where) -> None:
    """A simulated workload declares a valid simulator, and simulated devices (``sim:NAME``)
    are declared by it and only run on the ``sim`` backend."""
    from autotune import simulation

    devices = next((p for p in params if p.name == "device"), None)
    sim_devices = [str(d) for d in (devices.choices if devices is not None else ())
                   if simulation.is_simulated(d)]
    if workload != simulation.WORKLOAD:
        if sim_devices:
            raise where.fail("params.device", f"{sim_devices[0]} is a simulated device: it "
                             "needs workload 'simulated' (a model and devices declared in "
                             "the file; see autotune.simulation)")
        return
    try:
        sim = simulation.parse_simulator(kwargs)
        for device in sim_devices:
            sim.device(device)
    except simulation.SimulationError as e:
        raise where.fail("workload", str(e)) from None
    backend = next((p for p in params if p.name == "backend"), None)
    if backend is None or [str(b) for b in backend.choices] != ["sim"] or \
            len(sim_devices) != len(devices.choices if devices is not None else [None]):
        raise where.fail("params", "the simulated workload runs on backend 'sim' and "
                         "simulated devices only: set backend: sim and device: [sim:NAME, "
                         "...]")


# Per-knob value checks: (predicate, description of what is allowed).
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)) and math.isfinite(v)


def _knob_checks() -> dict[str, tuple[Any, str]]:
    from autotune.backends import BACKENDS, is_third_party_name

    return {
        "backend": (lambda v: isinstance(v, str) and (v in BACKENDS
                                                      or is_third_party_name(v)),
                    f"one of {', '.join(BACKENDS)}, or a third-party "
                    "'package.module:Class'"),
        "device": (lambda v: isinstance(v, str) and bool(_DEVICE_RE.match(v)),
                   "cpu, cuda:N, tpu:N, npu:N or sim:NAME (a simulated device)"),
        "batch_size": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
        "precision": (lambda v: isinstance(v, str) and v in PRECISIONS,
                      f"one of {', '.join(PRECISIONS)}"),
        "learning_rate": (lambda v: _is_number(v) and v > 0, "a positive number"),
        "optimizer": (lambda v: isinstance(v, str) and v in OPTIMIZERS,
                      f"one of {', '.join(OPTIMIZERS)}"),
        "pruning_ratio": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
        "threads": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
        "pruning_structure": (lambda v: isinstance(v, str) and v in PRUNING_STRUCTURES,
                              f"one of {', '.join(PRUNING_STRUCTURES)}"),
        "execution": (lambda v: isinstance(v, str) and v in EXECUTIONS,
                      f"one of {', '.join(EXECUTIONS)}"),
        "prompt_len": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
        "new_tokens": (lambda v: _is_int(v) and v >= 2,
                       "an integer >= 2 (TPOT needs a second token)"),
        "kv_cache": (lambda v: isinstance(v, str) and v in KV_CACHES,
                     f"one of {', '.join(KV_CACHES)}"),
        "attention": (lambda v: isinstance(v, str) and v in ATTENTIONS,
                      f"one of {', '.join(ATTENTIONS)}"),
        "weight_quant": (lambda v: isinstance(v, str) and v in WEIGHT_QUANTS,
                         f"one of {', '.join(WEIGHT_QUANTS)}"),
        "checkpointing": (lambda v: isinstance(v, str) and v in CHECKPOINTINGS,
                          f"one of {', '.join(CHECKPOINTINGS)}"),
        "data_parallel": (lambda v: _is_int(v) and v >= 1,
                          "a positive integer (replicas of one trial)"),
        "memory_format": (lambda v: isinstance(v, str) and v in MEMORY_FORMATS,
                          f"one of {', '.join(MEMORY_FORMATS)}"),
    }


#: Knobs whose value "off" YAML 1.1 reads as the boolean false (``kv_cache: [dynamic, off]``)
_OFF_KNOBS = frozenset({"kv_cache", "checkpointing"})


def _yaml_off(name: str, value: Any) -> Any:
    """``off`` as the user wrote it: YAML reads a bare ``off`` (and ``no``) as ``False``."""
    if name not in _OFF_KNOBS:
        return value
    if value is False:
        return "off"
    if isinstance(value, list):
        return ["off" if v is False else v for v in value]
    return value


def mode_knob_error(name: str, mode: str, *, where: str = "space") -> str | None:
    """Why knob ``name`` has no meaning in ``mode`` (``None``: it has one), for a space
    file's ``params`` and a gate file (``where``, whose mode is the study's) alike."""
    if name in TRAIN_ONLY_KNOBS and mode != "train":
        need, what = "train", "a training knob"
    elif name in GENERATE_ONLY_KNOBS and mode != "generate":
        need, what = "generate", "a generation knob"
    elif name == "weight_quant" and mode == "train":
        return ("quantises a trained model's weights for inference; "
                + ("use mode infer or generate" if where == "space" else "remove it"))
    else:
        return None
    fix = f"remove it or set mode: {need}" if where == "space" else "remove it"
    return f"is {what} and the {where}'s mode is {mode}; {fix}"


def _parse_params(raw: Any, mode: str, where: _Where,
                  check_files: bool = True) -> tuple[ParamSpec, ...]:
    if not isinstance(raw, Mapping):
        raise where.fail("params", f"must be a mapping of knob names, got {raw!r}")
    checks = _knob_checks()
    specs = []
    for name, value in raw.items():
        key = f"params.{name}"
        if name not in checks:
            raise where.fail(key, f"unknown parameter; allowed: {', '.join(checks)}")
        wrong_mode = mode_knob_error(name, mode)
        if wrong_mode is not None:
            raise where.fail(key, wrong_mode)
        value = _yaml_off(name, value)
        if name == "device" and value == "auto":
            # resolved to the devices found when the study is created (autotune devices)
            specs.append(ParamSpec(name, "fixed", choices=("auto",)))
            continue
        spec = _parse_param(name, value, key, where)
        ok, allowed = checks[name]
        for v in spec.values_for_check():
            if not ok(v):
                raise where.fail(key, f"got {v!r}; allowed: {allowed}")
        if name == "backend" and check_files:
            _check_third_party_backends(spec, key, where)
        specs.append(spec)
    return tuple(specs)


def _check_third_party_backends(spec: ParamSpec, key: str, where: _Where) -> None:
    """A third-party ``package.module:Class`` backend must import and have (or get) a
    spec; a stored space (``check_files=False``) is read without importing it."""
    from autotune.backends import BACKENDS, BackendLookupError, get_spec

    for v in spec.values_for_check():
        if v not in BACKENDS:
            try:
                get_spec(v)
            except BackendLookupError as e:
                raise where.fail(key, str(e)) from None


_INTEGER_KNOBS = frozenset({"batch_size", "threads", "prompt_len", "new_tokens",
                            "data_parallel"})


def _parse_param(name: str, value: Any, key: str, where: _Where) -> ParamSpec:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if not value:
            raise where.fail(key, "an empty list of choices")
        if len(set(map(repr, value))) != len(value):
            raise where.fail(key, f"duplicate choices in {list(value)!r}")
        return ParamSpec(name, "categorical", choices=tuple(value))
    if isinstance(value, Mapping):
        unknown = set(value) - {"low", "high", "log", "step"}
        if unknown:
            raise where.fail(f"{key}.{sorted(unknown)[0]}",
                             "unknown range key; allowed: low, high, log, step")
        if "low" not in value or "high" not in value:
            raise where.fail(key, "a range needs both low and high")
        low, high = value["low"], value["high"]
        log, step = value.get("log", False), value.get("step")
        for k, v in (("low", low), ("high", high)):
            if not _is_number(v):
                raise where.fail(f"{key}.{k}", f"must be a number, got {v!r}")
        if low > high:
            raise where.fail(key, f"low ({low}) must be <= high ({high})")
        if not isinstance(log, bool):
            raise where.fail(f"{key}.log", f"must be true or false, got {log!r}")
        if step is not None and (not _is_number(step) or step <= 0):
            raise where.fail(f"{key}.step", f"must be a positive number, got {step!r}")
        if log and step is not None:
            raise where.fail(key, "log and step cannot be combined (Optuna does not allow it)")
        if log and low <= 0:
            raise where.fail(f"{key}.low", f"must be > 0 on a log scale, got {low!r}")
        is_int = _is_int(low) and _is_int(high) and (step is None or _is_int(step))
        if name in _INTEGER_KNOBS and not is_int:
            raise where.fail(key, "low, high and step must be integers for this knob, got "
                                  f"low={low!r}, high={high!r}, step={step!r}")
        return ParamSpec(name, "int" if is_int else "float", low=low, high=high,
                         step=step, log=log)
    return ParamSpec(name, "fixed", choices=(value,))


def minimum_trial_seconds(budget: Budget) -> float:
    """The shortest ``trial_seconds`` in which ``budget`` can measure anything: set-up,
    the shortest warm-up, the minimum window and the worker's margin before its kill."""
    return MIN_SETUP_S + budget.warmup_min_s + budget.window_min_s + SAFETY_MARGIN_S


def check_measurable(budget: Budget, source: str = "<space>") -> None:
    """Refuse a budget whose ``trial_seconds`` cannot measure anything, naming the minimum.

    Checked when a study is created or a configuration measured, not when a stored study
    is loaded: a study stored by an older version stays readable.
    """
    needed = minimum_trial_seconds(budget)
    if budget.trial_seconds < needed:
        raise _Where(source).fail("budget.trial_seconds", (
            f"{budget.trial_seconds:g} s is too short to measure anything; this budget needs "
            f"at least {needed:g} s (set-up {MIN_SETUP_S:g} s + shortest warm-up "
            f"{budget.warmup_min_s:g} s + window_min_s {budget.window_min_s:g} s + "
            f"{SAFETY_MARGIN_S:g} s safety margin)"))


#: Budget keys that are switches (true or false; stored only when false).
_BOOLEAN_BUDGET_KEYS = ("early_stop", "defer_confirmation")
#: Budget keys of earlier versions: what replaced each (a stored space drops them).
_RETIRED_BUDGET_KEYS = {
    "target_spread": "the window stops on the confidence interval of the median step time "
                     "now, not on the spread of single steps: use target_ci (default 0.02, "
                     "+-2 %)",
}


def _parse_budget(raw: Any, where: _Where, *, stored: bool = False) -> Budget:
    if not isinstance(raw, Mapping):
        raise where.fail("budget", f"must be a mapping, got {raw!r}")
    allowed = {f.name: f for f in fields(Budget)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _RETIRED_BUDGET_KEYS:
            if stored:  # a study made before: readable, and measured as it is now
                continue
            raise where.fail(f"budget.{key}", f"no longer used: {_RETIRED_BUDGET_KEYS[key]}")
        if key not in allowed:
            raise where.fail(f"budget.{key}", f"unknown key; allowed: {', '.join(allowed)}")
        if key == "memory_mb" and value is None:  # explicit "no cap", the default
            continue
        if key in _BOOLEAN_BUDGET_KEYS:
            if not isinstance(value, bool):
                raise where.fail(f"budget.{key}", f"must be true or false, got {value!r}")
            values[key] = value
            continue
        integer = key in ("window_min_steps", "train_epochs", "memory_mb")
        valid = (_is_int(value) if integer else _is_number(value)) and value > 0
        if not valid:
            kind = "a positive integer" if integer else "a positive number"
            raise where.fail(f"budget.{key}", f"must be {kind}, got {value!r}")
        values[key] = value
    if "warmup_min_s" not in values:  # a short warm-up cap shortens the default floor too
        values["warmup_min_s"] = min(Budget.warmup_min_s, values.get(
            "warmup_max_s", Budget.warmup_max_s))
    budget = Budget(**values)
    if budget.warmup_min_s > budget.warmup_max_s:
        raise where.fail("budget", f"warmup_min_s ({budget.warmup_min_s}) must be <= "
                                   f"warmup_max_s ({budget.warmup_max_s})")
    if budget.window_min_s > budget.window_max_s:
        raise where.fail("budget", f"window_min_s ({budget.window_min_s}) must be <= "
                                   f"window_max_s ({budget.window_max_s})")
    if budget.window_max_s + budget.warmup_max_s >= budget.trial_seconds:
        raise where.fail("budget", "trial_seconds must exceed warmup_max_s + window_max_s "
                                   f"(got {budget.trial_seconds} <= "
                                   f"{budget.warmup_max_s} + {budget.window_max_s})")
    return budget
