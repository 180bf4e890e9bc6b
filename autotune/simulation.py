"""The simulator: devices and a model declared in a space file, with a known true front.

A simulated study searches the ``simulated`` workload on the ``sim`` backend, on devices
``sim:NAME`` that the workload declares::

    workload:
      factory: simulated
      kwargs:
        model: {flops_per_sample: 2.0e+9, params: 25.0e+6,
                activation_bytes_per_sample: 6.0e+6, quality: 0.76}
        devices:
          h100: {flops: {fp32: 6.7e+13, bf16: 9.9e+14}, memory_gb: 80,
                 bandwidth_gbs: 3350, idle_w: 70, max_w: 700, noise: 0.03}
    params:
      backend: sim
      device: [sim:h100]

It is for planning without hardware (what would this model do on a device we do not
have?), for comparing search strategies against a front that is known exactly
(:func:`true_front`), and for tests that need a backend's behaviour but not a real
measurement. Nothing it produces is a measurement: its energy source is ``simulated``,
every result carries :data:`SIMULATED_NOTE` among its warnings, and the CLI and
dashboard label its figures.

The model is a roofline with a saturation curve (:func:`expected_step_s`): a step costs
the larger of its arithmetic at the device's peak times the utilisation a batch of that
size reaches, and its memory traffic at the device's bandwidth, plus a fixed launch
overhead. Memory (:func:`memory_bytes`) is weights, gradients and optimizer state in
training, plus activations per sample: beyond the device's capacity a trial is out of
memory. Power rises from idle to the maximum with the arithmetic's share of the step.
Quality loses to lower precision, pruning, a learning rate away from the model's best and
very large batches. Step times get multiplicative log-normal noise of ``noise``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.space import SearchSpace

#: In every simulated result's warnings, so nothing downstream takes it for a measurement.
SIMULATED_NOTE = "simulated by autotune.simulation: not a measurement"
#: The workload name of simulated studies.
WORKLOAD = "simulated"
#: a simulated device is named ``sim:NAME``
DEVICE_PREFIX = "sim:"


def is_simulated(device: object) -> bool:
    """Whether ``device`` names a simulated device (``sim:NAME``)."""
    return str(device).startswith(DEVICE_PREFIX)
#: Bytes per value of each precision.
PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
#: Quality lost to each precision (int8: post-training quantisation of an inference model).
PRECISION_QUALITY_LOSS = {"fp32": 0.0, "bf16": 0.002, "fp16": 0.001, "int8": 0.01}

_DEVICE_KEYS = {"flops", "memory_gb", "bandwidth_gbs", "idle_w", "max_w", "noise",
                "saturation_batch", "overhead_ms"}
_MODEL_KEYS = {"flops_per_sample", "params", "activation_bytes_per_sample", "quality",
               "best_learning_rate", "samples_per_epoch"}


class SimulationError(ValueError):
    """A simulator declaration that cannot be used; the message is one line naming the
    key, what was given and what is allowed."""


@dataclass(frozen=True)
class SimDevice:
    """A simulated device: peak arithmetic per precision (FLOP/s; a precision it lacks is
    unsupported), memory capacity and bandwidth, a power range and step-time noise."""

    name: str
    flops: Mapping[str, float]
    memory_gb: float = 16.0
    bandwidth_gbs: float = 100.0
    idle_w: float = 10.0
    max_w: float = 100.0
    #: relative standard deviation of a step's time (log-normal)
    noise: float = 0.03
    #: the batch at which the device reaches half its peak
    saturation_batch: float = 32.0
    #: fixed cost of every step (kernel launches, the framework's own work)
    overhead_ms: float = 0.05


@dataclass(frozen=True)
class SimModel:
    """The simulated model's costs and quality."""

    flops_per_sample: float
    params: float
    activation_bytes_per_sample: float = 1.0e6
    quality: float = 0.9
    best_learning_rate: float = 1.0e-3
    samples_per_epoch: int = 4096


@dataclass(frozen=True)
class Simulator:
    """A model and the devices it may run on (the ``simulated`` workload's kwargs)."""

    model: SimModel
    devices: Mapping[str, SimDevice] = field(default_factory=dict)

    def device(self, device: str) -> SimDevice:
        """The declaration of ``sim:NAME``; :class:`SimulationError` when undeclared."""
        name = device.partition(":")[2]
        if name not in self.devices:
            raise SimulationError(f"device {device!r} is not declared in the simulated "
                                  f"workload; declared: "
                                  f"{', '.join(f'sim:{d}' for d in self.devices) or 'none'}")
        return self.devices[name]


