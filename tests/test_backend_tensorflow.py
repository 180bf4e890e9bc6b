"""The TensorFlow backend, run for real: short trials in worker processes (ProcessLauncher).

Nothing is faked: each trial imports TensorFlow in a fresh worker, builds the Keras model,
trains or converts it and is measured by the profiler. No timing is asserted (the machine
is shared and 2-core); what is asserted is what the trial *is*: its model, dtype, runtime,
sparsity, accuracy and failure kind.
"""

from __future__ import annotations

import importlib.util
import json
import math
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

# find_spec, not importorskip: importing TensorFlow here would cost seconds for nothing.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                 reason="the tensorflow extra is not installed")]

BUDGET = {"trial_seconds": 60, "warmup_max_s": 1, "window_min_s": 0.3, "window_max_s": 1,
          "window_min_steps": 10, "train_epochs": 1}
#: 64 -> 1000 -> 1000 -> 1000 -> 10, as torch.nn counts it
TORCH_MLP_PARAMS = 2077010


def _trial(workload: str, mode: str, budget: dict[str, Any] | None = None,
           **params: Any) -> WorkerOutcome:
    space = parse_space({"workload": workload, "mode": mode,
                         "objectives": {"throughput_sps": "maximize"},
                         "budget": {**BUDGET, **(budget or {})}})
    config = TrialConfig.from_params(
        space, {"backend": "tensorflow", "threads": 2, "batch_size": 64, **params})
    return ProcessLauncher().run(config)


def _ok(outcome: WorkerOutcome) -> dict[str, Any]:
    assert outcome.status == "ok", (outcome.failure_kind, outcome.reason,
                                    outcome.traceback[-3000:])
    return outcome.result


@pytest.fixture(scope="module")
def train_accuracy() -> dict[str, float]:
    """Accuracy per execution mode, filled by the train test (same seed in each)."""
    return {}


@pytest.mark.parametrize("execution", ["graph", "eager", "xla"])
def test_train_fp32_in_each_execution_mode(execution: str,
                                           train_accuracy: dict[str, float]) -> None:
    result = _ok(_trial("digits_mlp", "train", execution=execution))
    model = result["model"]
    assert model["execution"] == execution and model["runtime"] == "tensorflow"
    assert model["compute_dtype"] == "float32"
    assert model["param_count"] == dense_param_count((64, 1000, 1000, 1000, 10))
    assert result["versions"]["tensorflow"].startswith("2.")
    assert result["versions"]["keras"].startswith("3.")
    assert result["threads"] == 2
    assert result["train_steps"] >= result["budget_steps"] > 0
    assert all(t > 0 for t in result["step_times_s"])
    # one epoch of Adam on real digits learns them
    assert 0.7 <= result["accuracy"] <= 1.0
    train_accuracy[execution] = result["accuracy"]
    # Same seed, same data order, same initial weights: the execution mode changes speed,
    # not the training (XLA may fuse float arithmetic differently, hence a tolerance).
    assert max(train_accuracy.values()) - min(train_accuracy.values()) <= 0.03


def test_infer_fp32_and_int8_tflite() -> None:
    fp32 = _ok(_trial("mlp", "infer", execution="graph"))
    assert fp32["model"]["param_count"] == TORCH_MLP_PARAMS  # the same model as torch's
    assert fp32["model"]["flops_per_sample"] == dense_flops((64, 1000, 1000, 1000, 10),
                                                            "infer")
    assert fp32["model"]["base_model"] in ("trained", "cached")
    assert fp32["model"]["compute_dtype"] == "float32"
    assert fp32["versions"]["runtime"] == "tensorflow"
    assert fp32["accuracy"] > 0.5

    int8 = _ok(_trial("mlp", "infer", precision="int8"))
    assert int8["model"]["base_model"] == "cached"  # the fp32 trial's model, from the cache
    assert int8["model"]["runtime"] == "tflite" and int8["versions"]["runtime"] == "tflite"
    assert int8["model"]["compute_dtype"] == "int8"
    assert int8["model"]["param_count"] == TORCH_MLP_PARAMS
    # dynamic-range int8 of the same trained model classifies almost identically
    assert int8["accuracy"] == pytest.approx(fp32["accuracy"], abs=0.02)


