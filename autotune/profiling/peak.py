"""The machine's measured peak: GEMM operations per second and memory bandwidth.

A trial's throughput means little on its own; as a percentage of what the machine can do
(``pct_of_peak``) it says how much headroom is left. The peak here is *measured*, not taken
from a data sheet: square matmuls in each precision, one fresh worker process per
(precision, thread count), pinned to that many CPUs (one per physical core first) with the
OpenMP/MKL/OpenBLAS pools capped before torch loads. See
:mod:`autotune.profiling._peak_worker` for the timing method.

* bf16 and fp16 are measured only where the CPU computes them natively (AVX512-BF16 or
  AMX-BF16; AVX512-FP16 or AMX-FP16); elsewhere they run through conversion several times
  slower than fp32, and the entry records that reason instead of a number.
* int8 is ``torch._int_mm`` (int8 x int8 -> int32); its figure counts integer operations
  (``op_kind == "int"``). A build where it raises records the error line.
* Without torch the worker falls back to numpy (fp32 and bandwidth only) and says so.

Results are cached, one JSON file per machine fingerprint (CPU, flags, memory, framework
versions) under ``cache_dir()/peak``; an entry is measured once and reused until
``refresh=True``. This module imports no deep-learning framework.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from autotune._cache import cache_dir, write_atomically
from autotune.backends._base import cpu_capabilities, cpu_flags
from autotune.profiling.fingerprint import fingerprint_hash, machine_fingerprint

if sys.platform != "win32":
    import fcntl

__all__ = ["PRECISIONS", "PeakEntry", "PeakTable", "default_threads", "ensure_peak",
           "load_peak_table", "measure_peak", "pct_of_peak", "peak_cache_path", "peak_for",
           "peak_missing", "precision_reason"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
#: Version of the cache file's layout; a file of another version reads as empty.
SCHEMA_VERSION = 1
#: Seconds one worker may run (a slow int8 GEMM at several sizes takes tens of seconds).
WORKER_TIMEOUT_S = 600.0
_WORKER = "autotune.profiling._peak_worker"


@dataclass(frozen=True)
class PeakEntry:
    """The peak of one (device, precision, threads), or why there is none.

    ``flops_per_s`` is None exactly when the precision is unavailable; ``reason`` says why.
    For int8 it counts integer operations (``op_kind == "int"``). ``spread`` is IQR/median
    of the timed blocks' rates; ``repeats`` the number of timed blocks.
    """

    device: str
    precision: str
    threads: int
    flops_per_s: float | None
    reason: str = ""
    method: str = ""
    op_kind: str = "flop"
    n: int | None = None
    repeats: int | None = None
    calls_per_block: int | None = None
    spread: float | None = None
    bandwidth_bytes_per_s: float | None = None
    bandwidth_method: str = ""
    bandwidth_spread: float | None = None
    torch_version: str | None = None
    library: str | None = None
    cpus: tuple[int, ...] = ()
    measured_at: str = ""

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.device, self.precision, self.threads)

    @property
    def available(self) -> bool:
        return self.flops_per_s is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpus"] = list(self.cpus)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeakEntry:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["cpus"] = tuple(int(c) for c in kwargs.get("cpus") or ())
        kwargs["threads"] = int(kwargs["threads"])
        return cls(**kwargs)


@dataclass(frozen=True)
class PeakTable:
    """Peak entries of one machine (``fingerprint``: its :func:`fingerprint_hash`)."""

    fingerprint: str = ""
    entries: tuple[PeakEntry, ...] = field(default_factory=tuple)

    def get(self, device: str, precision: str, threads: int) -> PeakEntry | None:
        for entry in self.entries:
            if entry.key == (device, precision, threads):
                return entry
        return None

    def merged(self, entries: Iterable[PeakEntry]) -> PeakTable:
        """This table with ``entries`` added, replacing entries of the same key."""
        by_key = {e.key: e for e in self.entries}
        by_key.update((e.key, e) for e in entries)
        return replace(self, entries=tuple(sorted(by_key.values(), key=_sort_key)))

    def __iter__(self) -> Iterator[PeakEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, "fingerprint": self.fingerprint,
                "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeakTable:
        """The table of ``data`` (empty when written by another schema version)."""
        if data.get("version") != SCHEMA_VERSION:
            return cls(fingerprint=str(data.get("fingerprint", "")))
        return cls(fingerprint=str(data.get("fingerprint", ""))).merged(
            PeakEntry.from_dict(e) for e in data.get("entries", []))


def _sort_key(entry: PeakEntry) -> tuple[str, int, int, str]:
    rank = PRECISIONS.index(entry.precision) if entry.precision in PRECISIONS else 99
    return (entry.device, entry.threads, rank, entry.precision)


# ---------------------------------------------------------------- cache

def peak_cache_path() -> Path:
    """``cache_dir()/peak/<fingerprint hash>.json`` of this machine."""
    return cache_dir() / "peak" / f"{fingerprint_hash(machine_fingerprint())}.json"


def load_peak_table(path: Path | None = None) -> PeakTable:
    """The cached table of this machine, or an empty one (no file, unreadable, old schema)."""
    path = path or peak_cache_path()
    try:
        data = json.loads(path.read_text())
        return PeakTable.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError):
        return PeakTable(fingerprint=path.stem)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (serialises read-merge-write of concurrent drivers)."""
    if sys.platform == "win32":
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _merge_into_cache(entries: Sequence[PeakEntry]) -> PeakTable:
    """Merge ``entries`` into the cache file (atomically) and return the merged table."""
    path = peak_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.with_name(path.name + ".lock")):
        table = replace(load_peak_table(path), fingerprint=path.stem).merged(entries)
        text = json.dumps(table.to_dict(), indent=2) + "\n"

        def write(tmp: str) -> None:
            Path(tmp).write_text(text)

        write_atomically(path, write)
    return table


