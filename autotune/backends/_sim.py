"""The simulator backend: steps that cost simulated time, not real time.

It runs through the same worker and the same measured loop (:mod:`autotune.profiling.loop`)
as the framework backends, on a virtual clock (:meth:`SimBackend.clock`) that each step
advances by the step time :mod:`autotune.simulation` computes for the trial, with the
device's noise. Warm-up, the confidence-interval stop rule, early stopping and the trial
budget therefore behave as on real hardware, in milliseconds. Energy comes from the
device's power model (source ``simulated``); every result says it was simulated.
"""

from __future__ import annotations

import math
import time
import zlib
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from autotune import simulation
from autotune.backends._base import Backend
from autotune.backends._spec_sim import SPEC
from autotune.exceptions import ModelFactoryError, OutOfMemoryError, UnsupportedConfigError
from autotune.profiling.meters_base import EnergyReading, PowerMeter

if TYPE_CHECKING:
    from autotune.backends._spec import BackendSpec
    from autotune.config import TrialConfig
    from autotune.workloads import ModelSpec

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}
#: The first steps are slower (allocation, kernel selection): the first 5x, decaying.
_COLD_FACTOR, _COLD_STEPS = 5.0, 6


class SimMeter(PowerMeter):
    """Energy of a window on the simulated device: its power model times the window's
    simulated time."""

    source = "simulated"

    def __init__(self, backend: SimBackend) -> None:
        self.backend = backend
        self._start = 0.0

    def begin(self) -> None:
        self._start = self.backend.clock()

    def end(self) -> EnergyReading:
        window = self.backend.clock() - self._start
        watts = self.backend.power_w
        return EnergyReading(
            energy_j=watts * window, source="simulated", window_s=window, samples=1,
            model=f"power model of simulated device {self.backend.device_name}: idle to "
                  f"max W by arithmetic share ({simulation.SIMULATED_NOTE})")


class SimBackend(Backend):
    """Simulated steps on a ``sim:NAME`` device (see :mod:`autotune.simulation`)."""

    name = "sim"
    framework = "sim"
    simulated: ClassVar[bool] = True
    backend_spec: ClassVar[BackendSpec | None] = SPEC

    def __init__(self) -> None:
        self.config: TrialConfig | None = None
        self.sim: simulation.Simulator | None = None
        self._now = 0.0
        self._step_s = 0.0
        self._noise = 0.0
        self._steps = 0
        self._rng = np.random.default_rng(0)
        self.power_w = 0.0
        self.device_name = ""

    def configure(self, config: TrialConfig) -> None:
        self.config = config
        # simulated time starts from the real clock, so the trial's deadline (a real
        # perf_counter value) bounds simulated time as it would real time
        self._now = time.perf_counter()

    def clock(self) -> float:
        """Simulated seconds: advanced only by :meth:`step`."""
        return self._now

    def setup(self, config: TrialConfig, spec: ModelSpec) -> dict[str, Any]:
        if not isinstance(spec.model, simulation.Simulator):
            raise ModelFactoryError(f"{self.factory_label}: the sim backend runs the "
                                    f"'simulated' workload only, got "
                                    f"{type(spec.model).__name__}")
        self.config, self.sim = config, spec.model
        try:
            device = self.sim.device(config.device)
        except simulation.SimulationError as e:
            raise UnsupportedConfigError(str(e)) from None
        reason = simulation.unsupported_reason(self.sim, config)
        if reason is not None:
            raise UnsupportedConfigError(reason)
        need = simulation.memory_bytes(self.sim, config)
        limit = simulation.memory_limit_bytes(self.sim, config)
        if need > limit:
            raise OutOfMemoryError(f"out of memory (simulated): needs {need / 2**30:.2f} GiB "
                                   f"of {limit / 2**30:.2f} GiB on {config.device}")
        self.device_name = config.device
        self._step_s = simulation.expected_step_s(self.sim, config)
        self._noise = device.noise
        self.power_w = simulation.power_w(self.sim, config)
        self._steps = 0
        seed = zlib.crc32(repr((sorted(config.knobs().items()), config.seed)).encode())
        self._rng = np.random.default_rng(seed)
        model = self.sim.model
        kept = 1 - config.pruning_ratio if config.pruning_structure == "structured" else 1.0
        return {"param_count": int(model.params * kept),
                "flops_per_sample": model.flops_per_sample * kept * (
                    3 if config.mode == "train" else 1),
                "flops_method": "declared in the simulated workload (x3 in training)",
                "sparsity": config.pruning_ratio, "execution": config.execution,
                "runtime": "simulator", "simulated": True,
                "quality_name": "accuracy", "has_quality": True}

    def step(self) -> int:
        assert self.config is not None
        cold = 1.0 + (_COLD_FACTOR - 1.0) * max(0, _COLD_STEPS - self._steps) / _COLD_STEPS
        noise = math.exp(self._noise * float(self._rng.standard_normal()))
        self._now += self._step_s * cold * noise
        self._steps += 1
        return self.config.batch_size

    def synchronize(self) -> None:
        """Nothing is queued: simulated steps complete at once."""

    def evaluate(self) -> float | None:
        assert self.sim is not None and self.config is not None
        return simulation.quality(self.sim, self.config)

    def compute_dtype(self) -> str:
        assert self.config is not None
        return _DTYPES[self.config.precision]

    @property
    def steps_per_epoch(self) -> int:
        assert self.sim is not None and self.config is not None
        return max(1, -(-self.sim.model.samples_per_epoch // self.config.batch_size))

    def peak_memory_bytes(self) -> int | None:
        assert self.sim is not None and self.config is not None
        return int(simulation.memory_bytes(self.sim, self.config))

    def power_meter(self) -> PowerMeter | None:
        return SimMeter(self)

    def declared_peak(self) -> dict[str, Any] | None:
        """The simulated device's declared peak, as the machine's measured peak is."""
        assert self.sim is not None and self.config is not None
        device = self.sim.device(self.config.device)
        return {"flops_per_s": device.flops.get(self.config.precision),
                "reason": "declared for the simulated device", "method": "simulated",
                "precision": self.config.precision, "threads": None,
                "bandwidth_bytes_per_s": device.bandwidth_gbs * 1e9}

    def versions(self) -> dict[str, str]:
        from importlib.metadata import version

        return {"simulator": f"autotune {version('autotune')} (simulated)"}
