"""Many workers on one study: trials per minute by worker count on PostgreSQL, the driver's
ask/tell overhead per trial against plain Optuna on the same storage, and ``--jobs 2``
against ``--jobs 1`` on this machine.

1. ``autotune worker`` processes (1, 2, 4, 8) on one PostgreSQL study of a fast workload
   (the numpy fake backend's tiny MLP: a trial measures for ~0.1 s), each with an equal
   share of ``--trials`` trials; trials/min over the whole run (process start included).
2. ``--asktell`` trials of the study loop with a launcher that measures nothing
   (``autotune.testing.FakeLauncher``: the driver's own work only: ask, record, tell, the
   front and its snapshot under the lock) against plain Optuna ``ask``/``tell`` of the same
   space on the same kind of storage, SQLite and PostgreSQL, in one run; per-trial medians
   of the first and last 100 trials (the driver's work grows with the study).
3. ``study run --jobs 1`` against ``--jobs 2`` on a 1-thread study of a slower trial
   (0.5 s windows), ``--rounds`` interleaved rounds; wall-time medians and how many trials
   were flagged contended.

Run: ``.venv/bin/python benchmarks/fleet_benchmark.py [--trials 80] [--asktell 1000]
[--rounds 3]`` (needs the PostgreSQL server of the test suite).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

import autotune
from autotune.space import parse_space
from autotune.testing import FakeLauncher
from autotune.testing.storages import StorageSupplier

NUMPY = "autotune.testing.fake_backend:NumpyBackend"
TINY = "autotune.testing.workloads:tiny"


def space(window_s: float = 0.05) -> Any:
    return parse_space({
        "workload": TINY, "mode": "train", "objectives": {"throughput_sps": "maximize"},
        "params": {"backend": NUMPY, "batch_size": [8, 16, 32, 64, 128], "threads": [1],
                   "optimizer": "sgd",
                   "learning_rate": {"low": 1e-3, "high": 1e-1, "log": True}},
        "budget": {"trial_seconds": 30, "warmup_max_s": 0.02, "window_min_s": window_s / 2,
                   "window_min_steps": 5, "window_max_s": window_s, "train_epochs": 1}})


def workers_per_minute(workers: int, trials: int) -> float:
    with StorageSupplier("postgresql", None, prefix="autotune_bench") as url:
        autotune.create_study("fleet", space(), storage=url, seed=0).close()
        share = [trials // workers + (1 if i < trials % workers else 0)
                 for i in range(workers)]
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "autotune", "worker", "fleet",
                                   "--storage", url, "--quiet", "--recheck-every", "0",
                                   "--n-trials", str(n)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for n in share]
        codes = [p.wait() for p in procs]
        elapsed = time.perf_counter() - start
        assert codes == [0] * workers, codes
        with autotune.load_study("fleet", storage=url) as study:
            done = sum(t.state == "ok" for t in study.trials())
        assert done == trials, done
        return trials / elapsed * 60


def per_trial_ms(stamps: list[float]) -> tuple[float, float]:
    gaps = [1000 * (b - a) for a, b in itertools.pairwise(stamps)]
    return statistics.median(gaps[:100]), statistics.median(gaps[-100:])


def autotune_asktell(url: str, n: int) -> tuple[float, float]:
    stamps: list[float] = []
    with autotune.create_study("overhead", space(), storage=url, seed=0) as study:
        study.optimize(n_trials=n, launcher=FakeLauncher(steps=8), recheck_every=0,
                       callbacks=[lambda _: stamps.append(time.perf_counter())])
    return per_trial_ms(stamps)


def optuna_asktell(url: str, n: int) -> tuple[float, float]:
    distributions = space().distributions()
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name="plain", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=0, multivariate=True,
                                                                   constant_liar=True))
    stamps = []
    for i in range(n):
        trial = study.ask(distributions)
        study.tell(trial, float(i % 97))
        stamps.append(time.perf_counter())
    storage.engine.dispose()
    return per_trial_ms(stamps)


def jobs_wall(jobs: int, trials: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'jobs.db'}"
        with autotune.create_study("jobs", space(window_s=0.5), storage=url,
                                   seed=0) as study:
            start = time.perf_counter()
            results = study.optimize(n_trials=trials, jobs=jobs, recheck_every=0)
            elapsed = time.perf_counter() - start
        return elapsed, sum(bool(r.metrics.get("contended")) for r in results)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--asktell", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="123", help="which sections to run, e.g. 2")
    args = parser.parse_args(argv)

    if "1" in args.parts:
        workers_section(args)
    if "2" in args.parts:
        overhead_section(args)
    if "3" in args.parts:
        jobs_section(args)


def workers_section(args: argparse.Namespace) -> None:
    print(f"1. trials/min on PostgreSQL, {args.trials} trials of the fast workload")
    base = None
    for workers in (1, 2, 4, 8):
        rate = workers_per_minute(workers, args.trials)
        base = base or rate
        print(f"   {workers} worker(s): {rate:6.0f} trials/min ({rate / base:.2f}x of 1)")


def overhead_section(args: argparse.Namespace) -> None:
    print(f"2. driver overhead per trial, {args.asktell} trials, ms (first 100 / last 100)")
    for mode in ("sqlite", "postgresql"):
        with tempfile.TemporaryDirectory() as tmp, \
                StorageSupplier(mode, Path(tmp), prefix="autotune_bench") as url:
            ours = autotune_asktell(url, args.asktell)
            plain = optuna_asktell(url, args.asktell)
        print(f"   {mode:10s}: autotune {ours[0]:6.1f} / {ours[1]:6.1f}, plain Optuna "
              f"{plain[0]:6.1f} / {plain[1]:6.1f}; ratio {ours[0] / plain[0]:.1f}x / "
              f"{ours[1] / plain[1]:.1f}x")


def jobs_section(args: argparse.Namespace) -> None:
    print(f"3. --jobs 1 against --jobs 2, 1-thread study, 12 trials, {args.rounds} rounds")
    walls: dict[int, list[float]] = {1: [], 2: []}
    contended: dict[int, int] = {1: 0, 2: 0}
    for _ in range(args.rounds):
        for jobs in (1, 2):
            wall, flagged = jobs_wall(jobs, 12)
            walls[jobs].append(wall)
            contended[jobs] += flagged
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    print(f"   --jobs 1: {one:.1f} s, --jobs 2: {two:.1f} s (median); jobs 2 takes "
          f"{two / one:.2f}x the wall time; trials flagged contended: {contended[1]} / "
          f"{contended[2]} of {12 * args.rounds}")


if __name__ == "__main__":
    main(sys.argv[1:])
