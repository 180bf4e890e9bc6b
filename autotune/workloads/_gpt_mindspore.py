"""The built-in ``gpt`` in MindSpore (architecture and weights: :mod:`autotune.workloads._gpt`).

Runs in PyNative mode (generation loops with a growing cache are Python control flow).
MindSpore's Dense keeps torch's ``(out, in)`` weight layout. KV caches: ``dynamic`` holds
per layer keys and values ``(B, H, t, hd)`` concatenated each step; ``static`` preallocates
``max_len`` positions per layer and writes them in place.

Imported only inside a MindSpore worker. The classes live at module level in a real file:
graph mode compiles ``construct`` from its source.
"""

from __future__ import annotations

import math
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from autotune.workloads._gpt import GPTConfig, prune_weights

_LN_EPS = 1e-5


class StaticCache:
    """Preallocated keys and values per layer, ``(B, H, max_len, hd)``."""

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: Any) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.kind, self.max_len = "static", max_len
        self.k = [ops.zeros(shape, dtype) for _ in range(layers)]
        self.v = [ops.zeros(shape, dtype) for _ in range(layers)]


class Block(nn.Cell):  # type: ignore[misc]
    """Pre-norm transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d, a = config.d_model, config.attn_width
        self.heads, self.head_dim = config.n_heads, config.head_dim
        self.ln1 = nn.LayerNorm((d,), epsilon=_LN_EPS)
        self.qkv = nn.Dense(d, 3 * a)
        self.proj = nn.Dense(a, d)
        self.ln2 = nn.LayerNorm((d,), epsilon=_LN_EPS)
        self.fc = nn.Dense(d, config.inner)
        self.fc2 = nn.Dense(config.inner, d)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def construct(self, x: Any, cache: Any = None, pos: int = 0,
                  static: StaticCache | None = None, layer: int = 0) -> tuple[Any, Any]:
        b, t, _ = x.shape
        qkv = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, self.head_dim)
        qkv = qkv.transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        new_cache = None
        if static is not None:
            static.k[layer][:, :, pos:pos + t] = k.astype(static.k[layer].dtype)
            static.v[layer][:, :, pos:pos + t] = v.astype(static.v[layer].dtype)
            k, v = static.k[layer].astype(q.dtype), static.v[layer].astype(q.dtype)
        else:
            if cache is not None:
                k = ops.cat((cache[0], k), axis=2)
                v = ops.cat((cache[1], v), axis=2)
            new_cache = (k, v)
        s = k.shape[2]
        query_pos = ops.arange(pos, pos + t).reshape(t, 1)
        mask = ops.arange(0, s).reshape(1, s) <= query_pos
        # ops.bmm, not ops.matmul: mindspore.flops_collection counts BatchMatMul and
        # MatMul primitives but not the generic matmul (measured: 0 FLOPs)
        scores = ops.bmm(q, k.swapaxes(-1, -2)).astype(ms.float32) * self.scale
        scores = ops.masked_fill(scores, ~mask, -1e30)
        y = ops.bmm(ops.softmax(scores, axis=-1).astype(v.dtype), v)
        y = y.transpose(0, 2, 1, 3).reshape(b, t, self.heads * self.head_dim)
        x = x + self.proj(y)
        x = x + self.fc2(ops.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return x, new_cache


class GPT(nn.Cell):  # type: ignore[misc]
    """The built-in ``gpt``: ``model(idx)`` -> logits ``(B, T, vocab)``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.context = config.context
        self.wte = nn.Embedding(config.vocab, config.d_model)
        self.wpe = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.CellList([Block(config) for _ in range(config.layers)])
        self.ln_f = nn.LayerNorm((config.d_model,), epsilon=_LN_EPS)
        self._head = ops.MatMul(transpose_b=True)

    def set_attention(self, kind: str) -> None:
        """``math`` only on CPU (the backend refuses ``sdpa`` with the reason)."""

    def set_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass (``Cell.recompute``)."""
        for block in self.blocks:
            if on:
                block.recompute()

    def _run(self, idx: Any, caches: Any, pos: int,
             static: StaticCache | None) -> tuple[Any, Any]:
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(ops.arange(pos, pos + t).astype(ms.int32))
        new = []
        for i, block in enumerate(self.blocks):
            x, out = block(x, None if caches is None else caches[i], pos, static, i)
            new.append(out)
        h = self.ln_f(x)
        b, t, d = h.shape
        table = self.wte.embedding_table.astype(h.dtype)
        # the tied head as a 2-D MatMul primitive (counted by flops_collection, see above)
        logits = self._head(h.reshape(b * t, d), table).reshape(b, t, -1)
        return logits, tuple(new)

    def construct(self, idx: Any) -> Any:
        return self._run(idx, None, 0, None)[0]

    def new_cache(self, batch_size: int, max_len: int, kind: str) -> Any:
        """``static``: a :class:`StaticCache`; ``dynamic``: empty, grown by the first call."""
        c = self.config
        if kind == "static":
            dtype = self.blocks[0].qkv.weight.dtype
            return StaticCache(c.layers, batch_size, c.n_heads, max_len, c.head_dim, dtype)
        return None

    def forward_cached(self, idx: Any, cache: Any, pos: int) -> tuple[Any, Any]:
        """Logits of tokens ``idx`` at positions ``pos..``, reading and extending ``cache``."""
        if isinstance(cache, StaticCache):
            logits, _ = self._run(idx, None, pos, cache)
            return logits, cache
        return self._run(idx, cache, pos, None)


_NAMES = {"ln1_g": "ln1.gamma", "ln1_b": "ln1.beta", "qkv_b": "qkv.bias",
          "proj_b": "proj.bias", "ln2_g": "ln2.gamma", "ln2_b": "ln2.beta",
          "fc_b": "fc.bias", "fc2_b": "fc2.bias"}
_MATRICES = {"qkv_w": "qkv.weight", "proj_w": "proj.weight", "fc_w": "fc.weight",
             "fc2_w": "fc2.weight"}


def _parameters(model: GPT) -> dict[str, Any]:
    """Neutral name -> (Parameter, transposed?)."""
    out: dict[str, Any] = {"wte": (model.wte.embedding_table, False),
                           "wpe": (model.wpe.embedding_table, False),
                           "lnf_g": (model.ln_f.gamma, False), "lnf_b": (model.ln_f.beta, False)}
    for i, block in enumerate(model.blocks):
        for key, path in {**_NAMES, **_MATRICES}.items():
            cell, attr = path.split(".")
            out[f"h{i}.{key}"] = (getattr(getattr(block, cell), attr), key in _MATRICES)
    return out


def load_weights(model: GPT, weights: dict[str, np.ndarray]) -> None:
    """Copy framework-neutral weights (matrices (in, out)) into ``model``."""
    for name, (param, transposed) in _parameters(model).items():
        value = weights[name].T if transposed else weights[name]
        param.set_data(ms.Tensor(np.ascontiguousarray(value), dtype=param.dtype))


def extract_weights(model: GPT) -> dict[str, np.ndarray]:
    """The inverse of :func:`load_weights` (float32 numpy)."""
    out = {}
    for name, (param, transposed) in _parameters(model).items():
        value = param.astype(ms.float32).asnumpy()
        out[name] = np.ascontiguousarray(value.T if transposed else value)
    return out


def build_gpt(config: GPTConfig, weights: dict[str, np.ndarray]) -> GPT:
    """The model with ``weights`` loaded."""
    model = GPT(config)
    load_weights(model, weights)
    return model


def lm_logits(model: GPT, idx: np.ndarray) -> np.ndarray:
    """Logits (float32 numpy) of token ids ``idx`` through the model as it is now."""
    out = model(ms.Tensor(np.ascontiguousarray(idx, dtype=np.int32)))
    return np.asarray(out.astype(ms.float32).asnumpy())


def prune_gpt(model: GPT, ratio: float) -> GPT:
    """Structured pruning of heads and MLP channels (see
    :func:`autotune.workloads._gpt.prune_weights`)."""
    config, weights = prune_weights(model.config, extract_weights(model), ratio)
    return build_gpt(config, weights)
