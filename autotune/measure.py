"""Measure one configuration exactly as a trial would, outside any study."""

from __future__ import annotations

import dataclasses
from typing import Any

from autotune.backends import capabilities, resolve_execution
from autotune.config import TrialConfig
from autotune.exceptions import (
    AutotuneError,
    NonFiniteLossError,
    OutOfMemoryError,
    TrialError,
    UnsupportedConfigError,
)
from autotune.launch import ProcessLauncher
from autotune.profiling.measurement import Measurement
from autotune.space import parse_space

_INFEASIBLE: dict[str, type[TrialError]] = {
    "oom": OutOfMemoryError, "unsupported": UnsupportedConfigError,
    "nan_loss": NonFiniteLossError,
}


def measure(workload: str, mode: str, *, budget: dict[str, Any] | None = None,
            seed: int = 0, **knobs: Any) -> Measurement:
    """Run one trial of ``workload`` in ``mode`` with ``knobs`` (named as in a space file:
    backend, device, batch_size, precision, learning_rate, optimizer, pruning_ratio,
    pruning_structure, execution, threads) and return its :class:`Measurement`.

    Knobs are validated like a space file (a training knob in infer mode is an error).
    Raises :class:`OutOfMemoryError`, :class:`UnsupportedConfigError` or
    :class:`NonFiniteLossError` when the configuration cannot be measured, and
    :class:`AutotuneError` when the worker crashes or times out.
    """
    space = parse_space({"workload": workload, "mode": mode,
                         "objectives": {"throughput_sps": "maximize"},
                         "params": knobs, "budget": budget or {}},
                        source="measure")
    config = TrialConfig.from_params(space, {}, seed=seed)
    config = dataclasses.replace(
        config, execution=resolve_execution(config.backend, config.execution))
    reason = capabilities(config.backend, config.device).check(
        config.mode, config.precision, config.execution)
    if reason is not None:
        raise UnsupportedConfigError(f"{config.backend} on {config.device}: {reason}")
    outcome = ProcessLauncher().run(config)
    if outcome.status == "ok":
        return Measurement.from_worker(outcome.result, samples_per_step=config.batch_size,
                                       mode=config.mode)
    if outcome.status == "infeasible":
        raise _INFEASIBLE.get(outcome.failure_kind or "", TrialError)(outcome.reason)
    raise AutotuneError(f"measurement failed ({outcome.failure_kind}): {outcome.reason}")
