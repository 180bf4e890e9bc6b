"""Power and energy meters behind one interface; every reading carries its provenance.

Sources:

* ``rapl`` - Intel/AMD package energy counters under ``/sys/class/powercap``
  (:mod:`autotune.profiling.meters_rapl`);
* ``nvml`` - NVIDIA's board energy counter, or sampled board power where the GPU has no
  counter (:mod:`autotune.profiling.meters_nvml`);
* ``npu-smi`` - Ascend power readings sampled and integrated over the window
  (:mod:`autotune.profiling.meters_npu`);
* ``estimated`` - a model from the worker's CPU time, used where no counter exists;
* ``none`` - no energy information.

:func:`meter_for_device` picks the best of these for a trial's device. An estimate is
never shown as a measurement: its ``source`` says ``estimated``, ``model`` says how it was
computed, and ``fallback_reason`` says why no counter was used.
"""

from __future__ import annotations

import os
import time

from autotune.profiling.meters_base import (
    EnergyReading,
    MeterUnavailableError,
    NullMeter,
    PowerMeter,
    combine,
)

# The face of the meters: the contract (re-exported from meters_base), the estimate and the
# choice of meter. Vendor modules import meters_base, never this module.
__all__ = [
    "DEFAULT_ACCELERATOR_WATTS",
    "DEFAULT_WATTS_PER_CORE",
    "METER_CHOICES",
    "METER_ENV",
    "EnergyReading",
    "EstimatedCpuMeter",
    "MeterUnavailableError",
    "NullMeter",
    "PowerMeter",
    "combine",
    "meter_for_device",
    "rated_cpu_power_w",
    "rated_device_power_w",
    "watts_per_core",
]

#: Default power per busy logical CPU for the estimate, when nothing better is known.
#: 10 W per hardware thread is the order of a server CPU's TDP divided by its threads
#: (e.g. a 280 W, 64-core/128-thread EPYC: 2.2 W; a 125 W 8-core desktop: 7.8 W; laptops
#: less). It is a deliberate, labelled over-estimate; override with AUTOTUNE_CPU_WATTS_PER_CORE.
DEFAULT_WATTS_PER_CORE = 10.0

#: Environment variable that forces one meter instead of the automatic choice.
METER_ENV = "AUTOTUNE_ENERGY_METER"
#: The values :data:`METER_ENV` accepts.
METER_CHOICES = ("estimated", "rapl", "nvml", "npu-smi", "none")


def watts_per_core() -> float:
    """The per-core power the estimate assumes (environment override, else the default)."""
    raw = os.environ.get("AUTOTUNE_CPU_WATTS_PER_CORE")
    try:
        value = float(raw) if raw else DEFAULT_WATTS_PER_CORE
    except ValueError:
        value = DEFAULT_WATTS_PER_CORE
    return value if value > 0 else DEFAULT_WATTS_PER_CORE


def rated_cpu_power_w() -> float:
    """The CPU power a worker can draw: every core it may run on busy at
    :func:`watts_per_core` (affinity, not the machine's count: a container's share)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores * watts_per_core()


#: Board power assumed for an accelerator whose limit cannot be read: the top of each
#: family's range (H100 SXM 700 W, Ascend 910B about 400 W, a TPU v4 chip about 300 W), so
#: a real reading is never worse than the reference a hypervolume is measured against.
DEFAULT_ACCELERATOR_WATTS = {"cuda": 700.0, "npu": 400.0, "tpu": 300.0}


def rated_device_power_w(device: str) -> float:
    """The most power a trial on ``device`` can report: the CPU's rated power, an NVIDIA
    GPU's enforced power limit (NVML, when readable), else the family's default."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return rated_cpu_power_w()
    if kind == "cuda":
        try:
            import pynvml  # type: ignore[import-not-found,unused-ignore]

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(index or 0))
            return float(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)) / 1000.0
        except Exception:  # no pynvml, no driver, no such GPU: the documented default
            pass
    return DEFAULT_ACCELERATOR_WATTS.get(kind, rated_cpu_power_w())