def test_unstructured_pruning_zeroes_the_ratio() -> None:
    result = _ok(_trial("mlp", "infer", pruning_ratio=0.6))
    model = result["model"]
    assert model["sparsity"] == pytest.approx(0.6, abs=0.01)
    # unstructured pruning keeps the dense shapes
    assert model["param_count"] == TORCH_MLP_PARAMS


def test_structured_pruning_builds_the_smaller_model() -> None:
    workload = get_workload("mlp")
    widths = workload.widths_after("structured", 0.5)
    assert widths == (64, 500, 500, 500, 10)
    result = _ok(_trial("mlp", "infer", pruning_ratio=0.5, pruning_structure="structured"))
    model = result["model"]
    assert tuple(model["widths"]) == widths
    assert model["param_count"] == dense_param_count(widths)
    assert model["flops_per_sample"] == dense_flops(widths, "infer")
    assert model["sparsity"] < 0.01  # neurons removed, not weights zeroed
    assert result["accuracy"] > 0.3


def test_diverging_training_is_nan_loss() -> None:
    outcome = _trial("digits_mlp", "train", optimizer="sgd", learning_rate=1000.0)
    assert outcome.status == "infeasible" and outcome.failure_kind == "nan_loss", \
        (outcome.reason, outcome.traceback[-2000:])
    assert "optimizer=sgd" in outcome.reason


def test_batch_beyond_memory_cap_is_oom() -> None:
    # 8192 x 1000 float32 activations (32 MB each) cannot fit a 16 MB cap: TensorFlow's
    # allocator fails in the step and reports ResourceExhaustedError.
    outcome = _trial("mlp", "train", budget={"memory_mb": 16}, batch_size=8192)
    assert outcome.status == "infeasible" and outcome.failure_kind == "oom", \
        (outcome.reason, outcome.traceback[-2000:])
    assert "out of memory" in outcome.reason


_IN_PROCESS = textwrap.dedent("""
    import json
    from autotune.backends import load_backend
    from autotune.config import TrialConfig
    from autotune.space import parse_space
    from autotune.workloads import get_workload

    def config(mode, **params):
        space = parse_space({"workload": "digits_mlp", "mode": mode,
                             "objectives": {"throughput_sps": "maximize"},
                             "budget": {"train_epochs": 1}})
        return TrialConfig.from_params(space, {"backend": "tensorflow", "threads": 2,
                                               **params})

    backend = load_backend("tensorflow")
    backend.set_threads(2)
    workload = get_workload("digits_mlp")
    data = workload.load_data()
    cases = {
        "masks": config("train", optimizer="adamw", learning_rate=0.01, pruning_ratio=0.5),
        "train_bf16": config("train", precision="bf16", execution="graph"),
        "train_fp16": config("train", precision="fp16", execution="xla"),
        "infer_bf16": config("infer", precision="bf16", execution="graph"),
        "infer_fp16": config("infer", precision="fp16", execution="xla"),
        "fp16_graph": config("train", precision="fp16", execution="graph"),
    }
    out = {}
    for name, cfg in cases.items():
        try:
            backend.setup(cfg, workload, data)
        except Exception as e:
            out[name] = {"error": type(e).__name__}
            continue
        for _ in range(12):
            backend.step()
        kernels = [layer.kernel.numpy() for layer in backend._dense_layers()]
        out[name] = {
            "dtype": backend.compute_dtype(),
            "zeros": sum(int((k == 0).sum()) for k in kernels) / sum(k.size for k in kernels),
            "accuracy": backend.evaluate(),
            "loss": backend.last_loss,
        }
        backend.teardown()
    print(json.dumps(out))
""")


