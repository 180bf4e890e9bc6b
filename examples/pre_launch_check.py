"""A pre-launch check, end to end on this machine's CPU, through the Python API.

    python examples/pre_launch_check.py [N_TRIALS]

1. runs a small real study: serving the digits classifier (PyTorch inference), trading
   throughput against per-batch latency under an accuracy constraint;
2. recommends the fastest configuration whose median batch latency stays under a bound;
3. verifies the top 3 front configurations with longer, isolated runs (did the ranking
   hold?);
4. gates a deliberately poor configuration (97 % of the weights pruned away, batch 8,
   one thread): it must fail, and the script says why.

Everything is stored in a temporary SQLite database (pass --keep to use
sqlite:///studies/pre_launch.db instead). Exit code 0 when every step behaved as a launch
pipeline expects (the poor configuration is refused), 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

import autotune

SPACE = {
    "description": "Serve the digits MLP on CPU: throughput vs batch latency, accuracy >= 0.9.",
    "workload": "digits_mlp",
    "mode": "infer",
    "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
    "constraints": {"accuracy": ">= 0.9"},
    "params": {
        "backend": ["torch"],
        "device": ["cpu"],
        "batch_size": {"low": 8, "high": 512, "log": True},
        "precision": ["fp32", "int8"],
        "threads": [1, 2],
    },
    "budget": {"trial_seconds": 20, "warmup_max_s": 1, "window_min_s": 0.5,
               "window_max_s": 1.5, "train_epochs": 4},
}
LATENCY_BOUND = "latency_p50_ms<=10"
POOR = {"workload": "digits_mlp", "mode": "infer", "backend": "torch", "device": "cpu",
        "batch_size": 8, "precision": "fp32", "threads": 1, "pruning_ratio": 0.97}


def run(storage: str, n_trials: int) -> int:
    """The four steps; returns the exit code."""
    space = autotune.parse_space(SPACE, source="pre_launch_check")
    with autotune.create_study("pre-launch", space, storage=storage, seed=1,
                               exist_ok=True) as study:
        print(f"1. study: {n_trials} real trials")
        for r in study.optimize(n_trials=n_trials):
            print(f"   trial {r.number}: {r.state:10} {r.params} "
                  f"{r.metrics.get('throughput_sps') or 0:,.0f} samples/s, "
                  f"p50 {r.metrics.get('latency_p50_ms') or 0:.3f} ms")
        front = study.pareto_front()
        print(f"   front: trials {[p.trial_number for p in front]}")

        print(f"2. recommend: maximize throughput_sps where {LATENCY_BOUND}")
        try:
            rec = autotune.recommend(study, "maximize:throughput_sps",
                                     constraints=[LATENCY_BOUND])
        except autotune.RecommendError as e:
            print(f"   no configuration qualifies: {e}")
            return 1
        print(f"   trial {rec.trial_number}: {rec.config}")
        print("   launch config:\n" + "\n".join(
            "     " + line for line in yaml.safe_dump(rec.launch_config()).splitlines()))

        print("3. verify the top 3 with 3x longer isolated runs")
        try:
            report = autotune.verify(study, top=3)
        except autotune.AutotuneError as e:  # every re-run failed: say so, go on
            print(f"   could not re-measure: {e}")
            report = None
        if report is not None:
            for p in report.points:
                print(f"   trial {p.trial_number}: screened "
                      f"{p.original_throughput_sps or 0:,.0f}, confirmed "
                      f"{p.confirmed_throughput_sps or 0:,.0f} samples/s"
                      + (" (moved)" if p.moved else ""))
            print(f"   ranking {report.verdict} (Kendall tau {report.kendall_tau})")

        print(f"4. gate a deliberately poor configuration: {POOR}")
        result = autotune.gate(study, POOR)
        print(f"   {result.summary_line()}")
        for line in result.violations:
            print(f"   violates {line}")
        for beat in result.beaten_by[:3]:
            print(f"   beaten by trial {beat.trial_number}")
        if result.passed:
            print("   the gate let a poor configuration through")
            return 1
        print("   refused, as a launch pipeline needs")
    return 0


def main() -> int:
    """Parse arguments and run the check in a temporary (or kept) database."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_trials", nargs="?", type=int, default=10)
    parser.add_argument("--keep", action="store_true",
                        help="store in sqlite:///studies/pre_launch.db instead of a temp dir")
    args = parser.parse_args()
    if args.keep:
        Path("studies").mkdir(exist_ok=True)
        return run("sqlite:///studies/pre_launch.db", args.n_trials)
    with tempfile.TemporaryDirectory() as tmp:
        return run(f"sqlite:///{tmp}/pre_launch.db", args.n_trials)


if __name__ == "__main__":
    sys.exit(main())
