"""Torch factories written as users write them, for tests (good and broken ones)."""

from __future__ import annotations

import numpy as np
import torch
from helpers import CLASSES, DIM  # a sibling module: the factory's folder is importable
from torch import nn

import autotune


def _batch(batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((batch_size, DIM)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def mlp(framework: str, width: int = 32) -> autotune.ModelSpec:
    model = nn.Sequential(nn.Linear(DIM, width), nn.ReLU(), nn.Linear(width, CLASSES))
    return autotune.ModelSpec(model, _batch)


class SelfLoss(nn.Module):
    """A model that computes its own loss: model(x, targets) -> (logits, loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, CLASSES))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> object:
        logits = self.net(x)
        if targets is None:
            return logits
        return logits, nn.functional.cross_entropy(logits, targets)


def self_loss(framework: str) -> autotune.ModelSpec:
    x_test, y_test = _batch(512, np.random.default_rng(9))

    def accuracy(model: nn.Module) -> float:
        return float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())

    return autotune.ModelSpec(SelfLoss(), _batch,
                              forward=lambda model, x, y: model(x, y)[1],
                              quality=accuracy, quality_name="accuracy", epoch_samples=512)


def frozen(framework: str) -> autotune.ModelSpec:
    model = nn.Linear(DIM, CLASSES)
    for p in model.parameters():
        p.requires_grad_(False)
    return autotune.ModelSpec(model, _batch)


def wrong_batch(framework: str) -> autotune.ModelSpec:
    return autotune.ModelSpec(nn.Linear(DIM, CLASSES),
                              lambda n, rng: _batch(n + 1, rng))


def rejected(framework: str) -> autotune.ModelSpec:
    return autotune.ModelSpec(nn.Linear(DIM + 3, CLASSES), _batch)


def vector_loss(framework: str) -> autotune.ModelSpec:
    return autotune.ModelSpec(nn.Linear(DIM, CLASSES), _batch,
                              loss=lambda out, y: (out - out.mean()).abs().mean(dim=1))


def not_torch(framework: str) -> autotune.ModelSpec:
    return autotune.ModelSpec(object(), _batch)


def not_a_spec(framework: str) -> dict[str, int]:
    return {"layers": 2}


def raises(framework: str) -> autotune.ModelSpec:
    raise ValueError("checkpoint missing")


class _Sleepy(nn.Module):
    """A linear layer whose forward also waits ``base_s + per_sample_s * batch +
    per_pair_s * batch**2``: step times a test can rely on on any CPU (the wait, not the
    arithmetic, sets them), so it can place a configuration on or off the front."""

    def __init__(self, base_s: float, per_sample_s: float, per_pair_s: float) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, CLASSES)
        self.cost = (base_s, per_sample_s, per_pair_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        base, per_sample, per_pair = self.cost
        n = x.shape[0]
        time.sleep(base + per_sample * n + per_pair * n * n)
        out: torch.Tensor = self.linear(x)
        return out


def sleepy(framework: str, base_ms: float = 1.0, per_sample_us: float = 0.0,
           per_pair_ns: float = 0.0) -> autotune.ModelSpec:
    return autotune.ModelSpec(_Sleepy(base_ms * 1e-3, per_sample_us * 1e-6,
                                      per_pair_ns * 1e-9), _batch)


class _DiesInReplicaOne(nn.Module):
    """Replica 1 of a data-parallel trial is killed (SIGKILL, as the OOM killer or an
    operator would) at its 30th forward pass; replica 0 and single-replica trials run."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, CLASSES))
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import os
        import signal

        self.calls += 1
        if os.environ.get("RANK") == "1" and self.calls == 30:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.net(x)


def dies_in_replica_one(framework: str) -> autotune.ModelSpec:
    return autotune.ModelSpec(_DiesInReplicaOne(), _batch)
