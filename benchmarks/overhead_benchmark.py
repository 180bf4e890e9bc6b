"""Trial overhead and study throughput: warm workers against a fresh process per trial.

    .venv/bin/python benchmarks/overhead_benchmark.py [--rounds R] [--trials N] [--json F]

Part 1, overhead: the same configurations run as real trials on warm workers and on fresh
processes, alternating blocks, R rounds. For each trial, the share of its wall time spent
outside the measured window (process start, framework import, data, model build, first
step, warm-up, evaluation, finishing the training budget, driver round-trips). Two
budgets: the quickstart's (1-2 s window) and a "10 s trial" budget whose window is allowed
to use most of it (window_min_s 6 s).

Part 2, study throughput: the quickstart space (README command 1) run for N trials with
fresh processes and with warm workers, in fresh studies with the same seed; trials per
minute. Rechecks are off in both so the two runs do the same work (a shipped study
re-measures two front points every 10 trials; their cost is printed separately).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import autotune
from autotune.backends import resolve_execution
from autotune.config import TrialConfig
from autotune.launch import Launcher, ProcessLauncher, WarmLauncher
from autotune.space import load_space

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"
BUDGETS = {
    "quickstart budget (window 1-2 s)": {},
    "10 s trial budget (window >= 6 s)": {"trial_seconds": 10, "warmup_max_s": 1,
                                          "window_min_s": 6, "window_max_s": 7,
                                          "target_ci": 0.02},
}
KNOBS = [
    {"batch_size": 64, "optimizer": "adam", "learning_rate": 1e-3, "threads": 1},
    {"batch_size": 128, "optimizer": "sgd", "learning_rate": 3e-2, "threads": 1},
    {"batch_size": 32, "optimizer": "adamw", "learning_rate": 1e-3, "threads": 1},
]


def _configs(budget_overrides: dict[str, Any]) -> list[TrialConfig]:
    space = load_space(QUICKSTART)
    budget = dataclasses.replace(space.budget, **budget_overrides)
    out = []
    for knobs in KNOBS:
        config = TrialConfig.from_params(space, knobs, seed=0)
        out.append(dataclasses.replace(
            config, budget=budget,
            execution=resolve_execution(config.backend, config.execution)))
    return out


def _run_block(launcher: Launcher, configs: list[TrialConfig]) -> list[dict[str, float]]:
    rows = []
    for config in configs:
        outcome = launcher.run(config)
        if outcome.status != "ok":
            raise SystemExit(f"trial failed: {outcome.failure_kind}: {outcome.reason}")
        r = outcome.result
        rows.append({"wall_s": outcome.wall_s, "window_s": r["window_s"],
                     "outside_share": 1.0 - r["window_s"] / outcome.wall_s,
                     "import_s": r["import_s"], "process_start_s": r["process_start_s"],
                     "warmup_s": r["warmup_s"], "setup_s": r["setup_s"]})
    return rows


def overhead(rounds: int) -> dict[str, Any]:
    """Part 1: per budget, outside-window share with warm workers and fresh processes."""
    report: dict[str, Any] = {}
    for label, overrides in BUDGETS.items():
        configs = _configs(overrides)
        warm_rows: list[dict[str, float]] = []
        fresh_rows: list[dict[str, float]] = []
        with WarmLauncher() as warm:
            for _ in range(rounds):
                warm_rows += _run_block(warm, configs)
                fresh_rows += _run_block(ProcessLauncher(), configs)
        report[label] = {"warm": warm_rows, "fresh": fresh_rows}
        print(f"\n## {label}: {rounds} rounds x {len(configs)} configurations")
        print("| launcher | trials | median wall s | median window s | median outside share "
              "| min-max outside share |")
        print("|---|---|---|---|---|---|")
        for name, rows in (("warm workers", warm_rows), ("fresh process", fresh_rows)):
            shares = [r["outside_share"] for r in rows]
            print(f"| {name} | {len(rows)} | {statistics.median(r['wall_s'] for r in rows):.2f} "
                  f"| {statistics.median(r['window_s'] for r in rows):.2f} "
                  f"| {statistics.median(shares):.1%} | {min(shares):.1%}-{max(shares):.1%} |")
        # warm workers pay start-up once: the first trial's share, then the rest
        later = [r["outside_share"] for r in warm_rows[1:]]
        print(f"warm workers after the first trial: median outside share "
              f"{statistics.median(later):.1%}")
    return report


def study_throughput(n_trials: int) -> dict[str, Any]:
    """Part 2: quickstart trials per minute, fresh processes vs warm workers."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        for name, launcher in (("fresh process per trial", ProcessLauncher()),
                               ("warm workers", None)):
            study = autotune.create_study(name.replace(" ", "-"), QUICKSTART, storage=url,
                                          seed=7)
            t0 = time.perf_counter()
            results = study.optimize(n_trials=n_trials, launcher=launcher, recheck_every=0)
            elapsed = time.perf_counter() - t0
            t1 = time.perf_counter()
            with WarmLauncher() as warm:
                study.recheck_front(warm)
            recheck_s = time.perf_counter() - t1
            out[name] = {"trials": len(results), "seconds": elapsed,
                         "trials_per_minute": 60 * len(results) / elapsed,
                         "states": [r.state for r in results], "recheck_round_s": recheck_s}
            study.close()
    print(f"\n## Study throughput: quickstart space, {n_trials} trials, seed 7")
    print("| launcher | trials | seconds | trials/minute |")
    print("|---|---|---|---|")
    for name, row in out.items():
        print(f"| {name} | {row['trials']} | {row['seconds']:.0f} | "
              f"{row['trials_per_minute']:.1f} |")
    ratio = out["warm workers"]["trials_per_minute"] / \
        out["fresh process per trial"]["trials_per_minute"]
    print(f"warm / fresh trials per minute: {ratio:.2f}x; one recheck round (2 front points, "
          f"new warm worker) took {out['warm workers']['recheck_round_s']:.1f} s")
    return out


def main() -> None:
    """Run both parts and print Markdown tables (and optionally write JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--skip-study", action="store_true")
    args = parser.parse_args()
    report: dict[str, Any] = {"overhead": overhead(args.rounds)}
    if not args.skip_study:
        report["study"] = study_throughput(args.trials)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