# ---------------------------------------------------------------- what to measure

def precision_reason(device: str, precision: str,
                     flags: frozenset[str] | None = None) -> str | None:
    """Why ``precision`` is not measured on ``device`` (None: measure it).

    On a CPU, bf16/fp16 need native instructions (read from ``/proc/cpuinfo`` flags unless
    ``flags`` is given); int8 and fp32 are always tried. On CUDA everything is tried.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if device != "cpu":
        return None
    return cpu_capabilities(cpu_flags() if flags is None else flags).reasons.get(precision)


def _allowed_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _core_of(cpu: int) -> tuple[int, ...]:
    topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return (int((topology / "physical_package_id").read_text()),
                int((topology / "core_id").read_text()))
    except (OSError, ValueError):
        return (-1, cpu)


def cpu_order() -> list[int]:
    """The CPUs this process may use, one per physical core first, then their siblings."""
    first: list[int] = []
    rest: list[int] = []
    seen: set[tuple[int, ...]] = set()
    for cpu in _allowed_cpus():
        core = _core_of(cpu)
        (rest if core in seen else first).append(cpu)
        seen.add(core)
    return first + rest


def default_threads(device: str = "cpu") -> list[int]:
    """Powers of two up to the usable CPUs, and that count itself (``[1]`` on a GPU)."""
    if device != "cpu":
        return [1]
    usable = len(_allowed_cpus())
    counts = {usable}
    t = 1
    while t < usable:
        counts.add(t)
        t *= 2
    return sorted(counts)


# ---------------------------------------------------------------- measuring

def _run_worker(device: str, precision: str, threads: int, cpus: Sequence[int],
                options: dict[str, Any]) -> dict[str, Any]:
    """Run one measurement in a fresh worker process; its JSON result, or ``{"error": ...,
    "failed": True}`` when the worker crashed, timed out or printed no result."""
    argv = [sys.executable, "-m", _WORKER, "--device", device, "--precision", precision,
            "--threads", str(threads), "--cpus", ",".join(map(str, cpus))]
    timeout = float(options.get("timeout_s") or WORKER_TIMEOUT_S)
    for name, value in options.items():
        if value is not None and name != "timeout_s":
            argv += [f"--{name.replace('_', '-')}", str(value)]
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"the peak worker timed out after {timeout:.0f} s",
                "failed": True}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            result: dict[str, Any] = json.loads(lines[-1])
            return result
        except ValueError:
            pass
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"the peak worker failed (exit {proc.returncode}): {tail}", "failed": True}


_BANDWIDTH_FIELDS = ("bandwidth_bytes_per_s", "bandwidth_method", "bandwidth_spread")


def _entry(device: str, precision: str, threads: int, raw: dict[str, Any],
           bandwidth: dict[str, Any]) -> PeakEntry:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    ops = raw.get("ops_per_s")
    flops = float(ops) if isinstance(ops, int | float) else math.nan
    ok = math.isfinite(flops) and flops > 0
    return PeakEntry(
        device=device, precision=precision, threads=threads,
        flops_per_s=flops if ok else None,
        reason="" if ok else str(raw.get("error") or "no result"),
        method=str(raw.get("method", "")), op_kind=str(raw.get("op_kind", "flop")),
        n=raw.get("n"), repeats=raw.get("blocks"), calls_per_block=raw.get("calls_per_block"),
        spread=raw.get("spread"),
        bandwidth_bytes_per_s=bandwidth.get("bandwidth_bytes_per_s"),
        bandwidth_method=str(bandwidth.get("bandwidth_method", "")),
        bandwidth_spread=bandwidth.get("bandwidth_spread"),
        torch_version=raw.get("torch_version"), library=raw.get("library"),
        cpus=tuple(raw.get("cpus") or ()), measured_at=now)


def measure_peak(device: str = "cpu", precisions: Sequence[str] = PRECISIONS,
                 threads: list[int] | None = None, *, refresh: bool = False,
                 cache: bool = True, n: int | None = None, blocks: int = 7,
                 block_s: float = 0.25, bandwidth_mib: int = 256,
                 library: str = "auto", timeout_s: float | None = None) -> PeakTable:
    """Measure the peak of each (precision, threads) on ``device`` (``cpu`` or ``cuda:N``).

    Cached entries are reused unless ``refresh``; new ones are merged into the cache unless
    ``cache=False`` (entries of a crashed worker are never cached). Each thread count's
    memory bandwidth is measured in its first worker and shared by its entries.
    ``n`` fixes the matrix size (tests), else it grows from 1024 until one call takes
    >= 20 ms; ``blocks`` timed blocks of about ``block_s`` seconds each; ``library`` is
    ``auto`` (torch, numpy without it), ``torch`` or ``numpy``. Returns the requested
    entries only.
    """
    threads = list(threads) if threads else default_threads(device)
    for p in precisions:
        precision_reason(device, p, frozenset())  # validates the name
    table = load_peak_table() if cache else PeakTable()
    order = cpu_order()
    options: dict[str, Any] = {"library": library, "n": n, "blocks": blocks,
                               "block_s": block_s, "timeout_s": timeout_s}
    result: list[PeakEntry] = []
    to_cache: list[PeakEntry] = []
    for t in threads:
        if t < 1:
            raise ValueError(f"threads must be >= 1, got {t}")
        cpus = order[:t]
        too_many = (f"{t} threads requested but only {len(order)} CPUs are available to "
                    f"this process") if t > len(order) and device == "cpu" else None
        bandwidth: dict[str, Any] = {}
        cached_here: list[PeakEntry] = []
        pending: list[tuple[str, dict[str, Any]]] = []
        for p in precisions:
            old = table.get(device, p, t)
            if old is not None and not refresh:
                cached_here.append(old)
                continue
            reason = too_many or precision_reason(device, p)
            if reason is not None:
                pending.append((p, {"error": reason}))
                continue
            raw = _run_worker(device, p, t, cpus,
                              {**options, "bandwidth_mib": 0 if bandwidth else bandwidth_mib})
            if raw.get("bandwidth_bytes_per_s") is not None:
                bandwidth = {k: raw.get(k) for k in _BANDWIDTH_FIELDS}
            pending.append((p, raw))
        if not bandwidth:  # nothing measured here: share a cached entry's figure
            for old in cached_here:
                if old.bandwidth_bytes_per_s is not None:
                    bandwidth = {k: getattr(old, k) for k in _BANDWIDTH_FIELDS}
                    break
        fresh = [(_entry(device, p, t, raw, bandwidth), raw) for p, raw in pending]
        result += cached_here + [e for e, _ in fresh]
        to_cache += [e for e, raw in fresh if not raw.get("failed")]
    if cache and to_cache:
        table = _merge_into_cache(to_cache)
    fingerprint = table.fingerprint or (peak_cache_path().stem if cache else "")
    return PeakTable(fingerprint=fingerprint).merged(result)


def peak_for(device: str, precision: str, threads: int, *,
             measure_if_missing: bool = True) -> PeakEntry | None:
    """The cached peak of (device, precision, threads); when missing, measure that entry
    only (and cache it) unless ``measure_if_missing`` is False (then None)."""
    entry = load_peak_table().get(device, precision, threads)
    if entry is not None or not measure_if_missing:
        return entry
    return measure_peak(device, (precision,), [threads]).get(device, precision, threads)


def peak_missing(device: str, precision: str, threads: int | None) -> bool:
    """Whether :func:`ensure_peak` would measure a peak for a trial of (device, precision,
    threads) now: one it compares with and this machine has not measured yet."""
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda") or (precision == "int8" and kind == "cpu"):
        return False
    n = threads if threads is not None else len(_allowed_cpus())
    return load_peak_table().get(device, precision, n) is None


def ensure_peak(device: str, precision: str, threads: int | None) -> None:
    """Measure the peak a trial of (device, precision, threads) is compared with, once per
    machine, before the trial is launched (so it never eats a trial's budget).

    ``threads=None`` is every core this process may use (what an unpinned worker uses).
    CPU and CUDA only; int8 on CPU has no honest peak (see the worker) and is skipped. A
    failure to measure is not an error: the trial then records why it has no peak.
    """
    if not peak_missing(device, precision, threads):
        return
    n = threads if threads is not None else len(_allowed_cpus())
    logging.getLogger(__name__).info(
        "measuring this machine's %s GEMM peak at %d thread(s) on %s (once per machine)",
        precision, n, device)
    try:
        peak_for(device, precision, n)
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        logging.getLogger(__name__).warning("peak not measured: %s", e)


def pct_of_peak(flops_per_sample: float | None, throughput_sps: float,
                entry: PeakEntry | None) -> tuple[float | None, str]:
    """Achieved FLOP/s (``flops_per_sample * throughput_sps``) as a percentage of the peak.

    Returns ``(percent, "")`` (above 100 is possible: a peak measured on square GEMMs is
    not a hard bound), or ``(None, reason)``.
    """
    if flops_per_sample is None:
        return None, "the workload's FLOPs per sample are unknown"
    if not math.isfinite(flops_per_sample) or flops_per_sample <= 0:
        return None, f"FLOPs per sample must be positive, got {flops_per_sample}"
    if not math.isfinite(throughput_sps) or throughput_sps <= 0:
        return None, f"no throughput to compare (got {throughput_sps} samples/s)"
    if entry is None:
        return None, "no peak measured for this device, precision and thread count"
    if entry.flops_per_s is None:
        return None, f"no {entry.precision} peak on {entry.device}: {entry.reason}"
    return 100.0 * flops_per_sample * throughput_sps / entry.flops_per_s, ""
