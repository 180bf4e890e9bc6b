"""Data parallelism as a search dimension: the rules every layer shares.

A trial with ``data_parallel: N`` runs as N cooperating replica processes
(:mod:`autotune.launch._replicas`), each on its own device or its own disjoint group of CPU
cores, with the framework's own data-parallel machinery (torch ``DistributedDataParallel``,
TensorFlow ``MultiWorkerMirroredStrategy``). ``batch_size`` stays the *global* batch: it is
split evenly over the replicas, so trials of different degrees do the same work per step
and every sample is counted once. This module holds what the space check, the driver's
pre-check, the worker and the study views agree on: which splits and placements are
possible, and the scaling efficiency of a study's trials.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Knobs that do not change what a configuration *is* for the scaling comparison: the
#: degree itself, and the per-replica thread count (a 2-replica, 1-thread trial is compared
#: with the best single replica of any thread count)
_SCALING_FREE = ("data_parallel", "threads")


def split_reason(batch_size: int, replicas: int) -> str | None:
    """Why a global batch of ``batch_size`` cannot be split over ``replicas`` (``None``:
    it splits evenly)."""
    if replicas <= 1:
        return None
    if batch_size % replicas:
        return (f"batch_size {batch_size} does not split evenly over data_parallel="
                f"{replicas} replicas (batch_size is the global batch; use a multiple of "
                f"{replicas})")
    return None


def core_groups(cores: Sequence[int], replicas: int,
                threads: int | None) -> list[list[int]]:
    """``replicas`` disjoint groups of ``threads`` cores each (``None``: the worker's cores
    shared out evenly) from ``cores``; raises :class:`UnsupportedConfigError` when they do
    not fit (replicas never share a core)."""
    from autotune.exceptions import UnsupportedConfigError

    per = threads if threads is not None else len(cores) // max(1, replicas)
    if per < 1 or per * replicas > len(cores):
        need = f"{replicas} x {threads} cores" if threads else f"{replicas} cores"
        raise UnsupportedConfigError(
            f"data_parallel={replicas} with threads={threads or 'auto'} needs {need} "
            f"(replicas never share a core); this worker may use {len(cores)} "
            f"({','.join(map(str, cores))})")
    return [list(cores[r * per:(r + 1) * per]) for r in range(replicas)]


def replica_devices(device: str, replicas: int) -> list[str]:
    """The device of each replica: ``cpu`` for every one (they differ by cores), or on an
    accelerator ``kind:K`` and the next ``replicas - 1`` devices of its kind, so a worker
    with 8 GPUs runs one 8-way trial on ``cuda:0`` or eight 1-way trials on
    ``cuda:0`` ... ``cuda:7``."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return ["cpu"] * replicas
    first = int(index or 0)
    return [f"{kind}:{first + r}" for r in range(replicas)]


def precheck_reason(config: Any) -> str | None:
    """Why a data-parallel ``config`` (a :class:`~autotune.config.TrialConfig`) cannot
    run, known without a worker; ``None`` for one replica or when nothing rules it out."""
    replicas = int(getattr(config, "data_parallel", 1) or 1)
    if replicas == 1:
        return None
    if config.mode == "generate":
        return ("data_parallel > 1 is for train and infer mode; generate mode runs one "
                "replica per trial here")
    reason = split_reason(config.batch_size, replicas)
    if reason is not None:
        return reason
    if config.device == "cpu" and config.threads is not None:
        # this process's cores: a worker never has more (a --jobs worker has fewer, and
        # says so itself)
        from autotune._jobs import available_cores
        from autotune.exceptions import UnsupportedConfigError

        try:
            core_groups(available_cores(), replicas, config.threads)
        except UnsupportedConfigError as e:
            return str(e).replace("this worker may use", "this machine has")
    from autotune.backends import BackendLookupError, get_spec

    try:
        spec = get_spec(config.backend)
    except BackendLookupError:
        return None
    return spec.data_parallel_reason(config.device)


def check_space(space: Any) -> tuple[str, str] | None:
    """The key and one-line problem with the space's ``data_parallel`` that holds on any machine
    (``None``: none): batch sizes listed in the space that do not split, or no backend
    and device of the space that can run data-parallel trials at all."""
    from autotune.config import KNOB_DEFAULTS

    degrees = _values(space, "data_parallel", KNOB_DEFAULTS["data_parallel"])
    parallel = [int(d) for d in degrees if int(d) > 1]
    if not parallel:
        return None
    if space.mode == "generate":
        return ("params.data_parallel", "data_parallel > 1 is for train and infer mode; "
                "generate mode runs one replica per trial")
    batch = space.param("batch_size")
    if batch is None or batch.kind in ("fixed", "categorical"):
        for b in _values(space, "batch_size", KNOB_DEFAULTS["batch_size"]):
            for d in parallel:
                reason = split_reason(int(b), d)
                if reason is not None:
                    return "params.batch_size", reason
    reasons = []
    for backend in _values(space, "backend", KNOB_DEFAULTS["backend"]):
        for device in _values(space, "device", KNOB_DEFAULTS["device"]):
            reason = _spec_reason(str(backend), str(device))
            if reason is None:
                return None
            reasons.append(f"{backend} on {device}: {reason}")
    return ("params.data_parallel",
            f"no backend and device of the space can run data-parallel trials ({reasons[0]})")


