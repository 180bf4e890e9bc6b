"""Built-in workloads, defined once and built identically by every backend.

A workload is a framework-neutral description (:class:`Workload`): layer widths, the data
and the quality metric. Backends turn the widths into their own layers, so the architecture,
parameter count and FLOPs are the same everywhere. Custom workloads are named
``"package.module:factory"`` where ``factory()`` returns a :class:`Workload`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping

from autotune.exceptions import WorkloadError
from autotune.workloads._base import Dataset, Workload
from autotune.workloads._builtin import digits_mlp, mlp

BUILTIN: Mapping[str, Callable[[], Workload]] = {"mlp": mlp, "digits_mlp": digits_mlp}

__all__ = ["BUILTIN", "Dataset", "Workload", "check_workload_name", "get_workload"]


def check_workload_name(name: str) -> None:
    """Raise ``WorkloadError`` unless ``name`` is built in or looks like ``module:factory``.

    A custom factory is not imported here: it may need the framework, which the study
    driver never imports. Only its top-level package is looked up (without running it);
    the factory is imported and fully checked in the worker.
    """
    if name in BUILTIN:
        return
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr.isidentifier():
        raise WorkloadError(
            f"unknown workload {name!r}; built-in: {', '.join(BUILTIN)}, "
            "or a factory as 'package.module:function'"
        )
    top = module.split(".")[0]
    if importlib.util.find_spec(top) is None:
        raise WorkloadError(f"workload {name!r}: no installed module named {top!r}")


def get_workload(name: str) -> Workload:
    """Build the workload called ``name`` (built-in or ``module:factory``)."""
    check_workload_name(name)
    if name in BUILTIN:
        return BUILTIN[name]()
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise WorkloadError(f"cannot load workload factory {name!r}: {e}") from e
    workload = factory()
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"workload factory {name!r} returned {type(workload).__name__}, not a Workload"
        )
    return workload
