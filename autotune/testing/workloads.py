"""Workloads that misbehave on purpose, to test that a study survives them.

Use them in a space file as ``workload: "autotune.testing.workloads:crashing"``. Each
misbehaves while loading its data, inside the worker process, exactly where a real
workload's bug or hang would strike.
"""

from __future__ import annotations

import os
import signal
import time

from autotune.workloads import Dataset, Workload
from autotune.workloads._builtin import _teacher_data


def _tiny() -> Dataset:
    return _teacher_data(n_train=256, n_test=64)


def _crash() -> Dataset:
    os.kill(os.getpid(), signal.SIGSEGV)  # what a native-library bug looks like
    raise AssertionError("unreachable")


def _hang() -> Dataset:
    while True:
        time.sleep(1)


def _raise() -> Dataset:
    raise RuntimeError("workload bug: data file is corrupt")


def tiny() -> Workload:
    """A small, fast, well-behaved MLP (64 -> 32 -> 10) for quick end-to-end tests."""
    return Workload("tiny", 64, (32,), 10, _tiny, "tiny MLP for tests")


def crashing() -> Workload:
    """Dies of SIGSEGV while loading its data."""
    return Workload("crashing", 64, (32,), 10, _crash, "segfaults")


def hanging() -> Workload:
    """Never finishes loading its data: the trial must be killed at its budget."""
    return Workload("hanging", 64, (32,), 10, _hang, "hangs")


def raising() -> Workload:
    """Raises a Python exception while loading its data."""
    return Workload("raising", 64, (32,), 10, _raise, "raises")


def not_a_workload() -> object:
    """A factory that returns the wrong thing (for create-time validation tests)."""
    return {"layers": [64, 10]}
