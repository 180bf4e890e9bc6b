"""A user's own PyTorch model, written as a user would: a small CNN on 16x16 images.

autotune calls ``build("torch", **kwargs)`` inside its worker, after it has set up threads,
device and precision; the model, its batches, loss and quality are yours, everything else
(placement, precision, optimizer loop, pruning, quantisation, compilation, measuring) is
autotune's.
"""

from __future__ import annotations

import numpy as np
import torch
from shapes_data import make_shapes  # a sibling module: the file's folder is importable
from torch import nn

import autotune


class ShapesCNN(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 64), nn.ReLU(),
                                        nn.Linear(64, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(framework: str, width: int = 16) -> autotune.ModelSpec:
    assert framework == "torch", framework
    x_test, y_test = make_shapes(512, np.random.default_rng(123))
    model = ShapesCNN(width)

    def accuracy(model: nn.Module) -> float:
        param = next(model.parameters())
        x = torch.from_numpy(x_test).to(param.device, param.dtype)
        return float((model(x).argmax(1).cpu().numpy() == y_test).mean())

    return autotune.ModelSpec(model, make_batch=make_shapes, loss="cross_entropy",
                              quality=accuracy, quality_name="accuracy",
                              epoch_samples=2048, train_before_infer=True)
