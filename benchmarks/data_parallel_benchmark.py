"""Data parallelism on this machine: 1 replica vs 2 replicas vs 2 threads in one process.

For each model (the built-in ``mlp`` and ``cnn``) and mode, three configurations of the same
global batch are measured as real autotune trials (``autotune._run.run_config`` on warm
workers, as ``study run`` runs them), interleaved round by round so that the machine's
drift hits each alike:

  * ``1x1``: one replica on one core (``data_parallel 1, threads 1``);
  * ``2x1``: two replicas on a core each (``data_parallel 2, threads 1``): torch
    ``DistributedDataParallel`` over gloo in train mode (the all-reduce timed by its
    communication hook: ``comm_fraction``), independent replicas in infer mode;
  * ``1x2``: one process on both cores (``data_parallel 1, threads 2``): the peer, i.e. what
    the same cores give without data parallelism.

Printed per model and mode: the median over rounds of throughput (samples/s at the
median synchronised step; every sample counted once), energy per sample (the machine's
source: estimated from CPU time here), ``comm_fraction``, ``scaling_efficiency`` of 2x1
(throughput / (2 x the 1x1 throughput)) and the ratios 2x1 / 1x2 and 1x2 / 1x1.

Run (about 4-6 minutes on the 2-vCPU VM with both backends):

    .venv/bin/python benchmarks/data_parallel_benchmark.py [--rounds 3] \\
        [--backends torch,tensorflow] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from autotune._run import run_config
from autotune.config import Budget, TrialConfig
from autotune.launch import WarmLauncher

#: (name, data_parallel, threads)
LAYOUTS = (("1x1", 1, 1), ("2x1", 2, 1), ("1x2", 1, 2))
#: (workload, mode, global batch)
CASES = (("mlp", "train", 128), ("mlp", "infer", 128), ("cnn", "train", 128),
         ("cnn", "infer", 128))
BUDGET = Budget(trial_seconds=60, warmup_max_s=1.0, window_min_s=0.5, window_max_s=3.0,
                train_epochs=1, early_stop=False)


def _config(backend: str, workload: str, mode: str, batch: int, replicas: int,
            threads: int) -> TrialConfig:
    return TrialConfig(workload=workload, mode=mode, backend=backend, device="cpu",
                       batch_size=batch, precision="fp32", learning_rate=1e-3,
                       optimizer="adam", pruning_ratio=0.0, threads=threads, budget=BUDGET,
                       # each framework's data-parallel path runs graphs (torch: eager)
                       execution="eager" if backend == "torch" else "graph",
                       data_parallel=replicas)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def measure(backends: list[str], rounds: int) -> list[dict[str, Any]]:
    """Every (backend, case) with the three layouts, ``rounds`` interleaved rounds."""
    rows = []
    with WarmLauncher(max_workers=6) as launcher:
        for backend in backends:
            for workload, mode, batch in CASES:
                samples: dict[str, list[dict[str, Any]]] = {n: [] for n, _, _ in LAYOUTS}
                for r in range(rounds):
                    order = LAYOUTS if r % 2 == 0 else tuple(reversed(LAYOUTS))
                    for name, replicas, threads in order:
                        config = _config(backend, workload, mode, batch, replicas, threads)
                        run = run_config(config, launcher)
                        m = run.measurement
                        if m is None:
                            print(f"  {backend} {workload} {mode} {name}: {run.describe()}",
                                  file=sys.stderr)
                            continue
                        samples[name].append({
                            "throughput_sps": m.throughput_sps,
                            "energy_per_sample_j": m.energy_per_sample_j,
                            "comm_fraction": m.comm_fraction,
                            "steps": len(m.step_times_s), "noise": m.noise_flag})
                row: dict[str, Any] = {"backend": backend, "workload": workload,
                                       "mode": mode, "batch": batch}
                for name, _, _ in LAYOUTS:
                    got = samples[name]
                    row[name] = {k: _median([s[k] for s in got]) for k in
                                 ("throughput_sps", "energy_per_sample_j", "comm_fraction")}
                    row[name]["runs"] = len(got)
                one, two, threads2 = (row[n]["throughput_sps"] for n in ("1x1", "2x1", "1x2"))
                row["scaling_efficiency_2x1"] = two / (2 * one) if one and two else None
                row["ratio_2x1_over_1x2"] = two / threads2 if two and threads2 else None
                row["ratio_1x2_over_1x1"] = threads2 / one if one and threads2 else None
                rows.append(row)
                print(_line(row), flush=True)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _line(row: dict[str, Any]) -> str:
    cells = [f"{row['backend']:<10} {row['workload']:<4} {row['mode']:<5}"]
    for name, _, _ in LAYOUTS:
        cell = row[name]
        cells.append(f"{name} {_fmt(cell['throughput_sps'], ',.0f'):>8}/s "
                     f"{_fmt(cell['energy_per_sample_j'], '.2e')} J "
                     f"comm {_fmt(cell['comm_fraction'], '.2f')}")
    cells.append(f"eff(2x1) {_fmt(row['scaling_efficiency_2x1'], '.2f')} "
                 f"2x1/1x2 {_fmt(row['ratio_2x1_over_1x2'], '.2f')} "
                 f"1x2/1x1 {_fmt(row['ratio_1x2_over_1x1'], '.2f')}")
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="torch",
                        help="comma-separated: torch, tensorflow (default torch)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    start = time.monotonic()
    rows = measure(args.backends.split(","), args.rounds)
    print(f"{len(rows)} cases x {len(LAYOUTS)} layouts x {args.rounds} rounds in "
          f"{time.monotonic() - start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
