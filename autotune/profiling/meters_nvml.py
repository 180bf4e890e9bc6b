"""NVIDIA GPU energy through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package).

Volta and newer GPUs keep a cumulative energy counter
(``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver was loaded): the
window's energy is the difference of two reads. Older GPUs only report power
(``nvmlDeviceGetPowerUsage``, milliwatts), which is sampled every
:data:`NVML_SAMPLE_INTERVAL_S` on a background thread and integrated over the window. Both
cover the whole board (GPU and memory), every process on it.

``pynvml`` is imported only when a meter is made, never at module import, so the driver
process and CPU-only machines never load it.
"""

from __future__ import annotations

import os
import time
from types import ModuleType
from typing import Any

from autotune.profiling.meters_base import EnergyReading, MeterUnavailableError, PowerMeter
from autotune.profiling.meters_sampling import PowerSampler, integrate

#: Power-sampling period where the GPU has no energy counter. The board's power reading is
#: itself refreshed every ~20-100 ms depending on the GPU, so 50 ms sees each update or
#: nearly; a read costs well under a millisecond, so the thread's load is negligible.
NVML_SAMPLE_INTERVAL_S = 0.05


def _nvml_device_for(cuda_index: int) -> int | str:
    """The NVML index (or UUID) of CUDA device ``cuda_index``.

    CUDA numbers the devices listed in ``CUDA_VISIBLE_DEVICES`` from 0; NVML always sees
    them all. Entries are indices or ``GPU-``/``MIG-`` UUIDs. (CUDA's default
    ``CUDA_DEVICE_ORDER=FASTEST_FIRST`` can order mixed GPU models differently from NVML's
    PCI order; set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` on such machines.)
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_index >= len(entries):
        raise MeterUnavailableError(
            f"NVML: cuda:{cuda_index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    entry = entries[cuda_index]
    return int(entry) if entry.isdigit() else entry


class NvmlMeter(PowerMeter):
    """Energy of the GPU that is ``cuda:index`` in this process, from NVML.

    ``nvml_module`` replaces ``pynvml`` (tests pass a fake). Raises
    :class:`MeterUnavailableError` when pynvml is missing, NVML cannot start, the device is
    unknown, or it reports neither energy nor power.
    """

    source = "nvml"

    def __init__(self, index: int, nvml_module: ModuleType | Any | None = None, *,
                 sample_interval_s: float = NVML_SAMPLE_INTERVAL_S) -> None:
        if nvml_module is None:
            try:
                import pynvml  # type: ignore[import-not-found,unused-ignore]
            except ImportError as e:
                raise MeterUnavailableError(
                    "NVML: pynvml is not installed (pip install nvidia-ml-py)") from e
            nvml_module = pynvml
        self.nvml = nvml_module
        self.index = index
        # Catch NVML's own error class; the fallback keeps a module without it usable.
        error: type[BaseException] = getattr(nvml_module, "NVMLError", Exception)
        self._nvml_error = error
        try:
            self.nvml.nvmlInit()
        except (error, OSError) as e:
            raise MeterUnavailableError(f"NVML: initialisation failed: {e}") from e
        device = _nvml_device_for(index)
        try:
            if isinstance(device, int):
                self.handle = self.nvml.nvmlDeviceGetHandleByIndex(device)
            else:
                self.handle = self.nvml.nvmlDeviceGetHandleByUUID(device)
        except error as e:
            raise MeterUnavailableError(f"NVML: no device {device!r}: {e}") from e

        self.counter_reason = ""
        try:
            self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
            self.mode = "counter"
        except error as e:
            self.counter_reason = f"NVML energy counter unavailable ({e}); power sampled"
            try:
                self.nvml.nvmlDeviceGetPowerUsage(self.handle)
            except error as e2:
                raise MeterUnavailableError(
                    f"NVML: device {device!r} reports neither energy ({e}) nor power "
                    f"({e2})") from e2
            self.mode = "sampling"
        self.sample_interval_s = sample_interval_s
        self._sampler = PowerSampler(self._read_power_w, sample_interval_s,
                                     first_sample_timeout_s=1.0)

    @classmethod
    def probe(cls, index: int, nvml_module: ModuleType | Any | None = None
              ) -> tuple[bool, str]:
        """Whether NVML can measure ``cuda:index`` here, and how, or why not."""
        try:
            meter = cls(index, nvml_module)
        except MeterUnavailableError as e:
            return False, str(e)
        return True, meter.model

    @property
    def model(self) -> str:
        """How the readings are obtained and what they cover."""
        how = ("total energy counter" if self.mode == "counter" else
               f"board power sampled every {self.sample_interval_s * 1000:g} ms, "
               f"trapezoid-integrated")
        return f"NVML {how}: whole GPU board, all processes"

    def _read_power_w(self) -> float:
        return float(self.nvml.nvmlDeviceGetPowerUsage(self.handle)) / 1000.0

    def _read_energy_mj(self) -> int:
        return int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))

    def begin(self) -> None:
        if self.mode == "sampling":
            self._t0 = self._sampler.start()
            return
        self._t0 = time.perf_counter()
        try:
            self._e0: int | None = self._read_energy_mj()
            self._error = ""
        except self._nvml_error as e:
            self._e0, self._error = None, f"NVML energy read failed at window start: {e}"

    def end(self) -> EnergyReading:
        if self.mode == "sampling":
            t1, samples, errors, last_error = self._sampler.stop()
            window = t1 - self._t0
            if not samples:
                return EnergyReading(None, self.source, window, 0, self.model,
                                     f"no NVML power sample in the window "
                                     f"({errors} failed reads; {last_error or 'none taken'})")
            return EnergyReading(integrate(samples, self._t0, t1), self.source, window,
                                 len(samples), self.model, self.counter_reason)
        try:
            e1: int | None = self._read_energy_mj()
        except self._nvml_error as e:
            e1, self._error = None, self._error or f"NVML energy read failed at window end: {e}"
        window = time.perf_counter() - self._t0
        if self._e0 is None or e1 is None:
            return EnergyReading(None, self.source, window, 0, self.model, self._error)
        if e1 < self._e0:  # a 64-bit mJ counter never wraps; it restarts with the driver
            return EnergyReading(None, self.source, window, 2, self.model,
                                 "NVML energy counter went back (driver reloaded?)")
        return EnergyReading((e1 - self._e0) / 1000.0, self.source, window, 2, self.model)

    def close(self) -> None:
        """Release NVML (its init/shutdown calls are reference-counted)."""
        self.nvml.nvmlShutdown()
