"""Power and energy meters behind one interface; every reading carries its provenance.

Sources: ``estimated`` (a model from the worker's CPU time, used where no counter exists,
as on this VM) and ``none``. Hardware counters (NVML, RAPL, npu-smi) plug into the same
:class:`PowerMeter` interface. An estimate is never shown as a measurement: its ``source``
says ``estimated`` and ``model`` says how it was computed.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

#: Default power per busy logical CPU for the estimate, when nothing better is known.
#: 10 W per hardware thread is the order of a server CPU's TDP divided by its threads
#: (e.g. a 280 W, 64-core/128-thread EPYC: 2.2 W; a 125 W 8-core desktop: 7.8 W; laptops
#: less). It is a deliberate, labelled over-estimate; override with AUTOTUNE_CPU_WATTS_PER_CORE.
DEFAULT_WATTS_PER_CORE = 10.0


@dataclass(frozen=True)
class EnergyReading:
    """Energy over a window, with where it came from."""

    energy_j: float | None
    source: str  # "estimated" | "none" | "nvml" | "rapl" | "npu-smi"
    window_s: float
    samples: int
    model: str = ""  # how an estimate was computed; empty for measurements

    @property
    def power_w(self) -> float | None:
        """Mean power over the window."""
        if self.energy_j is None or self.window_s <= 0:
            return None
        return self.energy_j / self.window_s


class PowerMeter(ABC):
    """Measures energy over a window: ``begin()`` ... work ... ``end() -> EnergyReading``.

    A meter whose hardware is absent is a :class:`NullMeter`, not ``None``.
    """

    source = "none"

    @abstractmethod
    def begin(self) -> None:
        """Start a window."""

    @abstractmethod
    def end(self) -> EnergyReading:
        """Close the window and return its energy."""


class NullMeter(PowerMeter):
    """No energy information at all."""

    def begin(self) -> None:
        self._t0 = time.perf_counter()

    def end(self) -> EnergyReading:
        return EnergyReading(None, "none", time.perf_counter() - self._t0, 0)


def watts_per_core() -> float:
    """The per-core power the estimate assumes (environment override, else the default)."""
    raw = os.environ.get("AUTOTUNE_CPU_WATTS_PER_CORE")
    try:
        value = float(raw) if raw else DEFAULT_WATTS_PER_CORE
    except ValueError:
        value = DEFAULT_WATTS_PER_CORE
    return value if value > 0 else DEFAULT_WATTS_PER_CORE


def rated_cpu_power_w() -> float:
    """The whole CPU's assumed power: every logical core busy at :func:`watts_per_core`."""
    return (os.cpu_count() or 1) * watts_per_core()


class EstimatedCpuMeter(PowerMeter):
    """Energy estimated as (CPU seconds the process used in the window) x (W per core).

    It counts this process's own threads only (user + system time), so idle cores and other
    processes are not charged to the trial. It is a model, not a measurement.
    """

    source = "estimated"

    def __init__(self, watts: float | None = None) -> None:
        self.watts = watts if watts is not None else watts_per_core()

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
        )


def combine(readings: list[EnergyReading]) -> EnergyReading:
    """Join the readings of consecutive segments of one window (e.g. around a pause)."""
    if not readings:
        return EnergyReading(None, "none", 0.0, 0)
    energies = [r.energy_j for r in readings]
    return EnergyReading(
        energy_j=None if any(e is None for e in energies) else sum(e or 0.0 for e in energies),
        source=readings[0].source,
        window_s=sum(r.window_s for r in readings),
        samples=sum(r.samples for r in readings),
        model="; ".join(dict.fromkeys(r.model for r in readings if r.model)),
    )
