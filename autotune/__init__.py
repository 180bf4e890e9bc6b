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

from autotune.exceptions import (
    AutotuneError,
    NonFiniteLossError,
    OutOfMemoryError,
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
from autotune.space import Budget, SearchSpace, load_space, parse_space
from autotune.study import (
    FrontPoint,
    Study,
    TrialResult,
    create_study,
    delete_study,
    list_studies,
    load_study,
)

__version__ = "0.1.0"

__all__ = [
    "AutotuneError",
    "Budget",
    "FrontPoint",
    "NonFiniteLossError",
    "OutOfMemoryError",
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
    "WorkloadError",
    "__version__",
    "create_study",
    "delete_study",
    "list_studies",
    "load_space",
    "load_study",
    "parse_space",
]
