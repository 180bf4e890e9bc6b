"""The Backend contract and capability records."""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from autotune.backends._spec import BackendSpec
    from autotune.config import TrialConfig
    from autotune.profiling.meters_base import PowerMeter
    from autotune.workloads import ModelSpec


#: The fixed recipe that trains the model an inference trial measures. It is the same on
#: every backend, so inference trials of different backends measure equivalent models.
RECIPE_OPTIMIZER, RECIPE_LR, RECIPE_BATCH = "adam", 1e-3, 128
#: Held-out samples evaluated per forward pass.
EVAL_CHUNK = 1024


def epoch_steps(n_samples: int, batch_size: int) -> int:
    """Optimizer steps in one pass over ``n_samples`` (the last batch wraps around, so
    every step has ``batch_size`` samples): the unit of train mode's budget everywhere."""
    return max(1, -(-n_samples // batch_size))


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports on one device.

    ``reasons`` explains, per precision (or ``"*"`` for everything), why it is missing, so
    an infeasible trial records a reason a person can act on.
    """

    precisions: frozenset[str] | set[str]
    modes: frozenset[str] | set[str]
    int8_modes: frozenset[str] | set[str] = frozenset()
    reasons: Mapping[str, str] = field(default_factory=dict)
    executions: frozenset[str] | set[str] = frozenset({"eager"})
    #: (precision, execution) pairs that do not work although each does alone
    excluded: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def check(self, mode: str, precision: str, execution: str = "eager") -> str | None:
        """``None`` when (mode, precision, execution) is supported, else the reason."""
        if "*" in self.reasons and not self.precisions:
            return self.reasons["*"]
        if mode not in self.modes:
            return f"mode {mode!r} is not supported"
        if precision not in self.precisions:
            return self.reasons.get(precision, f"precision {precision!r} is not supported")
        if precision == "int8" and mode not in self.int8_modes:
            return ("int8 is supported only in "
                    f"{' or '.join(sorted(self.int8_modes, reverse=True)) or 'no'} mode")
        if execution not in self.executions:
            return self.reasons.get(
                f"execution:{execution}",
                f"execution {execution!r} is not supported; supported: "
                f"{', '.join(sorted(self.executions))}")
        return self.excluded.get((precision, execution))


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags the kernel reports (empty when unreadable)."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_capabilities(flags: frozenset[str] | None = None) -> Capabilities:
    """Precisions with native arithmetic on this CPU.

    bf16 and fp16 run on any x86 CPU through conversion, but without native instructions
    they are several times slower than fp32 (measured on an AVX2-only EPYC: 6x), so a
    tuner would only waste trials on them. Native means AVX512-BF16/AMX-BF16 for bf16 and
    AVX512-FP16/AMX-FP16 for fp16.
    """
    flags = cpu_flags() if flags is None else flags
    precisions = {"fp32"}
    reasons = {}
    if flags & {"avx512_bf16", "amx_bf16"}:
        precisions.add("bf16")
    else:
        reasons["bf16"] = "bf16 needs AVX512-BF16 or AMX-BF16, which this CPU lacks"
    if flags & {"avx512_fp16", "amx_fp16"}:
        precisions.add("fp16")
    else:
        reasons["fp16"] = "fp16 needs AVX512-FP16 or AMX-FP16, which this CPU lacks"
    return Capabilities(precisions=frozenset(precisions), modes=frozenset({"train", "infer"}),
                        reasons=reasons)


class Backend(ABC):
    """One framework's runtime, driven through a fixed lifecycle inside a worker process.

    The backend is the runtime, the workload is the model: the backend owns device,
    threads, precision policy, execution mode, synchronisation, memory statistics, the
    optimizer loop and the pruning and quantisation mechanics; the workload's factory
    (``build(framework, **kwargs) -> ModelSpec``) owns the model, its batches, its loss and
    its quality. Lifecycle per trial:

    * ``configure(config)`` sets the runtime up for the trial (device, precision policy,
      execution mode) *before* the factory runs, so the factory builds into it.
      ``config.execution`` is already resolved (``eager``, ``graph`` or ``xla``).
    * ``setup(config, spec)`` places the factory's model and, in infer mode, trains it with
      the fixed base recipe when the spec asks for it (adam, lr 1e-3, batch 128,
      ``budget.train_epochs`` epochs, fp32; cached), prunes and converts it to the trial's
      precision. In train mode it prunes the fresh model (unstructured: pruned weights
      stay zero while training; structured: smaller layers). Returns facts measured on
      the built model: ``param_count``, ``flops_per_sample`` (``None`` with
      ``flops_method`` saying why), ``sparsity``, ``weight_bytes``, ``execution``,
      ``runtime`` (e.g. ``"tflite"``) and, when trained here, ``base_model``.
    * ``step()`` runs one optimizer step (train) or one forward pass of a batch (infer) and
      returns the number of samples it processed; ``synchronize()`` waits for queued device
      work (a no-op on CPU) and is called before every clock read.
    * ``evaluate()`` returns the spec's quality of the model as it is now (``None`` when
      the spec has none).
    * ``peak_memory_bytes()`` is the device's peak allocation, or ``None`` on CPU where the
      worker's peak resident memory is used instead; then ``teardown()``.

    Framework imports happen in the constructor or later, never at module top. Out of
    memory is raised as :class:`autotune.exceptions.OutOfMemoryError`, an unsupported
    combination as :class:`~autotune.exceptions.UnsupportedConfigError`, a NaN/inf loss as
    :class:`~autotune.exceptions.NonFiniteLossError`, an unusable model or factory as
    :class:`~autotune.exceptions.ModelFactoryError`. The framework backends share
    :class:`autotune.backends._framework.FrameworkBackend`.
    """

    name: str = ""
    #: what the backend declares without importing its framework (device kinds,
    #: capabilities, launch spelling, probe; :class:`~autotune.backends.BackendSpec`);
    #: ``None``: :func:`autotune.backends.get_spec` gives a third-party class the default
    backend_spec: ClassVar[BackendSpec | None] = None
    #: the name workload factories are called with (``build(framework, ...)``)
    framework: str = ""
    #: how errors name the workload (set by the worker: the factory and its kwargs)
    factory_label: str = "the factory"
    #: whether steps cost simulated time (:mod:`autotune.backends._sim`): no contention
    #: monitor, the backend's own power meter and declared peak
    simulated: ClassVar[bool] = False

    def clock(self) -> float:
        """Seconds on the clock the measured loop times steps with: the real
        ``time.perf_counter()``, or a simulator's virtual time."""
        return time.perf_counter()

    def power_meter(self) -> PowerMeter | None:
        """A meter of the backend's own (the simulator's power model); ``None``: the
        device's meter (:func:`autotune.profiling.power.meter_for_device`)."""
        return None

    def declared_peak(self) -> dict[str, Any] | None:
        """The device's peak as the backend declares it (a simulated device's); ``None``:
        the machine's measured peak (``autotune peak``) is used."""
        return None

    def configure(self, config: TrialConfig) -> None:  # noqa: B027 - optional hook
        """Set the runtime up for ``config`` before the workload's factory runs."""

    @abstractmethod
    def setup(self, config: TrialConfig, spec: ModelSpec) -> dict[str, Any]:
        """Place (and in infer mode train, prune and convert) the spec's model."""

    @abstractmethod
    def step(self) -> int:
        """Run one step; return the samples it processed."""

    @abstractmethod
    def synchronize(self) -> None:
        """Block until the device has finished queued work."""

    @abstractmethod
    def evaluate(self) -> float | None:
        """The model's quality now (the spec's ``quality``), ``None`` without one."""

    @abstractmethod
    def compute_dtype(self) -> str:
        """The dtype the matrix multiplications run in now: ``float32``, ``bfloat16``,
        ``float16`` or ``int8`` (checked by the conformance suite: a precision knob must
        really change it)."""

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch (train mode's budget unit)."""
        raise NotImplementedError(f"{type(self).__name__} must define steps_per_epoch")

    def last_step_comm_s(self) -> float | None:
        """Seconds of the last step during which a gradient all-reduce was in flight (a
        replica of a data-parallel trial whose framework lets it be timed); ``None``:
        not measured."""
        return None

    def between_steps(self) -> None:  # noqa: B027 - optional hook
        """Untimed bookkeeping between steps (e.g. new batches at an epoch boundary); the
        profiler calls it after every step, outside the step's clock reads."""

    def weight_arrays(self) -> list[Any]:
        """Every weight matrix and conv kernel as numpy arrays, as they are now (the
        conformance suite checks pruning with them independently)."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its weights")

    def set_threads(self, n: int) -> int:
        """Size the framework's intra-op thread pool to ``n``; return the size it reports.

        Called once, after import and before the first trial. The worker has already
        pinned the process to ``n`` cores and set OMP/MKL variables before the import.
        """
        return n

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory, or ``None`` where the process RSS is the right figure."""
        return None

    def versions(self) -> dict[str, str]:
        """Framework versions and build facts, recorded with each measurement."""
        return {}

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Release the model and its batches."""
