"""Runs one conformance check against one backend in this (fresh) process and prints JSON.

``python -m autotune.testing._conformance_runner BACKEND CHECK [JSON-ARGS]``. Each check
runs in its own process because frameworks must not share one, and because some checks
(out-of-memory) leave the process capped.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from autotune.backends import load_backend
from autotune.config import TrialConfig
from autotune.exceptions import OutOfMemoryError, TrialError
from autotune.profiling.loop import run_profile
from autotune.profiling.power import NullMeter
from autotune.space import parse_space
from autotune.workloads import WorkloadRef, load_model_spec

TINY = "autotune.testing.workloads:tiny"
#: The wide variant of the tiny MLP (64 -> 1000 -> 10) for size, memory and leak checks.
WIDE = {"hidden": 1000}


def _config(backend: str, mode: str, workload: str = TINY, **knobs: Any) -> TrialConfig:
    budget = {"trial_seconds": 120, "warmup_max_s": 0.5, "window_min_s": 0.1,
              "window_max_s": 0.3, "window_min_steps": 5, "train_epochs": 1}
    budget.update(knobs.pop("budget", {}))
    kwargs = knobs.pop("kwargs", {})
    space = parse_space({"workload": {"factory": workload, "kwargs": kwargs}, "mode": mode,
                         "objectives": {"throughput_sps": "maximize"}, "budget": budget})
    params = {"backend": "torch", "threads": 1, "batch_size": 32, **knobs}
    config = TrialConfig.from_params(space, params)
    from dataclasses import replace

    from autotune.backends import resolve_execution

    execution = resolve_execution(backend, config.execution) if backend in (
        "torch", "tensorflow", "mindspore") else "eager"
    return replace(config, backend=backend, execution=execution)


def _setup(backend_name: str, config: TrialConfig,
           backend: Any = None) -> tuple[Any, dict[str, Any]]:
    """Configure, build the factory's model and set up, as the worker does."""
    if backend is None:
        backend = load_backend(backend_name)
        backend.set_threads(1)
    backend.configure(config)
    spec = load_model_spec(WorkloadRef(config.workload, config.workload_kwargs),
                           backend.framework or backend_name)
    info = backend.setup(config, spec)
    return backend, info


def check_lifecycle(backend: str) -> dict[str, Any]:
    """setup -> step x5 -> evaluate -> teardown, in both modes."""
    out = {}
    for mode in ("train", "infer"):
        b, info = _setup(backend, _config(backend, mode))
        samples = [b.step() for _ in range(5)]
        b.synchronize()
        accuracy = b.evaluate()
        b.teardown()
        out[mode] = {"samples": samples, "accuracy": accuracy, "info": info}
    return out


