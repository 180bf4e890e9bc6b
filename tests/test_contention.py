"""The CPU contention monitor: fake /proc/stat files for exact arithmetic, and one real run
with a busy process pinned to the measured core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from autotune.profiling.contention import (
    DEFAULT_THRESHOLD,
    MACHINE_NOTE_THRESHOLD,
    ContentionMonitor,
    ContentionReading,
    combine,
    read_proc_stat,
)

TICK_HZ = 100  # ticks per second in the fake files: 1 tick = 10 ms


class Clock:
    """A clock that only moves when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _stat_line(name: str, busy: int = 0, idle: int = 0, steal: int = 0,
               system: int = 0) -> str:
    # user nice system idle iowait irq softirq steal guest guest_nice
    return f"{name} {busy} 0 {system} {idle} 0 0 0 {steal} 0 0"


def _write_stat(path: Path, cpus: dict[int, tuple[int, int, int]]) -> None:
    """A /proc/stat with per-CPU lines ``{cpu: (busy, idle, steal)}`` plus the usual rest."""
    total = tuple(sum(v[i] for v in cpus.values()) for i in range(3))
    lines = [_stat_line("cpu", *total)]
    lines += [_stat_line(f"cpu{c}", *v) for c, v in sorted(cpus.items())]
    lines += ["intr 12345 0 0", "ctxt 999", "btime 1700000000", "processes 42"]
    path.write_text("\n".join(lines) + "\n")


class Fake:
    """A monitor over a fake /proc/stat with an injected own-CPU clock and wall clock."""

    def __init__(self, tmp_path: Path, cores: list[int] | None = None,
                 threshold: float = DEFAULT_THRESHOLD, tolerance_ticks: float = 2) -> None:
        self.path = tmp_path / "stat"
        self.cpu = Clock()
        self.wall = Clock()
        self.monitor = ContentionMonitor(
            [0] if cores is None else cores, proc_stat=str(self.path), cpu_clock=self.cpu,
            wall_clock=self.wall, ticks_per_s=TICK_HZ, threshold=threshold,
            tolerance_ticks=tolerance_ticks)

    def window(self, before: dict[int, tuple[int, int, int]],
               after: dict[int, tuple[int, int, int]], window_s: float,
               own_s: float) -> ContentionReading:
        """One begin()/end() with the given counters, window length and own CPU time."""
        _write_stat(self.path, before)
        self.monitor.begin()
        _write_stat(self.path, after)
        self.wall.now += window_s
        self.cpu.now += own_s
        return self.monitor.end()


def test_exact_foreign_seconds_fraction_steal_and_machine(tmp_path: Path) -> None:
    fake = Fake(tmp_path, cores=[0])
    # Over 1 s, CPU 0 busy 60 ticks (0.6 s) of which 0.3 s ours, 5 ticks stolen;
    # CPU 1 (not watched) busy 40 ticks.
    r = fake.window({0: (1000, 5000, 10), 1: (2000, 4000, 0)},
                    {0: (1060, 5035, 15), 1: (2040, 4060, 0)}, window_s=1.0, own_s=0.3)
    assert r.available and r.cores == (0,) and r.segments == 1
    assert r.window_s == pytest.approx(1.0)
    assert r.busy_s == pytest.approx(0.6)
    assert r.own_s == pytest.approx(0.3)
    assert r.foreign_s == pytest.approx(0.3)
    assert r.foreign_fraction == pytest.approx(0.3)
    assert r.steal_s == pytest.approx(0.05)
    assert r.steal_fraction == pytest.approx(0.05)
    assert r.tolerance_s == pytest.approx(0.02)  # 2 ticks x 1 core
    assert r.machine_cpus == 2
    assert r.machine_busy_s == pytest.approx(1.0)
    assert r.machine_foreign_s == pytest.approx(0.7)
    assert r.machine_foreign_fraction == pytest.approx(0.35)
    assert r.contended
    assert "cores [0]" in r.reason and "30%" in r.reason and "steal 5%" in r.reason
    # A reading is data: JSON round trip without help.
    assert json.loads(json.dumps(asdict(r)))["foreign_s"] == pytest.approx(0.3)


def test_own_time_above_busy_clamps_to_zero(tmp_path: Path) -> None:
    # Own CPU time exact to the ns, /proc/stat in whole ticks: own may exceed busy.
    r = Fake(tmp_path).window({0: (100, 0, 0)}, {0: (148, 0, 0)}, window_s=0.5, own_s=0.495)
    assert r.foreign_s == 0.0 and r.foreign_fraction == 0.0 and not r.contended


