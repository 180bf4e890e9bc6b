"""A Hugging Face GPT-2 with random weights from a config, as a user would hand it to autotune.

Nothing is downloaded: the config is built here (byte-level vocabulary of 256, so the
Python standard library's own sources are the text, read through
``autotune.workloads.stdlib_corpus``). To tune your own weights instead, load them with
``GPT2LMHeadModel.from_pretrained("/path/to/local/dir")``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import autotune
from autotune.workloads import stdlib_corpus


def build(framework: str, n_layer: int = 2, n_embd: int = 64, n_head: int = 4,
          n_positions: int = 128, seq_len: int = 64) -> autotune.ModelSpec:
    config = GPT2Config(vocab_size=256, n_positions=n_positions, n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    corpus = stdlib_corpus()
    held = corpus.windows("held_out", 16, seq_len + 1).astype(np.int64)

    def make_batch(batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        starts = rng.integers(0, len(corpus.train) - seq_len - 1, size=batch_size)
        windows = np.stack([corpus.train[s:s + seq_len + 1] for s in starts]).astype(np.int64)
        return windows[:, :-1], windows[:, 1:]

    def make_prompts(batch_size: int, prompt_len: int, rng: np.random.Generator) -> np.ndarray:
        starts = rng.integers(0, len(corpus.train) - prompt_len, size=batch_size)
        return np.stack([corpus.train[s:s + prompt_len] for s in starts]).astype(np.int64)

    def perplexity(model: GPT2LMHeadModel) -> float:
        device = next(model.parameters()).device
        x = torch.from_numpy(held[:, :-1]).to(device)
        y = torch.from_numpy(held[:, 1:]).to(device)
        logits = model(input_ids=x).logits.float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
        return math.exp(float(loss))

    return autotune.ModelSpec(
        model=model, make_batch=make_batch, make_prompts=make_prompts, loss="cross_entropy",
        quality=perplexity, quality_name="perplexity", quality_direction="minimize",
        epoch_samples=1024, train_before_infer=True,
        description=f"random-weight GPT-2 ({n_layer} layers, {n_embd} wide) from a config")
