"""Foreign CPU load on the measured cores: was the window shared with another process?

A busy process on a core the worker is pinned to slows the trial without the trial seeing
why: on this project's 2-core machine a second busy process slowed 2-thread configurations
15-40x (``shared/research/hand_written_tuner.md``), because an OpenMP barrier waits for the
thread that the scheduler has parked. GPU benchmarks check for foreign processes on the
device; this is the same guard for CPU cores.

:class:`ContentionMonitor` has the begin()/end() shape of the power meters. Over the window it
reads the per-CPU counters of ``/proc/stat`` for the watched cores (the cores the worker is
pinned to) and this process's own CPU time; what the cores were busy with beyond the process's
own work is *foreign* load. Hypervisor steal (the VM's vCPU not running at all) is reported
apart and also counts as contention. The reading is a frozen dataclass that
:func:`dataclasses.asdict` turns into JSON-serialisable data.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: Contended when foreign load plus steal, beyond the tick tolerance, reaches this fraction of
#: the watched capacity (window x cores). Why 10 %: an equal-priority CPU-bound competitor on a
#: watched core takes about half of it (the fair scheduler splits the core), i.e. 50 % of one
#: core's capacity, and on 2 cores 25 %: far above this. Ordinary background activity (kernel
#: threads, the driver process polling, a shell) stays at a few percent. And 10 % of the
#: capacity taken away can by itself shift a step time by about 10 % for a single thread, and
#: much more for multi-thread configurations that wait at a barrier for a descheduled thread:
#: more than the 2-5 % spread a measurement is otherwise trusted to.
DEFAULT_THRESHOLD = 0.10

#: Ticks per watched core that a window may show as foreign without meaning it. ``/proc/stat``
#: counts in USER_HZ ticks (10 ms at the usual 100 Hz) and, with tick-based accounting, charges
#: a whole tick to whatever ran when it fired; the process's own CPU time is exact to the
#: nanosecond. Each of the window's two ends can therefore be off by about one tick per core:
#: two ticks per core. This matters only for short windows (2 ticks are 20 ms: 4 % of a 0.5 s
#: window on one core, 0.4 % of a 5 s window).
DEFAULT_TOLERANCE_TICKS = 2

#: Whole-machine foreign load (as a fraction of all CPUs' capacity) from which ``reason``
#: mentions it. It is not part of the verdict: load on cores the worker does not run on costs
#: through shared caches and memory bandwidth, typically percents rather than multiples, and
#: such load is common on shared CI machines, so flagging it would flag most trials there.
MACHINE_NOTE_THRESHOLD = 0.50

# Columns of a ``cpuN`` line of /proc/stat, in order (see proc(5)). ``guest`` and
# ``guest_nice`` are already included in ``user`` and ``nice`` and are not added again.
_USER, _NICE, _SYSTEM, _IDLE, _IOWAIT, _IRQ, _SOFTIRQ, _STEAL = range(8)
_BUSY_COLUMNS = (_USER, _NICE, _SYSTEM, _IRQ, _SOFTIRQ)


@dataclass(frozen=True)
class CpuTicks:
    """One CPU's cumulative counters from /proc/stat, in USER_HZ ticks."""

    busy: int  # user + nice + system + irq + softirq
    idle: int  # idle + iowait
    steal: int


@dataclass(frozen=True)
class ContentionReading:
    """Foreign CPU load on the watched cores over one window (or joined segments).

    CPU-seconds are summed over the cores; fractions are of the capacity ``window_s x
    len(cores)`` (or ``window_s x machine_cpus`` for the machine-wide fields).
    """

    available: bool  # False where /proc/stat could not be read: no verdict then
    cores: tuple[int, ...]  # the watched CPUs
    window_s: float  # wall-clock length of the window
    busy_s: float  # CPU-seconds the watched cores were busy (anyone's work)
    own_s: float  # CPU-seconds of this process (all its threads, on any core)
    foreign_s: float  # busy_s - own_s, at least 0
    foreign_fraction: float  # foreign_s / (window_s x cores)
    steal_s: float  # CPU-seconds the hypervisor took from the watched cores
    steal_fraction: float  # steal_s / (window_s x cores)
    machine_cpus: int  # CPUs in /proc/stat (the whole machine, online ones)
    machine_busy_s: float  # CPU-seconds all CPUs were busy
    machine_foreign_s: float  # all CPUs busy minus own_s, at least 0 (informational)
    machine_foreign_fraction: float  # machine_foreign_s / (window_s x machine_cpus)
    threshold: float  # fraction of capacity from which the window is contended
    tolerance_s: float  # CPU-seconds of foreign + steal forgiven for tick resolution
    contended: bool  # foreign_s + steal_s - tolerance_s >= threshold x capacity
    reason: str  # one sentence, usable as a warning when ``contended``
    segments: int = 1  # how many begin()/end() segments were joined


