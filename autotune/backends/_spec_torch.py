"""The torch backend's spec: device kinds, capabilities, launch spelling (no torch import).

Capability limits come from research/frameworks_on_cpu.md; the spelling mirrors
:mod:`autotune.backends._torch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotune.backends._base import Capabilities
from autotune.backends._spec import ALL_MODES, BackendSpec, native_precisions
from autotune.backends._spelling import data_parallel as spell_data_parallel
from autotune.backends._spelling import env_threads, llm, optimizer, pruning

EXECUTIONS = frozenset({"eager", "graph"})


INT4_CPU_REASON = ("weight_quant 'int4': torchao 0.18's int4 weight-only kernels run on CUDA "
                   "(tinygemm) only; its CPU layouts need the separate mslk package")


def knob_rule(kind: str, mode: str, knobs: Mapping[str, Any]) -> str | None:
    """The language-model knobs torch cannot run on ``kind``."""
    quant = knobs.get("weight_quant", "none")
    if quant != "none" and knobs.get("precision") == "int8":
        return "weight_quant and precision int8 both quantise the weights; use one"
    if quant == "int4" and kind != "cuda":
        return INT4_CPU_REASON
    if quant == "int4" and knobs.get("precision") != "bf16":
        return ("weight_quant 'int4': torchao's tinygemm int4 layout needs bf16 activations "
                "(precision: bf16)")
    return None


def capabilities(kind: str) -> Capabilities:
    """torch on a cpu or cuda device."""
    precisions, reasons = native_precisions(kind)
    if kind == "cpu":
        # int8: dynamic quantisation of Linear layers, a CPU inference path
        precisions.add("int8")
    else:
        reasons["int8"] = "torch dynamic int8 quantisation runs on CPU only"
    reasons["execution:xla"] = "torch has no xla execution mode here; use eager or graph"
    return Capabilities(precisions, ALL_MODES, {"infer", "generate"}, reasons,
                        executions=EXECUTIONS)


def launch(config: Mapping[str, Any], mode: str, n: int | None) -> dict[str, Any]:
    """The knobs as torch spells them (autocast, fused optimizers, torch.compile ...)."""
    precision = config.get("precision", "fp32")
    dtype = {"fp32": "torch.float32", "bf16": "torch.bfloat16", "fp16": "torch.float16",
             "int8": "torch.qint8"}[precision]
    device = str(config.get("device", "cpu"))
    device_type = device.split(":")[0]
    low = precision in ("bf16", "fp16")
    out: dict[str, Any] = {"device": device, "dtype": dtype}
    if mode == "train":
        # autotune/backends/_torch.py: fp32 weights, autocast to the low dtype, a gradient
        # scaler for fp16.
        out["autocast"] = {"device_type": device_type, "dtype": dtype} if low else None
        out["grad_scaler"] = f"torch.amp.GradScaler({device_type!r})" \
            if precision == "fp16" else None
    else:
        # Inference converts the weights (faster than autocast) and runs in inference_mode.
        out["autocast"] = None
        out["convert"] = f"model.to({dtype})" if low else None
        out["inference"] = "torch.inference_mode()"
        out["quantization"] = (
            "torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, "
            "dtype=torch.qint8)" if precision == "int8" else None)
        if precision == "int8":
            out["quantized_engine"] = "x86"
    out["optimizer"] = optimizer(
        config, mode, {"sgd": "torch.optim.SGD", "adam": "torch.optim.Adam",
                       "adamw": "torch.optim.AdamW"},
        {"sgd": {"momentum": 0.9, "fused": True}, "adam": {"fused": True},
         "adamw": {"fused": True}}, "lr")
    if mode == "train":
        out["zero_grad"] = "optimizer.zero_grad(set_to_none=True)"
    out["threads"] = {"torch.set_num_threads": n, **env_threads(n)}
    out["execution"] = "torch.compile" if config.get("execution") == "graph" else "eager"
    out["pruning"] = pruning(
        config, mode, "torch.nn.utils.prune.global_unstructured([(m, 'weight') for m in "
        "linear_layers], pruning_method=torch.nn.utils.prune.L1Unstructured, "
        f"amount={config.get('pruning_ratio')})"
        + ("; then torch.nn.utils.prune.remove(m, 'weight')" if mode == "infer" else ""))
    out["llm"] = llm(
        config, mode,
        attention={"math": "matmul + masked softmax (transformers: eager)",
                   "sdpa": "torch.nn.functional.scaled_dot_product_attention"},
        weight_quant={"int8": "torchao.quantization.quantize_(model, Int8WeightOnlyConfig())",
                      "int4": "torchao.quantization.quantize_(model, Int4WeightOnlyConfig("
                              "group_size=32, int4_packing_format='tile_packed_to_4d'))"},
        checkpointing="torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) per "
                      "block")
    replicas = int(config.get("data_parallel", 1) or 1)
    spelled = spell_data_parallel(
        config, mode, launch=f"torchrun --nproc-per-node={replicas}",
        train="torch.nn.parallel.DistributedDataParallel(model)",
        process_group="gloo" if device_type == "cpu" else "nccl")
    if spelled is not None:
        out["data_parallel"] = spelled
    if config.get("memory_format") == "channels_last":
        out["memory_format"] = ("model.to(memory_format=torch.channels_last); "
                                "x.contiguous(memory_format=torch.channels_last)")
    return out


#: torch.compile does not pay for MLPs at these sizes (research/frameworks_on_cpu.md).
SPEC = BackendSpec(
    name="torch", target="autotune.backends._torch:TorchBackend", distribution="torch",
    extra="torch", threads_in_place=True,
    # Discovery also lists torch_npu's NPUs and torch_xla's TPUs: refused with a reason.
    device_kinds=("cpu", "cuda"), best_execution="eager", executions=EXECUTIONS,
    precisions=frozenset({"fp32", "bf16", "fp16", "int8"}),
    int8_modes=frozenset({"infer", "generate"}),
    unsupported_kinds={
        "npu": ("the torch backend runs trials on cpu and cuda only: `autotune devices` lists "
                "torch_npu's Ascend NPUs, but placement, synchronisation and memory statistics "
                "through torch.npu are not implemented (use backend mindspore on npu)"),
        "tpu": ("the torch backend runs trials on cpu and cuda only: `autotune devices` lists "
                "torch_xla's TPUs, but the backend has no XLA device path (lazy tensors, "
                "mark_step) (use backend tensorflow on tpu)"),
    },
    capability_rule=capabilities, knob_rule=knob_rule, launch=launch,
    probe="autotune.backends._probe:probe_torch",
    # torch.distributed's backend per device kind, as its experts pick it
    data_parallel={"cpu": "DistributedDataParallel over gloo",
                   "cuda": "DistributedDataParallel over nccl"},
    no_data_parallel=("the torch backend runs data-parallel trials on cpu (gloo) and cuda "
                      "(nccl) only"))
