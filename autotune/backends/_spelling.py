"""Shared pieces of the launch-config spellings in the framework specs (``_spec_*.py``):
thread settings, optimizer and pruning, as the backends applied them. Framework-free."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def env_threads(n: int | None) -> dict[str, Any]:
    """What the worker set before importing the framework (autotune/launch/_worker.py):
    OpenMP/MKL/OpenBLAS pools and CPU affinity to ``n`` cores."""
    if n is None:
        return {"OMP_NUM_THREADS": None, "note": "threads not pinned: every core"}
    return {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n),
            "OPENBLAS_NUM_THREADS": str(n), "cpu_affinity_cores": n}


def optimizer(config: Mapping[str, Any], mode: str, classes: Mapping[str, str],
              kwargs: Mapping[str, Mapping[str, Any]], lr_name: str) -> dict[str, Any] | None:
    """The optimizer class and arguments (``None`` in infer mode)."""
    if mode != "train":
        return None  # inference runs a trained model: no optimizer
    name = str(config.get("optimizer"))
    return {"class": classes[name],
            "kwargs": {lr_name: config.get("learning_rate"), **kwargs.get(name, {})}}


def pruning(config: Mapping[str, Any], mode: str, unstructured_call: str) -> dict[str, Any] | None:
    """How the trial's pruning was applied (``None`` without pruning)."""
    ratio = config.get("pruning_ratio") or 0.0
    if ratio <= 0:
        return None
    structure = config.get("pruning_structure", "unstructured")
    if structure == "structured":
        return {"structure": "structured", "ratio": ratio,
                "call": f"autotune.backends._pruning.apply_structured(weights, biases, {ratio})",
                "how": f"keep the {1 - ratio:.0%} neurons of each hidden layer with the largest "
                       "incoming L1 norm and rebuild smaller dense layers"}
    out = {"structure": "unstructured", "ratio": ratio, "call": unstructured_call}
    out["how"] = ("masks stay and are re-applied after every optimizer step" if mode == "train"
                  else "zeros made permanent before inference")
    return out


def llm(config: Mapping[str, Any], mode: str, *, attention: Mapping[str, str],
        weight_quant: Mapping[str, str], checkpointing: str) -> dict[str, Any] | None:
    """The language-model knobs as the framework applied them (``None`` when a trial set
    none of them: a model that is not a language model)."""
    out: dict[str, Any] = {}
    if mode == "generate":
        kind = config.get("kv_cache", "dynamic")
        out["generation"] = {
            "prompt_len": config.get("prompt_len"), "new_tokens": config.get("new_tokens"),
            "decoding": "greedy, exactly new_tokens tokens per sequence, each read back",
            "kv_cache": {"dynamic": "model.new_cache(batch, max_len, 'dynamic'): grown by "
                                    "concatenation",
                         "static": "model.new_cache(batch, max_len, 'static'): allocated "
                                   "once, written in place",
                         "off": "no cache: the whole sequence recomputed every token"}.get(
                             str(kind), kind)}
    chosen = config.get("attention", "auto")
    if chosen != "auto":
        out["attention"] = attention.get(str(chosen), chosen)
    quant = config.get("weight_quant", "none")
    if quant != "none" and mode != "train":
        out["weight_quant"] = weight_quant.get(str(quant), quant)
    if mode == "train" and config.get("checkpointing", "off") != "off":
        out["checkpointing"] = checkpointing
    return out or None


def data_parallel(config: Mapping[str, Any], mode: str, *, launch: str, train: str,
                  **extra: str) -> dict[str, Any] | None:
    """A data-parallel configuration as a framework runs it: ``launch`` (how its
    processes start), ``train`` (what averages the gradients) and the framework's
    ``extra`` facts; ``None`` for one replica. Inference replicas are independent."""
    replicas = int(config.get("data_parallel", 1) or 1)
    if replicas <= 1:
        return None
    return {"replicas": replicas,
            "per_replica_batch": int(config.get("batch_size", 64)) // replicas,
            "launch": launch, **extra,
            "train": train if mode == "train" else None,
            "infer": None if mode == "train" else
            "independent replicas, one shard of each batch each"}