def read_proc_stat(path: str = "/proc/stat") -> dict[int, CpuTicks]:
    """The per-CPU counters of a /proc/stat file, keyed by CPU number.

    Raises :class:`OSError` when the file cannot be read and :class:`ValueError` when it
    has no per-CPU line or a malformed one.
    """
    with open(path, encoding="ascii") as f:
        text = f.read()
    cpus: dict[int, CpuTicks] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        # "cpu" alone is the machine total; "cpuN" are the CPUs (only the online ones).
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        values = [int(v) for v in rest.split()]
        if len(values) < 4:
            raise ValueError(f"malformed /proc/stat line: {line!r}")
        values += [0] * (8 - len(values))  # kernels before 2.6.11 lack steal and later columns
        cpus[int(name[3:])] = CpuTicks(
            busy=sum(values[i] for i in _BUSY_COLUMNS),
            idle=values[_IDLE] + values[_IOWAIT],
            steal=values[_STEAL],
        )
    if not cpus:
        raise ValueError(f"no per-CPU lines in {path}")
    return cpus


def _verdict(foreign_s: float, steal_s: float, capacity_s: float, tolerance_s: float,
             threshold: float) -> bool:
    # Foreign load and steal are both capacity the trial did not get; they add up.
    return capacity_s > 0 and foreign_s + steal_s - tolerance_s >= threshold * capacity_s


def _reason(cores: Sequence[int], contended: bool, foreign_s: float, foreign_fraction: float,
            steal_s: float, steal_fraction: float, capacity_s: float, threshold: float,
            machine_foreign_fraction: float) -> str:
    lost = (f"foreign CPU load on cores {list(cores)} was {foreign_fraction:.0%} of their "
            f"capacity ({foreign_s:.3g} of {capacity_s:.3g} CPU-s), hypervisor steal "
            f"{steal_fraction:.0%} ({steal_s:.3g} CPU-s)")
    if contended:
        text = (f"{lost}: at least {threshold:.0%} together, so another process (or the "
                "hypervisor) shared the measured cores and the timings are likely slowed")
    else:
        text = f"{lost}: below the {threshold:.0%} contention threshold"
    if machine_foreign_fraction >= MACHINE_NOTE_THRESHOLD:
        text += (f"; the whole machine was {machine_foreign_fraction:.0%} busy with other work "
                 "(shared caches and memory bandwidth may slow the trial)")
    return text


def _unavailable(cores: Sequence[int], window_s: float, own_s: float, threshold: float,
                 why: str, segments: int = 1) -> ContentionReading:
    return ContentionReading(
        available=False, cores=tuple(cores), window_s=window_s, busy_s=0.0, own_s=own_s,
        foreign_s=0.0, foreign_fraction=0.0, steal_s=0.0, steal_fraction=0.0, machine_cpus=0,
        machine_busy_s=0.0, machine_foreign_s=0.0, machine_foreign_fraction=0.0,
        threshold=threshold, tolerance_s=0.0, contended=False,
        reason=f"CPU contention not measured: {why}",
        segments=segments,
    )


def _reading(cores: Sequence[int], window_s: float, capacity_s: float, busy_s: float,
             own_s: float, steal_s: float, machine_cpus: int, machine_capacity_s: float,
             machine_busy_s: float, threshold: float, tolerance_s: float,
             segments: int) -> ContentionReading:
    """A reading from totals; shared by :meth:`ContentionMonitor.end` and :func:`combine`.

    The capacities are passed rather than derived so that joined segments add their own
    ``window x cores`` each.
    """
    foreign = max(0.0, busy_s - own_s)
    # own_s counts the process's threads on any core; a thread left unpinned makes the
    # watched foreign load read low (a missed warning), never high (a false one).
    machine_foreign = max(0.0, machine_busy_s - own_s)
    foreign_fraction = foreign / capacity_s if capacity_s > 0 else 0.0
    steal_fraction = steal_s / capacity_s if capacity_s > 0 else 0.0
    machine_fraction = machine_foreign / machine_capacity_s if machine_capacity_s > 0 else 0.0
    contended = _verdict(foreign, steal_s, capacity_s, tolerance_s, threshold)
    return ContentionReading(
        available=True, cores=tuple(cores), window_s=window_s, busy_s=busy_s, own_s=own_s,
        foreign_s=foreign, foreign_fraction=foreign_fraction, steal_s=steal_s,
        steal_fraction=steal_fraction, machine_cpus=machine_cpus,
        machine_busy_s=machine_busy_s, machine_foreign_s=machine_foreign,
        machine_foreign_fraction=machine_fraction, threshold=threshold,
        tolerance_s=tolerance_s, contended=contended,
        reason=_reason(cores, contended, foreign, foreign_fraction, steal_s, steal_fraction,
                       capacity_s, threshold, machine_fraction),
        segments=segments,
    )


def _default_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity outside Linux
        return list(range(os.cpu_count() or 1))


