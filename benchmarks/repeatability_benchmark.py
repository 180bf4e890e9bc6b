"""Repeatability: the same configuration measured in 5 separate trials.

Target (the issue): coefficient of variation (stdev / mean) of throughput <= 3 % on this
machine. Each trial is a real, separate trial through the public API, ``autotune.measure``
(fresh worker process, warm-up, adaptive window); trials of the configurations are
interleaved (A, B, C, A, B, C, ...) so that slow drift of the machine hits all of them alike
instead of one configuration's block of trials.

Alongside each trial it records how much CPU other processes took on the machine while the
trial ran (``/proc/stat`` minus this process and its waited-for children), so a trial slowed
by a parallel test run can be told apart from autotune's own variation. Train mode uses
``train_epochs=1`` (the untimed rest of the training budget after the window stays short).

Run (3 configurations x 5 trials, about 1-3 minutes on the 2-vCPU VM):

    .venv/bin/python benchmarks/repeatability_benchmark.py [--trials 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _cases import Case  # benchmarks/ is on sys.path when run as a script

import autotune

#: The issue's target for the coefficient of variation of throughput.
CV_TARGET = 0.03


#: Precisions every x86 CPU supports in autotune (bf16 is refused without native bf16).
DEFAULT_CASES: tuple[Case, ...] = (
    Case("infer", "fp32", 64, 1),
    Case("train", "fp32", 128, 2),
    Case("infer", "int8", 256, 2),
)


class MachineMonitor:
    """CPU time (in cores) used by processes other than this one and its waited children."""

    def __init__(self) -> None:
        self.tick = float(os.sysconf("SC_CLK_TCK"))
        self._start = self._read()

    @staticmethod
    def _busy_jiffies() -> int:
        try:
            first = Path("/proc/stat").read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return 0
        f = [int(v) for v in first[1:]]
        return f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)

    def _read(self) -> tuple[float, float, float]:
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return self._busy_jiffies() / self.tick, own, time.perf_counter()

    def start(self) -> None:
        """Begin an interval."""
        self._start = self._read()

    def stop(self) -> float:
        """Cores' worth of CPU others (and steal) used since :meth:`start`."""
        busy0, own0, t0 = self._start
        busy1, own1, t1 = self._read()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9)


def run_trial(case: Case, train_epochs: int, monitor: MachineMonitor) -> dict[str, Any]:
    """One ``autotune.measure`` trial, summarised."""
    monitor.start()
    t0 = time.perf_counter()
    m = autotune.measure(case.workload, case.mode, budget={"train_epochs": train_epochs},
                         precision=case.precision, batch_size=case.batch_size,
                         threads=case.threads)
    return {"sps": m.throughput_sps, "sustained_sps": m.sustained_throughput_sps,
            "spread": m.spread, "noise": m.noise_flag, "stop_reason": m.stop_reason,
            "warnings": list(m.warnings), "steps": len(m.step_times_s),
            "window_s": m.window_s, "wall_s": time.perf_counter() - t0,
            "others_cores": monitor.stop()}


def cv(values: list[float]) -> float:
    """Coefficient of variation: sample standard deviation over the mean."""
    return statistics.stdev(values) / statistics.fmean(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=5, help="trials per configuration")
    parser.add_argument("--case", type=Case.parse, action="append", dest="cases",
                        help="mode:precision:batch:threads[:workload] (repeatable); "
                             "default: 3 configurations")
    parser.add_argument("--train-epochs", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every trial here")
    args = parser.parse_args(argv)
    cases: list[Case] = args.cases or list(DEFAULT_CASES)

    monitor = MachineMonitor()
    trials: dict[str, list[dict[str, Any]]] = {c.label: [] for c in cases}
    start = time.perf_counter()
    for i in range(args.trials):
        for case in cases:  # interleaved
            t = run_trial(case, args.train_epochs, monitor)
            trials[case.label].append(t)
            print(f"trial {i + 1} {case.label}: {t['sps']:,.0f} samples/s, spread "
                  f"{t['spread']:.3f}, {t['noise']}/{t['stop_reason']}, others "
                  f"{t['others_cores']:.2f} cores", flush=True)
    wall = time.perf_counter() - start

    print(f"\n{args.trials} separate trials per configuration (autotune.measure), "
          "interleaved\n")
    print("| configuration | samples/s mean | min-max | CV | target <= 3 % | "
          "autotune flags | max others' cores |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for case in cases:
        ts = trials[case.label]
        sps = [t["sps"] for t in ts]
        flags = sorted({f"{t['noise']}/{t['stop_reason']}" for t in ts}
                       - {"ok/stable"})
        row = {"case": case.label, "mean_sps": statistics.fmean(sps), "min_sps": min(sps),
               "max_sps": max(sps), "cv": cv(sps), "flags": flags,
               "others_cores_max": max(t["others_cores"] for t in ts)}
        rows.append(row)
        print(f"| {case.label} | {row['mean_sps']:,.0f} | {row['min_sps']:,.0f}-"
              f"{row['max_sps']:,.0f} | {row['cv']:.1%} | "
              f"{'met' if row['cv'] <= CV_TARGET else 'NOT met'} | "
              f"{', '.join(flags) or 'ok'} | {row['others_cores_max']:.2f} |")
    print(f"\nwall time: {wall:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"cases": [asdict(c) for c in cases], "rows": rows,
                                         "trials": trials, "wall_s": wall}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
