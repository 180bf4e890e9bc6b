"""A built-in workload as a factory that skips the base-model training of inference trials.

The cross-backend FLOP checks need the built model, not a trained one: FLOPs and parameter
counts do not depend on the weights.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

import autotune
from autotune.workloads._factory import BUILTIN


def build(framework: str, name: str = "cnn", **kwargs: Any) -> autotune.ModelSpec:
    module, _, function = BUILTIN[name].partition(":")
    spec = getattr(importlib.import_module(module), function)(framework, **kwargs)
    return dataclasses.replace(spec, train_before_infer=False)