def _clock_ticks() -> int:
    try:
        return int(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100  # USER_HZ is 100 on every mainstream Linux architecture


def own_cpu_seconds() -> float:
    """CPU seconds of this process (every thread) plus its finished children: a power meter
    that runs a tool per sample (``npu-smi``) works for the trial, not against it."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


class ContentionMonitor:
    """Measures foreign CPU load on the watched cores: ``begin()`` ... work ... ``end()``.

    ``cores``: the CPUs to watch; ``None`` watches the process's affinity at each
    :meth:`begin` (the worker pins itself before measuring). ``proc_stat``, ``cpu_clock``
    (this process's CPU seconds), ``wall_clock`` and ``ticks_per_s`` are injectable for tests.
    Where ``proc_stat`` cannot be read, :meth:`end` returns a reading with
    ``available=False`` and ``contended=False``; it never raises for that.
    """

    def __init__(self, cores: Iterable[int] | None = None, *, proc_stat: str = "/proc/stat",
                 cpu_clock: Callable[[], float] | None = None,
                 wall_clock: Callable[[], float] = time.perf_counter,
                 ticks_per_s: int | None = None, threshold: float = DEFAULT_THRESHOLD,
                 tolerance_ticks: float = DEFAULT_TOLERANCE_TICKS) -> None:
        self._fixed_cores = sorted(cores) if cores is not None else None
        self.proc_stat = proc_stat
        self.cpu_clock = cpu_clock or own_cpu_seconds
        self.wall_clock = wall_clock
        self.ticks_per_s = ticks_per_s or _clock_ticks()
        self.threshold = threshold
        self.tolerance_ticks = tolerance_ticks
        self._began = False

    def _snapshot(self) -> tuple[dict[int, CpuTicks] | None, str]:
        try:
            return read_proc_stat(self.proc_stat), ""
        except (OSError, ValueError) as e:
            return None, f"cannot read {self.proc_stat} ({e})"

    def begin(self) -> None:
        """Start a window: remember the counters, this process's CPU time and the clock."""
        self._cores = self._fixed_cores if self._fixed_cores is not None else _default_cores()
        self._stat0, self._why = self._snapshot()
        self._cpu0 = self.cpu_clock()
        # The wall clock is read last at begin and first at end, so the window is the
        # tightest span around the work; the counter reads fall just outside it.
        self._t0 = self.wall_clock()
        self._began = True

    def end(self) -> ContentionReading:
        """Close the window and return its reading."""
        if not self._began:
            raise RuntimeError("ContentionMonitor.end() called without begin()")
        self._began = False
        window = self.wall_clock() - self._t0
        own = self.cpu_clock() - self._cpu0
        stat1, why = self._snapshot()
        cores = self._cores
        if self._stat0 is None or stat1 is None:
            return _unavailable(cores, window, own, self.threshold, self._why or why)
        stat0 = self._stat0
        missing = [c for c in cores if c not in stat0 or c not in stat1]
        if missing:  # an offline CPU has no line: nothing to compare
            return _unavailable(cores, window, own, self.threshold,
                                f"CPUs {missing} not in {self.proc_stat}")
        tick = 1.0 / self.ticks_per_s

        def busy(cpus: Iterable[int]) -> float:
            # A counter that went backwards (CPU hot-plug resets it) counts as 0.
            return sum(max(0, stat1[c].busy - stat0[c].busy) for c in cpus) * tick

        steal = sum(max(0, stat1[c].steal - stat0[c].steal) for c in cores) * tick
        machine = [c for c in stat1 if c in stat0]
        return _reading(
            cores, window, capacity_s=window * len(cores), busy_s=busy(cores),
            own_s=own, steal_s=steal, machine_cpus=len(machine),
            machine_capacity_s=window * len(machine), machine_busy_s=busy(machine),
            threshold=self.threshold,
            tolerance_s=self.tolerance_ticks * len(cores) * tick, segments=1,
        )


def combine(readings: Sequence[ContentionReading]) -> ContentionReading:
    """Join the readings of consecutive segments of one window (e.g. around an evaluation).

    Seconds add up and the verdict is taken again on the totals, so a short quiet segment
    does not hide a long busy one. Each segment brings its own tick tolerance (it has its own
    two ends). If any segment is unavailable, so is the result (its totals would be partial).
    ``cores`` is the union of the segments' cores; each segment's capacity is its own
    ``window x cores``.
    """
    if not readings:
        return _unavailable((), 0.0, 0.0, DEFAULT_THRESHOLD, "no measured window", 0)
    first = readings[0]
    segments = sum(r.segments for r in readings)
    window = sum(r.window_s for r in readings)
    own = sum(r.own_s for r in readings)
    cores = tuple(sorted({c for r in readings for c in r.cores}))
    bad = [r for r in readings if not r.available]
    if bad:
        why = bad[0].reason.removeprefix("CPU contention not measured: ")
        return _unavailable(cores, window, own, first.threshold, why, segments)
    return _reading(
        cores, window, capacity_s=sum(r.window_s * len(r.cores) for r in readings),
        busy_s=sum(r.busy_s for r in readings), own_s=own,
        steal_s=sum(r.steal_s for r in readings),
        machine_cpus=max(r.machine_cpus for r in readings),
        machine_capacity_s=sum(r.window_s * r.machine_cpus for r in readings),
        machine_busy_s=sum(r.machine_busy_s for r in readings),
        threshold=first.threshold, tolerance_s=sum(r.tolerance_s for r in readings),
        segments=segments,
    )