def check_machine(space: Any, cores: Sequence[int]) -> str | None:
    """A one-line problem with running the space's largest ``data_parallel`` on this
    machine's CPU cores (``None``: it fits): a CPU replica needs cores of its own."""
    from autotune.config import KNOB_DEFAULTS

    devices = [str(d) for d in _values(space, "device", KNOB_DEFAULTS["device"])]
    if "cpu" not in devices:
        return None  # accelerator replicas: checked where the framework sees the devices
    degree = largest_degree(space)
    if degree <= 1:
        return None
    threads = [int(t) for t in _values(space, "threads", None) if t is not None]
    per = min(threads) if threads else 1
    if degree * per > len(cores):
        return (f"data_parallel={degree} with threads={per} needs {degree * per} cores "
                f"(each CPU replica gets cores of its own); this machine has {len(cores)}")
    return None


def check_jobs(space: Any, devices: Sequence[str], jobs: int) -> str | None:
    """A one-line problem with running data-parallel trials in ``jobs`` parallel jobs:
    CPU replicas share out each job's own cores (a job of 2 cores runs 2 x 1-thread
    replicas), but accelerator replicas take consecutive devices that other jobs hold."""
    degree = largest_degree(space)
    accelerators = [d for d in devices if d != "cpu"]
    if jobs <= 1 or degree <= 1 or not accelerators:
        return None
    return (f"--jobs {jobs} with data_parallel up to {degree} on {', '.join(accelerators)}: "
            "a data-parallel trial takes consecutive devices that other jobs hold; run it "
            "with --jobs 1 (every device of the worker is then the trial's to use)")


def _spec_reason(backend: str, device: str) -> str | None:
    from autotune.backends import BackendLookupError, get_spec

    if device == "auto":
        return None
    try:
        return get_spec(backend).data_parallel_reason(device)
    except BackendLookupError:
        return None


def largest_degree(space: Any) -> int:
    """The most replicas a trial of ``space`` can have (1 when it does not search
    ``data_parallel``)."""
    return max(int(d) for d in _values(space, "data_parallel", 1))


def _values(space: Any, name: str, default: Any) -> list[Any]:
    """The values a space's knob can take: its choices, or a range's low and high."""
    spec = space.param(name)
    if spec is None:
        return [default]
    return list(spec.values_for_check())


# -- the scaling view -------------------------------------------------------------------


def scaling_key(config: Mapping[str, Any]) -> str:
    """What a configuration is apart from its degree of parallelism and per-replica
    threads: trials with the same key are points of one scaling curve."""
    from autotune.config import KNOB_DEFAULTS

    knobs = {k: config.get(k, v) for k, v in KNOB_DEFAULTS.items() if k not in _SCALING_FREE}
    return json.dumps(knobs, sort_keys=True, default=str)


def scaling_efficiency(points: Iterable[tuple[Mapping[str, Any], float | None]]
                       ) -> list[float | None]:
    """Per ``(config, throughput)``: throughput / (replicas x the best single-replica
    throughput of the same configuration in the study), ``None`` where there is no
    single-replica point of that configuration (or no throughput)."""
    points = list(points)
    best: dict[str, float] = {}
    for config, throughput in points:
        if throughput is not None and int(config.get("data_parallel", 1) or 1) == 1:
            key = scaling_key(config)
            best[key] = max(best.get(key, 0.0), throughput)
    out: list[float | None] = []
    for config, throughput in points:
        base = best.get(scaling_key(config))
        replicas = int(config.get("data_parallel", 1) or 1)
        out.append(None if throughput is None or not base else
                   throughput / (replicas * base))
    return out


@dataclass(frozen=True)
class ScalingPoint:
    """One measured trial on a scaling curve: its degree, per-replica threads, what it
    delivered and :func:`scaling_efficiency` (``None`` without a single-replica point of
    the same configuration in the study)."""

    trial: int
    replicas: int
    threads: int | None
    throughput_sps: float | None
    energy_per_sample_j: float | None
    comm_fraction: float | None
    scaling_efficiency: float | None
    #: the configuration apart from ``data_parallel`` and ``threads`` (a curve's name)
    key: str


def scaling_points(study: Any) -> list[ScalingPoint]:
    """Every confirmed measurement of ``study`` (an :class:`autotune.Study`) as a point
    of a scaling curve, in trial order."""
    from autotune.config import KNOB_DEFAULTS

    fixed = {**KNOB_DEFAULTS, **study.space.fixed_params()}
    measured = [t for t in study.trials() if t.state == "ok" and t.metrics]
    configs = [{**fixed, **t.params} for t in measured]
    efficiency = scaling_efficiency(
        (c, t.metrics.get("throughput_sps")) for c, t in zip(configs, measured, strict=True))
    return [ScalingPoint(trial=t.number, replicas=int(c.get("data_parallel", 1) or 1),
                         threads=t.metrics.get("threads"),
                         throughput_sps=t.metrics.get("throughput_sps"),
                         energy_per_sample_j=t.metrics.get("energy_per_sample_j"),
                         comm_fraction=t.metrics.get("comm_fraction"),
                         scaling_efficiency=e, key=scaling_key(c))
            for t, c, e in zip(measured, configs, efficiency, strict=True)]


def searches_data_parallel(study: Any) -> bool:
    """Whether the study's space has more than one replica anywhere (the scaling view
    is worth showing)."""
    return largest_degree(study.space) > 1