def test_busy_counts_system_irq_softirq_not_iowait_or_guest(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    ticks = read_proc_stat(str(path))[0]
    assert ticks.busy == 1 + 2 + 3 + 6 + 7  # guest is already inside user
    assert ticks.idle == 4 + 5
    assert ticks.steal == 8


def test_old_kernel_without_steal_column(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    path.write_text("cpu0 10 0 5 100\n")
    ticks = read_proc_stat(str(path))[0]
    assert (ticks.busy, ticks.idle, ticks.steal) == (15, 100, 0)


@pytest.mark.parametrize(("foreign_ticks", "contended"), [(13, True), (11, False)])
def test_threshold_both_sides(tmp_path: Path, foreign_ticks: int, contended: bool) -> None:
    # 1 s on 1 core: threshold 10 % = 0.1 s, plus 2 ticks (0.02 s) of tolerance.
    # Own time is a whole number of ticks here so the arithmetic is exact.
    own_ticks = 50
    r = Fake(tmp_path).window({0: (0, 0, 0)}, {0: (own_ticks + foreign_ticks, 0, 0)},
                              window_s=1.0, own_s=own_ticks / TICK_HZ)
    assert r.threshold == DEFAULT_THRESHOLD
    assert r.foreign_s == pytest.approx(foreign_ticks / TICK_HZ)
    assert r.contended is contended
    assert ("timings are likely slowed" in r.reason) is contended
    assert ("below the 10% contention threshold" in r.reason) is not contended


def test_threshold_is_configurable(tmp_path: Path) -> None:
    r = Fake(tmp_path, threshold=0.5).window({0: (0, 0, 0)}, {0: (80, 0, 0)},
                                             window_s=1.0, own_s=0.4)
    assert r.foreign_fraction == pytest.approx(0.4) and not r.contended


def test_steal_alone_is_contention(tmp_path: Path) -> None:
    r = Fake(tmp_path).window({0: (0, 0, 100)}, {0: (50, 30, 120)}, window_s=1.0, own_s=0.5)
    assert r.foreign_s == pytest.approx(0.0)
    assert r.steal_s == pytest.approx(0.2) and r.steal_fraction == pytest.approx(0.2)
    assert r.contended and "steal 20%" in r.reason


def test_foreign_and_steal_add_up(tmp_path: Path) -> None:
    # 7 % foreign + 7 % steal: neither alone reaches 10 % + tolerance, together they do.
    r = Fake(tmp_path).window({0: (0, 0, 0)}, {0: (57, 0, 7)}, window_s=1.0, own_s=0.5)
    assert r.foreign_fraction == pytest.approx(0.07) and r.steal_fraction == pytest.approx(0.07)
    assert r.contended


def test_short_window_tick_tolerance(tmp_path: Path) -> None:
    # A 50 ms window on one core, ours throughout: /proc/stat shows 7 ticks where our exact
    # clock says 5. 20 ms "foreign" is 40 % of the window: tick noise, not contention.
    before, after = {0: (0, 0, 0)}, {0: (7, 0, 0)}
    r = Fake(tmp_path).window(before, after, window_s=0.05, own_s=0.05)
    assert r.foreign_fraction == pytest.approx(0.4)
    assert r.tolerance_s == pytest.approx(0.02)
    assert not r.contended
    # Without the tolerance the same window would be flagged.
    strict = Fake(tmp_path, tolerance_ticks=0).window(before, after, window_s=0.05, own_s=0.05)
    assert strict.contended
    # One tick more than the tolerance on a window that short is flagged (0.03 - 0.02 >= 0.005).
    busier = Fake(tmp_path).window(before, {0: (8, 0, 0)}, window_s=0.05, own_s=0.05)
    assert busier.contended


def test_tolerance_scales_with_cores(tmp_path: Path) -> None:
    r = Fake(tmp_path, cores=[0, 1]).window({0: (0, 0, 0), 1: (0, 0, 0)},
                                            {0: (5, 0, 0), 1: (5, 0, 0)},
                                            window_s=0.05, own_s=0.07)
    assert r.tolerance_s == pytest.approx(0.04)
    assert r.foreign_s == pytest.approx(0.03) and not r.contended


def test_machine_load_reported_not_verdict(tmp_path: Path) -> None:
    # Watched core 0 is ours alone; CPUs 1-3 are fully busy with other work.
    before = {c: (0, 0, 0) for c in range(4)}
    after = {0: (100, 0, 0), 1: (100, 0, 0), 2: (100, 0, 0), 3: (100, 0, 0)}
    r = Fake(tmp_path, cores=[0]).window(before, after, window_s=1.0, own_s=1.0)
    assert r.foreign_s == pytest.approx(0.0) and not r.contended
    assert r.machine_foreign_fraction == pytest.approx(0.75)
    assert r.machine_foreign_fraction >= MACHINE_NOTE_THRESHOLD
    assert "whole machine was 75% busy" in r.reason


def test_unreadable_proc_stat(tmp_path: Path) -> None:
    monitor = ContentionMonitor([0], proc_stat=str(tmp_path / "missing"))
    monitor.begin()
    r = monitor.end()
    assert not r.available and not r.contended
    assert r.cores == (0,) and r.window_s >= 0.0
    assert r.reason.startswith("CPU contention not measured: cannot read")
    json.dumps(asdict(r))


def test_proc_stat_vanishes_or_is_malformed(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    _write_stat(fake.path, {0: (0, 0, 0)})
    fake.monitor.begin()
    fake.path.unlink()
    assert not fake.monitor.end().available
    fake.path.write_text("cpu0 garbage here\n")
    fake.monitor.begin()
    r = fake.monitor.end()
    assert not r.available and not r.contended
    fake.path.write_text("intr 1 2 3\n")  # no per-CPU lines
    fake.monitor.begin()
    assert not fake.monitor.end().available


def test_watched_core_missing(tmp_path: Path) -> None:
    r = Fake(tmp_path, cores=[3]).window({0: (0, 0, 0)}, {0: (10, 0, 0)}, 1.0, 0.1)
    assert not r.available and "[3]" in r.reason


def test_end_without_begin() -> None:
    with pytest.raises(RuntimeError):
        ContentionMonitor().end()


def test_default_cores_are_the_affinity_at_begin(tmp_path: Path) -> None:
    monitor = ContentionMonitor()
    monitor.begin()
    r = monitor.end()
    if hasattr(os, "sched_getaffinity"):
        assert r.cores == tuple(sorted(os.sched_getaffinity(0)))
    if Path("/proc/stat").exists():
        assert r.available


def test_combine_segments(tmp_path: Path) -> None:
    fake = Fake(tmp_path, cores=[0])
    # A long quiet segment and a short one that is busy: judged on the totals.
    quiet = fake.window({0: (0, 0, 0)}, {0: (90, 0, 0)}, window_s=0.9, own_s=0.9)
    busy = fake.window({0: (90, 0, 0)}, {0: (100, 0, 0)}, window_s=0.1, own_s=0.05)
    assert busy.contended and not quiet.contended
    joined = combine([quiet, busy])
    assert joined.segments == 2 and joined.available
    assert joined.window_s == pytest.approx(1.0)
    assert joined.busy_s == pytest.approx(1.0)
    assert joined.own_s == pytest.approx(0.95)
    assert joined.foreign_s == pytest.approx(0.05)
    assert joined.foreign_fraction == pytest.approx(0.05)
    assert joined.tolerance_s == pytest.approx(0.04)  # each segment brings its 2 ticks
    assert not joined.contended
    # A busy long segment is not hidden by a quiet short one.
    loud = fake.window({0: (0, 0, 0)}, {0: (100, 0, 0)}, window_s=1.0, own_s=0.5)
    assert combine([loud, quiet]).contended
    # Combining a combined reading counts its segments.
    assert combine([joined, loud]).segments == 3
    assert combine([quiet]) == quiet


def test_combine_unavailable_and_empty(tmp_path: Path) -> None:
    fake = Fake(tmp_path)
    ok = fake.window({0: (0, 0, 0)}, {0: (100, 0, 0)}, window_s=1.0, own_s=0.5)
    missing = ContentionMonitor([0], proc_stat=str(tmp_path / "missing"))
    missing.begin()
    gone = missing.end()
    joined = combine([ok, gone])
    assert not joined.available and not joined.contended and joined.segments == 2
    assert joined.reason.startswith("CPU contention not measured: cannot read")
    empty = combine([])
    assert not empty.available and empty.segments == 0


# --- the real thing ---------------------------------------------------------------------

_REAL = pytest.mark.skipif(
    not (hasattr(os, "sched_setaffinity") and Path("/proc/stat").exists()),
    reason="needs Linux /proc/stat and sched_setaffinity")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _measure(seconds: float) -> ContentionReading:
    monitor = ContentionMonitor()  # watches the affinity set by the test: one core
    monitor.begin()
    _spin(seconds)
    return monitor.end()


@_REAL
def test_real_busy_process_on_the_same_core() -> None:
    """A CPU-bound process pinned to the test's only core takes about half of it."""
    old = os.sched_getaffinity(0)
    core = max(old)
    busy: subprocess.Popen[bytes] | None = None
    try:
        os.sched_setaffinity(0, {core})
        # Control first, without the busy process. The machine is shared (other processes
        # may run on this core too), so the control is not asserted to be quiet, only to
        # be quieter than the contended run: the least loaded of three short windows.
        controls = [_measure(0.2) for _ in range(3)]
        assert all(c.available and c.cores == (core,) for c in controls)
        quietest = min(c.foreign_fraction for c in controls)

        # The child inherits the one-core affinity; set it explicitly as well.
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        os.sched_setaffinity(busy.pid, {core})
        time.sleep(0.3)  # past interpreter start-up: the child is spinning now
        assert busy.poll() is None
        r = _measure(0.5)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        os.sched_setaffinity(0, old)
    assert os.sched_getaffinity(0) == old
    assert r.available and r.cores == (core,)
    # Fair scheduling gives the child about half of the core: ~50 % foreign.
    assert r.contended, r.reason
    assert r.foreign_fraction >= 0.25, r
    assert r.foreign_fraction > quietest, (r, controls)
    print(f"contended {r.foreign_fraction:.2f}, quietest control {quietest:.2f}")
