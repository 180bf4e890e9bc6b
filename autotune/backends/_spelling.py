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