def test_precisions_and_pruning_masks_in_one_process() -> None:
    """What a worker result does not show: the dtype each precision really computes in
    (bf16/fp16 are unsupported on CPUs without native instructions, so only reachable
    directly), and pruned weights staying zero through training (AdamW's weight decay
    and momentum would move them back otherwise)."""
    proc = subprocess.run([sys.executable, "-c", _IN_PROCESS], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["masks"]["zeros"] == pytest.approx(0.5, abs=0.001)
    assert out["masks"]["dtype"] == "float32"
    assert out["train_bf16"]["dtype"] == "bfloat16"
    assert out["train_fp16"]["dtype"] == "float16"
    assert out["infer_bf16"]["dtype"] == "bfloat16"
    assert out["infer_fp16"]["dtype"] == "float16"
    for name in ("train_bf16", "train_fp16"):
        assert math.isfinite(out[name]["loss"]), name
    for name in ("train_bf16", "train_fp16", "infer_bf16", "infer_fp16"):
        assert out[name]["accuracy"] > 0.5, name
    # fp16 without XLA has no usable CPU kernels: refused like capabilities() does
    assert out["fp16_graph"] == {"error": "UnsupportedConfigError"}


_XLA_COMPILE = textwrap.dedent("""
    import json
    import resource
    from autotune.backends import load_backend
    from autotune.config import TrialConfig
    from autotune.space import parse_space
    from autotune.workloads import get_workload

    backend = load_backend("tensorflow")
    backend.set_threads(2)
    workload = get_workload("digits_mlp")
    data = workload.load_data()
    out = {}
    for mode in ("train", "infer"):
        space = parse_space({"workload": "digits_mlp", "mode": mode,
                             "objectives": {"throughput_sps": "maximize"},
                             "budget": {"train_epochs": 1}})
        config = TrialConfig.from_params(space, {"backend": "tensorflow", "threads": 2,
                                                 "batch_size": 64, "execution": "xla"})
        backend.setup(config, workload, data)
        name = "_step_fn" if mode == "train" else "_forward"
        timed, evaluation = getattr(backend, name), backend._eval_fn
        traces = {"after_setup": timed.experimental_get_tracing_count(),
                  "eval_after_setup": evaluation.experimental_get_tracing_count()}
        # A memory cap like the worker's (generous: only whether it holds is recorded)
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        with open("/proc/self/status") as f:
            vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**32, hard))
        capped = []

        def recording(fn):
            def call(*args):
                capped.append(resource.getrlimit(resource.RLIMIT_AS)[0] != hard)
                return fn(*args)
            return call

        setattr(backend, name, recording(timed))
        backend.step()
        backend.synchronize()
        traces["after_first_step"] = timed.experimental_get_tracing_count()
        for _ in range(3):
            backend.step()
        traces["after_more_steps"] = timed.experimental_get_tracing_count()
        backend._eval_fn = recording(evaluation)
        accuracy = backend.evaluate()
        backend.evaluate()
        traces["eval_after_evaluate"] = evaluation.experimental_get_tracing_count()
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        chunks = len(capped) // 2 - 2  # evaluation calls per evaluate()
        out[mode] = {"traces": traces, "accuracy": accuracy,
                     "capped_steps": capped[:4],
                     "capped_evaluations": [capped[4], capped[4 + chunks]]}
        backend.teardown()
    print(json.dumps(out))
""")


def test_xla_compiles_on_the_first_step_not_in_the_model_build() -> None:
    """``execution: xla`` compiles where graph mode traces: the timed function on its first
    call (the profiler's first step, i.e. the compile phase), the evaluation on the first
    evaluation; nothing during setup (the model-build phase)."""
    proc = subprocess.run([sys.executable, "-c", _XLA_COMPILE], capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode in ("train", "infer"):
        assert out[mode]["traces"] == {"after_setup": 0, "eval_after_setup": 0,
                                       "after_first_step": 1, "after_more_steps": 1,
                                       "eval_after_evaluate": 1}, mode
        assert out[mode]["accuracy"] > 0.3, mode
        # The compiling calls run with the worker's memory cap lifted (under it LLVM's code
        # memory fails to map and XLA aborts the process), the ones after under the cap.
        assert out[mode]["capped_steps"] == [False, True, True, True], mode
        assert out[mode]["capped_evaluations"] == [False, True], mode


def test_xla_compile_time_is_in_the_first_step_phase_under_a_memory_cap() -> None:
    """In a worker under a memory cap, the trial succeeds and its compile phase, not its
    model build, holds the compile (measured here: build 0.2 s, first step 2.1 s).

    (With the compile under the cap this trial died of SIGABRT at 64 MB on the 2-vCPU
    EPYC; lifted, it ran at 48-256 MB. The exact edge moves with the machine's load, so
    the cap here is roomy and the lifting itself is checked in the test above.)"""
    result = _ok(_trial("digits_mlp", "train", budget={"memory_mb": 256}, execution="xla"))
    assert result["model"]["execution"] == "xla"
    assert result["first_step_s"] > result["setup_s"], (result["first_step_s"],
                                                        result["setup_s"])
    # the compile is a one-off: the measured steps are far shorter than the first
    assert max(result["step_times_s"]) < result["first_step_s"]
    assert 0.7 <= result["accuracy"] <= 1.0
