"""Intel/AMD RAPL package energy counters from the powercap sysfs tree.

Layout (``/sys/class/powercap``)::

    intel-rapl:0/name                  package-0
    intel-rapl:0/energy_uj             cumulative microjoules, wraps to 0
    intel-rapl:0/max_energy_range_uj   the value it wraps at
    intel-rapl:0:0/...                 subzones (core, uncore, dram): inside the package

AMD CPUs (Zen, Linux 5.8+) expose the same ``intel-rapl`` names. Only package zones are
summed: subzones are parts of their package (counting them would count twice) and a
``psys`` zone covers the whole platform, packages included. RAPL measures each package as a
whole, all processes and idle cores included, not this process alone.

Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694, a power side
channel), so on most machines the meter is unavailable and says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from autotune.profiling.meters_base import EnergyReading, MeterUnavailableError, PowerMeter

DEFAULT_ROOT = "/sys/class/powercap"
#: Top-level zones only: ``intel-rapl:N``, not subzones ``intel-rapl:N:M``.
_ZONE_DIR = re.compile(r"^intel-rapl:\d+$")


@dataclass(frozen=True)
class RaplZone:
    """One package zone: its directory, name (``package-N``) and wrap-around value."""

    path: Path
    name: str
    max_energy_range_uj: int | None

    def read_uj(self) -> int:
        """The cumulative counter now (raises ``OSError`` when unreadable)."""
        return int((self.path / "energy_uj").read_text().strip())


def discover_zones(root: str | Path | None = None) -> list[RaplZone]:
    """The package zones under ``root`` (default :data:`DEFAULT_ROOT`), in zone order;
    empty when there are none."""
    base = Path(root if root is not None else DEFAULT_ROOT)
    try:
        entries = sorted(base.iterdir(), key=lambda p: int(p.name.rsplit(":", 1)[-1])
                         if _ZONE_DIR.match(p.name) else -1)
    except OSError:
        return []
    zones = []
    for entry in entries:
        if not _ZONE_DIR.match(entry.name):
            continue
        try:
            name = (entry / "name").read_text().strip()
        except OSError:
            continue
        if not name.startswith("package"):
            continue  # psys (whole platform) or anything unknown: would overlap packages
        try:
            max_range: int | None = int((entry / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError):
            max_range = None
        zones.append(RaplZone(entry, name, max_range))
    return zones


def counter_delta_uj(before: int, after: int, max_range_uj: int | None) -> int | None:
    """Microjoules between two readings of a counter that wraps at ``max_range_uj``.

    One wrap is undone; more than one in a window cannot be seen (at 200 W a 32-bit-range
    counter of ~262 kJ wraps every ~20 minutes, far beyond a measured window). ``None``
    when the counter went back and its range is unknown.
    """
    if after >= before:
        return after - before
    if max_range_uj is None:
        return None
    return after + max_range_uj - before


class RaplMeter(PowerMeter):
    """Energy of all CPU packages from their RAPL counters (a measurement, package-wide).

    ``root`` defaults to :data:`DEFAULT_ROOT`. Raises :class:`MeterUnavailableError` when
    there is no package zone under it or a counter cannot be read.
    """

    source = "rapl"

    def __init__(self, root: str | Path | None = None) -> None:
        # Resolved per call, not bound at definition, so the default can be redirected.
        self.root = Path(root if root is not None else DEFAULT_ROOT)
        self.zones = discover_zones(self.root)
        if not self.zones:
            raise MeterUnavailableError(f"RAPL: no package zones (intel-rapl:N) under "
                                        f"{self.root}")
        for zone in self.zones:
            try:
                zone.read_uj()
            except PermissionError as e:
                raise MeterUnavailableError(
                    f"RAPL: {zone.path / 'energy_uj'} is readable by root only (Linux 5.10+, "
                    f"CVE-2020-8694); run as root or grant read access (chmod o+r)") from e
            except (OSError, ValueError) as e:
                raise MeterUnavailableError(
                    f"RAPL: cannot read {zone.path / 'energy_uj'}: {e}") from e
        self._model = (f"RAPL energy counters of {'+'.join(z.name for z in self.zones)}: "
                       f"whole CPU packages, all processes")

    @classmethod
    def probe(cls, root: str | Path | None = None) -> tuple[bool, str]:
        """Whether RAPL can be used here, and what it measures or why not."""
        try:
            meter = cls(root)
        except MeterUnavailableError as e:
            return False, str(e)
        return True, meter._model

    def _read_all(self) -> list[int]:
        return [zone.read_uj() for zone in self.zones]

    def begin(self) -> None:
        self._t0 = time.perf_counter()
        try:
            self._e0: list[int] | None = self._read_all()
            self._error = ""
        except (OSError, ValueError) as e:
            self._e0, self._error = None, f"RAPL read failed at window start: {e}"

    def end(self) -> EnergyReading:
        try:
            e1: list[int] | None = self._read_all()
        except (OSError, ValueError) as e:
            e1, self._error = None, self._error or f"RAPL read failed at window end: {e}"
        window = time.perf_counter() - self._t0
        if self._e0 is None or e1 is None:
            return EnergyReading(None, self.source, window, 0, self._model, self._error)
        total = 0
        for zone, before, after in zip(self.zones, self._e0, e1, strict=True):
            delta = counter_delta_uj(before, after, zone.max_energy_range_uj)
            if delta is None:
                return EnergyReading(None, self.source, window, 2, self._model,
                                     f"RAPL {zone.name} went back and its "
                                     f"max_energy_range_uj is unknown")
            total += delta
        return EnergyReading(total / 1e6, self.source, window, 2, self._model)