class _SyncSpy:
    """Wraps a backend and records the order of step/synchronize/clock reads."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.events: list[str] = []
        self.steps_per_epoch = backend.steps_per_epoch

    def between_steps(self) -> None:
        self.backend.between_steps()

    def step(self) -> int:
        self.events.append("step")
        n: int = self.backend.step()
        return n

    def synchronize(self) -> None:
        self.events.append("sync")
        self.backend.synchronize()

    def evaluate(self) -> float | None:
        self.events.append("eval")
        value: float | None = self.backend.evaluate()
        return value


def check_sync(backend: str) -> dict[str, Any]:
    """Drive the real profiler and record whether every step is followed by a sync."""
    config = _config(backend, "infer")
    b, _ = _setup(backend, config)
    spy = _SyncSpy(b)
    result = run_profile(spy, config, NullMeter(), time.perf_counter() + 60)  # type: ignore[arg-type]
    b.teardown()
    ev = spy.events
    unsynced = sum(1 for i, e in enumerate(ev) if e == "step" and
                   (i + 1 >= len(ev) or ev[i + 1] != "sync"))
    return {"steps": ev.count("step"), "syncs": ev.count("sync"),
            "steps_not_followed_by_sync": unsynced,
            "measured": len(result["step_times_s"])}


def check_size(backend: str) -> dict[str, Any]:
    """Param count and forward FLOPs (infer mode): twice the same config, and after
    structured pruning, with the widths the shared pruning rule predicts."""
    from autotune.backends._pruning import structured_width

    runs = []
    for structure, ratio in (("unstructured", 0.0), ("unstructured", 0.0),
                             ("structured", 0.5)):
        b, info = _setup(backend, _config(backend, "infer", pruning_structure=structure,
                                          pruning_ratio=ratio, kwargs=WIDE))
        b.teardown()
        hidden = structured_width(WIDE["hidden"], ratio) if structure == "structured" else \
            WIDE["hidden"]
        runs.append({"param_count": info["param_count"],
                     "flops_per_sample": info["flops_per_sample"],
                     "flops_method": info.get("flops_method"),
                     "expected_widths": [64, hidden, 10]})
    return {"runs": runs}


def check_pruning(backend: str, ratio: float = 0.5) -> dict[str, Any]:
    """Zero fraction of the weight matrices after unstructured pruning, both modes."""
    out = {}
    for mode in ("train", "infer"):
        b, info = _setup(backend, _config(backend, mode, pruning_ratio=ratio, kwargs=WIDE))
        if mode == "train":
            for _ in range(3):  # pruned weights must stay zero through optimizer steps
                b.step()
        weights = b.weight_arrays()
        zeros = sum(int((w == 0).sum()) for w in weights)
        out[mode] = {"zero_fraction": zeros / sum(w.size for w in weights),
                     "reported": info.get("sparsity")}
        b.teardown()
    return out


def check_precision(backend: str, precisions: dict[str, str]) -> dict[str, Any]:
    """compute_dtype() for each precision (int8 in infer mode, others in train mode)."""
    out = {}
    for precision in precisions:
        mode = "infer" if precision == "int8" else "train"
        try:
            b, _ = _setup(backend, _config(backend, mode, precision=precision))
            b.step()
            out[precision] = b.compute_dtype()
            b.teardown()
        except TrialError as e:
            out[precision] = f"error: {type(e).__name__}: {e}"
    return out


def check_oom(backend: str) -> dict[str, Any]:
    """A 16 MB allocation cap and batch 8192 on a 64-1000-10 MLP (32 MB of activations in
    the first layer alone) must raise OutOfMemoryError."""
    from autotune.launch._worker import _allocation_failure, _cap_memory

    b = load_backend(backend)
    b.set_threads(1)
    # The budget is in the config too, as in a real trial (a backend may check it first).
    config = _config(backend, "train", batch_size=8192, budget={"memory_mb": 16},
                     kwargs=WIDE)
    try:
        b.configure(config)
        spec = load_model_spec(WorkloadRef(config.workload, config.workload_kwargs),
                               b.framework or backend)
        _cap_memory(16)  # after the factory, as in the worker
        b.setup(config, spec)
        for _ in range(3):
            b.step()
    except OutOfMemoryError as e:
        return {"raised": "OutOfMemoryError", "message": str(e)[:300]}
    except SystemError as e:
        # torch's C bindings sometimes fail an allocation under the cap without setting
        # MemoryError; the worker reads that as out of memory (_allocation_failure), and
        # so does this check (asked while the cap is still on)
        oom = _allocation_failure(e)
        return {"raised": type(oom or e).__name__, "message": str(oom or e)[:300]}
    except BaseException as e:
        return {"raised": type(e).__name__, "message": str(e)[:300]}
    return {"raised": None}


def check_teardown(backend: str, cycles: int = 4) -> dict[str, Any]:
    """Resident memory after repeated setup/step/teardown cycles (a leak grows it)."""
    proc = psutil.Process()
    rss = []
    for _ in range(cycles):
        b, info = _setup(backend, _config(backend, "train", kwargs=WIDE))
        for _ in range(3):
            b.step()
        b.teardown()
        del b
        gc.collect()
        rss.append(proc.memory_info().rss)
    return {"rss": rss, "model_bytes": info["param_count"] * 4}


CHECKS: dict[str, Callable[..., dict[str, Any]]] = {
    "lifecycle": check_lifecycle, "sync": check_sync, "size": check_size,
    "pruning": check_pruning, "precision": check_precision, "oom": check_oom,
    "teardown": check_teardown,
}


def check_batch(backend: str, checks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Several checks in this process, in order; a check that raises is reported (its
    traceback) and the next one runs."""
    import traceback

    results: dict[str, Any] = {}
    for name, kwargs in checks.items():
        try:
            results[name] = CHECKS[name](backend, **kwargs)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
    return results


def main(argv: list[str]) -> None:
    """Entry point: BACKEND CHECK [JSON kwargs] (CHECK ``batch``: ``{"checks": {...}}``)."""
    backend, check = argv[0], argv[1]
    kwargs = json.loads(argv[2]) if len(argv) > 2 else {}
    result = check_batch(backend, **kwargs) if check == "batch" else \
        CHECKS[check](backend, **kwargs)
    print("AUTOTUNE-CONFORMANCE " + json.dumps(result, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
