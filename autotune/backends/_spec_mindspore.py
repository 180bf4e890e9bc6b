"""The MindSpore backend's spec: device kinds, capabilities, launch spelling (no MindSpore
import).

Capability limits come from research/frameworks_on_cpu.md; the spelling mirrors
:mod:`autotune.backends._mindspore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotune.backends._base import Capabilities
from autotune.backends._spec import ALL_MODES, BackendSpec, native_precisions
from autotune.backends._spelling import data_parallel as spell_data_parallel
from autotune.backends._spelling import env_threads, llm, optimizer, pruning

EXECUTIONS = frozenset({"eager", "graph"})


SDPA_REASON = ("MindSpore's fused attention (ops.flash_attention_score) runs on Ascend "
               "only, and is not wired here")
WEIGHT_QUANT_REASON = ("MindSpore's weight quantisation needs the separate MindSpore Golden "
                       "Stick package")
GENERATE_GRAPH_REASON = ("MindSpore generates in PyNative (execution: eager): a generation "
                         "loop with a growing cache is Python control flow, and GRAPH_MODE "
                         "would compile a graph per sequence length")


def knob_rule(kind: str, mode: str, knobs: Mapping[str, Any]) -> str | None:
    """The language-model knobs MindSpore cannot run."""
    if knobs.get("memory_format", "contiguous") == "channels_last":
        return ("memory_format 'channels_last': MindSpore's Conv2d runs NCHW "
                "(data_format NHWC is for GPU only) and has no channels-last tensor layout; "
                "use contiguous")
    if knobs.get("weight_quant", "none") != "none":
        return f"weight_quant {knobs['weight_quant']!r}: {WEIGHT_QUANT_REASON}"
    if knobs.get("attention") == "sdpa":
        return f"attention 'sdpa': {SDPA_REASON}"
    if mode == "generate" and knobs.get("execution") == "graph":
        return GENERATE_GRAPH_REASON
    return None


def capabilities(kind: str) -> Capabilities:
    """MindSpore on a cpu, cuda or npu device."""
    precisions, reasons = native_precisions(kind)
    if kind == "cpu":
        precisions.discard("bf16")
        reasons["bf16"] = "MindSpore has no bf16 CPU kernels (MatMul, ReLU)"
    reasons["int8"] = "MindSpore has no int8 inference path on this install"
    reasons["execution:xla"] = "mindspore has no xla execution mode; use eager or graph"
    precisions.discard("int8")
    return Capabilities(precisions, ALL_MODES, frozenset(), reasons, executions=EXECUTIONS)


_MS_TARGETS = {"cpu": "CPU", "cuda": "GPU", "npu": "Ascend"}


def launch(config: Mapping[str, Any], mode: str, n: int | None) -> dict[str, Any]:
    """The knobs as MindSpore spells them (set_context mode, AMP "O2", nn optimizers)."""
    precision = config.get("precision", "fp32")
    device = str(config.get("device", "cpu"))
    kind, _, index = device.partition(":")
    target = _MS_TARGETS.get(kind, kind)
    graph = config.get("execution") == "graph"
    ms_dtype = {"fp32": "mindspore.float32", "bf16": "mindspore.bfloat16",
                "fp16": "mindspore.float16"}.get(precision, precision)
    out: dict[str, Any] = {
        "device": f"mindspore.set_device({target!r})" if kind == "cpu"
        else f"mindspore.set_device({target!r}, {int(index or 0)})",
        "dtype": ms_dtype,
        "context": "mindspore.set_context(mode=mindspore.GRAPH_MODE)" if graph
        else "mindspore.set_context(mode=mindspore.PYNATIVE_MODE)",
        "execution": "GRAPH_MODE" + (" + mindspore.jit(train_step)" if mode == "train"
                                     else "") if graph else "PYNATIVE_MODE",
    }
    if precision in ("fp16", "bf16"):
        # autotune/backends/_mindspore.py: AMP "O2" (fp32 output); inference converts the
        # weights too, training keeps fp32 masters with a dynamic loss scaler.
        out["amp"] = {"call": f"mindspore.amp.auto_mixed_precision(net, 'O2', "
                              f"dtype={ms_dtype})", "level": "O2",
                      "weights": f"converted to {ms_dtype}" if mode == "infer"
                      else "float32 masters",
                      "loss_scaler": "mindspore.amp.DynamicLossScaler(2**16, 2, 2000)"
                      if mode == "train" else None}
    else:
        out["amp"] = None
    opt = optimizer(
        config, mode, {"sgd": "mindspore.nn.SGD", "adam": "mindspore.nn.Adam",
                       "adamw": "mindspore.nn.Adam"},
        {"sgd": {"momentum": 0.9}}, "learning_rate")
    if opt is not None and config.get("optimizer") == "adamw":
        # The backend's AdamW: nn.Adam plus torch's decoupled weight decay, not
        # nn.AdamWeightDecay (no bias correction: not the update torch's AdamW makes).
        opt["decoupled_weight_decay"] = {
            "weight_decay": 0.01,
            "how": "w *= 1 - learning_rate * 0.01 before each Adam update "
                   "(as torch.optim.AdamW)"}
    out["optimizer"] = opt
    out["threads"] = {"mindspore.device_context.cpu.op_tuning.threads_num": n,
                      **env_threads(n)}
    out["pruning"] = pruning(
        config, mode, f"autotune.backends._pruning.unstructured_masks(weights, "
                      f"{config.get('pruning_ratio')})")
    out["llm"] = llm(config, mode, attention={"math": "matmul + masked softmax"},
                     weight_quant={}, checkpointing="block.recompute() per block (Cell.recompute)")
    replicas = int(config.get("data_parallel", 1) or 1)
    spelled = spell_data_parallel(
        config, mode, launch=f"msrun --worker_num={replicas} --local_worker_num={replicas} "
                             "(a scheduler and one worker per replica)",
        train="set_auto_parallel_context(parallel_mode=ParallelMode.DATA_PARALLEL, "
              "gradients_mean=True); nn.DistributedGradReducer(params) in the step")
    if spelled is not None:
        out["data_parallel"] = spelled
    return out


#: MindSpore PyNative is 5x slower than graph mode (research/frameworks_on_cpu.md).
SPEC = BackendSpec(
    name="mindspore", target="autotune.backends._mindspore:MindSporeBackend",
    distribution="mindspore", extra="mindspore",
    device_kinds=("cpu", "cuda", "npu"), best_execution="graph",
    best_execution_by_mode={"generate": "eager"}, executions=EXECUTIONS,
    precisions=frozenset({"fp32", "bf16", "fp16"}),
    unsupported_kinds={"tpu": "MindSpore has no TPU support (use backend tensorflow)"},
    capability_rule=capabilities, knob_rule=knob_rule, launch=launch,
    probe="autotune.backends._probe:probe_mindspore",
    data_parallel={k: "DATA_PARALLEL mode over its dynamic cluster (scheduler + workers)"
                   for k in ("cpu", "cuda", "npu")})
