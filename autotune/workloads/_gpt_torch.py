"""The built-in ``gpt`` in PyTorch (architecture and weights: :mod:`autotune.workloads._gpt`)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autotune.workloads._gpt import GPTConfig, prune_weights

_LN_EPS = 1e-5


class KVCache:
    """Keys and values per layer, ``(B, H, t, hd)``: ``dynamic`` grows by concatenation,
    ``static`` is preallocated to ``max_len`` positions and written in place (fixed shapes:
    what a compiler needs to compile the decode step once)."""

    def __init__(self, kind: str, layers: int, batch: int, heads: int, max_len: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.kind, self.max_len = kind, max_len
        self.k: list[torch.Tensor | None] = [None] * layers
        self.v: list[torch.Tensor | None] = [None] * layers
        if kind == "static":
            shape = (batch, heads, max_len, head_dim)
            self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
            self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        d, a = config.d_model, config.attn_width
        self.heads, self.head_dim = config.n_heads, config.head_dim
        self.ln1 = nn.LayerNorm(d, eps=_LN_EPS)
        self.qkv = nn.Linear(d, 3 * a)
        self.proj = nn.Linear(a, d)
        self.ln2 = nn.LayerNorm(d, eps=_LN_EPS)
        self.fc = nn.Linear(d, config.inner)
        self.fc2 = nn.Linear(config.inner, d)
        self.attention = "math"

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None, causal: bool) -> torch.Tensor:
        if self.attention == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  is_causal=causal and mask is None)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if mask is None and causal:
            t, s = q.shape[-2], k.shape[-2]
            mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                pos: int = 0) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, t, hd) each
        mask = None
        causal = True
        if cache is not None and cache.kind == "static":
            cache.k[layer][:, :, pos:pos + t] = k  # type: ignore[index]
            cache.v[layer][:, :, pos:pos + t] = v  # type: ignore[index]
            k, v = cache.k[layer], cache.v[layer]
            # the whole buffer, with the positions not written yet (and the future) masked
            query = torch.arange(pos, pos + t, device=x.device)[:, None]
            mask = torch.arange(cache.max_len, device=x.device)[None, :] <= query
        elif cache is not None:
            if cache.k[layer] is not None:
                k = torch.cat([cache.k[layer], k], dim=2)  # type: ignore[list-item]
                v = torch.cat([cache.v[layer], v], dim=2)  # type: ignore[list-item]
            cache.k[layer], cache.v[layer] = k, v
            causal = t > 1
        y = self._attend(q, k, v, mask, causal).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(y)
        out: torch.Tensor = x + self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))
        return out


class GPT(nn.Module):
    """The built-in ``gpt``: ``model(idx)`` -> logits ``(B, T, vocab)``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.context = config.context
        self.wte = nn.Embedding(config.vocab, config.d_model)
        self.wpe = nn.Embedding(config.context, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.ln_f = nn.LayerNorm(config.d_model, eps=_LN_EPS)
        self.checkpointing = False

    def set_attention(self, kind: str) -> None:
        """``math`` or ``sdpa`` (``torch.nn.functional.scaled_dot_product_attention``)."""
        for block in self.blocks:
            block.attention = kind  # type: ignore[assignment]

    def set_checkpointing(self, on: bool) -> None:
        """Recompute each block's activations in the backward pass
        (``torch.utils.checkpoint``) instead of keeping them."""
        self.checkpointing = on

    def _run(self, idx: torch.Tensor, cache: KVCache | None, pos: int) -> torch.Tensor:
        t = idx.shape[1]
        positions = torch.arange(pos, pos + t, device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for i, block in enumerate(self.blocks):
            if self.checkpointing and self.training and cache is None:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, cache, i, pos)
        logits: torch.Tensor = self.ln_f(x) @ self.wte.weight.t()
        return logits

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._run(idx, None, 0)

    def new_cache(self, batch_size: int, max_len: int, kind: str) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``max_len`` tokens."""
        weight = self.wte.weight
        return KVCache(kind, len(self.blocks), batch_size, self.config.n_heads, max_len,
                       self.config.head_dim, weight.dtype, weight.device)

    def forward_cached(self, idx: torch.Tensor, cache: KVCache,
                       pos: int) -> tuple[torch.Tensor, KVCache]:
        """Logits of tokens ``idx`` at positions ``pos..``, reading and extending ``cache``."""
        return self._run(idx, cache, pos), cache


_MAP = {"ln1_g": "ln1.weight", "ln1_b": "ln1.bias", "qkv_b": "qkv.bias",
        "proj_b": "proj.bias", "ln2_g": "ln2.weight", "ln2_b": "ln2.bias",
        "fc_b": "fc.bias", "fc2_b": "fc2.bias"}
_MATRICES = {"qkv_w": "qkv.weight", "proj_w": "proj.weight", "fc_w": "fc.weight",
             "fc2_w": "fc2.weight"}


def load_weights(model: GPT, weights: dict[str, np.ndarray]) -> None:
    """Copy framework-neutral weights (matrices (in, out)) into ``model``."""
    state: dict[str, torch.Tensor] = {
        "wte.weight": torch.from_numpy(weights["wte"]),
        "wpe.weight": torch.from_numpy(weights["wpe"]),
        "ln_f.weight": torch.from_numpy(weights["lnf_g"]),
        "ln_f.bias": torch.from_numpy(weights["lnf_b"])}
    for i in range(model.config.layers):
        for key, name in _MAP.items():
            state[f"blocks.{i}.{name}"] = torch.from_numpy(weights[f"h{i}.{key}"])
        for key, name in _MATRICES.items():  # torch's Linear stores (out, in)
            state[f"blocks.{i}.{name}"] = torch.from_numpy(
                np.ascontiguousarray(weights[f"h{i}.{key}"].T))
    model.load_state_dict(state)


def extract_weights(model: GPT) -> dict[str, np.ndarray]:
    """The inverse of :func:`load_weights` (float32 numpy)."""
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    out = {"wte": state["wte.weight"], "wpe": state["wpe.weight"],
           "lnf_g": state["ln_f.weight"], "lnf_b": state["ln_f.bias"]}
    for i in range(model.config.layers):
        for key, name in _MAP.items():
            out[f"h{i}.{key}"] = state[f"blocks.{i}.{name}"]
        for key, name in _MATRICES.items():
            out[f"h{i}.{key}"] = np.ascontiguousarray(state[f"blocks.{i}.{name}"].T)
    return out


def build_gpt(config: GPTConfig, weights: dict[str, np.ndarray]) -> GPT:
    """The model with ``weights`` loaded."""
    model = GPT(config)
    load_weights(model, weights)
    return model


def lm_logits(model: GPT, idx: np.ndarray) -> np.ndarray:
    """Logits (float32 numpy) of token ids ``idx`` through the model as it is now."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(idx)).to(device))
    return np.asarray(out.float().cpu().numpy())


def prune_gpt(model: GPT, ratio: float) -> GPT:
    """Structured pruning of heads and MLP channels (rebuilt smaller, same on every
    framework: :func:`autotune.workloads._gpt.prune_weights`)."""
    config, weights = prune_weights(model.config, extract_weights(model), ratio)
    pruned = build_gpt(config, weights)
    pruned.set_attention(model.blocks[0].attention)  # type: ignore[arg-type]
    return pruned
