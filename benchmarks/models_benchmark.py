"""Best-found configurations and their % of machine peak, and what structured pruning buys.

1. For each workload (built-in ``mlp`` and ``cnn``, and the example user model
   ``examples/models/torch_cnn.py``) a real inference study of N trials (TPE, seed 0) over
   batch size, precision, threads and execution on torch, then the front's fastest
   configuration with its throughput, parameter count, FLOPs per sample, achieved GFLOP/s
   and % of the machine's measured GEMM peak (``autotune peak``).
2. Structured pruning of the user's torch CNN: the same configuration at pruning ratio 0
   and 0.5 (torch-pruning), measured as trials in ``--rounds`` interleaved rounds; the
   median throughput ratio and the parameter counts.

Run: ``.venv/bin/python benchmarks/models_benchmark.py [--trials 10] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import autotune

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "models"
BUDGET = {"trial_seconds": 30, "warmup_max_s": 1.0, "window_min_s": 1.0, "window_max_s": 2.0}


def _space(workload: Any, precisions: list[str]) -> dict[str, Any]:
    return {"workload": workload, "mode": "infer",
            "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
            "params": {"backend": "torch", "batch_size": {"low": 16, "high": 1024, "log": True},
                       "precision": precisions, "threads": [1, 2],
                       "execution": ["eager", "graph"]},
            "budget": BUDGET}


def best_configurations(trials: int, storage: str) -> list[dict[str, Any]]:
    """One study per workload; the front's fastest point of each."""
    from autotune.backends._base import cpu_capabilities

    precisions = sorted({"fp32", "bf16"} & set(cpu_capabilities().precisions))
    workloads = {"mlp": "mlp", "cnn": "cnn",
                 "user torch CNN": {"factory": f"{EXAMPLE / 'torch_cnn.py'}:build",
                                    "kwargs": {"width": 16}}}
    rows = []
    for label, workload in workloads.items():
        name = label.replace(" ", "_")
        space = autotune.parse_space(_space(workload, precisions), base_dir=EXAMPLE)
        study = autotune.create_study(name, space, storage=storage, seed=0)
        t0 = time.perf_counter()
        study.optimize(n_trials=trials, recheck_every=0)
        wall = time.perf_counter() - t0
        best = max(study.pareto_front(), key=lambda p: p.metrics["throughput_sps"])
        m = best.metrics
        rows.append({"workload": label, "trial": best.trial_number,
                     "config": {k: best.config.get(k) for k in
                                ("batch_size", "precision", "threads", "execution")},
                     "throughput_sps": m["throughput_sps"], "param_count": m["param_count"],
                     "flops_per_sample": m["flops_per_sample"],
                     "achieved_gflops": (m["achieved_flops_per_s"] or 0) / 1e9,
                     "pct_of_peak": m["pct_of_peak"], "wall_s": wall})
        print(f"{label}: best trial {best.trial_number} {rows[-1]['config']} "
              f"{m['throughput_sps']:,.0f} samples/s, {m['param_count']:,} params, "
              f"{rows[-1]['achieved_gflops']:.1f} GFLOP/s = "
              f"{m['pct_of_peak'] or float('nan'):.1f} % of peak ({trials} trials, "
              f"{wall:.0f} s)", flush=True)
    return rows


def pruning_speedup(rounds: int) -> dict[str, Any]:
    """Ratio 0.5 vs 0 of the user's CNN, interleaved rounds, median ratio."""
    workload = {"factory": f"{EXAMPLE / 'torch_cnn.py'}:build", "kwargs": {"width": 16}}
    knobs = {"backend": "torch", "batch_size": 256, "threads": 2, "precision": "fp32",
             "execution": "eager", "pruning_structure": "structured"}
    ratios, params = [], {}
    for r in range(rounds):
        sps = {}
        order = (0.0, 0.5) if r % 2 == 0 else (0.5, 0.0)
        for ratio in order:
            m = autotune.measure(workload, "infer", budget=BUDGET, pruning_ratio=ratio, **knobs)
            sps[ratio] = m.throughput_sps
            params[ratio] = m.model["param_count"]
        ratios.append(sps[0.5] / sps[0.0])
        print(f"round {r}: ratio 0: {sps[0.0]:,.0f} samples/s, ratio 0.5: {sps[0.5]:,.0f} "
              f"samples/s -> {ratios[-1]:.2f}x", flush=True)
    result = {"median_speedup": statistics.median(ratios), "min": min(ratios),
              "max": max(ratios), "param_count": params}
    print(f"structured pruning 0.5 vs 0: median {result['median_speedup']:.2f}x "
          f"(min {result['min']:.2f}, max {result['max']:.2f}), parameters "
          f"{params[0.0]:,} -> {params[0.5]:,}")
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from autotune.profiling.peak import measure_peak

    for e in measure_peak("cpu", ("fp32", "bf16", "fp16"), [1, 2]).entries:
        rate = "-" if e.flops_per_s is None else f"{e.flops_per_s / 1e9:.1f} GFLOP/s"
        print(f"peak {e.precision} {e.threads} thread(s): {rate} "
              f"{'(' + e.reason + ')' if e.reason else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        best_configurations(args.trials, f"sqlite:///{tmp}/models.db")
    pruning_speedup(args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