class EstimatedCpuMeter(PowerMeter):
    """Energy estimated as (CPU seconds the process used in the window) x (W per core).

    It counts this process's own threads only (user + system time), so idle cores and other
    processes are not charged to the trial. It is a model, not a measurement.
    ``fallback_reason`` (why no counter was used) is copied into each reading.
    """

    source = "estimated"

    def __init__(self, watts: float | None = None, fallback_reason: str = "") -> None:
        self.watts = watts if watts is not None else watts_per_core()
        self.fallback_reason = fallback_reason

    @staticmethod
    def _cpu_seconds() -> float:
        # CLOCK_PROCESS_CPUTIME_ID: every thread of the process, user + system, with
        # nanosecond resolution (os.times() counts in 10 ms clock ticks).
        return time.process_time()

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = self._cpu_seconds()

    def end(self) -> EnergyReading:
        window = time.perf_counter() - self._t0
        cpu = self._cpu_seconds() - self._cpu0
        return EnergyReading(
            energy_j=cpu * self.watts, source="estimated", window_s=window, samples=2,
            model=f"process CPU time x {self.watts:g} W per busy core",
            fallback_reason=self.fallback_reason,
        )


# -- choosing a meter -------------------------------------------------------------------------


def _device_index(device: str) -> int:
    _, _, index = device.partition(":")
    return int(index) if index.isdigit() else 0


def _forced_meter(choice: str, device: str) -> PowerMeter:
    """The meter ``AUTOTUNE_ENERGY_METER`` asks for; a counter that cannot be read becomes a
    :class:`NullMeter` carrying the reason (a trial is never failed for want of a meter)."""
    from autotune.profiling.meters_npu import NpuSmiMeter
    from autotune.profiling.meters_nvml import NvmlMeter
    from autotune.profiling.meters_rapl import RaplMeter

    forced = f"{METER_ENV}={choice}"
    if choice == "none":
        return NullMeter(forced)
    if choice == "estimated":
        return EstimatedCpuMeter(fallback_reason=forced)
    try:
        if choice == "rapl":
            return RaplMeter()
        if choice == "nvml":
            return NvmlMeter(_device_index(device))
        return NpuSmiMeter(_device_index(device))
    except MeterUnavailableError as e:
        return NullMeter(f"{forced}, but {e}")


def meter_for_device(device: str) -> PowerMeter:
    """The best available meter for a trial on ``device`` (``cpu``, ``cuda:N``, ``npu:N``,
    ``tpu:N``).

    * ``cpu`` - RAPL package counters if readable, else :class:`EstimatedCpuMeter`;
    * ``cuda:N`` - NVML (energy counter, else sampled power), else :class:`NullMeter`;
    * ``npu:N`` - npu-smi sampled power, else :class:`NullMeter`;
    * ``tpu:N`` - :class:`NullMeter` (no power counter reaches the host).

    Accelerators without a counter get no energy rather than the CPU-time estimate: that
    would leave out the accelerator's own power, by far the larger part, and make such a
    trial look cheaper than a measured one. Whatever is chosen, its readings say why in
    ``fallback_reason``. ``AUTOTUNE_ENERGY_METER`` (one of :data:`METER_CHOICES`) forces a
    meter. Raises ``ValueError`` for an unknown device kind or override value.
    """
    kind = device.partition(":")[0]
    if kind not in ("cpu", "cuda", "npu", "tpu"):
        raise ValueError(f"unknown device {device!r}: expected cpu, cuda:N, npu:N or tpu:N")
    choice = os.environ.get(METER_ENV, "").strip().lower()
    if choice:
        if choice not in METER_CHOICES:
            raise ValueError(f"{METER_ENV}={choice!r}: expected one of "
                             f"{', '.join(METER_CHOICES)}")
        return _forced_meter(choice, device)

    # Imported here: each module is small, but none is needed unless a meter is chosen.
    if kind == "cpu":
        from autotune.profiling.meters_rapl import RaplMeter
        try:
            return RaplMeter()
        except MeterUnavailableError as e:
            return EstimatedCpuMeter(fallback_reason=str(e))
    if kind == "cuda":
        from autotune.profiling.meters_nvml import NvmlMeter
        try:
            return NvmlMeter(_device_index(device))
        except MeterUnavailableError as e:
            return NullMeter(str(e))
    if kind == "npu":
        from autotune.profiling.meters_npu import NpuSmiMeter
        try:
            return NpuSmiMeter(_device_index(device))
        except MeterUnavailableError as e:
            return NullMeter(str(e))
    return NullMeter(f"{device}: no TPU power counter is readable from the host")
