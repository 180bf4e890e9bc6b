"""Data records shared by the built-in workloads."""

from __future__ import annotations

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
