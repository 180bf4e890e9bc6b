"""Device discovery: which backends are installed and which devices each one sees.

Each backend is probed in a process of its own (frameworks never share a process), in
parallel, by its spec's ``probe`` (:class:`autotune.backends.BackendSpec`); a third-party
backend whose spec has no probe sees the CPU only (listed without a process). A backend that
is not installed is reported with the command that installs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from autotune.backends import BACKENDS, BackendLookupError, get_spec
from autotune.simulation import is_simulated

PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Device:
    """One device as a backend sees it. ``id`` is framework-neutral: cpu, cuda:N, npu:N."""

    id: str
    name: str
    memory_mb: int | None = None
    driver: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class BackendDevices:
    """A backend's installation state and the devices it sees."""

    backend: str
    installed: bool
    install_hint: str
    version: str | None = None
    devices: tuple[Device, ...] = ()
    error: str | None = None
    #: what the probe could not list and why (a vendor plug-in that failed to import, a
    #: TPU system that did not initialise); the devices it did list are still valid
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``autotune devices --json``)."""
        return {"backend": self.backend, "installed": self.installed,
                "install_hint": self.install_hint, "version": self.version,
                "error": self.error, "devices": [vars(d) for d in self.devices],
                "notes": list(self.notes)}


@dataclass
class _Probe:
    argv_prefix: list[str] = field(default_factory=lambda: [sys.executable, "-m",
                                                            "autotune.backends._probe"])

    def __call__(self, backend: str) -> BackendDevices:
        try:
            entry = get_spec(backend)
        except BackendLookupError as e:
            return BackendDevices(backend, False, "", error=str(e))
        if not entry.is_installed():
            return BackendDevices(backend, False, entry.install_hint)
        if entry.probe is None:  # no probe of its own: the CPU, as every backend sees it
            from autotune.backends._probe import cpu_device

            if "cpu" not in entry.device_kinds:  # the simulator: devices are declared
                return BackendDevices(backend, True, entry.install_hint,
                                      version=_version(entry.distribution),
                                      notes=(f"{', '.join(entry.device_kinds)} devices are "
                                             "declared in a space file, not found",))
            return BackendDevices(backend, True, entry.install_hint,
                                  version=_version(entry.distribution),
                                  devices=(Device(**cpu_device()),))
        try:
            proc = subprocess.run([*self.argv_prefix, backend], capture_output=True,
                                  text=True, timeout=PROBE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return BackendDevices(backend, True, entry.install_hint,
                                  error=f"probe timed out after {PROBE_TIMEOUT_S} s")
        line = next((ln for ln in proc.stdout.splitlines()
                     if ln.startswith("AUTOTUNE-PROBE ")), None)
        if proc.returncode != 0 or line is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            return BackendDevices(backend, True, entry.install_hint,
                                  error=f"probe failed: {tail}")
        data = json.loads(line.removeprefix("AUTOTUNE-PROBE "))
        return BackendDevices(backend, True, entry.install_hint, version=data["version"],
                              devices=tuple(Device(**d) for d in data["devices"]),
                              notes=tuple(data.get("notes", ())))


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (an import name), if its metadata says."""
    from importlib import metadata

    try:
        return metadata.version(distribution.split(".")[0])
    except (metadata.PackageNotFoundError, ValueError):
        return None


def discover(backends: Iterable[str] | None = None) -> list[BackendDevices]:
    """Probe each backend (default: all registered; a third-party ``package.module:Class``
    when named) in its own process, in parallel,
    except on a TPU host: a TPU is opened by one process at a time, so probes running side
    by side would race for it and which backend lists it would be chance."""
    from autotune.backends._probe import tpu_hardware_present

    names = list(backends) if backends is not None else list(BACKENDS)
    workers = 1 if tpu_hardware_present() else max(1, len(names))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_Probe(), names))


def device_ids(reports: Iterable[BackendDevices]) -> list[str]:
    """Every device id any of the reports sees, cpu first, then sorted."""
    ids = {d.id for r in reports for d in r.devices}
    return sorted(ids, key=lambda i: (i != "cpu", i.split(":")[0], int(i.split(":")[1])
                                      if ":" in i else 0))


def check_installed(space: Any) -> None:
    """Raise :class:`StudyError` naming the install command of any backend the space names
    that is not installed (checked without importing it)."""
    from autotune.config import KNOB_DEFAULTS
    from autotune.exceptions import StudyError

    spec = space.param("backend")
    names = list(spec.choices) if spec is not None else [KNOB_DEFAULTS["backend"]]
    for name in names:
        try:
            entry = get_spec(name)
        except BackendLookupError as e:
            raise StudyError(f"backend {name!r} named in the space: {e}") from None
        if not entry.is_installed():
            raise StudyError(f"backend {name!r} named in the space is not installed; "
                             f"install it with: {entry.install_hint}")


def resolve_devices(space: Any) -> Any:
    """The space with ``device: auto`` replaced by every device its backends see, after
    checking that every listed device exists. CPU-only spaces need no probe."""
    import dataclasses

    from autotune.config import KNOB_DEFAULTS
    from autotune.exceptions import StudyError
    from autotune.space import ParamSpec

    spec = space.param("device")
    wanted = list(spec.choices) if spec is not None and spec.kind in ("fixed", "categorical") \
        else [KNOB_DEFAULTS["device"]]
    if all(d == "cpu" or is_simulated(d) for d in wanted):
        return space  # simulated devices exist by declaration (checked with the space)
    backend_spec = space.param("backend")
    backends = list(backend_spec.choices) if backend_spec else [KNOB_DEFAULTS["backend"]]
    from autotune.backends import unsupported_device_reason

    found = device_ids(discover(backends))
    # A device is worth sampling only if a backend of the space can run trials on it
    # (torch lists torch_xla TPUs and torch_npu NPUs but cannot run on them).
    runnable = [d for d in found
                if any(unsupported_device_reason(b, d) is None for b in backends)]
    if wanted == ["auto"]:
        choices: tuple[str, ...] = tuple(runnable)
    else:
        missing = [d for d in wanted if d not in found]
        if missing:
            raise StudyError(f"device {missing[0]!r} does not exist here; devices found by "
                             f"{', '.join(backends)}: {', '.join(found)}")
        idle = [d for d in wanted if d not in runnable]
        if idle:
            reason = unsupported_device_reason(backends[0], idle[0])
            raise StudyError(f"device {idle[0]!r} exists here but no backend of the space "
                             f"can run trials on it ({reason}); usable devices: "
                             f"{', '.join(runnable)}")
        return space
    new = ParamSpec("device", "fixed" if len(choices) == 1 else "categorical", choices=choices)
    params = tuple(new if p.name == "device" else p for p in space.params)
    return dataclasses.replace(space, params=params)
