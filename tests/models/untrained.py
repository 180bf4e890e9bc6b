"""A built-in workload as a factory that skips the base-model training of inference trials.

The cross-backend FLOP check needs the built model, not a trained one: FLOPs and parameter
counts do not depend on the weights.
"""

from __future__ import annotations

import dataclasses

import autotune
from autotune.workloads import _builtin


def build(framework: str, name: str = "cnn") -> autotune.ModelSpec:
    spec = getattr(_builtin, name)(framework)
    return dataclasses.replace(spec, train_before_infer=False)
