"""Workload factories for tests: a tiny well-behaved one, and some that misbehave on purpose
to test that a study survives them.

Use them in a space file as ``workload: "autotune.testing.workloads:crashing"``. Each
misbehaves while building its model, inside the worker process, exactly where a real
factory's bug or hang would strike.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from autotune.workloads import ModelSpec


def tiny(framework: str, hidden: int = 32) -> ModelSpec:
    """A small, fast, well-behaved MLP (64 -> 32 -> 10 on 256 teacher samples) for quick
    end-to-end tests, on every framework and on the numpy fake."""
    import numpy as np

    from autotune.workloads._builtin import (
        MLPArch,
        _classifier_spec,
        _epoch_sampler,
        teacher_data,
    )

    data = teacher_data(n_train=256, n_test=64)
    if framework != "numpy":
        return _classifier_spec(framework, MLPArch((64, hidden, 10)), data,
                                "tiny MLP for tests", 0)
    from autotune.testing.fake_backend import NumpyMLP

    def accuracy(model: Any) -> float:
        return float((np.argmax(model(data.x_test), axis=1) == data.y_test).mean())

    return ModelSpec(model=NumpyMLP((64, hidden, 10)),
                     make_batch=_epoch_sampler(data.x_train, data.y_train),
                     quality=accuracy, quality_name="accuracy", epoch_samples=256,
                     train_before_infer=True, description="tiny MLP for tests")


def crashing(framework: str) -> ModelSpec:
    """Dies of SIGSEGV while building its model."""
    os.kill(os.getpid(), signal.SIGSEGV)  # what a native-library bug looks like
    raise AssertionError("unreachable")


def hanging(framework: str) -> ModelSpec:
    """Never finishes building its model: the trial must be killed at its budget."""
    while True:
        time.sleep(1)


def raising(framework: str) -> ModelSpec:
    """Raises a Python exception while building its model."""
    raise RuntimeError("workload bug: data file is corrupt")


def not_a_workload(framework: str) -> object:
    """A factory that returns the wrong thing."""
    return {"layers": [64, 10]}
