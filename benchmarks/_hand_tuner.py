"""The hand-written Optuna tuner that ``search_benchmark.py`` compares autotune against.

What a competent engineer writes instead of using autotune (research/hand_written_tuner.md):
one in-process Optuna study, TPE, two objectives (throughput up, p95 latency down) over
batch size 8-1024 (log), precision fp32/bf16 (autocast) and threads 1/2, on the MLP
1000 -> 1000 -> 1000 -> 10 in inference mode. Each trial sets the thread count, builds its
input, runs 3 warm-up iterations and times 20 with ``time.perf_counter``.

It is deliberately self-contained (it builds its own MLP, imports nothing from autotune or
the benchmark): its wall time, measured from outside by the benchmark, is what a user's
script costs, imports included. The last line of stdout is one JSON object: the Pareto
front (params and values), every trial, and the time spent inside the timed loops.

Run alone: ``.venv/bin/python benchmarks/_hand_tuner.py [--trials 40] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import optuna
import torch
from torch import nn

WARMUP = 3
TIMED = 20


def make_model() -> nn.Module:
    """The MLP, fp32, eval mode (seed 0: the same weights as the benchmark's factory)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(1000, 1000), nn.ReLU(), nn.Linear(1000, 1000), nn.ReLU(),
                         nn.Linear(1000, 10)).eval()


def main(argv: list[str] | None = None) -> int:
    """Run the study and print its front as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = make_model()
    in_loop = [0.0]  # seconds inside the timed loops, summed over trials

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        batch = trial.suggest_int("batch_size", 8, 1024, log=True)
        precision = trial.suggest_categorical("precision", ["fp32", "bf16"])
        threads = trial.suggest_categorical("threads", [1, 2])
        torch.set_num_threads(threads)
        x = torch.randn(batch, 1000)
        times = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=precision == "bf16"):
            for _ in range(WARMUP):
                model(x)
            for _ in range(TIMED):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
        in_loop[0] += sum(times)
        return batch / statistics.median(times), float(np.percentile(times, 95)) * 1000.0

    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=args.seed))
    study.optimize(objective, n_trials=args.trials)
    out: dict[str, Any] = {
        "front": [{"trial": t.number, "params": t.params, "values": list(t.values)}
                  for t in study.best_trials],
        "trials": [{"trial": t.number, "params": t.params,
                    "values": list(t.values) if t.values else None, "state": t.state.name}
                   for t in study.trials],
        "in_loop_s": in_loop[0],
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
