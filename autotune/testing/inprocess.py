"""Drive a backend in this process exactly as the worker does (for tests and benchmarks):
``configure`` -> the workload factory -> ``setup``."""

from __future__ import annotations

from typing import Any

from autotune.config import TrialConfig
from autotune.workloads import WorkloadRef, load_model_spec


def set_up(backend: Any, config: TrialConfig) -> dict[str, Any]:
    """Configure ``backend`` for ``config``, build the workload's model and set it up;
    returns the model facts ``setup`` reports."""
    ref = WorkloadRef(config.workload, config.workload_kwargs)
    backend.factory_label = f"factory {ref.label()}"
    backend.configure(config)
    spec = load_model_spec(ref, backend.framework or config.backend)
    info: dict[str, Any] = backend.setup(config, spec)
    return info
