"""Language-model figures: what the KV cache, bf16, weight-only int8 and checkpointing do,
per framework, and the memory model against the measured peak.

Every figure is a real trial (``autotune.measure``: a worker process, the profiled window),
in ``--rounds`` interleaved rounds; medians are quoted, with ratios against the baseline
measured in the same round (this machine is noisy).

1. Generate mode, the built-in gpt (4 layers, d_model 256, 3.3 M parameters), batch 4,
   prompt 32, 64 new tokens, 2 threads: ``kv_cache`` dynamic / static / off on torch and
   TensorFlow, and on torch bf16 and weight-only int8 against fp32 (dynamic cache).
2. MindSpore (PyNative) at one configuration, for the per-framework table.
3. Train mode: checkpointing off / blocks on torch (peak memory against tokens/s).
4. Predicted against measured trial memory for the trials above.

Run: ``.venv/bin/python benchmarks/llm_benchmark.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import autotune

MODEL = {"factory": "gpt", "kwargs": {"layers": 4, "d_model": 256, "heads": 4,
                                      "context": 256, "seq_len": 64,
                                      "epoch_sequences": 1024}}
BUDGET = {"trial_seconds": 180, "warmup_max_s": 2, "window_min_s": 1, "window_max_s": 3,
          "window_min_steps": 5, "train_epochs": 1}
GENERATE = {"batch_size": 4, "prompt_len": 32, "new_tokens": 64, "threads": 2}


def _row(label: str, m: Any) -> dict[str, Any]:
    metrics, summary = m.metrics(), m.summary()
    return {"label": label, "decode": metrics["decode_tokens_per_s"],
            "tokens": metrics["tokens_per_s"], "ttft": metrics["ttft_p50_ms"],
            "tpot": metrics["tpot_p50_ms"], "ppl": metrics["perplexity"],
            "predicted_mb": (summary["predicted_memory_bytes"] or 0) / 2**20,
            "measured_mb": (summary["trial_memory_bytes"] or 0) / 2**20,
            "base": m.model.get("base_model")}


def _print(row: dict[str, Any]) -> None:
    rate = (f"{row['decode']:,.0f} decode tok/s, TTFT p50 {row['ttft']:.1f} ms, TPOT p50 "
            f"{row['tpot']:.2f} ms" if row["decode"] else f"{row['tokens']:,.0f} tok/s")
    print(f"  {row['label']}: {rate}, perplexity {row['ppl']:.2f}, memory predicted "
          f"{row['predicted_mb']:.0f} MB / measured {row['measured_mb']:.0f} MB"
          f"{' (base model trained in this trial)' if row['base'] == 'trained' else ''}",
          flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    variants: list[tuple[str, str, str, dict[str, Any]]] = [
        ("torch dynamic fp32", "torch", "generate", {"kv_cache": "dynamic"}),
        ("torch static fp32", "torch", "generate", {"kv_cache": "static"}),
        ("torch off fp32", "torch", "generate", {"kv_cache": "off"}),
        ("torch dynamic bf16", "torch", "generate", {"kv_cache": "dynamic",
                                                    "precision": "bf16"}),
        ("torch dynamic int8 weights", "torch", "generate", {"kv_cache": "dynamic",
                                                            "weight_quant": "int8"}),
        ("tensorflow dynamic fp32", "tensorflow", "generate", {"kv_cache": "dynamic"}),
        ("tensorflow static fp32", "tensorflow", "generate", {"kv_cache": "static"}),
        ("tensorflow off fp32", "tensorflow", "generate", {"kv_cache": "off"}),
        ("torch train checkpointing off", "torch", "train", {"batch_size": 16,
                                                             "checkpointing": "off"}),
        ("torch train checkpointing blocks", "torch", "train", {"batch_size": 16,
                                                                "checkpointing": "blocks"}),
    ]
    from autotune.backends._base import cpu_capabilities

    if "bf16" not in cpu_capabilities().precisions:
        variants = [v for v in variants if "bf16" not in v[0]]
    rows: dict[str, list[dict[str, Any]]] = {v[0]: [] for v in variants}
    for r in range(args.rounds):
        print(f"round {r}", flush=True)
        order = variants if r % 2 == 0 else list(reversed(variants))
        for label, backend, mode, knobs in order:
            extra = dict(GENERATE) if mode == "generate" else {"threads": 2}
            extra.update(knobs)
            m = autotune.measure(MODEL, mode, backend=backend, budget=BUDGET, **extra)
            rows[label].append(_row(label, m))
            _print(rows[label][-1])
    print("medians")
    for label, got in rows.items():
        ok = [g for g in got if g["base"] != "trained"] or got
        key = "decode" if got[0]["decode"] else "tokens"
        med = statistics.median(g[key] for g in ok)
        mem = statistics.median(g["measured_mb"] for g in ok)
        print(f"  {label}: {key} {med:,.0f} tok/s, measured memory {mem:.0f} MB, "
              f"predicted {ok[0]['predicted_mb']:.0f} MB ({len(ok)} rounds)")
    ms = autotune.measure(MODEL, "generate", backend="mindspore", budget=BUDGET, **GENERATE)
    _print(_row("mindspore dynamic fp32 (PyNative)", ms))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
