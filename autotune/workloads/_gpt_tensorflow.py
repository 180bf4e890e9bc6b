"""The built-in ``gpt`` in Keras 3 on TensorFlow (architecture and weights:
:mod:`autotune.workloads._gpt`).

A subclassed ``keras.Model`` (its KV-cache methods are not layers). The layers take their
dtype from Keras' global policy, which the backend sets before the factory runs; the tied
output projection reads the embedding in the layer's compute dtype.

KV caches are tuples of tensors so a ``tf.function`` can take and return them: ``dynamic``
holds per layer keys and values ``(B, H, t, hd)`` (concatenated each step: the decode step
retraces as the length grows, unless shapes are relaxed); ``static`` holds ``tf.Variable``
buffers of ``max_len`` positions written in place (fixed shapes: one trace).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from autotune.workloads._gpt import GPTConfig, prune_weights

_LN_EPS = 1e-5


class StaticCache:
    """Preallocated key/value variables per layer (``(B, H, max_len, hd)``)."""

    def __init__(self, layers: int, batch: int, heads: int, max_len: int, head_dim: int,
                 dtype: Any) -> None:
        shape = (batch, heads, max_len, head_dim)
        self.kind, self.max_len = "static", max_len
        self.k = [tf.Variable(tf.zeros(shape, dtype), trainable=False) for _ in range(layers)]
        self.v = [tf.Variable(tf.zeros(shape, dtype), trainable=False) for _ in range(layers)]


class Block(keras.layers.Layer):  # type: ignore[misc]
    """Pre-norm transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, config: GPTConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        d, a = config.d_model, config.attn_width
        self.heads, self.head_dim = config.n_heads, config.head_dim
        self.ln1 = keras.layers.LayerNormalization(epsilon=_LN_EPS, name="ln1")
        self.qkv = keras.layers.Dense(3 * a, name="qkv")
        self.proj = keras.layers.Dense(d, name="proj")
        self.ln2 = keras.layers.LayerNormalization(epsilon=_LN_EPS, name="ln2")
        self.fc = keras.layers.Dense(config.inner, name="fc")
        self.fc2 = keras.layers.Dense(d, name="fc2")
        self.attention = "math"

    def build(self, input_shape: Any) -> None:
        d = input_shape[-1]
        self.ln1.build((None, None, d))
        self.qkv.build((None, None, d))
        self.proj.build((None, None, self.heads * self.head_dim))
        self.ln2.build((None, None, d))
        self.fc.build((None, None, d))
        self.fc2.build((None, None, self.fc.units))
        super().build(input_shape)

    def call(self, x: Any, layer_cache: Any = None, pos: Any = 0,
             static: StaticCache | None = None, layer: int = 0) -> tuple[Any, Any]:
        b, t = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.qkv(self.ln1(x)), (b, t, 3, self.heads, self.head_dim))
        qkv = tf.transpose(qkv, (2, 0, 3, 1, 4))
        q, k, v = qkv[0], qkv[1], qkv[2]
        query_pos = tf.range(t) + pos
        if static is not None:
            static.k[layer][:, :, pos:pos + t].assign(tf.cast(k, static.k[layer].dtype))
            static.v[layer][:, :, pos:pos + t].assign(tf.cast(v, static.v[layer].dtype))
            k = tf.cast(static.k[layer], q.dtype)
            v = tf.cast(static.v[layer], q.dtype)
            new_cache = None
        else:
            if layer_cache is not None:
                k = tf.concat([layer_cache[0], k], axis=2)
                v = tf.concat([layer_cache[1], v], axis=2)
            new_cache = (k, v)
        key_pos = tf.range(tf.shape(k)[2])
        mask = key_pos[None, :] <= query_pos[:, None]  # causal, and nothing unwritten
        scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(self.head_dim))
        scores = tf.where(mask, tf.cast(scores, tf.float32), -1e30)
        y = tf.matmul(tf.cast(tf.nn.softmax(scores, axis=-1), v.dtype), v)
        y = tf.reshape(tf.transpose(y, (0, 2, 1, 3)), (b, t, self.heads * self.head_dim))
        x = x + self.proj(y)
        x = x + self.fc2(keras.activations.gelu(self.fc(self.ln2(x)), approximate=True))
        return x, new_cache


