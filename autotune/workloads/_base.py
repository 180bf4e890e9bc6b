"""The framework-neutral workload description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """A classification data set with a held-out split (float32 features, int64 labels)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("features and labels differ in length")
        if len(self.x_train) == 0 or len(self.x_test) == 0:
            raise ValueError("both splits must be non-empty")


@dataclass(frozen=True)
class Workload:
    """A dense classifier: ``input_dim -> hidden... -> num_classes`` with ReLU between layers.

    Attributes:
        name: short name, as written in a space file.
        input_dim: features per sample.
        hidden: widths of the hidden layers.
        num_classes: output classes; quality is held-out top-1 accuracy.
        load_data: builds the data set; called in the worker, never in the study driver.
        description: one line for humans.
    """

    name: str
    input_dim: int
    hidden: tuple[int, ...]
    num_classes: int
    load_data: Callable[[], Dataset]
    description: str = ""

    def __post_init__(self) -> None:
        if self.input_dim < 1 or self.num_classes < 2 or any(w < 1 for w in self.hidden):
            raise ValueError(f"workload {self.name!r}: widths must be positive, >= 2 classes")

    @property
    def layer_widths(self) -> tuple[int, ...]:
        """All widths from input to output."""
        return (self.input_dim, *self.hidden, self.num_classes)

    def widths_after(self, structure: str, ratio: float) -> tuple[int, ...]:
        """Layer widths after pruning: smaller hidden layers only when structured."""
        from autotune.backends._pruning import structured_width

        if structure != "structured" or ratio <= 0:
            return self.layer_widths
        hidden = tuple(structured_width(w, ratio) for w in self.hidden)
        return (self.input_dim, *hidden, self.num_classes)

    @property
    def param_count(self) -> int:
        """Weights plus biases of the dense model."""
        from autotune.backends._pruning import dense_param_count

        return dense_param_count(self.layer_widths)

    def flops_per_sample(self, mode: str) -> int:
        """Floating-point operations per sample: 2 per multiply-add forward, 3x in training
        (forward, gradient w.r.t. inputs and w.r.t. weights)."""
        from autotune.backends._pruning import dense_flops

        return dense_flops(self.layer_widths, mode)
