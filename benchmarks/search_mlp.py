"""The model of ``search_benchmark.py``, written as a user's model factory for autotune.

A torch MLP 1000 -> 1000 -> 1000 -> 10 (ReLU between), randomly initialised (seed 0) and
never trained: the benchmark tunes its inference speed only, so no quality is reported
(``quality=None``). The hand-written tuner of the benchmark builds the very same network
(:func:`make_model`), so both tools time the same weights and shapes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import autotune

#: Input features, hidden width and classes of the MLP.
IN_FEATURES = 1000
HIDDEN = 1000
CLASSES = 10


def make_model(seed: int = 0) -> nn.Module:
    """The MLP in eval mode, with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, CLASSES)).eval()


def make_batch(batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal inputs (as ``torch.randn`` in the script) and dummy class targets
    (infer mode never uses them, but the contract asks for a pair)."""
    x = rng.standard_normal((batch_size, IN_FEATURES)).astype(np.float32)
    return x, np.zeros(batch_size, dtype=np.int64)


def build(framework: str, seed: int = 0) -> autotune.ModelSpec:
    """autotune's entry point: the MLP for ``framework`` (torch only)."""
    if framework != "torch":
        raise ValueError(f"search_mlp is a torch model; got framework {framework!r}")
    return autotune.ModelSpec(make_model(seed), make_batch, loss="cross_entropy")
