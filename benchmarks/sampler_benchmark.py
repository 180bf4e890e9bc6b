"""Search strategies compared on simulated problems with a known front.

For each simulated space, each strategy and each seed: run ``--trials`` trials, and after
every trial compute the *true* hypervolume of what it found (the noise-free values the
simulator gives the configurations it measured as feasible), against the exact front of
the space enumerated on a grid (:func:`autotune.simulation.true_front`). Report per
strategy the median number of trials, and of wall seconds, to reach ``--target`` (95 %) of
the best known hypervolume.

Strategies:

* ``autotune``: ``autotune study run`` as a user gets it (its TPE, the feasibility
  pre-screen, early stopping), through its workers and SQLite storage;
* ``tpe``, ``nsga2``, ``random``: plain Optuna samplers in a hand-written loop on the
  same simulator, with the measurement noise the simulator draws, a configuration that
  cannot run raised as an error (a FAIL trial, as a script does) and the constraints
  given to the sampler (``Trial.set_constraint``).

Run: ``python benchmarks/sampler_benchmark.py --seeds 10 --trials 100``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

import autotune
from autotune import simulation
from autotune._run import trial_config
from autotune.pareto import hypervolume, pareto_front
from autotune.space import SearchSpace, load_space, parse_space

ROOT = Path(__file__).resolve().parent.parent


def infer_space() -> SearchSpace:
    """Serving on the simulated fleet: throughput, p95 latency and energy per sample."""
    data: dict[str, Any] = json.loads(json.dumps(
        load_space(ROOT / "search_spaces" / "simulated_fleet.yaml").to_dict()))
    data.update(mode="infer", objectives={"throughput_sps": "maximize",
                                          "latency_p95_ms": "minimize",
                                          "energy_per_sample_j": "minimize"},
                constraints={})
    data["params"]["precision"] = ["fp32", "bf16", "fp16", "int8"]
    data["params"].pop("learning_rate", None)
    data["budget"] = {"trial_seconds": 600}
    return parse_space(data)


def problems() -> dict[str, SearchSpace]:
    return {"fleet-train": load_space(ROOT / "search_spaces" / "simulated_fleet.yaml"),
            "fleet-serve": infer_space()}


def true_volume(space: SearchSpace, sim: simulation.Simulator, found: list[dict[str, Any]],
                reference: list[float]) -> float:
    """Hypervolume of the noise-free values of the feasible configurations ``found``."""
    values = []
    for params in found:
        if not params:  # a trial that did not run
            continue
        metrics = simulation.expected_metrics(sim, trial_config(space, params, seed=0))
        if metrics is None or any(c.violation(metrics[c.metric]) > 0
                                  for c in space.constraints):
            continue
        values.append([metrics[n] for n in space.objective_names])
    if not values:
        return 0.0
    keys = pareto_front(list(enumerate(values)), space.directions)
    return hypervolume([values[k] for k in keys], space.directions, reference)


def run_autotune(space: SearchSpace, seed: int, trials: int) -> tuple[list[dict[str, Any]],
                                                                     list[float]]:
    """A real autotune study: configurations measured ok, in order, and their end times."""
    with tempfile.TemporaryDirectory() as tmp:
        study = autotune.create_study("bench", space, storage=f"sqlite:///{tmp}/b.db",
                                      seed=seed)
        start = time.perf_counter()
        stamps: list[float] = []
        results = study.optimize(n_trials=trials, recheck_every=0,
                                 callbacks=[lambda r: stamps.append(
                                     time.perf_counter() - start)])
        study.close()
    found = [dict(r.params) if r.state == "ok" else {} for r in results]
    return found, stamps


def run_plain(space: SearchSpace, sim: simulation.Simulator, name: str, seed: int,
              trials: int) -> tuple[list[dict[str, Any]], list[float]]:
    """A hand-written Optuna loop on the simulator."""
    rng = np.random.default_rng(seed)
    names = space.objective_names

    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    study = optuna.create_study(directions=space.directions, sampler=samplers[name]())
    distributions = space.distributions()
    found: list[dict[str, Any]] = []
    stamps: list[float] = []
    start = time.perf_counter()
    for _ in range(trials):
        trial = study.ask(distributions)
        config = trial_config(space, trial.params, seed=0)
        metrics = simulation.expected_metrics(sim, config)
        if metrics is None:  # out of memory or unsupported: the script's trial raises
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            found.append({})
        else:
            noise = float(np.exp(sim.device(config.device).noise * rng.standard_normal()))
            measured = dict(metrics, throughput_sps=metrics["throughput_sps"] / noise,
                            latency_p95_ms=metrics["latency_p95_ms"] * noise,
                            energy_per_sample_j=metrics["energy_per_sample_j"] * noise)
            for c in space.constraints:  # Optuna 5's constraints: the samplers read them
                trial.set_constraint(str(c), c.violation(measured[c.metric]))
            study.tell(trial, [measured[n] for n in names])
            found.append(dict(trial.params))
        stamps.append(time.perf_counter() - start)
    return found, stamps


def to_target(space: SearchSpace, sim: simulation.Simulator, found: list[dict[str, Any]],
              stamps: list[float], reference: list[float], goal: float
              ) -> tuple[float, float, float]:
    """(trials, seconds) to reach ``goal`` true hypervolume (inf: not reached) and the
    final true hypervolume."""
    volume = 0.0
    for i in range(len(found)):
        volume = true_volume(space, sim, found[: i + 1], reference)
        if volume >= goal:
            return i + 1, stamps[i], volume
    return math.inf, math.inf, volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds first-seed .. first-seed+seeds-1 (BENCHMARKS.md's held-out "
                             "seeds: --first-seed 20 --seeds 20)")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--strategies", default="autotune,tpe,nsga2,random")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    strategies = args.strategies.split(",")
    for label, space in problems().items():
        sim = simulation.parse_simulator(space.workload_kwargs)
        truth = simulation.true_front(space, points=32)
        print(f"\n{label}: {truth.evaluated} configurations enumerated, {truth.feasible} "
              f"feasible, true front {len(truth.points)} points")
        rows: dict[str, list[tuple[float, float, float]]] = {}
        for strategy in strategies:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                if strategy == "autotune":
                    found, stamps = run_autotune(space, seed, args.trials)
                else:
                    found, stamps = run_plain(space, sim, strategy, seed, args.trials)
                best = truth.hypervolume  # the grid's front; a search may beat the grid
                rows.setdefault(strategy, []).append(
                    to_target(space, sim, found, stamps, truth.reference,
                              args.target * best))
        print(f"{'strategy':10} {'trials to ' + format(args.target, '.0%'):>16} "
              f"{'seconds to it':>14} {'final share':>12} {'reached':>8}")
        for strategy, results in rows.items():
            trials = statistics.median(r[0] for r in results)
            seconds = statistics.median(r[1] for r in results)
            share = statistics.median(r[2] / truth.hypervolume for r in results)
            reached = sum(math.isfinite(r[0]) for r in results)
            print(f"{strategy:10} {trials:>16} {seconds:>14.2f} {share:>12.3f} "
                  f"{reached:>5}/{len(results)}")
        for strategy, results in rows.items():  # per seed, for medians over other halves
            print(f"  {strategy} trials per seed from {args.first_seed}: "
                  f"{[r[0] if math.isfinite(r[0]) else None for r in results]}")


if __name__ == "__main__":
    main()
