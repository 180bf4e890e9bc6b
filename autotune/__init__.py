"""autotune: find where and how a deep-learning workload runs best, measured for real.

The public API (the CLI is a thin layer over it)::

    import autotune
    study = autotune.create_study("quick", "search_spaces/quickstart.yaml")
    study.optimize(n_trials=12)
    for point in study.pareto_front():
        print(point.config, point.values)

Importing autotune imports no deep-learning framework: frameworks load in worker processes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from autotune.exceptions import (
    AutotuneError,
    GateError,
    ModelFactoryError,
    NonFiniteLossError,
    OutOfMemoryError,
    RecommendError,
    SpaceError,
    SpaceMismatchError,
    StorageError,
    StudyError,
    StudyExistsError,
    StudyNotFoundError,
    TrialError,
    UnsupportedConfigError,
    WorkloadError,
)

if TYPE_CHECKING:
    from autotune._gate import GateResult, gate
    from autotune._measure import measure, measure_trial
    from autotune._recommend import Recommendation, recommend
    from autotune._verify import VerifyReport, verify
    from autotune.config import Budget
    from autotune.pareto import FrontSnapshot, hypervolume, reference_point
    from autotune.space import SearchSpace, load_space, parse_space
    from autotune.study import (
        FrontPoint,
        Study,
        TrialResult,
        create_study,
        delete_study,
        list_studies,
        load_study,
    )
    from autotune.transfer import export_study, import_study
    from autotune.workloads import ModelSpec

# Loaded on first use (PEP 562): `autotune --help` and `import autotune` stay fast because
# SQLAlchemy, Optuna and YAML load only when a study or space is touched.
_LAZY = {
    "Budget": "autotune.config", "SearchSpace": "autotune.space",
    "load_space": "autotune.space", "parse_space": "autotune.space",
    "FrontPoint": "autotune.study", "Study": "autotune.study",
    "TrialResult": "autotune.study", "create_study": "autotune.study",
    "delete_study": "autotune.study", "list_studies": "autotune.study",
    "load_study": "autotune.study", "measure": "autotune._measure",
    "measure_trial": "autotune._measure",
    "recommend": "autotune._recommend", "Recommendation": "autotune._recommend",
    "verify": "autotune._verify", "VerifyReport": "autotune._verify",
    "gate": "autotune._gate", "GateResult": "autotune._gate",
    "FrontSnapshot": "autotune.pareto", "hypervolume": "autotune.pareto",
    "reference_point": "autotune.pareto",
    "export_study": "autotune.transfer", "import_study": "autotune.transfer",
    "ModelSpec": "autotune.workloads",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'autotune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "AutotuneError",
    "Budget",
    "FrontPoint",
    "FrontSnapshot",
    "GateError",
    "GateResult",
    "ModelFactoryError",
    "ModelSpec",
    "NonFiniteLossError",
    "OutOfMemoryError",
    "RecommendError",
    "Recommendation",
    "SearchSpace",
    "SpaceError",
    "SpaceMismatchError",
    "StorageError",
    "Study",
    "StudyError",
    "StudyExistsError",
    "StudyNotFoundError",
    "TrialError",
    "TrialResult",
    "UnsupportedConfigError",
    "VerifyReport",
    "WorkloadError",
    "__version__",
    "create_study",
    "delete_study",
    "export_study",
    "gate",
    "hypervolume",
    "import_study",
    "list_studies",
    "load_space",
    "load_study",
    "measure",
    "measure_trial",
    "parse_space",
    "recommend",
    "reference_point",
    "verify",
]
