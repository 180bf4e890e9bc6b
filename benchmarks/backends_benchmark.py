"""The same workload and configuration measured on PyTorch, TensorFlow and MindSpore.

Each configuration runs as a real autotune trial (fresh worker process per trial, each
framework at its expert default execution mode: torch eager, TensorFlow tf.function,
MindSpore graph mode), interleaved across backends R times; medians are printed.

    .venv/bin/python benchmarks/backends_benchmark.py [R]
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace

from autotune.backends import resolve_execution
from autotune.config import TrialConfig
from autotune.launch import ProcessLauncher
from autotune.profiling.measurement import Measurement
from autotune.space import parse_space

BACKENDS = ("torch", "tensorflow", "mindspore")
CASES = [
    # (workload, mode, knobs)
    ("digits_mlp", "train", {"batch_size": 64, "threads": 1, "optimizer": "adam",
                             "learning_rate": 1e-3}),
    ("digits_mlp", "train", {"batch_size": 64, "threads": 2, "optimizer": "adam",
                             "learning_rate": 1e-3}),
    ("mlp", "infer", {"batch_size": 64, "threads": 2}),
    ("mlp", "infer", {"batch_size": 64, "threads": 2, "pruning_ratio": 0.5,
                      "pruning_structure": "structured"}),
]


def trial(backend: str, workload: str, mode: str, knobs: dict[str, object]) -> Measurement:
    """One real trial; raises if it does not produce a measurement."""
    space = parse_space({"workload": workload, "mode": mode,
                         "objectives": {"throughput_sps": "maximize"},
                         "budget": {"trial_seconds": 120, "train_epochs": 3,
                                    "window_min_steps": 100, "window_max_s": 4}})
    config = TrialConfig.from_params(space, {"backend": backend, **knobs})
    config = replace(config, execution=resolve_execution(backend, config.execution))
    outcome = ProcessLauncher().run(config)
    if outcome.status != "ok":
        raise RuntimeError(f"{backend} {workload} {mode} {knobs}: {outcome.failure_kind} "
                           f"{outcome.reason}\n{outcome.traceback[-2000:]}")
    return Measurement.from_worker(outcome.result, samples_per_step=config.batch_size,
                                   mode=mode)


def main(repeats: int = 3) -> None:
    print("| workload | mode | knobs | backend | execution | samples/s (median of runs) | "
          "p95 ms | accuracy | params |")
    print("|---|---|---|---|---|---|---|---|---|")
    for workload, mode, knobs in CASES:
        runs: dict[str, list[Measurement]] = {b: [] for b in BACKENDS}
        for _ in range(repeats):
            for backend in BACKENDS:  # interleaved: drift hits every backend alike
                runs[backend].append(trial(backend, workload, mode, knobs))
        text = ", ".join(f"{k}={v}" for k, v in knobs.items())
        for backend in BACKENDS:
            ms = runs[backend]
            thr = statistics.median(m.throughput_sps for m in ms)
            p95 = statistics.median(m.latency_ms(95) or float("nan") for m in ms)
            acc = statistics.median(m.accuracy or float("nan") for m in ms)
            print(f"| {workload} | {mode} | {text} | {backend} | {ms[0].model['execution']} | "
                  f"{thr:,.0f} | {p95:.3f} | {acc:.3f} | {ms[0].model['param_count']:,} |",
                  flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
