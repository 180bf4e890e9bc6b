"""Energy from power samples: a background thread reads power, the window integrates it.

Used where a device reports instantaneous power but no energy counter (older NVIDIA GPUs,
Ascend NPUs). Each sample is stamped at the midpoint of its read, which matters when one
read takes tens of milliseconds (an ``npu-smi`` call). The energy of ``[t0, t1]`` is the
trapezoid integral of the samples linearly interpolated, held constant before the first
and after the last one, so the window's edges are covered without a blocking read there.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def integrate(samples: list[tuple[float, float]], t0: float, t1: float) -> float:
    """Joules over ``[t0, t1]`` from ``(time_s, power_w)`` samples (at least one).

    Linear between samples, constant beyond the first and the last: a window shorter than
    the sampling interval gets the nearest reading times its length.
    """
    pts = sorted(samples)
    if not pts:
        raise ValueError("no samples to integrate")
    if t1 <= t0:
        return 0.0
    times = [t for t, _ in pts]

    def power_at(t: float) -> float:
        i = bisect.bisect_right(times, t)
        if i == 0:
            return pts[0][1]
        if i == len(pts):
            return pts[-1][1]
        (ta, wa), (tb, wb) = pts[i - 1], pts[i]
        return wa + (wb - wa) * (t - ta) / (tb - ta)  # ta <= t < tb, so tb > ta

    # Breakpoints: the window's edges and every sample inside it; trapezoids between them
    # are exact for the piecewise-linear interpolant.
    knots = [t0, *(t for t in times if t0 < t < t1), t1]
    values = [power_at(t) for t in knots]
    return sum((knots[i + 1] - knots[i]) * (values[i] + values[i + 1]) / 2
               for i in range(len(knots) - 1))


@dataclass
class _Run:
    """One start..stop of the sampler; a thread left finishing a slow read after ``stop``
    writes into its own run, never into the next one's."""

    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    samples: list[tuple[float, float]] = field(default_factory=list)
    errors: int = 0
    last_error: str = ""
    thread: threading.Thread | None = None


class PowerSampler:
    """Reads ``read_w()`` every ``interval_s`` on a daemon thread between start and stop.

    A read that raises is counted and its message kept, never propagated: a flaky tool
    must not fail a trial. ``interval_s`` is the time from one read's start to the next's;
    a read slower than that is followed at once by the next.
    """

    def __init__(self, read_w: Callable[[], float], interval_s: float,
                 first_sample_timeout_s: float) -> None:
        self.read_w = read_w
        self.interval_s = interval_s
        self.first_sample_timeout_s = first_sample_timeout_s
        self._run = _Run()

    def start(self) -> float:
        """Start sampling; returns the window's start time (``time.perf_counter()``)."""
        self._run.stop.set()  # a run never stopped (begin twice) ends on its own
        run = self._run = _Run()
        run.thread = threading.Thread(target=self._loop, args=(run,),
                                      name="autotune-power-sampler", daemon=True)
        t0 = time.perf_counter()
        run.thread.start()
        return t0

    def _loop(self, run: _Run) -> None:
        while not run.stop.is_set():
            ta = time.perf_counter()
            try:
                watts = float(self.read_w())
            except Exception as e:  # any failure of the tool: counted, reported by the meter
                with run.lock:
                    run.errors += 1
                    run.last_error = f"{type(e).__name__}: {e}"
            else:
                tb = time.perf_counter()
                with run.lock:
                    run.samples.append(((ta + tb) / 2, watts))
            run.stop.wait(max(0.0, self.interval_s - (time.perf_counter() - ta)))

    def stop(self) -> tuple[float, list[tuple[float, float]], int, str]:
        """Stop sampling; returns the window's end time, the samples, the failed reads'
        count and the last failure's message.

        The end time is taken first, so waiting for a read still in flight is not part of
        the window. That wait happens only while the window has no sample at all.
        """
        t1 = time.perf_counter()
        run = self._run
        run.stop.set()
        with run.lock:
            have = bool(run.samples)
        if not have and run.thread is not None:
            run.thread.join(self.first_sample_timeout_s)
        with run.lock:
            return t1, list(run.samples), run.errors, run.last_error
