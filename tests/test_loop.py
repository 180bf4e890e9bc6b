"""The measured loop (:func:`autotune.profiling.loop.run_profile`) driven by stub backends.

Most tests run the loop on a virtual clock: ``loop.time`` is replaced by :class:`_Clock`,
which only moves when a stub backend "works" (plus 1 us per clock read, so that every loop
makes progress). Step times, stopping points and deadlines are then exact and independent of
the machine's load, and the tests take milliseconds of real time. Two tests run on the real
clock, with busy-waiting stubs: synchronisation (a spin never ends early, so the lower bounds
there are exact) and the deadline in wall-clock time.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

import pytest

from autotune.config import WARMUP_MIN_S, TrialConfig
from autotune.profiling import loop
from autotune.profiling.contention import ContentionMonitor, ContentionReading, combine
from autotune.profiling.loop import CI_CHECK_EVERY, run_profile
from autotune.profiling.measurement import Measurement
from autotune.profiling.power import NullMeter
from autotune.profiling.stats import PERCENTILE_MIN_SAMPLES
from autotune.space import Budget, parse_space

MS = 1e-3
US = 1e-6
BATCH = 8
#: Virtual time one clock read takes.
READ_S = 1 * US
#: Slack for the virtual clock reads between a step's clock reads and the loop's checks.
EPS = 50 * US


class _Clock:
    """A virtual ``time`` module for ``loop``: ``perf_counter`` moves only by ``advance``
    (a stub's work) and by :data:`READ_S` per read. Optionally logs each read."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.now = 1000.0
        self.events = events

    def perf_counter(self) -> float:
        if self.events is not None:
            self.events.append("clock")
        self.now += READ_S
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    """Run ``loop`` on a virtual clock (it reads ``time.perf_counter`` from its globals)."""
    c = _Clock()
    monkeypatch.setattr(loop, "time", c)
    return c


class _Stub:
    """A CPU-like backend on the virtual clock: step ``i`` takes ``duration(i)`` seconds;
    synchronize is free. Records each step's start and end, and the hook calls."""

    steps_per_epoch = 1

    def __init__(self, clock: _Clock, duration: Callable[[int], float]) -> None:
        self.clock = clock
        self.duration = duration
        self.steps = 0
        self.syncs = 0
        self.starts: list[float] = []
        self.ends: list[float] = []

    def step(self) -> int:
        self.starts.append(self.clock.now)
        self.clock.advance(self.duration(self.steps))
        self.ends.append(self.clock.now)
        self.steps += 1
        return BATCH

    def synchronize(self) -> None:
        self.syncs += 1

    def between_steps(self) -> None:
        pass

    def evaluate(self) -> float:
        return 0.5


def _config(budget: Budget) -> TrialConfig:
    space = parse_space({"workload": "mlp", "mode": "infer",
                         "objectives": {"throughput_sps": "maximize"}})
    config = TrialConfig.from_params(space, {"batch_size": BATCH, "threads": 1})
    return dataclasses.replace(config, budget=budget)


def _budget(**overrides: Any) -> Budget:
    """A small budget: sub-second windows, the default +-2 % target."""
    values: dict[str, Any] = {"trial_seconds": 10, "warmup_max_s": 0.3, "window_min_s": 0.05,
                              "window_min_steps": 8, "window_max_s": 0.3,
                              "target_ci": 0.02}
    values.update(overrides)
    return Budget(**values)


def _run(backend: _Stub, budget: Budget, *, deadline_in: float = 100.0,
         monitor: ContentionMonitor | None = None) -> dict[str, Any]:
    """run_profile on ``backend``'s clock, the deadline ``deadline_in`` seconds from now."""
    return run_profile(cast(Any, backend), _config(budget), NullMeter(),
                       backend.clock.now + deadline_in, monitor)


# -- 1. synchronisation ------------------------------------------------------------------------

DEVICE_STEP_S = 5 * MS
LAUNCH_S = 20 * US


class _AsyncDevice(_Stub):
    """Like a CUDA stream: ``step`` only enqueues 5 ms of device work and returns after the
    launch (20 us); ``synchronize`` waits until the queued work is done. Timing without
    synchronising measures the launch, not the work."""

    def __init__(self, clock: _Clock) -> None:
        super().__init__(clock, lambda i: LAUNCH_S)
        self.pending_until = 0.0

    def step(self) -> int:
        self.pending_until = max(self.clock.now, self.pending_until) + DEVICE_STEP_S
        return super().step()

    def synchronize(self) -> None:
        self.syncs += 1
        self.clock.advance(self.pending_until - self.clock.now)


class _AsyncDeviceWithoutSync(_AsyncDevice):
    """The control: the same device, but ``synchronize`` does not wait (what a loop that
    never synchronises would see)."""

    def synchronize(self) -> None:
        self.syncs += 1


def test_steps_are_timed_between_synchronisations(clock: _Clock) -> None:
    budget = _budget(window_min_s=0.1, window_max_s=0.2)
    device = _AsyncDevice(clock)
    raw = _run(device, budget)
    times = raw["step_times_s"]
    # every timed step waited for its device work
    assert min(times) >= DEVICE_STEP_S
    assert statistics.median(times) == pytest.approx(DEVICE_STEP_S, abs=EPS)
    assert raw["first_step_s"] >= DEVICE_STEP_S
    assert min(raw["warmup_step_times_s"]) >= DEVICE_STEP_S
    # synchronised before and after every timed step (infer mode: every step is timed)
    timed = 1 + len(raw["warmup_step_times_s"]) + len(times)
    assert device.steps == timed
    assert device.syncs >= 2 * timed

    # Control: the same device without waiting measures only the launch. This is what the
    # assertions above would see from a loop that does not synchronise: they can fail.
    unsynced = _run(_AsyncDeviceWithoutSync(clock), budget)
    assert statistics.median(unsynced["step_times_s"]) < DEVICE_STEP_S / 10
    assert statistics.median(unsynced["warmup_step_times_s"]) < DEVICE_STEP_S / 10


class _LoggingDevice(_AsyncDevice):
    def __init__(self, clock: _Clock, events: list[str]) -> None:
        super().__init__(clock)
        self.events = events

    def step(self) -> int:
        self.events.append("step")
        return super().step()

    def synchronize(self) -> None:
        self.events.append("sync")
        super().synchronize()


def test_each_clock_read_around_a_step_follows_a_synchronisation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    logging_clock = _Clock(events)
    monkeypatch.setattr(loop, "time", logging_clock)
    raw = _run(_LoggingDevice(logging_clock, events),
               _budget(window_min_s=0.02, window_max_s=0.05))
    steps = [i for i, e in enumerate(events) if e == "step"]
    assert len(steps) == 1 + len(raw["warmup_step_times_s"]) + len(raw["step_times_s"])
    for i in steps:
        # sync -> read clock -> step -> sync -> read clock, for every step
        assert events[i - 2:i] == ["sync", "clock"], (i, events[max(0, i - 4):i + 4])
        assert events[i + 1:i + 3] == ["sync", "clock"], (i, events[max(0, i - 4):i + 4])


def _spin(seconds: float) -> None:
    """Busy-wait ``seconds`` of wall-clock time (at least; longer if descheduled)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


class _RealAsyncDevice:
    """:class:`_AsyncDevice` on the real clock: the work is a spin in ``synchronize``."""

    steps_per_epoch = 1

    def __init__(self, waits: bool) -> None:
        self.waits = waits
        self.pending_until = 0.0
        self.steps = 0
        self.syncs = 0

    def step(self) -> int:
        self.pending_until = max(time.perf_counter(), self.pending_until) + DEVICE_STEP_S
        self.steps += 1
        return BATCH

    def synchronize(self) -> None:
        self.syncs += 1
        if self.waits:
            _spin(self.pending_until - time.perf_counter())

    def between_steps(self) -> None:
        pass

    def evaluate(self) -> float:
        return 0.5


def test_synchronisation_on_the_real_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = _budget(warmup_max_s=0.1, warmup_min_s=0.03, window_min_s=0.05,
                     window_max_s=0.1, target_ci=0.5)
    device = _RealAsyncDevice(waits=True)
    raw = run_profile(cast(Any, device), _config(budget), NullMeter(), time.perf_counter() + 5)
    times = raw["step_times_s"]
    assert min(times) >= DEVICE_STEP_S  # exact: the spin never ends early
    assert statistics.median(times) < 4 * DEVICE_STEP_S
    assert device.syncs >= 2 * device.steps
    control = _RealAsyncDevice(waits=False)
    unsynced = run_profile(cast(Any, control), _config(budget), NullMeter(),
                           time.perf_counter() + 5)
    assert statistics.median(unsynced["step_times_s"]) < DEVICE_STEP_S / 10


# -- 2./3. warm-up -----------------------------------------------------------------------------

SLOW_STEPS = 15
FAST_S = 2 * MS


def _slow_start(i: int) -> float:
    """Steps 0-14 slow and still getting faster (48 ms down to 20 ms, like a real warm-up:
    never stable), then a steady 2 ms."""
    return (20 + 2 * (SLOW_STEPS - 1 - i)) * MS if i < SLOW_STEPS else FAST_S


def test_warmup_steps_never_reach_the_window(clock: _Clock) -> None:
    raw = _run(_Stub(clock, _slow_start), _budget(warmup_max_s=3.0))
    warmup, window = raw["warmup_step_times_s"], raw["step_times_s"]
    assert raw["first_step_s"] == pytest.approx(_slow_start(0), abs=EPS)  # timed apart
    # Steps run in order (first, warm-up, window): steps 1-14 are all in the warm-up...
    assert warmup[:SLOW_STEPS - 1] == pytest.approx(
        [_slow_start(i) for i in range(1, SLOW_STEPS)], abs=EPS)
    # ...which then waited for the fast steps to be stable (5-step medians within 10 %)
    assert len(warmup) >= SLOW_STEPS - 1 + 5
    assert warmup[-5:] == pytest.approx([FAST_S] * 5, abs=EPS)
    assert raw["warmup_s"] >= WARMUP_MIN_S
    assert raw["warmup_s"] >= sum(warmup)
    assert not any("warm-up" in w for w in raw["warnings"])
    # the window holds fast steps only
    assert max(window) == pytest.approx(FAST_S, abs=EPS)
    assert max(window) < 20 * MS


def test_warmup_lasts_at_least_the_minimum_when_stable_at_once(clock: _Clock) -> None:
    raw = _run(_Stub(clock, lambda i: FAST_S), _budget(warmup_max_s=2.0))
    assert WARMUP_MIN_S <= raw["warmup_s"] <= WARMUP_MIN_S + FAST_S + EPS
    assert not raw["warnings"]
    shorter = _run(_Stub(clock, lambda i: FAST_S), _budget(warmup_max_s=2.0,
                                                             warmup_min_s=0.04))
    assert 0.04 <= shorter["warmup_s"] <= 0.04 + FAST_S + EPS  # the budget's own minimum


def test_warmup_that_never_stabilises_stops_at_warmup_max_s(clock: _Clock) -> None:
    # 1 ms / 4 ms alternating: consecutive 5-step groups have medians 1 ms and 4 ms
    raw = _run(_Stub(clock, lambda i: (1 if i % 2 else 4) * MS), _budget(warmup_max_s=0.4))
    assert "warm-up did not stabilise within 0.4 s" in raw["warnings"]
    assert 0.4 <= raw["warmup_s"] <= 0.4 + 4 * MS + EPS
    assert raw["step_times_s"]  # measured anyway


def test_ramping_warmup_stops_at_warmup_max_s(clock: _Clock) -> None:
    # every step 3 % slower than the last: 5-step medians differ by 16 %
    raw = _run(_Stub(clock, lambda i: MS * 1.03 ** i), _budget(warmup_max_s=0.5))
    assert "warm-up did not stabilise within 0.5 s" in raw["warnings"]
    assert 0.5 <= raw["warmup_s"] < 0.5 + 0.1


# -- 4. adaptive stopping ----------------------------------------------------------------------


def _first_check_after(min_s: float, min_steps: int, step: float) -> int:
    """The first interval check at which both minimums are met, for constant steps."""
    n = CI_CHECK_EVERY
    while n < min_steps or n * step < min_s:
        n += CI_CHECK_EVERY
    return n


@pytest.mark.parametrize(("min_s", "min_steps"), [(0.101, 8), (0.01, 60), (0.0, 0)],
                         ids=["window_min_s_binds", "window_min_steps_binds", "no_minimum"])
def test_constant_steps_stop_stable_right_after_the_minimums(
        clock: _Clock, min_s: float, min_steps: int) -> None:
    budget = _budget(window_min_s=min_s, window_min_steps=min_steps, window_max_s=2.0)
    raw = _run(_Stub(clock, lambda i: FAST_S), budget)
    n = len(raw["step_times_s"])
    assert raw["stop_reason"] == "ci_met"
    assert not raw["warnings"]
    assert n % CI_CHECK_EVERY == 0
    assert n >= min_steps
    assert raw["window_s"] >= min_s
    # right after: at the first spread check where both minimums are met
    assert n == _first_check_after(min_s, min_steps, FAST_S)
    assert raw["samples"] == BATCH * n
    assert raw["window_s"] == pytest.approx(sum(raw["step_times_s"]), abs=n * 10 * READ_S)


def test_noisy_steps_extend_the_window_to_window_max_s(clock: _Clock) -> None:
    budget = _budget(window_min_s=0.1, window_min_steps=8, window_max_s=0.4)
    rng = random.Random(1234)
    noisy = [rng.uniform(1, 10) * MS for _ in range(5000)]  # IQR/median about 0.8
    raw = _run(_Stub(clock, lambda i: noisy[i]), budget)
    assert raw["stop_reason"] == "window_max_s"
    assert not raw["warnings"]
    assert 0.4 <= raw["window_s"] <= 0.4 + 10 * MS + EPS
    # the same mean step time without noise stops at window_min_s, with fewer steps
    stable = _run(_Stub(clock, lambda i: 5.5 * MS), budget)
    assert stable["stop_reason"] == "ci_met"
    assert stable["window_s"] < 0.1 + CI_CHECK_EVERY * 5.5 * MS
    assert len(raw["step_times_s"]) > len(stable["step_times_s"])


def test_the_window_stops_on_the_medians_interval_not_the_spread(clock: _Clock) -> None:
    """Steps whose spread never falls under 10 % (a shared CPU: IQR/median about 0.2):
    the window ends as soon as the median is known to +-2 %, long before window_max_s."""
    from autotune.profiling.stats import relative_ci_halfwidth, spread

    budget = _budget(window_min_s=0.05, window_min_steps=8, window_max_s=5.0)
    rng = random.Random(7)
    steps = [rng.gauss(1.0, 0.15) * MS for _ in range(20000)]
    raw = _run(_Stub(clock, lambda i: steps[i]), budget)
    times = raw["step_times_s"]
    assert raw["stop_reason"] == "ci_met"
    assert spread(times) > 0.10  # the old rule would have run to window_max_s
    assert relative_ci_halfwidth(times) <= 0.02
    assert relative_ci_halfwidth(times[:-CI_CHECK_EVERY]) > 0.02  # and not a check later
    assert raw["window_s"] < 1.0  # a fraction of the 5 s window_max_s
    tighter = _run(_Stub(clock, lambda i: steps[i]), _budget(
        window_min_s=0.05, window_min_steps=8, window_max_s=5.0, target_ci=0.005))
    assert len(tighter["step_times_s"]) > 4 * len(times)  # 4x narrower: ~16x the steps


def test_deadline_ends_the_window_before_it_passes(clock: _Clock) -> None:
    step = 30 * MS
    backend = _Stub(clock, lambda i: step)
    budget = _budget(warmup_max_s=1.0, window_min_s=5.0, window_max_s=10.0)
    deadline = clock.now + 0.6
    raw = run_profile(cast(Any, backend), _config(budget), NullMeter(), deadline)
    assert clock.now <= deadline  # returned before the deadline
    assert raw["stop_reason"] == "deadline"
    assert "the trial budget ended the measured window" in raw["warnings"]
    assert raw["step_times_s"]
    # no step ended past the deadline, and the loop stopped only when one more would have
    assert max(backend.ends) <= deadline
    assert backend.ends[-1] + step > deadline - EPS


def test_deadline_during_warmup_leaves_room_for_the_window(clock: _Clock) -> None:
    step = 4 * MS
    backend = _Stub(clock, lambda i: step)
    deadline = clock.now + 0.8 * WARMUP_MIN_S  # the deadline ends the warm-up
    raw = run_profile(cast(Any, backend), _config(_budget(warmup_max_s=1.0)), NullMeter(),
                      deadline)
    assert raw["stop_reason"] == "deadline"
    assert len(raw["step_times_s"]) >= 1
    assert max(backend.ends) <= deadline  # no step ended past the deadline
    assert "the trial budget ended the warm-up before it was stable" in raw["warnings"]


def test_deadline_on_the_real_clock() -> None:
    """The same on the real clock, with margins for a loaded machine: a loop that ran to
    ``window_max_s`` (10 s) or ignored the deadline fails by far."""
    step = 20 * MS

    class Busy:
        steps_per_epoch = 1

        def step(self) -> int:
            _spin(step)
            return BATCH

        def synchronize(self) -> None:
            pass

        def between_steps(self) -> None:
            pass

        def evaluate(self) -> float:
            return 0.5

    budget = _budget(warmup_max_s=0.1, window_min_s=5.0, window_max_s=10.0)
    deadline = time.perf_counter() + 0.4
    raw = run_profile(cast(Any, Busy()), _config(budget), NullMeter(), deadline)
    returned = time.perf_counter()
    assert raw["stop_reason"] == "deadline"
    assert returned < deadline + 0.1


# -- 5. contention: measure again once ---------------------------------------------------------


def _reading(foreign_s: float) -> ContentionReading:
    """A self-consistent one-core, one-second reading (the loop joins segments with
    :func:`combine`, which takes the verdict again from the totals)."""
    own = 0.5
    tolerance = 0.02
    return ContentionReading(
        available=True, cores=(0,), window_s=1.0, busy_s=own + foreign_s, own_s=own,
        foreign_s=foreign_s, foreign_fraction=foreign_s, steal_s=0.0, steal_fraction=0.0,
        machine_cpus=1, machine_busy_s=own + foreign_s, machine_foreign_s=foreign_s,
        machine_foreign_fraction=foreign_s, threshold=0.1, tolerance_s=tolerance,
        contended=foreign_s - tolerance >= 0.1, reason=f"fake: foreign {foreign_s}")


BUSY, BUSIER, QUIET = _reading(0.4), _reading(0.45), _reading(0.0)


def _final(reading: ContentionReading) -> ContentionReading:
    """What the loop reports for a window of this one reading."""
    return combine([reading])


class _ScriptedMonitor(ContentionMonitor):
    """Returns the given reading for each successive window."""

    def __init__(self, readings: list[ContentionReading]) -> None:
        super().__init__(cores=[0])
        self.readings = readings
        self.windows = 0

    def begin(self) -> None:
        pass

    def end(self) -> ContentionReading:
        reading = self.readings[min(self.windows, len(self.readings) - 1)]
        self.windows += 1
        return reading


def test_fake_readings_are_what_they_claim() -> None:
    assert _final(BUSY).contended and _final(BUSIER).contended
    assert not _final(QUIET).contended
    assert _final(BUSY).reason != _final(BUSIER).reason


def test_contended_window_is_measured_again(clock: _Clock) -> None:
    monitor = _ScriptedMonitor([BUSY, QUIET])
    backend = _Stub(clock, lambda i: FAST_S)
    raw = _run(backend, _budget(), monitor=monitor)
    assert monitor.windows == 2
    assert raw["remeasured"] == 1
    assert raw["warnings"] == [f"re-measured: {_final(BUSY).reason}"]
    assert raw["contention"] == asdict(_final(QUIET))  # the final window's
    assert raw["stop_reason"] == "ci_met"
    # the result holds the second window's steps only
    n = _first_check_after(0.05, 8, FAST_S)
    assert len(raw["step_times_s"]) == n
    assert backend.steps == 1 + len(raw["warmup_step_times_s"]) + 2 * n


def test_contended_twice_is_flagged_with_the_final_reason(clock: _Clock) -> None:
    monitor = _ScriptedMonitor([BUSY, BUSIER])
    raw = _run(_Stub(clock, lambda i: FAST_S), _budget(), monitor=monitor)
    assert monitor.windows == 2
    assert raw["remeasured"] == 1
    assert raw["warnings"] == [f"re-measured: {_final(BUSY).reason}", _final(BUSIER).reason]
    assert raw["contention"] == asdict(_final(BUSIER))
    assert raw["contention"]["contended"]


def test_quiet_window_is_not_measured_again(clock: _Clock) -> None:
    monitor = _ScriptedMonitor([QUIET, BUSY])
    raw = _run(_Stub(clock, lambda i: FAST_S), _budget(), monitor=monitor)
    assert monitor.windows == 1
    assert raw["remeasured"] == 0
    assert raw["warnings"] == []
    assert raw["contention"] == asdict(_final(QUIET))


@pytest.mark.parametrize(("deadline_in", "remeasured"), [(0.6, 0), (0.8, 1)])
def test_contended_without_time_for_a_second_window_is_flagged(
        clock: _Clock, deadline_in: float, remeasured: int) -> None:
    monitor = _ScriptedMonitor([BUSY, QUIET])
    # never stable: warm-up ends at 0.1 s, the window at window_max_s (0.3 s) about 0.4 s in;
    # a second window needs another 0.3 s: 0.7 s > 0.6 s, but < 0.8 s
    backend = _Stub(clock, lambda i: (1 if i % 2 else 4) * MS)
    raw = _run(backend, _budget(warmup_max_s=0.1), monitor=monitor, deadline_in=deadline_in)
    assert raw["stop_reason"] == "window_max_s"
    assert monitor.windows == 1 + remeasured
    assert raw["remeasured"] == remeasured
    if remeasured:
        assert raw["contention"] == asdict(_final(QUIET))
        assert raw["warnings"][-1] == f"re-measured: {_final(BUSY).reason}"
    else:  # flagged instead
        assert raw["contention"] == asdict(_final(BUSY))
        assert raw["warnings"][-1] == _final(BUSY).reason
        assert not any(w.startswith("re-measured") for w in raw["warnings"])


# -- 6. percentiles end to end -----------------------------------------------------------------

#: What _worker.run_trial adds to run_profile's result (values irrelevant here).
_WORKER_FIELDS = {"process_start_s": 0.0, "import_s": 0.0, "setup_s": 0.0,
                  "peak_rss_bytes": 2**20, "threads": 1}


def test_p90_needs_64_steps_through_measurement(clock: _Clock) -> None:
    p90_min = PERCENTILE_MIN_SAMPLES[90]
    assert p90_min == 64
    budget = _budget(window_min_s=0.0, window_min_steps=p90_min - CI_CHECK_EVERY)
    few = _run(_Stub(clock, lambda i: 1 * MS), budget)
    assert len(few["step_times_s"]) == p90_min - CI_CHECK_EVERY
    m = Measurement.from_worker({**few, **_WORKER_FIELDS}, samples_per_step=BATCH, mode="infer")
    assert m.metrics()["latency_p90_ms"] is None
    assert m.missing_reasons()["latency_p90_ms"] == "56 steps measured; p90 needs 64"
    assert m.metrics()["latency_p50_ms"] == pytest.approx(1.0, abs=0.05)

    enough = _run(_Stub(clock, lambda i: 1 * MS), dataclasses.replace(
        budget, window_min_steps=p90_min))
    assert len(enough["step_times_s"]) == p90_min
    m = Measurement.from_worker({**enough, **_WORKER_FIELDS}, samples_per_step=BATCH,
                                mode="infer")
    assert m.metrics()["latency_p90_ms"] == pytest.approx(1.0, abs=0.05)
    assert "latency_p90_ms" not in m.missing_reasons()
