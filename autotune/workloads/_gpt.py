"""The built-in ``gpt``: a decoder-only transformer defined once, built by every framework.

Architecture (GPT-2's): token + learned position embeddings, ``layers`` pre-norm blocks of
causal multi-head self-attention and a 4x GELU (tanh) MLP, a final layer norm, and logits
through the token embedding (tied weights, no output bias). Layer norms have eps 1e-5 on
every framework. Weights are initialised once in numpy (:func:`init_weights`) and loaded
into the three frameworks' models, so with equal weights they compute equal logits (a test
checks it) and their parameter counts and FLOPs agree.

It is a byte-level language model (vocabulary 256: no tokenizer to fetch) on the Python
standard library's own sources (:mod:`autotune.workloads._corpus`); its quality is
held-out perplexity. Every framework's model also implements autotune's decoding protocol:

* ``new_cache(batch_size, max_len, kind)`` -> a cache (``kind`` ``dynamic``: grows by
  concatenation; ``static``: preallocated to ``max_len`` and written in place);
* ``forward_cached(idx, cache, pos)`` -> ``(logits, cache)`` for tokens ``idx`` (B, t) at
  positions ``pos .. pos + t - 1``;
* ``set_attention(kind)``: ``math`` (matmul + masked softmax) or ``sdpa`` (the framework's
  fused attention kernel, where it has one).

A user model that implements the same three methods gets the same LLM knobs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from autotune.workloads._builtin import framework_module
from autotune.workloads._corpus import stdlib_corpus
from autotune.workloads._spec import ModelSpec

#: Held-out windows the perplexity is computed on.
EVAL_WINDOWS = 32
#: kwargs of the larger preset (about 10.8 M parameters), for the README and benchmarks
LARGE = {"layers": 6, "d_model": 384, "heads": 6, "context": 256, "seq_len": 128}


@dataclass(frozen=True)
class GPTConfig:
    """The framework-neutral architecture of the built-in ``gpt``."""

    layers: int = 2
    d_model: int = 64
    heads: int = 4
    context: int = 128
    vocab: int = 256
    #: the MLP's inner width per head after structured pruning (``None``: 4 x d_model)
    mlp_inner: int | None = None
    #: attention heads kept per layer after structured pruning (``None``: ``heads``)
    kept_heads: int | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "d_model", "heads", "context", "vocab"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads "
                             f"({self.heads})")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.d_model // self.heads

    @property
    def n_heads(self) -> int:
        """Heads per layer as built (after pruning)."""
        return self.kept_heads or self.heads

    @property
    def attn_width(self) -> int:
        """Width of the attention's q/k/v projections (heads x head width)."""
        return self.n_heads * self.head_dim

    @property
    def inner(self) -> int:
        """The MLP's inner width."""
        return self.mlp_inner or 4 * self.d_model

    def param_count(self) -> int:
        """Trainable parameters (the tied embedding once)."""
        d, a, f = self.d_model, self.attn_width, self.inner
        per_block = (2 * d                # ln1
                     + d * 3 * a + 3 * a  # qkv
                     + a * d + d          # attention output
                     + 2 * d              # ln2
                     + d * f + f          # fc
                     + f * d + d)         # fc2
        return self.vocab * d + self.context * d + self.layers * per_block + 2 * d

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token at ``seq_len`` (2 per multiply-add): the matmuls and the
        attention scores and mix over a causal window (averaged: ``seq_len`` keys at most,
        counted as the full square, as torch's counter counts them)."""
        d, a, f = self.d_model, self.attn_width, self.inner
        dense = 2 * (d * 3 * a + a * d + d * f + f * d)
        attention = 2 * 2 * seq_len * a
        return self.layers * (dense + attention) + 2 * d * self.vocab

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def init_weights(config: GPTConfig, seed: int) -> dict[str, np.ndarray]:
    """GPT-2's initialisation in numpy (normal, std 0.02; residual projections scaled by
    ``1/sqrt(2 x layers)``; layer norms 1 and 0; biases 0), keyed by framework-neutral
    names: ``wte``, ``wpe``, ``h{i}.{ln1_g,ln1_b,qkv_w,qkv_b,proj_w,proj_b,ln2_g,ln2_b,
    fc_w,fc_b,fc2_w,fc2_b}``, ``lnf_g``, ``lnf_b``. Matrices are (in, out)."""
    rng = np.random.default_rng(seed)
    d, a, f = config.d_model, config.attn_width, config.inner
    resid = 0.02 / math.sqrt(2 * config.layers)

    def normal(shape: tuple[int, ...], std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w: dict[str, np.ndarray] = {"wte": normal((config.vocab, d)),
                                "wpe": normal((config.context, d), 0.01)}
    for i in range(config.layers):
        p = f"h{i}."
        w[p + "ln1_g"], w[p + "ln1_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        w[p + "qkv_w"], w[p + "qkv_b"] = normal((d, 3 * a)), np.zeros(3 * a, np.float32)
        w[p + "proj_w"], w[p + "proj_b"] = normal((a, d), resid), np.zeros(d, np.float32)
        w[p + "ln2_g"], w[p + "ln2_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
        w[p + "fc_w"], w[p + "fc_b"] = normal((d, f)), np.zeros(f, np.float32)
        w[p + "fc2_w"], w[p + "fc2_b"] = normal((f, d), resid), np.zeros(d, np.float32)
    w["lnf_g"], w["lnf_b"] = np.ones(d, np.float32), np.zeros(d, np.float32)
    return w


def prune_weights(config: GPTConfig, weights: dict[str, np.ndarray],
                  ratio: float) -> tuple[GPTConfig, dict[str, np.ndarray]]:
    """Structured pruning: drop the ``ratio`` least important attention heads and MLP
    channels of every block (L1 norm of what each head / channel writes to the residual
    stream), the same heads and channels on every framework."""
    heads = config.n_heads
    keep_heads = max(1, round(heads * (1 - ratio)))
    keep_inner = max(1, round(config.inner * (1 - ratio)))
    hd = config.head_dim
    out = {k: v for k, v in weights.items() if not k.startswith("h")}
    for i in range(config.layers):
        p = f"h{i}."
        proj = weights[p + "proj_w"]  # (heads * hd, d)
        score = np.abs(proj.reshape(heads, hd, -1)).sum(axis=(1, 2))
        kept = np.sort(np.argsort(-score, kind="stable")[:keep_heads])
        cols = np.concatenate([h * hd + np.arange(hd) for h in kept])
        width = heads * hd
        qkv_cols = np.concatenate([cols, width + cols, 2 * width + cols])
        fc2 = weights[p + "fc2_w"]
        channels = np.sort(np.argsort(-np.abs(fc2).sum(axis=1), kind="stable")[:keep_inner])
        out.update({p + k: weights[p + k] for k in ("ln1_g", "ln1_b", "ln2_g", "ln2_b",
                                                    "proj_b", "fc2_b")})
        out[p + "qkv_w"] = weights[p + "qkv_w"][:, qkv_cols]
        out[p + "qkv_b"] = weights[p + "qkv_b"][qkv_cols]
        out[p + "proj_w"] = proj[cols]
        out[p + "fc_w"] = weights[p + "fc_w"][:, channels]
        out[p + "fc_b"] = weights[p + "fc_b"][channels]
        out[p + "fc2_w"] = fc2[channels]
    pruned = GPTConfig(config.layers, config.d_model, config.heads, config.context,
                       config.vocab, mlp_inner=keep_inner, kept_heads=keep_heads)
    return pruned, out


def _models(framework: str) -> Any:
    return framework_module(framework, "_gpt", "the built-in gpt is")


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood of ``targets`` under ``logits`` (float64, stable)."""
    z = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(z)), targets.reshape(-1)].mean())


def gpt(framework: str, layers: int = 2, d_model: int = 64, heads: int = 4,
        context: int = 128, seq_len: int = 64, epoch_sequences: int = 2048,
        seed: int = 0) -> ModelSpec:
    """A byte-level GPT on the standard library's sources; quality: held-out perplexity.

    Train and infer batches are ``seq_len``-token windows of the training files (random
    starts); generation prompts are windows of the same files."""
    config = GPTConfig(int(layers), int(d_model), int(heads), int(context))
    if not 1 <= seq_len <= config.context:
        raise ValueError(f"seq_len must be in [1, context={config.context}], got {seq_len}")
    models = _models(framework)
    corpus = stdlib_corpus()
    model = models.build_gpt(config, init_weights(config, seed))
    train = corpus.train
    held = corpus.windows("held_out", EVAL_WINDOWS, seq_len + 1)
    index_dtype = np.int64 if framework == "torch" else np.int32

    def make_batch(batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        starts = rng.integers(0, len(train) - seq_len - 1, size=batch_size)
        windows = np.stack([train[s:s + seq_len + 1] for s in starts]).astype(index_dtype)
        return windows[:, :-1], windows[:, 1:]

    def make_prompts(batch_size: int, prompt_len: int,
                     rng: np.random.Generator) -> np.ndarray:
        starts = rng.integers(0, len(train) - prompt_len, size=batch_size)
        return np.stack([train[s:s + prompt_len] for s in starts]).astype(index_dtype)

    def perplexity(model: Any) -> float:
        logits = models.lm_logits(model, held[:, :-1].astype(index_dtype))
        return math.exp(log_softmax_nll(logits, held[:, 1:]))

    def prune_structured(model: Any, ratio: float) -> Any:
        return models.prune_gpt(model, ratio)

    return ModelSpec(
        model=model, make_batch=make_batch, loss="cross_entropy", quality=perplexity,
        quality_name="perplexity", quality_direction="minimize",
        epoch_samples=int(epoch_sequences), train_before_infer=True,
        prune_structured=prune_structured, tokens_per_sample=seq_len,
        make_prompts=make_prompts,
        description=(f"byte-level GPT ({config.layers} layers, d_model {config.d_model}, "
                     f"{config.heads} heads, {config.param_count():,} parameters) on "
                     f"{corpus.source}"))
