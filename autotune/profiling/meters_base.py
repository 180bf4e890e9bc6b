"""The power-meter contract, free of any vendor: what a meter is and what it returns.

:class:`PowerMeter` is the interface every meter implements, :class:`EnergyReading` what
it returns, :class:`MeterUnavailableError` what a hardware meter's constructor raises when
its counter cannot be used, :class:`NullMeter` the meter of no information and
:func:`combine` the join of a window's segments. The vendor modules
(:mod:`autotune.profiling.meters_rapl`, :mod:`~autotune.profiling.meters_nvml`,
:mod:`~autotune.profiling.meters_npu`) import only this module; only
:mod:`autotune.profiling.power` chooses among them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyReading:
    """Energy over a window, with where it came from.

    ``model`` says how the value was obtained and what it covers (a counter measures a whole
    package or board, all processes on it; an estimate only this process). ``fallback_reason``
    says why a better source was not used, or why ``energy_j`` is ``None``; empty when the
    preferred counter worked. Every field is a plain JSON value: readings are stored as
    ``dataclasses.asdict``.
    """

    energy_j: float | None
    source: str  # "estimated" | "none" | "nvml" | "rapl" | "npu-smi"
    window_s: float
    samples: int
    model: str = ""
    fallback_reason: str = ""

    @property
    def power_w(self) -> float | None:
        """Mean power over the window."""
        if self.energy_j is None or self.window_s <= 0:
            return None
        return self.energy_j / self.window_s


class MeterUnavailableError(RuntimeError):
    """A meter's counter cannot be used on this machine; the message says why."""


class PowerMeter(ABC):
    """Measures energy over a window: ``begin()`` ... work ... ``end() -> EnergyReading``.

    A window may be measured in several segments (``begin``/``end`` pairs) that
    :func:`combine` joins. A meter whose hardware is absent is a :class:`NullMeter`, not
    ``None``; constructors of hardware meters raise :class:`MeterUnavailableError`.
    """

    source = "none"

    @abstractmethod
    def begin(self) -> None:
        """Start a window."""

    @abstractmethod
    def end(self) -> EnergyReading:
        """Close the window and return its energy."""


class NullMeter(PowerMeter):
    """No energy information at all; ``reason`` says why (stored in each reading)."""

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    def begin(self) -> None:
        self._t0 = time.perf_counter()

    def end(self) -> EnergyReading:
        return EnergyReading(None, "none", time.perf_counter() - self._t0, 0,
                             fallback_reason=self.reason)


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
        fallback_reason="; ".join(dict.fromkeys(r.fallback_reason for r in readings
                                                if r.fallback_reason)),
    )
