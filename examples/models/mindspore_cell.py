"""A user's own MindSpore model, written as a user would: an ``nn.Cell`` MLP classifier of
the 16x16 shape images (flattened).

autotune calls ``build("mindspore", **kwargs)`` inside its worker, after it has set the
context (graph or PyNative mode, device, threads).
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import nn
from shapes_data import make_shapes  # a sibling module: the file's folder is importable

import autotune


class ShapesMLP(nn.Cell):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.body = nn.SequentialCell(nn.Dense(256, width), nn.ReLU(),
                                      nn.Dense(width, width), nn.ReLU(), nn.Dense(width, 4))

    def construct(self, x: ms.Tensor) -> ms.Tensor:
        return self.body(self.flatten(x))


def build(framework: str, width: int = 128) -> autotune.ModelSpec:
    assert framework == "mindspore", framework
    x_test, y_test = make_shapes(512, np.random.default_rng(123))

    def accuracy(model: nn.Cell) -> float:
        logits = model(ms.Tensor(x_test)).asnumpy()
        return float((logits.argmax(1) == y_test).mean())

    return autotune.ModelSpec(ShapesMLP(width), make_shapes, loss="cross_entropy",
                              quality=accuracy, quality_name="accuracy", epoch_samples=2048,
                              train_before_infer=True)
