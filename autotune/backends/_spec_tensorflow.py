"""The TensorFlow backend's spec: device kinds, capabilities, launch spelling (no
TensorFlow import).

Capability limits come from research/frameworks_on_cpu.md; the spelling mirrors
:mod:`autotune.backends._tensorflow`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autotune.backends._base import Capabilities
from autotune.backends._spec import ALL_MODES, BackendSpec, native_precisions
from autotune.backends._spelling import data_parallel as spell_data_parallel
from autotune.backends._spelling import env_threads, llm, optimizer, pruning

EXECUTIONS = frozenset({"eager", "graph", "xla"})


SDPA_REASON = ("TensorFlow has no fused attention kernel on CPU (keras.ops."
               "dot_product_attention is composed of ordinary ops there); not wired for "
               "accelerators here")
WEIGHT_QUANT_REASON = ("TensorFlow's weight quantisation is TFLite's dynamic-range int8 "
                       "(precision: int8), which has no KV-cache path")
XLA_DYNAMIC_REASON = ("xla compiles one program per shape and a dynamic cache grows every "
                      "token; use kv_cache: static with xla")


def knob_rule(kind: str, mode: str, knobs: Mapping[str, Any]) -> str | None:
    """The language-model knobs TensorFlow cannot run."""
    if knobs.get("memory_format", "contiguous") == "channels_last":
        return ("memory_format 'channels_last': TensorFlow's convolutions already run "
                "channels-last (NHWC, Keras' default data_format), which is what "
                "memory_format contiguous gives here; use contiguous")
    if knobs.get("weight_quant", "none") != "none":
        return f"weight_quant {knobs['weight_quant']!r}: {WEIGHT_QUANT_REASON}"
    if knobs.get("attention") == "sdpa":
        return f"attention 'sdpa': {SDPA_REASON}"
    if mode == "generate" and knobs.get("execution") == "xla" and \
            knobs.get("kv_cache") == "dynamic":
        return XLA_DYNAMIC_REASON
    return None


def capabilities(kind: str) -> Capabilities:
    """TensorFlow on a cpu, cuda or tpu device."""
    precisions, reasons = native_precisions(kind)
    excluded: dict[tuple[str, str], str] = {}
    if kind == "cpu":
        precisions.add("int8")  # TFLite dynamic-range quantisation
        # TF's fp16 CPU kernels take ~1.2 s per MLP step without XLA (research).
        for ex in ("eager", "graph"):
            excluded[("fp16", ex)] = "TensorFlow fp16 on CPU is usable only with xla"
        # int8 runs on TFLite whatever the execution knob says: one measured variant
        for ex in ("eager", "xla"):
            excluded[("int8", ex)] = ("TensorFlow int8 runs on TFLite; execution has no "
                                      "effect (use graph or auto)")
    else:
        reasons["int8"] = "TensorFlow int8 (TFLite) runs on CPU only here"
    if kind == "tpu":
        precisions.discard("fp16")
        reasons["fp16"] = ("TPUs have no float16 arithmetic; their 16-bit type is "
                           "bfloat16 (use bf16)")
    return Capabilities(precisions, ALL_MODES, {"infer"}, reasons,
                        executions=EXECUTIONS, excluded=excluded)


_TF_DEVICES = {"cpu": "/CPU:0", "cuda": "/GPU:{}", "tpu": "/TPU:{}"}


def launch(config: Mapping[str, Any], mode: str, n: int | None) -> dict[str, Any]:
    """The knobs as TensorFlow spells them (Keras dtype policies, tf.function, TFLite)."""
    precision = config.get("precision", "fp32")
    device = str(config.get("device", "cpu"))
    kind, _, index = device.partition(":")
    execution = config.get("execution")
    out: dict[str, Any] = {"device": _TF_DEVICES.get(kind, device).format(index or 0)}
    if precision == "int8":
        # autotune/backends/_tensorflow.py: dynamic-range int8 through TFLite, whatever the
        # execution knob says.
        out["dtype"] = "int8"
        out["dtype_policy"] = None
        out["quantization"] = {
            "converter": "tf.lite.TFLiteConverter.from_keras_model(model)",
            "optimizations": ["tf.lite.Optimize.DEFAULT"],
            "runtime": "TFLite interpreter (dynamic-range int8)",
            "num_threads": n,
        }
        out["execution"] = "tflite"
    else:
        if mode == "train":  # mixed policies: float32 variables, 16-bit matmuls
            policy = {"fp32": "float32", "bf16": "mixed_bfloat16",
                      "fp16": "mixed_float16"}[precision]
        else:  # inference: layers (weights too) built in the low dtype
            policy = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
        out["dtype"] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
        out["dtype_policy"] = policy
        out["set_policy"] = f"tf.keras.mixed_precision.set_global_policy({policy!r})"
        out["quantization"] = None
        out["execution"] = {"eager": "eager", "graph": "tf.function",
                            "xla": "tf.function(jit_compile=True)"}.get(str(execution),
                                                                        str(execution))
    opt = optimizer(
        config, mode, {"sgd": "tf.keras.optimizers.SGD", "adam": "tf.keras.optimizers.Adam",
                       "adamw": "tf.keras.optimizers.AdamW"},
        {"sgd": {"momentum": 0.9}, "adam": {"epsilon": 1e-8},
         "adamw": {"epsilon": 1e-8, "weight_decay": 0.01}}, "learning_rate")
    if opt is not None and precision == "fp16":
        opt["wrapper"] = "tf.keras.optimizers.LossScaleOptimizer"
    out["optimizer"] = opt
    out["threads"] = {"tf.config.threading.set_intra_op_parallelism_threads": n,
                      "tf.config.threading.set_inter_op_parallelism_threads": 1,
                      **env_threads(n)}
    out["pruning"] = pruning(
        config, mode, f"autotune.backends._pruning.unstructured_masks(kernels, "
                      f"{config.get('pruning_ratio')})")
    out["llm"] = llm(config, mode, attention={"math": "matmul + masked softmax"},
                     weight_quant={}, checkpointing="tf.recompute_grad(block) per block")
    replicas = int(config.get("data_parallel", 1) or 1)
    spelled = spell_data_parallel(
        config, mode, launch=f"{replicas} processes, TF_CONFIG naming one worker each",
        train="tf.distribute.MultiWorkerMirroredStrategy(communication_options="
              "CommunicationOptions(implementation=RING)); strategy.run(step) in a "
              "tf.function")
    if spelled is not None:
        out["data_parallel"] = spelled
    return out


#: TensorFlow eager is 4-5x slower than tf.function (research/frameworks_on_cpu.md).
SPEC = BackendSpec(
    name="tensorflow", target="autotune.backends._tensorflow:TensorFlowBackend",
    distribution="tensorflow", extra="tensorflow",
    device_kinds=("cpu", "cuda", "tpu"), best_execution="graph", executions=EXECUTIONS,
    precisions=frozenset({"fp32", "bf16", "fp16", "int8"}), int8_modes=frozenset({"infer"}),
    unsupported_kinds={"npu": "TensorFlow has no Ascend NPU support (use backend mindspore)"},
    capability_rule=capabilities, knob_rule=knob_rule, launch=launch,
    probe="autotune.backends._probe:probe_tensorflow",
    data_parallel={"cpu": "tf.distribute.MultiWorkerMirroredStrategy (ring all-reduce)",
                   "cuda": "tf.distribute.MultiWorkerMirroredStrategy (ring all-reduce)"},
    no_data_parallel=("TensorFlow data-parallel trials run on cpu and cuda here; a TPU's "
                      "replicas are its cores under TPUStrategy, which autotune does not "
                      "drive"))