class GPT(keras.Model):  # type: ignore[misc]
    """The built-in ``gpt``: ``model(idx)`` -> logits ``(B, T, vocab)``."""

    def __init__(self, config: GPTConfig, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_ = config
        self.context = config.context
        self.wte = keras.layers.Embedding(config.vocab, config.d_model, name="wte")
        self.wpe = keras.layers.Embedding(config.context, config.d_model, name="wpe")
        self.blocks = [Block(config, name=f"h{i}") for i in range(config.layers)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=_LN_EPS, name="ln_f")
        self.checkpointing = False
        self.build((None, None))

    def build(self, input_shape: Any) -> None:
        d = self.config_.d_model
        self.wte.build((None, None))
        self.wpe.build((None, None))
        for block in self.blocks:
            block.build((None, None, d))
        self.ln_f.build((None, None, d))
        super().build(input_shape)

    def set_attention(self, kind: str) -> None:
        """``math`` only: TensorFlow has no fused attention kernel on CPU (the backend
        refuses ``sdpa`` with the reason)."""
        for block in self.blocks:
            block.attention = kind

    def set_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass (``tf.recompute_grad``)."""
        self.checkpointing = on

    def _run(self, idx: Any, caches: Any, pos: Any, static: StaticCache | None,
             training: bool = False) -> tuple[Any, Any]:
        t = tf.shape(idx)[1]
        x = self.wte(idx) + self.wpe(tf.range(t) + pos)
        new = []
        for i, block in enumerate(self.blocks):
            layer_cache = None if caches is None else caches[i]
            if self.checkpointing and training and caches is None and static is None:
                x = tf.recompute_grad(lambda h, blk=block: blk(h)[0])(x)
                out = None
            else:
                x, out = block(x, layer_cache=layer_cache, pos=pos, static=static, layer=i)
            new.append(out)
        h = self.ln_f(x)
        logits = tf.matmul(h, tf.cast(self.wte.embeddings, h.dtype), transpose_b=True)
        return logits, tuple(new)

    def call(self, idx: Any, training: bool = False) -> Any:
        return self._run(idx, None, 0, None, training)[0]

    def new_cache(self, batch_size: int, max_len: int, kind: str) -> Any:
        """``static``: a :class:`StaticCache`; ``dynamic``: per layer empty ``(k, v)``."""
        c = self.config_
        dtype = self.blocks[0].compute_dtype
        if kind == "static":
            return StaticCache(c.layers, batch_size, c.n_heads, max_len, c.head_dim, dtype)
        empty = tf.zeros((batch_size, c.n_heads, 0, c.head_dim), dtype)
        return tuple((empty, empty) for _ in range(c.layers))

    def forward_cached(self, idx: Any, cache: Any, pos: Any) -> tuple[Any, Any]:
        """Logits of tokens ``idx`` at positions ``pos..``, reading and extending ``cache``."""
        if isinstance(cache, StaticCache):
            logits, _ = self._run(idx, None, pos, cache)
            return logits, cache
        return self._run(idx, cache, pos, None)


def _layer_weights(block: Block) -> dict[str, Any]:
    return {"ln1_g": block.ln1.gamma, "ln1_b": block.ln1.beta,
            "qkv_w": block.qkv.kernel, "qkv_b": block.qkv.bias,
            "proj_w": block.proj.kernel, "proj_b": block.proj.bias,
            "ln2_g": block.ln2.gamma, "ln2_b": block.ln2.beta,
            "fc_w": block.fc.kernel, "fc_b": block.fc.bias,
            "fc2_w": block.fc2.kernel, "fc2_b": block.fc2.bias}


def _variables(model: GPT) -> dict[str, Any]:
    out = {"wte": model.wte.embeddings, "wpe": model.wpe.embeddings,
           "lnf_g": model.ln_f.gamma, "lnf_b": model.ln_f.beta}
    for i, block in enumerate(model.blocks):
        out.update({f"h{i}.{k}": v for k, v in _layer_weights(block).items()})
    return out


def load_weights(model: GPT, weights: dict[str, np.ndarray]) -> None:
    """Copy framework-neutral weights (Keras' Dense kernels are (in, out), like them)."""
    for name, variable in _variables(model).items():
        variable.assign(weights[name])


def extract_weights(model: GPT) -> dict[str, np.ndarray]:
    """The inverse of :func:`load_weights` (float32 numpy)."""
    return {name: np.asarray(v.numpy(), dtype=np.float32)
            for name, v in _variables(model).items()}


def build_gpt(config: GPTConfig, weights: dict[str, np.ndarray]) -> GPT:
    """The model with ``weights`` loaded."""
    model = GPT(config, name="gpt")
    load_weights(model, weights)
    return model


def lm_logits(model: GPT, idx: np.ndarray) -> np.ndarray:
    """Logits (float32 numpy) of token ids ``idx`` through the model as it is now."""
    return np.asarray(tf.cast(model(tf.constant(idx), training=False), tf.float32))


def prune_gpt(model: GPT, ratio: float) -> GPT:
    """Structured pruning of heads and MLP channels (see
    :func:`autotune.workloads._gpt.prune_weights`)."""
    config, weights = prune_weights(model.config_, extract_weights(model), ratio)
    return build_gpt(config, weights)
