"""Search: autotune against the hand-written Optuna tuner, same space, one run, true fronts.

The peer is what users write instead of autotune (``benchmarks/_hand_tuner.py``, measured in
research/hand_written_tuner.md): an in-process Optuna study (``TPESampler(seed)``, two
objectives) whose trials set ``torch.set_num_threads``, build ``torch.randn(batch, 1000)``,
run 3 warm-up iterations and time 20 with ``time.perf_counter`` under
``torch.inference_mode()`` (and ``torch.autocast("cpu", bfloat16)`` for bf16), returning
(batch / median time, p95 time in ms). Both tools search the same space
(``benchmarks/search_space.yaml``; the model is ``benchmarks/search_mlp.py``): a torch MLP
1000 -> 1000 -> 1000 -> 10 in inference, batch size 8-1024 (log, integers), precision
fp32/bf16, threads 1/2; objectives throughput (samples/s, maximise) and p95 latency (ms,
minimise); ``--trials`` (40) trials of TPE with ``--seed`` (0).

Method, in one run:

1. the hand-written tuner as a whole script in a subprocess; its wall time is measured from
   outside (process start to exit: imports, model, study);
2. autotune through its CLI with default settings, each command a subprocess timed from
   outside: ``autotune study create NAME --space benchmarks/search_space.yaml --storage
   sqlite:///DIR/search.db --seed S`` then ``autotune study run NAME --n-trials N --storage
   ... --quiet`` (untimed afterwards: ``study show NAME --all --json`` for its front, trial
   states and per-trial phase times);
3. ground truth: every configuration on either front (the union) is re-measured in ONE
   fresh child process, interleaved (the two fronts' configurations alternate; every
   further ``--truth-rounds`` round reverses the order; the median over rounds is kept),
   threads set by ``torch.set_num_threads``: throughput = batch / median of
   ``torch.utils.benchmark.Timer(num_threads=threads).adaptive_autorange(threshold=0.05,
   max_run_time=2)``; p95 = the 95th percentile of single calls timed with
   ``perf_counter`` (at least 200 calls and 1 s, at most ``--p95-max-s`` seconds).
   Each tool's front is then scored by its TRUE hypervolume: the hypervolume of the
   re-measured points of its front configurations (``autotune.pareto.hypervolume``;
   reference point throughput 0, p95 = 1.1 x the largest true p95 of all re-measured
   points), and by its share of the best known front (the front of every re-measured point).

bf16 is not the same code in both tools: the script autocasts (fp32 weights, bf16 matmuls);
autotune converts the weights and inputs to bf16 for inference (its documented recipe). Each
front configuration is re-measured with ITS tool's recipe (``autocast`` or ``weights``), as a
user would deploy what that tool found; ``--cross-recipe`` also measures every bf16
configuration with the other recipe and adds the hypervolumes with one recipe for everyone,
which separates what the search found from what the recipe is worth. autotune refuses bf16
on a CPU without native bf16 (AVX512-BF16 / AMX-BF16) and records those trials infeasible;
the script runs them emulated. The CPU's flags are printed.

This machine has 2 cores: anything else running on it distorts every figure (a second
busy process slows 2-thread configurations 15-40x). Each phase reports the foreign load
it saw (busy CPU from ``/proc/stat`` minus this benchmark's own children, in cores).

Targets (the issue): autotune's wall time within 3x the script's; autotune's true
hypervolume at least the script's; the low-latency corner covered (autotune's lowest true
p95 <= 1.05 x the script's).

Run (a 4-trial smoke run took 29 s on the quiet 2-core VM; the full 40-trial run is not
timed yet: expect 1-2 minutes of tuning, mostly autotune's, plus 1-3 minutes of ground
truth, depending on the size of the fronts):

    .venv/bin/python benchmarks/search_benchmark.py [--trials 40] [--seed 0] [--json out.json]
    .venv/bin/python benchmarks/search_benchmark.py --trials 4 --truth-rounds 1  # smoke run
    .venv/bin/python benchmarks/search_benchmark.py --report out.json            # re-print
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SPACE = HERE / "search_space.yaml"
HAND_TUNER = HERE / "_hand_tuner.py"

#: Objective directions, in the order every value pair below uses: (throughput, p95).
DIRECTIONS = ("maximize", "minimize")
#: autotune's metric names for the two objectives.
METRICS = ("throughput_sps", "latency_p95_ms")
#: Targets from the issue.
WALL_RATIO_TARGET = 3.0
CORNER_TOLERANCE = 1.05
#: Reference point: throughput 0, p95 = this factor x the largest true p95.
REFERENCE_P95_FACTOR = 1.1
#: CPU flags that give native bf16 (autotune's capability check looks for these).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Options:
    """Settings of one run (stored in the JSON)."""

    trials: int = 40
    seed: int = 0
    truth_rounds: int = 2
    threshold: float = 0.05
    max_run_time: float = 2.0
    p95_min_calls: int = 200
    p95_min_s: float = 1.0
    p95_max_s: float = 4.0
    cross_recipe: bool = False


@dataclass(frozen=True, order=True)
class Point:
    """One configuration as it is run: the knobs plus how bf16 is done.

    ``recipe`` is ``fp32``, ``autocast`` (the script's bf16: fp32 weights under autocast)
    or ``weights`` (autotune's bf16 inference: weights and inputs converted to bf16).
    """

    batch_size: int
    precision: str
    threads: int
    recipe: str

    @classmethod
    def of(cls, params: dict[str, Any], tool: str) -> Point:
        """The point ``tool`` (``script`` or ``autotune``) would deploy for ``params``."""
        precision = str(params["precision"])
        recipe = "fp32" if precision == "fp32" else ("autocast" if tool == "script"
                                                       else "weights")
        return cls(int(params["batch_size"]), precision, int(params["threads"]), recipe)

    def with_recipe(self, recipe: str) -> Point:
        """The same knobs with bf16 done by ``recipe`` (fp32 points stay as they are)."""
        return self if self.precision == "fp32" else dataclasses.replace(self, recipe=recipe)

    @property
    def label(self) -> str:
        """Short name for tables and JSON keys, e.g. ``b742-bf16-t2 (autocast)``."""
        base = f"b{self.batch_size}-{self.precision}-t{self.threads}"
        return base if self.precision == "fp32" else f"{base} ({self.recipe})"


# -- the machine ------------------------------------------------------------------------------


def cpu_flags() -> dict[str, Any]:
    """The CPU model and which native-bf16 flags ``/proc/cpuinfo`` lists."""
    model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    present = [f for f in (*BF16_FLAGS, "amx_tile", "avx512f") if f in flags]
    return {"model": model, "cores": os.cpu_count(), "flags": present,
            "native_bf16": any(f in flags for f in BF16_FLAGS)}


class CpuWatch:
    """Foreign CPU load over an interval: busy time of the whole machine (``/proc/stat``,
    steal included) minus the CPU time of this process and its waited-for children, in
    cores. Approximate (tick resolution; a child's descendants count only once waited for),
    but enough to see that something else was running."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        """(wall, machine busy seconds, own + children CPU seconds)."""
        hz = os.sysconf("SC_CLK_TCK")
        busy = 0.0
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            # user nice system idle iowait irq softirq steal (guest is inside user)
            values = [int(v) for v in fields[:8]]
            busy = (sum(values) - values[3] - values[4]) / hz
        except (OSError, ValueError, IndexError):
            pass
        own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return time.perf_counter(), busy, own

    def foreign_cores(self) -> float:
        """Average number of cores others kept busy since construction."""
        wall0, busy0, own0 = self._start
        wall1, busy1, own1 = self._read()
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9))


def _env() -> dict[str, str]:
    """The environment of the children: the repo importable (autotune from this checkout)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _timed(cmd: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``cmd``, return (wall seconds from start to exit, the completed process)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(),
                          check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return wall, proc


# -- 1. the hand-written tuner ----------------------------------------------------------------


def run_script(opts: Options, cwd: Path) -> dict[str, Any]:
    """The hand-written tuner as a whole script; wall time from process start to exit."""
    watch = CpuWatch()
    wall, proc = _timed([sys.executable, str(HAND_TUNER), "--trials", str(opts.trials),
                         "--seed", str(opts.seed)], cwd)
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    front = [{"trial": p["trial"], "params": p["params"],
              "point": Point.of(p["params"], "script"),
              "measured": {"throughput_sps": p["values"][0], "latency_p95_ms": p["values"][1]}}
             for p in out["front"]]
    return {"wall_s": wall, "in_loop_s": out["in_loop_s"], "trials": len(out["trials"]),
            "front": front, "foreign_cores": watch.foreign_cores()}


# -- 2. autotune ------------------------------------------------------------------------------


def _autotune(*args: str) -> list[str]:
    """The command line of ``autotune ARGS`` with this checkout's interpreter."""
    return [sys.executable, "-m", "autotune", *args]


def _peak_cached() -> dict[str, bool]:
    """Whether autotune's GEMM peak is already cached for each (precision, threads) of the
    space: a missing entry is measured once, inside ``study run``, before its first trial."""
    try:
        from autotune.profiling.peak import load_peak_table
    except ImportError:
        return {}
    table = load_peak_table()
    return {f"{p}-t{t}": table.get("cpu", p, t) is not None
            for p in ("fp32", "bf16") for t in (1, 2)}


def _phase_totals(trials: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Seconds per phase summed over trials (``metrics.phases_s``), plus ``trial_wall``."""
    totals: dict[str, float] = {"trial_wall": 0.0}
    for t in trials:
        totals["trial_wall"] += float(t.get("wall_s") or 0.0)
        for phase, seconds in ((t.get("metrics") or {}).get("phases_s") or {}).items():
            totals[phase] = totals.get(phase, 0.0) + float(seconds or 0.0)
    return totals


def _timeline(name: str, storage: str, run_start: float, run_end: float,
              trials: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where ``study run``'s wall time went, from Optuna's trial timestamps (local, naive
    datetimes, compared with this process's wall clock ``time.time()``): CLI start to the
    first trial, each trial's span beyond its worker's ``wall_s`` (driver work inside the
    trial: a GEMM peak measured before the launch, the launch itself), the gaps between
    trials (sampler, storage, drift rechecks), and the last trial to exit."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=storage)
    done = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    if not done:
        return {}
    wall = {int(t["number"]): float(t.get("wall_s") or 0.0) for t in trials}
    starts = [t.datetime_start.timestamp() for t in done if t.datetime_start]
    ends = [t.datetime_complete.timestamp() for t in done if t.datetime_complete]
    spans = [e - s for s, e in zip(starts, ends, strict=True)]
    beyond = [span - wall.get(t.number, 0.0) for span, t in zip(spans, done, strict=True)]
    gaps = [b - a for a, b in zip(ends, starts[1:], strict=False)]
    return {"startup_s": min(starts) - run_start, "exit_s": run_end - max(ends),
            "span_beyond_worker_s": sum(beyond),
            "span_beyond_worker_max_s": max(beyond),
            "gaps_s": sum(gaps), "gap_median_s": statistics.median(gaps) if gaps else None,
            "gap_max_s": max(gaps, default=None)}


def _flags(metrics: dict[str, Any]) -> str:
    """autotune's own doubts about a measurement: noise flag, contention, stop reason."""
    parts = [str(metrics["noise"])] if metrics.get("noise") not in (None, "ok") else []
    if metrics.get("contended"):
        parts.append("contended")
    if metrics.get("stop_reason") not in (None, "ci_met"):
        parts.append(str(metrics["stop_reason"]))
    return "+".join(parts) or "ok"


def _trial_record(t: dict[str, Any]) -> dict[str, Any]:
    """The figures of one autotune trial kept in the JSON (timings and flags, no blobs)."""
    m = t.get("metrics") or {}
    return {"trial": t["number"], "state": t["state"], "params": t["params"],
            "values": t.get("values"), "wall_s": t.get("wall_s"),
            "phases_s": m.get("phases_s"), "steps": m.get("steps_measured"),
            "warm_worker": (m.get("worker") or {}).get("warm"),
            "foreign_cpu_fraction": m.get("foreign_cpu_fraction"), "flags": _flags(m),
            "failure_kind": t.get("failure_kind"), "reason": t.get("reason")}


def run_autotune(opts: Options, db_dir: Path) -> dict[str, Any]:
    """``study create`` + ``study run`` timed from outside, then the stored trials read back
    (``study show --all --json``, untimed)."""
    name = f"search_{time.strftime('%Y%m%d_%H%M%S')}"
    storage = f"sqlite:///{db_dir / 'search.db'}"
    peak_cached = _peak_cached()
    watch = CpuWatch()
    create_s, _ = _timed(_autotune("study", "create", name, "--space", str(SPACE),
                                   "--storage", storage, "--seed", str(opts.seed)), db_dir)
    run_start = time.time()
    run_s, _ = _timed(_autotune("study", "run", name, "--n-trials", str(opts.trials),
                                "--storage", storage, "--quiet"), db_dir)
    run_end = time.time()
    foreign = watch.foreign_cores()
    peak_after = _peak_cached()
    _, proc = _timed(_autotune("study", "show", name, "--all", "--json", "--storage", storage),
                     db_dir)
    shown: dict[str, Any] = json.loads(proc.stdout)
    trials: list[dict[str, Any]] = shown["trials"]
    front = [{"trial": p["trial"], "params": p["config"],
              "point": Point.of(p["config"], "autotune"),
              "measured": {m: p["values"][m] for m in METRICS},
              "stability": p.get("stability"),
              "flags": _flags(p.get("metrics") or {})}
             for p in shown["front"]]
    states = {s: sum(t["state"] == s for t in trials) for s in ("ok", "screened", "pruned",
                                                                  "infeasible", "fail")}
    states["confirmations"] = sum(1 for t in trials if t.get("confirms") is not None)
    not_ok = [{"trial": t["number"], "state": t["state"], "params": t["params"],
               "failure_kind": t.get("failure_kind"), "reason": t.get("reason")}
              for t in trials if t["state"] not in ("ok", "screened")]
    phases = _phase_totals(trials)
    ok = [t for t in trials if t["state"] == "ok"]
    # What a trial costs beyond its measured window (median over completed trials).
    beyond = [float(t["wall_s"]) - float(t["metrics"]["phases_s"].get("measured", 0.0))
              for t in ok if t.get("wall_s") and (t.get("metrics") or {}).get("phases_s")]
    return {"study": name, "storage": storage, "create_s": create_s, "run_s": run_s,
            "wall_s": create_s + run_s, "trials": len(trials), "states": states,
            "not_ok": not_ok, "front": front, "phases_s": phases,
            "trial_records": [_trial_record(t) for t in trials],
            "outside_trials_s": run_s - phases["trial_wall"],
            "beyond_window_median_s": statistics.median(beyond) if beyond else None,
            "peak_measured_in_run": [k for k, v in peak_after.items()
                                     if v and not peak_cached.get(k)],
            "timeline": _timeline(name, storage, run_start, run_end, trials),
            "foreign_cores": foreign}


# -- 3. ground truth (child process) ----------------------------------------------------------


def interleave(*lists: Sequence[Point]) -> list[Point]:
    """Alternate the lists' points (a point already taken is skipped): ``a0 b0 a1 b1 ...``."""
    seen: set[Point] = set()
    out: list[Point] = []
    for i in range(max((len(x) for x in lists), default=0)):
        for x in lists:
            if i < len(x) and x[i] not in seen:
                seen.add(x[i])
                out.append(x[i])
    return out


def _measure_point(point: Point, models: dict[str, Any], opts: Options) -> dict[str, float]:
    """One reference measurement of ``point`` (in the truth child)."""
    import numpy as np
    import torch
    import torch.utils.benchmark as tb

    torch.set_num_threads(point.threads)
    x = torch.randn(point.batch_size, 1000)
    if point.recipe == "weights":
        x = x.to(torch.bfloat16)
    model = models["bf16" if point.recipe == "weights" else "fp32"]
    autocast = point.recipe == "autocast"

    def step() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                     enabled=autocast):
            model(x)

    # Warm-up: the first calls at a new batch size are several times slower.
    t0 = time.perf_counter()
    for i in range(1000):
        step()
        if i >= 9 and time.perf_counter() - t0 >= 0.25:
            break
    timer = tb.Timer(stmt="step()", globals={"step": step}, num_threads=point.threads)
    m = timer.adaptive_autorange(threshold=opts.threshold, max_run_time=opts.max_run_time)
    sps = point.batch_size / m.median
    # p95 of single calls: >= p95_min_calls calls and >= p95_min_s, at most p95_max_s
    # (a 40 ms call would need 8 s for 200 calls).
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        step()
        t1 = time.perf_counter()
        times.append(t1 - t0)
        elapsed = t1 - start
        if (len(times) >= opts.p95_min_calls and elapsed >= opts.p95_min_s) \
                or elapsed >= opts.p95_max_s:
            break
    return {"throughput_sps": sps, "latency_p95_ms": float(np.percentile(times, 95)) * 1e3,
            "p95_calls": len(times), "autorange_iqr_over_median": m.iqr / m.median}


def truth_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Re-measure every point, round after round, in this one process; medians per point."""
    import torch
    from search_mlp import make_model  # benchmarks/ is sys.path[0]: the script's folder

    opts = Options(**spec["options"])
    points = [Point(**p) for p in spec["points"]]
    fp32 = make_model(0)
    models = {"fp32": fp32, "bf16": make_model(0).to(torch.bfloat16)}
    runs: dict[Point, list[dict[str, float]]] = {p: [] for p in points}
    for r in range(opts.truth_rounds):
        for point in (points if r % 2 == 0 else points[::-1]):
            runs[point].append(_measure_point(point, models, opts))
    out = []
    for point, rs in runs.items():
        out.append({"point": dataclasses.asdict(point),
                    "throughput_sps": statistics.median(x["throughput_sps"] for x in rs),
                    "latency_p95_ms": statistics.median(x["latency_p95_ms"] for x in rs),
                    "rounds": rs})
    return {"points": out, "torch": torch.__version__}


def measure_truth(points: Sequence[Point], opts: Options, cwd: Path) -> dict[str, Any]:
    """Run :func:`truth_child` on ``points`` in one fresh process."""
    watch = CpuWatch()
    spec = {"options": dataclasses.asdict(opts),
            "points": [dataclasses.asdict(p) for p in points]}
    spec_file = cwd / "truth_spec.json"
    spec_file.write_text(json.dumps(spec))
    wall, proc = _timed([sys.executable, str(Path(__file__).resolve()), "--truth",
                         str(spec_file)], cwd)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(wall_s=wall, foreign_cores=watch.foreign_cores())
    return result


# -- analysis ---------------------------------------------------------------------------------


def hypervolume(values: Iterable[tuple[float, float]], reference: tuple[float, float]) -> float:
    """2-D hypervolume of (throughput, p95) points (``autotune.pareto.hypervolume``)."""
    from autotune.pareto import hypervolume as hv

    return float(hv([list(v) for v in values], DIRECTIONS, list(reference)))


def front_of(values: dict[str, tuple[float, float]]) -> list[str]:
    """Labels of the non-dominated (throughput up, p95 down) points."""
    from autotune.pareto import pareto_front

    return list(pareto_front(list(values.items()), DIRECTIONS))


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def analyse(script: dict[str, Any] | None, tuned: dict[str, Any] | None,
            truth: dict[str, Any], opts: Options) -> dict[str, Any]:
    """True hypervolumes, shares, corners and targets from the re-measured points."""
    true: dict[str, tuple[float, float]] = {
        Point(**t["point"]).label: (t["throughput_sps"], t["latency_p95_ms"])
        for t in truth["points"]}
    reference = (0.0, max(v[1] for v in true.values()) * REFERENCE_P95_FACTOR)
    best_known = hypervolume(true.values(), reference)
    tools = {k: v for k, v in (("script", script), ("autotune", tuned)) if v is not None}

    def score(points: Sequence[Point]) -> dict[str, Any]:
        vals = [true[p.label] for p in points if p.label in true]
        hv = hypervolume(vals, reference) if vals else 0.0
        return {"hv": hv, "share": _ratio(hv, best_known),
                "lowest_p95_ms": min((v[1] for v in vals), default=None),
                "best_sps": max((v[0] for v in vals), default=None)}

    per_tool: dict[str, Any] = {}
    for tool, res in tools.items():
        points = [e["point"] for e in res["front"]]
        per_tool[tool] = score(points)
        # How far each tool's own figures were from the truth (measured / true).
        ratios_sps = [e["measured"]["throughput_sps"] / true[e["point"].label][0]
                      for e in res["front"] if e["point"].label in true]
        ratios_p95 = [e["measured"]["latency_p95_ms"] / true[e["point"].label][1]
                      for e in res["front"] if e["point"].label in true]
        per_tool[tool]["measured_over_true_sps_median"] = (
            statistics.median(ratios_sps) if ratios_sps else None)
        per_tool[tool]["measured_over_true_p95_median"] = (
            statistics.median(ratios_p95) if ratios_p95 else None)
        if opts.cross_recipe:
            for recipe in ("autocast", "weights"):
                per_tool[tool][f"hv_all_{recipe}"] = score(
                    [p.with_recipe(recipe) for p in points])["hv"]
    summary: dict[str, Any] = {"reference": list(reference), "best_known_hv": best_known,
                               "best_known_front": front_of(true), "tools": per_tool}
    if script is not None and tuned is not None:
        s, a = per_tool["script"], per_tool["autotune"]
        wall_ratio = tuned["wall_s"] / script["wall_s"]
        corner = (a["lowest_p95_ms"] is not None and s["lowest_p95_ms"] is not None
                  and a["lowest_p95_ms"] <= s["lowest_p95_ms"] * CORNER_TOLERANCE)
        summary.update(
            wall_ratio=wall_ratio, hv_ratio=_ratio(a["hv"], s["hv"]),
            targets={"wall_within_3x": wall_ratio <= WALL_RATIO_TARGET,
                     "hv_at_least_script": a["hv"] >= s["hv"],
                     "low_latency_corner_covered": corner})
    return summary


# -- report -----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ",.1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def _front_table(tool: str, res: dict[str, Any], true: dict[str, tuple[float, float]],
                 best_known: set[str]) -> None:
    print(f"\n{tool} front ({len(res['front'])} configuration(s)); * = on the best-known "
          "front\n")
    print("| trial | configuration | measured samples/s | true samples/s | measured p95 ms | "
          "true p95 ms | own flags | recheck |")
    print("|---|---|---|---|---|---|---|---|")
    for e in sorted(res["front"], key=lambda e: -e["measured"]["throughput_sps"]):
        label = e["point"].label
        t = true.get(label)
        star = " *" if label in best_known else ""
        print(f"| {e['trial']} | {label}{star} | {e['measured']['throughput_sps']:,.0f} | "
              f"{_fmt(t[0] if t else None, ',.0f')} | {e['measured']['latency_p95_ms']:.3f} | "
              f"{_fmt(t[1] if t else None, '.3f')} | {e.get('flags') or '-'} | "
              f"{e.get('stability') or '-'} |")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_report(saved: dict[str, Any]) -> None:
    """Tables and the verdict against the issue's targets (from the JSON-able record)."""
    opts = Options(**saved["options"])
    script, tuned, truth, summary = (saved["script"], saved["autotune"], saved["truth"],
                                     saved["summary"])
    for res in (script, tuned):
        if res is not None:
            for e in res["front"]:
                e["point"] = Point(**e["point"]) if isinstance(e["point"], dict) else e["point"]
    cpu = saved["cpu"]
    native = ("yes" if cpu["native_bf16"] else
              "NO (autotune records bf16 trials infeasible, the script runs them emulated)")
    print(f"\nCPU: {cpu['model']}, {cpu['cores']} core(s); flags: "
          f"{', '.join(cpu['flags']) or 'none of ' + ', '.join(BF16_FLAGS)}; native bf16: "
          f"{native}")
    print(f"{opts.trials} trials, seed {opts.seed}; ground truth: {len(truth['points'])} "
          f"point(s) x {opts.truth_rounds} round(s) in one process "
          f"({truth['wall_s']:.0f} s, torch {truth['torch']})")
    true = {Point(**t["point"]).label: (t["throughput_sps"], t["latency_p95_ms"])
            for t in truth["points"]}
    best_known = set(summary["best_known_front"])
    for res, tool in ((script, "hand-written script"), (tuned, "autotune")):
        if res is not None:
            _front_table(tool, res, true, best_known)

    print("\n| figure | script | autotune | autotune/script |")
    print("|---|---|---|---|")
    s_tool, a_tool = summary["tools"].get("script", {}), summary["tools"].get("autotune", {})

    def row(name: str, s: float | None, a: float | None, spec: str) -> None:
        print(f"| {name} | {_fmt(s, spec)} | {_fmt(a, spec)} | {_fmt(_ratio(a, s), '.2f')} |")

    row("wall time, s (autotune: create + run)", script and script["wall_s"],
        tuned and tuned["wall_s"], ".1f")
    row("true hypervolume", s_tool.get("hv"), a_tool.get("hv"), ",.0f")
    row("share of best-known hypervolume", s_tool.get("share"), a_tool.get("share"), ".3f")
    row("lowest true p95, ms", s_tool.get("lowest_p95_ms"), a_tool.get("lowest_p95_ms"), ".3f")
    row("best true throughput, samples/s", s_tool.get("best_sps"), a_tool.get("best_sps"),
        ",.0f")
    row("own throughput / true (median over front)",
        s_tool.get("measured_over_true_sps_median"),
        a_tool.get("measured_over_true_sps_median"), ".3f")
    row("own p95 / true (median over front)", s_tool.get("measured_over_true_p95_median"),
        a_tool.get("measured_over_true_p95_median"), ".3f")
    if opts.cross_recipe:
        for recipe in ("autocast", "weights"):
            row(f"true hypervolume, every bf16 point as {recipe}",
                s_tool.get(f"hv_all_{recipe}"), a_tool.get(f"hv_all_{recipe}"), ",.0f")
    print(f"\nreference point: throughput 0, p95 {summary['reference'][1]:.3f} ms; best-known "
          f"hypervolume {summary['best_known_hv']:,.0f} (front: "
          f"{', '.join(summary['best_known_front'])})")

    if script is not None:
        print(f"script: {script['trials']} trials, {script['in_loop_s']:.2f} s inside its timed "
              f"loops ({script['in_loop_s'] / script['wall_s']:.0%} of its wall time); foreign "
              f"load {script['foreign_cores']:.2f} core(s)")
    if tuned is not None:
        st, ph = tuned["states"], tuned["phases_s"]
        infeasible_bf16 = sum(1 for t in tuned["not_ok"]
                              if t["state"] == "infeasible" and t["params"].get("precision")
                              == "bf16")
        print(f"autotune: {tuned['trials']} trials: {st['ok']} ok (of them "
              f"{st.get('confirmations', 0)} confirmations of screened trials), "
              f"{st.get('screened', 0)} screened (confirmation deferred), "
              f"{st.get('pruned', 0)} pruned (stopped early, dominated), {st['infeasible']} "
              f"infeasible ({infeasible_bf16} of them bf16), {st['fail']} failed; create "
              f"{tuned['create_s']:.1f} s + run {tuned['run_s']:.1f} s; foreign load "
              f"{tuned['foreign_cores']:.2f} core(s)")
        measured = ph.get("measured", 0.0)
        start = ph.get("process_start", 0.0) + ph.get("framework_import", 0.0)
        build = ph.get("data", 0.0) + ph.get("model_build", 0.0)
        print(f"  inside trials {ph['trial_wall']:.1f} s, of which measured windows "
              f"{measured:.1f} s, warm-up {ph.get('warmup', 0.0):.1f} s, worker start + "
              f"framework import {start:.1f} s, data + model build {build:.1f} s, "
              f"first step {ph.get('first_step_compile', 0.0):.1f} s; outside trials (CLI "
              f"start, sampler, storage, rechecks, peak) {tuned['outside_trials_s']:.1f} s; "
              f"a trial's cost beyond its window: median "
              f"{_fmt(tuned['beyond_window_median_s'], '.2f')} s")
        tl = tuned.get("timeline")
        if tl:
            print(f"  study run's wall time: CLI start to first trial {tl['startup_s']:.1f} s; "
                  f"trial spans beyond their worker's wall time {tl['span_beyond_worker_s']:.1f}"
                  f" s (max {tl['span_beyond_worker_max_s']:.1f} s); gaps between trials "
                  f"{tl['gaps_s']:.1f} s (median {_fmt(tl['gap_median_s'], '.3f')} s, max "
                  f"{_fmt(tl['gap_max_s'], '.2f')} s); last trial to exit {tl['exit_s']:.1f} s")
        if tuned.get("peak_measured_in_run"):
            print(f"  GEMM peak measured inside `study run` (once per machine, not cached "
                  f"before): {', '.join(tuned['peak_measured_in_run'])}")
        for t in tuned["not_ok"]:
            kind = f" ({t['failure_kind']})" if t["failure_kind"] else ""
            print(f"  trial {t['trial']} {t['state']}{kind}: {t['reason']}")
    if truth["foreign_cores"] > 0.2:
        print(f"ground truth: foreign load {truth['foreign_cores']:.2f} core(s): the true "
              "figures are disturbed")

    if "targets" in summary:
        tg = summary["targets"]
        print(f"\ntarget: autotune within {WALL_RATIO_TARGET:g}x the script's wall time: "
              f"{summary['wall_ratio']:.2f}x, {_met(tg['wall_within_3x'])}")
        print(f"target: true hypervolume at least the script's: "
              f"{_fmt(summary['hv_ratio'], '.3f')}x, {_met(tg['hv_at_least_script'])}")
        print(f"target: low-latency corner covered (autotune's lowest true p95 <= "
              f"{CORNER_TOLERANCE:g} x the script's): "
              f"{_fmt(a_tool['lowest_p95_ms'], '.3f')} vs {_fmt(s_tool['lowest_p95_ms'], '.3f')}"
              f" ms, {_met(tg['low_latency_corner_covered'])}")


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every :class:`Point` turned into a dict."""
    def fix(obj: Any) -> Any:
        if isinstance(obj, Point):
            return dataclasses.asdict(obj) | {"label": obj.label}
        if isinstance(obj, dict):
            return {k: fix(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fix(v) for v in obj]
        return obj
    fixed: dict[str, Any] = fix(record)
    return fixed


def _strip_label(record: dict[str, Any]) -> dict[str, Any]:
    """Undo :func:`_jsonable`'s extra ``label`` key so points load as :class:`Point`."""
    for tool in ("script", "autotune"):
        for e in (record.get(tool) or {}).get("front", []):
            e["point"].pop("label", None)
    return record


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="See the module docstring for the method and the targets.")
    parser.add_argument("--trials", type=int, default=Options.trials,
                        help="trials per tool (default %(default)s)")
    parser.add_argument("--seed", type=int, default=Options.seed,
                        help="TPE seed of both tools (default %(default)s)")
    parser.add_argument("--truth-rounds", type=int, default=Options.truth_rounds,
                        help="interleaved re-measurement rounds of the union of the fronts; "
                             "the median is kept (default %(default)s)")
    parser.add_argument("--p95-max-s", type=float, default=Options.p95_max_s,
                        help="longest p95 run per point and round, s (default %(default)s)")
    parser.add_argument("--cross-recipe", action="store_true",
                        help="also measure every bf16 front configuration with the other "
                             "tool's bf16 recipe (autocast / bf16 weights)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="put autotune's SQLite database here and keep it")
    parser.add_argument("--skip-script", action="store_true",
                        help="debugging: do not run the hand-written tuner")
    parser.add_argument("--skip-autotune", action="store_true",
                        help="debugging: do not run autotune")
    parser.add_argument("--json", type=Path, help="write every figure and both fronts here")
    parser.add_argument("--report", type=Path, metavar="JSON",
                        help="print the report of an earlier --json file; measure nothing")
    parser.add_argument("--truth", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.truth:
        print(json.dumps(truth_child(json.loads(args.truth.read_text()))))
        return 0
    if args.report:
        print_report(_strip_label(json.loads(args.report.read_text())))
        return 0
    if args.skip_script and args.skip_autotune:
        parser.error("nothing to compare: both tools skipped")

    opts = Options(trials=args.trials, seed=args.seed, truth_rounds=args.truth_rounds,
                   p95_max_s=args.p95_max_s, cross_recipe=args.cross_recipe)
    cpu = cpu_flags()
    with tempfile.TemporaryDirectory(prefix="search_benchmark_") as tmp:
        work = Path(tmp)
        db_dir = args.keep.resolve() if args.keep else work
        db_dir.mkdir(parents=True, exist_ok=True)
        script = tuned = None
        if not args.skip_script:
            script = run_script(opts, work)
            print(f"script: {script['wall_s']:.1f} s, front {len(script['front'])}", flush=True)
        if not args.skip_autotune:
            tuned = run_autotune(opts, db_dir)
            print(f"autotune: {tuned['wall_s']:.1f} s, front {len(tuned['front'])} "
                  f"({tuned['storage']})", flush=True)
        fronts = [[e["point"] for e in res["front"]] for res in (tuned, script) if res]
        points = interleave(*fronts)
        if opts.cross_recipe:
            extra = [p.with_recipe(r) for p in points for r in ("autocast", "weights")]
            points = interleave(points, extra)
        truth = measure_truth(points, opts, work)
    print(f"ground truth: {len(points)} point(s), {truth['wall_s']:.0f} s", flush=True)
    summary = analyse(script, tuned, truth, opts)
    true = {Point(**t["point"]): t for t in truth["points"]}
    for res in (script, tuned):
        for e in (res or {}).get("front", []):
            t = true.get(e["point"])
            e["true"] = {m: t[m] for m in METRICS} if t else None
    record = {"options": dataclasses.asdict(opts), "cpu": cpu, "script": script,
              "autotune": tuned, "truth": truth, "summary": summary}
    print_report(record)
    if args.json:
        args.json.write_text(json.dumps(_jsonable(record), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