def _number(value: Any, key: str, *, positive: bool = True) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        raise SimulationError(f"{key}: expected a {'positive' if positive else 'non-negative'}"
                              f" number, got {value!r}")
    return float(value)


def _mapping(value: Any, key: str, allowed: set[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SimulationError(f"{key}: expected a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise SimulationError(f"{key}.{unknown[0]}: unknown key; allowed: "
                              f"{', '.join(sorted(allowed))}")
    return value


def parse_simulator(kwargs: Mapping[str, Any]) -> Simulator:
    """The simulator the ``simulated`` workload's ``kwargs`` declare (``model`` and
    ``devices``); raises :class:`SimulationError` with the offending key."""
    _mapping(kwargs, "workload.kwargs", {"model", "devices"})
    if "model" not in kwargs:
        raise SimulationError("workload.kwargs.model: is required (flops_per_sample, params, "
                              "...)")
    raw = _mapping(kwargs["model"], "workload.kwargs.model", _MODEL_KEYS)
    for key in ("flops_per_sample", "params"):
        if key not in raw:
            raise SimulationError(f"workload.kwargs.model.{key}: is required")
    numbers = {k: _number(v, f"workload.kwargs.model.{k}") for k, v in raw.items()
               if k != "samples_per_epoch"}
    if not numbers.get("quality", 0.5) <= 1:
        raise SimulationError(f"workload.kwargs.model.quality: expected a number in (0, 1], "
                              f"got {raw['quality']!r}")
    epoch = raw.get("samples_per_epoch", 4096)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        raise SimulationError("workload.kwargs.model.samples_per_epoch: expected a positive "
                              f"integer, got {epoch!r}")
    model = SimModel(samples_per_epoch=epoch, **numbers)
    devices_raw = kwargs.get("devices") or {}
    if not isinstance(devices_raw, Mapping) or not devices_raw:
        raise SimulationError("workload.kwargs.devices: expected a mapping of device names "
                              "to their declarations (flops, memory_gb, ...)")
    devices = {}
    for name, spec in devices_raw.items():
        key = f"workload.kwargs.devices.{name}"
        if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
            raise SimulationError(f"{key}: a device name is letters, digits, '-' and '_'")
        spec = _mapping(spec, key, _DEVICE_KEYS)
        flops = _mapping(spec.get("flops"), f"{key}.flops", set(PRECISION_BYTES))
        if not flops:
            raise SimulationError(f"{key}.flops: give the peak FLOP/s of at least one "
                                  f"precision ({', '.join(PRECISION_BYTES)})")
        values = {k: _number(v, f"{key}.{k}", positive=k not in ("noise", "overhead_ms"))
                  for k, v in spec.items() if k != "flops"}
        if values.get("max_w", 100.0) < values.get("idle_w", 10.0):
            raise SimulationError(f"{key}.max_w: must be at least idle_w")
        devices[name] = SimDevice(
            name=name, flops={p: _number(v, f"{key}.flops.{p}") for p, v in flops.items()},
            **values)
    return Simulator(model, devices)


# -- the physics --------------------------------------------------------------------------------


def _train(config: TrialConfig) -> bool:
    return config.mode == "train"


def _kept(config: TrialConfig) -> float:
    """Share of the model's work left after pruning (structured pruning removes it;
    unstructured zeros do not speed dense kernels up)."""
    if config.pruning_structure == "structured":
        return 1.0 - config.pruning_ratio
    return 1.0


def unsupported_reason(sim: Simulator, config: TrialConfig) -> str | None:
    """Why the simulated device cannot run ``config`` (``None``: it can)."""
    device = sim.device(config.device)
    if config.precision not in device.flops:
        return (f"simulated device {config.device} has no {config.precision} "
                f"(declared: {', '.join(device.flops)})")
    if config.precision == "int8" and config.mode == "train":
        return "int8 is supported only in infer mode"
    return None


def expected_step_s(sim: Simulator, config: TrialConfig) -> float:
    """The noise-free time of one step of ``config``."""
    device, model = sim.device(config.device), sim.model
    batch = config.batch_size
    multiplier = 3.0 if _train(config) else 1.0
    utilisation = batch / (batch + device.saturation_batch)
    compute = model.flops_per_sample * _kept(config) * multiplier * batch / (
        device.flops[config.precision] * utilisation)
    return max(compute, traffic_bytes(sim, config) / (device.bandwidth_gbs * 1e9)) + \
        device.overhead_ms * 1e-3


def traffic_bytes(sim: Simulator, config: TrialConfig) -> float:
    """Bytes one step moves: the weights (read; in training also the gradients and
    optimizer state, read and written) and the activations."""
    model = sim.model
    width = PRECISION_BYTES[config.precision]
    weights = model.params * _kept(config) * width
    if _train(config):
        weights += model.params * _kept(config) * (width + 2 * 4 * 2)
    activations = model.activation_bytes_per_sample * width / 4 * config.batch_size
    return weights + activations * (2.0 if _train(config) else 1.0)


def memory_bytes(sim: Simulator, config: TrialConfig) -> float:
    """Device memory ``config`` needs: weights (plus fp32 gradients and two optimizer
    moments in training) and the activations of a batch (kept for the backward pass in
    training, one layer's worth in inference)."""
    model = sim.model
    width = PRECISION_BYTES[config.precision]
    params = model.params * _kept(config)
    weights = params * width + (params * 4 * 3 if _train(config) else 0.0)
    per_sample = model.activation_bytes_per_sample * width / 4
    activations = per_sample * config.batch_size * (1.0 if _train(config) else 0.25)
    return weights + activations


def memory_limit_bytes(sim: Simulator, config: TrialConfig) -> float:
    """The simulated device's memory."""
    return sim.device(config.device).memory_gb * 2**30


def power_w(sim: Simulator, config: TrialConfig) -> float:
    """Mean power during a step: idle plus the arithmetic's share of the range."""
    device = sim.device(config.device)
    step = expected_step_s(sim, config) - device.overhead_ms * 1e-3
    batch = config.batch_size
    utilisation = batch / (batch + device.saturation_batch)
    multiplier = 3.0 if _train(config) else 1.0
    busy = sim.model.flops_per_sample * _kept(config) * multiplier * batch / (
        device.flops[config.precision] * utilisation)
    share = min(1.0, busy / step) * utilisation if step > 0 else 0.0
    return device.idle_w + (device.max_w - device.idle_w) * share


def quality(sim: Simulator, config: TrialConfig) -> float:
    """The simulated model's quality (accuracy-like, higher is better)."""
    q = sim.model.quality - PRECISION_QUALITY_LOSS[config.precision]
    q -= 0.3 * config.pruning_ratio ** 2
    if _train(config):
        q -= 0.04 * math.log10(config.learning_rate / sim.model.best_learning_rate) ** 2
        q -= 0.01 * max(0.0, math.log2(config.batch_size / 512))
    return max(0.0, min(1.0, q))


def expected_metrics(sim: Simulator, config: TrialConfig) -> dict[str, float] | None:
    """What an infinitely long, noise-free trial of ``config`` would report (``None``:
    it cannot run: unsupported or out of memory)."""
    if unsupported_reason(sim, config) is not None or \
            memory_bytes(sim, config) > memory_limit_bytes(sim, config):
        return None
    step = expected_step_s(sim, config)
    noise = sim.device(config.device).noise
    # the median of log-normal noise is the noise-free value; its mean and p95 are not
    throughput = config.batch_size / step
    return {
        "throughput_sps": throughput,
        "latency_p50_ms": step * 1e3,
        "latency_p95_ms": step * math.exp(1.645 * noise) * 1e3,
        "latency_p99_ms": step * math.exp(2.326 * noise) * 1e3,
        "power_w": power_w(sim, config),
        "energy_per_sample_j": power_w(sim, config) / throughput,
        "accuracy": quality(sim, config),
        "peak_memory_mb": memory_bytes(sim, config) / 2**20,
    }


# -- the true front -----------------------------------------------------------------------------


def _grid(space: SearchSpace, name: str, points: int) -> list[Any]:
    """The values of knob ``name`` enumerated for the true front: every choice, every
    integer of a small integer range, else ``points`` values spaced as the space samples."""
    spec = space.param(name)
    assert spec is not None
    if spec.kind in ("categorical", "fixed"):
        return list(spec.choices)
    low, high = spec.low, spec.high
    assert low is not None and high is not None
    if spec.kind == "int":
        step = int(spec.step or 1)
        if (high - low) // step + 1 <= points * 4:
            return list(range(int(low), int(high) + 1, step))
        if spec.log:
            values = {round(math.exp(math.log(low) + i * (math.log(high) - math.log(low))
                                     / (points - 1))) for i in range(points)}
        else:
            values = {int(low + round(i * (high - low) / (points - 1) / step) * step)
                      for i in range(points)}
        return sorted(values)
    if spec.log:
        return [math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (points - 1))
                for i in range(points)]
    return [low + i * (high - low) / (points - 1) for i in range(points)]


def enumerate_configs(space: SearchSpace, *, points: int = 64) -> Iterable[dict[str, Any]]:
    """Every combination of the space's searched knobs on :func:`_grid`'s values."""
    names = list(space.distributions())
    grids = [_grid(space, n, points) for n in names]
    for values in itertools.product(*grids):
        yield dict(zip(names, values, strict=True))


@dataclass(frozen=True)
class TrueFront:
    """The exact front of a simulated space on an enumeration grid."""

    points: list[tuple[dict[str, Any], list[float]]]
    hypervolume: float
    reference: list[float]
    evaluated: int
    feasible: int


def true_front(space: SearchSpace, *, points: int = 64,
               reference: Sequence[float] | None = None) -> TrueFront:
    """Enumerate ``space`` (a simulated study's) and return its exact Pareto front of
    noise-free values among the configurations meeting every constraint, with its
    hypervolume from ``reference`` (default: :func:`simulated_reference`)."""
    from autotune._run import trial_config
    from autotune.pareto import hypervolume, pareto_front

    sim = parse_simulator(space.workload_kwargs)
    names, directions = space.objective_names, space.directions
    candidates: list[tuple[dict[str, Any], list[float]]] = []
    evaluated = 0
    for params in enumerate_configs(space, points=points):
        evaluated += 1
        config = trial_config(space, params, seed=0)
        metrics = expected_metrics(sim, config)
        if metrics is None or any(c.violation(metrics[c.metric]) > 0
                                  for c in space.constraints):
            continue
        candidates.append((params, [metrics[n] for n in names]))
    ref = list(reference) if reference is not None else simulated_reference(space)
    front_index = pareto_front(list(enumerate(v for _, v in candidates)), directions)
    front = [candidates[i] for i in front_index]
    return TrueFront(points=front,
                     hypervolume=hypervolume([v for _, v in front], directions, ref),
                     reference=ref, evaluated=evaluated, feasible=len(candidates))


def simulated_reference(space: SearchSpace) -> list[float]:
    """A hypervolume reference point for a simulated space: each objective's worst value
    over the feasible grid (0 for what is maximised), so every feasible point counts."""
    from autotune._run import trial_config

    sim = parse_simulator(space.workload_kwargs)
    worst: dict[str, float] = {}
    for params in enumerate_configs(space, points=16):
        metrics = expected_metrics(sim, trial_config(space, params, seed=0))
        if metrics is None:
            continue
        for name, direction in space.objectives:
            value = metrics[name]
            if direction == "maximize":
                worst[name] = 0.0
            else:
                worst[name] = max(worst.get(name, value), value * 1.1)
    return [worst.get(n, 0.0) for n in space.objective_names]


__all__ = ["PRECISION_BYTES", "SIMULATED_NOTE", "WORKLOAD", "SimDevice", "SimModel",
           "SimulationError", "Simulator", "TrueFront", "enumerate_configs",
           "expected_metrics", "expected_step_s", "memory_bytes", "memory_limit_bytes",
           "parse_simulator", "power_w", "quality", "simulated_reference", "true_front",
           "unsupported_reason"]


# -- the workload -------------------------------------------------------------------------------


def _no_batch(batch_size: int, rng: Any) -> tuple[Any, Any]:
    """Simulated steps need no data: one placeholder sample per row."""
    import numpy as np

    return np.zeros((batch_size, 1), np.float32), np.zeros(batch_size, np.int64)


def simulated_workload(framework: str, **kwargs: Any) -> Any:
    """The ``simulated`` built-in workload: a :class:`Simulator` from the space file's
    ``model`` and ``devices`` (see the module docstring), run by the ``sim`` backend."""
    from autotune.exceptions import ModelFactoryError
    from autotune.workloads import ModelSpec

    if framework != "sim":
        raise ModelFactoryError(f"the simulated workload runs on backend 'sim' only, not "
                                f"{framework!r}")
    try:
        sim = parse_simulator(kwargs)
    except SimulationError as e:
        raise ModelFactoryError(str(e)) from None
    return ModelSpec(model=sim, make_batch=_no_batch, quality_name="accuracy",
                     epoch_samples=sim.model.samples_per_epoch,
                     description="simulated model (autotune.simulation)")
