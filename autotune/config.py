"""Frozen records passed from the study driver to a worker: what one trial runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autotune.space import KNOB_DEFAULTS, Budget, SearchSpace


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs, resolved from the space and the sampled parameters.

    ``threads`` is ``None`` when the space does not pin it: the worker then uses every core
    it may run on and records the count it used.
    """

    workload: str
    mode: str
    backend: str
    device: str
    batch_size: int
    precision: str
    learning_rate: float
    optimizer: str
    pruning_ratio: float
    threads: int | None
    budget: Budget
    pruning_structure: str = "unstructured"
    execution: str = "auto"
    seed: int = 0

    @classmethod
    def from_params(cls, space: SearchSpace, params: dict[str, Any], *,
                    seed: int = 0) -> TrialConfig:
        """Combine the space's fixed knobs, the sampled ``params`` and the defaults."""
        knobs = dict(KNOB_DEFAULTS)
        knobs.update(space.fixed_params())
        knobs.update(params)
        return cls(workload=space.workload, mode=space.mode, budget=space.budget, seed=seed,
                   **knobs)

    def knobs(self) -> dict[str, Any]:
        """The tunable knobs only (what a launch config needs)."""
        return {k: getattr(self, k) for k in KNOB_DEFAULTS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, sent to the worker process."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["budget"] = Budget(**data["budget"])
        return cls(**data)
