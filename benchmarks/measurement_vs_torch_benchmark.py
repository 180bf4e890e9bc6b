"""How close is an autotune trial's throughput to torch.utils.benchmark's, and what does a
trial cost beyond its measured window?

For each configuration, interleaved R times:
  * autotune: a real trial (worker process, warm-up, adaptive window) -> throughput_sps;
  * peer: torch.utils.benchmark.Timer(...).adaptive_autorange(threshold=0.05, max_run_time=5)
    on the same model, batch and thread count, in its own fresh process.
Prints the median ratio autotune/peer per configuration and the trial's wall time against
its measured window. Run:  .venv/bin/python benchmarks/measurement_vs_torch_benchmark.py [R]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import textwrap

from autotune.config import TrialConfig
from autotune.launch import ProcessLauncher
from autotune.profiling.measurement import Measurement
from autotune.space import parse_space

CONFIGS = [
    # (mode, precision, batch_size, threads)
    ("infer", "fp32", 64, 1),
    ("infer", "fp32", 64, 2),
    ("infer", "fp32", 512, 2),
    ("infer", "int8", 64, 2),
    ("train", "fp32", 64, 1),
    ("train", "fp32", 256, 2),
]

_PEER = textwrap.dedent("""
    import json, sys, warnings
    import torch
    import torch.utils.benchmark as tb
    mode, precision, bs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    layers = []
    widths = [64, 1000, 1000, 1000, 10]
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.ReLU())
    m = torch.nn.Sequential(*layers)
    x = torch.randn(bs, 64)
    y = torch.randint(0, 10, (bs,))
    if mode == "infer":
        m.eval()
        if precision == "int8":
            warnings.simplefilter("ignore")
            torch.backends.quantized.engine = "x86"
            m = torch.ao.quantization.quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
        def fn():
            with torch.inference_mode():
                m(x)
    else:
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
        def fn():
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    t = tb.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    r = t.adaptive_autorange(threshold=0.05, max_run_time=5)
    print(json.dumps({"median_s": r.median}))
""")


def peer_throughput(mode: str, precision: str, bs: int, threads: int) -> float:
    """Samples/s from torch.utils.benchmark in a fresh process pinned like the worker."""
    cpus = ",".join(str(i) for i in range(threads))
    out = subprocess.run(["taskset", "-c", cpus, sys.executable, "-c", _PEER, mode, precision,
                          str(bs), str(threads)], capture_output=True, text=True, check=True)
    return bs / json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def autotune_trial(mode: str, precision: str, bs: int, threads: int) -> tuple[float, float,
                                                                                   float]:
    """(throughput_sps, trial wall s, measured window s) of one real autotune trial."""
    params: dict[str, object] = {"precision": precision, "batch_size": bs, "threads": threads}
    space = parse_space({"workload": "mlp", "mode": mode,
                         "objectives": {"throughput_sps": "maximize"},
                         "budget": {"trial_seconds": 60, "train_epochs": 1}})
    config = TrialConfig.from_params(space, params)
    outcome = ProcessLauncher().run(config)
    if outcome.status != "ok":
        raise RuntimeError(f"{config}: {outcome.failure_kind} {outcome.reason}")
    m = Measurement.from_worker(outcome.result, samples_per_step=bs, mode=mode)
    return m.throughput_sps, outcome.wall_s, m.window_s


def main(repeats: int = 3) -> None:
    print("| mode | precision | batch | threads | autotune samples/s | peer samples/s | "
          "ratio median (min-max) | trial wall s | window s |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_ratios = []
    for mode, precision, bs, threads in CONFIGS:
        ours, peers, ratios, walls, windows = [], [], [], [], []
        for _ in range(repeats):  # interleaved, so drift hits both sides alike
            thr, wall, window = autotune_trial(mode, precision, bs, threads)
            peer = peer_throughput(mode, precision, bs, threads)
            ours.append(thr)
            peers.append(peer)
            ratios.append(thr / peer)
            walls.append(wall)
            windows.append(window)
        all_ratios.extend(ratios)
        print(f"| {mode} | {precision} | {bs} | {threads} | {statistics.median(ours):,.0f} | "
              f"{statistics.median(peers):,.0f} | {statistics.median(ratios):.3f} "
              f"({min(ratios):.2f}-{max(ratios):.2f}) | {statistics.median(walls):.1f} | "
              f"{statistics.median(windows):.1f} |", flush=True)
    print(f"\noverall median ratio autotune/peer: {statistics.median(all_ratios):.3f} over "
          f"{len(all_ratios)} pairs")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
