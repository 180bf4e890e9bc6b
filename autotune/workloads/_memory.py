"""A memory model of the built-in ``gpt``, from the trial's configuration alone.

Weights x bytes + gradients and optimizer state (train) + activations + KV cache
(generate: 2 x layers x batch x (prompt_len + new_tokens) x d_model x bytes). A
configuration predicted not to fit (the trial's ``budget.memory_mb``, else the machine's
memory) is recorded infeasible before a worker starts, and every trial stores the
prediction beside its measured peak so the model can be checked (a test does, on this CPU).

Activations are counted per token and layer as the tensors the autograd graph keeps
(training) or the largest live set of one layer (inference); see :func:`predict_memory`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autotune.workloads._gpt import EVAL_WINDOWS, GPTConfig

if TYPE_CHECKING:
    from autotune.config import TrialConfig

_FLOAT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 4}
_QUANT_BYTES = {"int8": 1.0, "int4": 0.5}
#: optimizer state per parameter, in float32 values (torch's SGD here has momentum)
_OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2}


@dataclass(frozen=True)
class MemoryPrediction:
    """Predicted bytes of one trial, by part."""

    parts: Mapping[str, int]
    method: str

    @property
    def total_bytes(self) -> int:
        """The sum of the parts."""
        return sum(self.parts.values())

    def describe(self) -> str:
        """``1.2 GiB (weights 0.4, optimizer 0.8 ...)``."""
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in self.parts.items() if v)
        return f"{self.total_bytes / 2**30:.2f} GiB ({parts} GiB)"


def gpt_config(kwargs: Mapping[str, Any]) -> GPTConfig:
    """The built-in gpt's architecture from its factory kwargs (its defaults otherwise)."""
    defaults = GPTConfig()
    return GPTConfig(int(kwargs.get("layers", defaults.layers)),
                     int(kwargs.get("d_model", defaults.d_model)),
                     int(kwargs.get("heads", defaults.heads)),
                     int(kwargs.get("context", defaults.context)))


def predict_memory(config: TrialConfig) -> MemoryPrediction | None:
    """The prediction for a trial of the built-in ``gpt`` (``None`` for other workloads:
    a user's factory is not imported outside the worker, so its model is unknown here)."""
    if config.workload != "gpt":
        return None
    kwargs = config.workload_kwargs
    try:
        arch = gpt_config(kwargs)
        seq_len = int(kwargs.get("seq_len", 64))
    except (TypeError, ValueError):
        return None
    if config.pruning_ratio > 0 and config.pruning_structure == "structured":
        keep = 1 - config.pruning_ratio
        arch = GPTConfig(arch.layers, arch.d_model, arch.heads, arch.context, arch.vocab,
                         mlp_inner=max(1, round(arch.inner * keep)),
                         kept_heads=max(1, round(arch.heads * keep)))
    params = arch.param_count()
    embedding = (arch.vocab + arch.context) * arch.d_model
    act = _FLOAT_BYTES.get(config.precision, 4)
    d, a, f, heads, layers = arch.d_model, arch.attn_width, arch.inner, arch.n_heads, arch.layers
    b = config.batch_size
    parts: dict[str, int] = {}

    def forward_working(batch: int, t: int) -> int:
        """One layer's live set at a time without an autograd graph: q/k/v, scores and
        probabilities, the MLP's inner activations, the residual stream; plus the logits
        of every position (float32)."""
        per_token = (3 * a + 2 * heads * t + 2 * f + 2 * d) * act
        return batch * t * (per_token + arch.vocab * 4)

    # the held-out perplexity is one forward pass over EVAL_WINDOWS windows
    evaluation = forward_working(EVAL_WINDOWS, seq_len)
    if config.mode == "train":
        t = seq_len
        parts["weights"] = params * 4  # float32 master weights (autocast computes in 16 bit)
        parts["gradients"] = params * 4
        parts["optimizer"] = params * 4 * _OPTIMIZER_STATES.get(config.optimizer, 2)
        # kept for backward per token and layer (what autograd saves): the two layer norms'
        # inputs and outputs, q/k/v, the attention probabilities, the mixed values, the
        # GELU's input and output
        per_layer = (4 * d + 4 * a + 2 * f + heads * t) * act
        logits = b * t * arch.vocab * 4 * 3  # logits, softmax and its gradient, float32
        if config.checkpointing == "blocks":
            kept = layers * b * t * d * act + b * t * per_layer  # inputs + one recompute
        else:
            kept = layers * b * t * per_layer
        parts["activations"] = max(kept + logits, evaluation)
        return MemoryPrediction(parts, _METHOD)
    quant = config.weight_quant if config.weight_quant != "none" else (
        "int8" if config.precision == "int8" else None)
    if quant is not None:  # linear layers quantised, embeddings stay float32
        parts["weights"] = int((params - embedding) * _QUANT_BYTES[quant] + embedding * 4)
    else:
        parts["weights"] = params * act
    t = seq_len if config.mode == "infer" else config.prompt_len
    if config.mode == "generate" and config.kv_cache == "off":
        t = config.prompt_len + config.new_tokens - 1  # the last recompute's sequence
    parts["activations"] = max(forward_working(b, t), evaluation)
    if config.mode == "generate" and config.kv_cache != "off":
        length = config.prompt_len + config.new_tokens
        cache = 2 * layers * b * length * a * act
        # a dynamic cache is concatenated: old and new copies exist at once for a moment
        parts["kv_cache"] = cache * (2 if config.kv_cache == "dynamic" else 1)
    return MemoryPrediction(parts, _METHOD)


_METHOD = ("autotune memory model of the built-in gpt: weights x bytes + gradients and "
           "optimizer state (train) + activations per token and layer (or the held-out "
           "evaluation's forward pass, whichever is larger) + KV cache (2 x layers x batch "
           "x (prompt_len + new_tokens) x width x bytes)")
