"""The MindSpore backend through real worker processes (a few seconds per trial).

Each trial is a fresh ``python -m autotune.launch._worker`` process running MindSpore on this
CPU: nothing is faked. The fp16 path, which ``capabilities()`` declares unsupported on CPUs
without native fp16, is exercised directly in a subprocess of its own (a failed AMP call
poisons a MindSpore process, research/frameworks_on_cpu.md).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from autotune.backends._pruning import dense_flops, dense_param_count
from autotune.config import TrialConfig
from autotune.launch import ProcessLauncher, WorkerOutcome
from autotune.space import parse_space
from autotune.workloads import get_workload

# find_spec, not importorskip: importing MindSpore here would cost seconds and its import
# warnings would fail this suite (filterwarnings = error); only workers import it.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("mindspore") is None,
                                 reason="mindspore is not installed")]

FAST_BUDGET: dict[str, Any] = {"trial_seconds": 60, "window_max_s": 1, "warmup_max_s": 1,
                               "train_epochs": 1}
#: Unpruned 64 -> 1000 -> 1000 -> 1000 -> 10, as torch counts it.
TORCH_MLP_PARAMS = 2077010


def _run(mode: str, workload: str = "digits_mlp", budget: dict[str, Any] | None = None,
         **params: Any) -> WorkerOutcome:
    space = parse_space({"workload": workload, "mode": mode,
                         "objectives": {"throughput_sps": "maximize"},
                         "budget": {**FAST_BUDGET, **(budget or {})}})
    knobs = {"backend": "mindspore", "execution": "graph", "batch_size": 64, "threads": 1,
             **params}
    return ProcessLauncher().run(TrialConfig.from_params(space, knobs))


def _ok(outcome: WorkerOutcome) -> dict[str, Any]:
    assert outcome.status == "ok", (outcome.failure_kind, outcome.reason, outcome.traceback)
    result = outcome.result
    assert result["step_times_s"] and all(t > 0 for t in result["step_times_s"])
    assert result["threads"] == 1
    assert result["device_peak_memory_bytes"] is None  # CPU: MindSpore reports 0
    return result


@pytest.mark.parametrize(("execution", "mode_name"),
                         [("graph", "GRAPH_MODE"), ("eager", "PYNATIVE_MODE")])
def test_train_fp32_learns(execution: str, mode_name: str) -> None:
    result = _ok(_run("train", execution=execution, optimizer="adam", learning_rate=1e-3))
    model = result["model"]
    assert model["param_count"] == TORCH_MLP_PARAMS
    assert model["flops_per_sample"] == dense_flops((64, 1000, 1000, 1000, 10), "train")
    assert model["execution"] == execution and model["sparsity"] == 0.0
    assert result["versions"]["mode"] == mode_name
    assert result["versions"]["mindspore"].startswith("2.")
    # One epoch of real digits: well above chance (0.1).
    assert result["accuracy"] is not None and result["accuracy"] >= 0.8


def test_infer_fp32_graph_on_mlp_matches_torch_param_count() -> None:
    result = _ok(_run("infer", workload="mlp", batch_size=64))
    model = result["model"]
    assert model["param_count"] == TORCH_MLP_PARAMS
    assert model["flops_per_sample"] == dense_flops((64, 1000, 1000, 1000, 10), "infer")
    assert model["base_model"] in ("trained", "cached")
    assert result["samples"] == 64 * len(result["step_times_s"])
    assert 0.2 < result["accuracy"] <= 1.0  # 10 classes from a teacher net, 1 epoch


def test_unstructured_pruning_sparsity_and_training() -> None:
    result = _ok(_run("train", execution="eager", pruning_ratio=0.5, optimizer="adamw"))
    assert result["model"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result["model"]["param_count"] == TORCH_MLP_PARAMS  # zeros are still parameters
    assert result["accuracy"] >= 0.5


def test_structured_pruning_builds_smaller_model() -> None:
    # Train mode: the pruned model is built from pruned initial weights (infer mode prunes
    # the trained base model with the same code, after the recipe the mlp test covers).
    mode = "train"
    result = _ok(_run(mode, pruning_ratio=0.7, pruning_structure="structured"))
    widths = get_workload("digits_mlp").widths_after("structured", 0.7)
    model = result["model"]
    assert model["widths"] == list(widths) == [64, 300, 300, 300, 10]
    assert model["param_count"] == dense_param_count(widths)
    assert model["flops_per_sample"] == dense_flops(widths, mode)
    assert model["sparsity"] == 0.0
    assert result["accuracy"] >= 0.5  # the smaller model still learns


def test_diverging_sgd_is_nan_loss() -> None:
    outcome = _run("train", optimizer="sgd", learning_rate=1000.0)
    assert outcome.status == "infeasible", (outcome.reason, outcome.traceback)
    assert outcome.failure_kind == "nan_loss"
    assert "learning_rate=1000" in outcome.reason


def test_tiny_memory_budget_is_oom_not_a_crash() -> None:
    # Below what MindSpore's runtime needs to start it would die in native threads
    # (SIGABRT/SIGSEGV); the backend reports out-of-memory before the first op instead.
    outcome = _run("train", workload="mlp", batch_size=8192, budget={"memory_mb": 16})
    assert outcome.status == "infeasible", (outcome.reason, outcome.traceback)
    assert outcome.failure_kind == "oom"


def test_batch_too_large_for_budget_is_oom_from_the_pool() -> None:
    # Enough room to start, not for 8192-sample activations: MindSpore's own pool fails
    # ("Memory isn't enough and alloc failed") and that is mapped to oom.
    outcome = _run("train", workload="mlp", batch_size=8192, budget={"memory_mb": 900})
    assert outcome.status == "infeasible", (outcome.reason, outcome.traceback)
    assert outcome.failure_kind == "oom"
    assert "runtime needs about" not in outcome.reason  # not the up-front check


def test_bf16_on_cpu_is_unsupported() -> None:
    outcome = _run("train", precision="bf16")
    assert outcome.status == "infeasible"
    assert outcome.failure_kind == "unsupported"
    assert "bf16" in outcome.reason


_FP16_SCRIPT = textwrap.dedent("""
    import json, sys
    from autotune.backends._mindspore import MindSporeBackend
    from autotune.config import TrialConfig
    from autotune.space import parse_space
    from autotune.workloads import get_workload

    mode, execution = sys.argv[1], sys.argv[2]
    space = parse_space({"workload": "digits_mlp", "mode": mode,
                         "objectives": {"throughput_sps": "maximize"},
                         "budget": {"train_epochs": 1}})
    config = TrialConfig.from_params(space, {
        "backend": "mindspore", "execution": execution, "precision": "fp16",
        "batch_size": 64, "threads": 1, "pruning_ratio": 0.5})
    workload = get_workload("digits_mlp")
    backend = MindSporeBackend()
    backend.set_threads(1)
    info = backend.setup(config, workload, workload.load_data())
    for _ in range(30):
        backend.step()
        backend.synchronize()
    weights, _ = backend._weights()
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    print(json.dumps({"info": info, "dtype": backend.compute_dtype(),
                      "accuracy": backend.evaluate(), "zeros": zeros,
                      "loss": backend.last_loss}))
""")


@pytest.mark.parametrize(("mode", "execution"), [("train", "graph"), ("infer", "eager")])
def test_fp16_amp_path_runs(mode: str, execution: str) -> None:
    """fp16 is declared unsupported on this CPU, so no trial reaches it; run it directly."""
    proc = subprocess.run([sys.executable, "-c", _FP16_SCRIPT, mode, execution],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float16"
    # Masks hold through fp16 training; fp16 weights may flush a few more tiny ones to 0.
    assert out["zeros"] == pytest.approx(0.5, abs=0.01)
    assert out["info"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert out["accuracy"] >= 0.5
    if mode == "train":
        assert 0 < out["loss"] < 2.3  # finite and below chance level (ln 10)
