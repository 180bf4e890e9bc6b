"""Test helpers shipped with autotune: misbehaving workloads to exercise failure handling,
:class:`FakeLauncher` (trial outcomes without worker processes, in
:mod:`autotune.testing.launchers`) and storages for tests (:data:`STORAGE_MODES`,
:class:`StorageSupplier`, in :mod:`autotune.testing.storages`).

Loaded on first use: importing a submodule (a worker imports the test workloads) loads
nothing else, and nothing here imports pytest or psycopg until a storage needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.testing.launchers import SYNTHETIC_NOTE, FakeLauncher, on_calls
    from autotune.testing.storages import (
        STORAGE_MODES,
        StorageSupplier,
        dispose,
        optuna_storage,
    )

_LAZY = {"FakeLauncher": "launchers", "SYNTHETIC_NOTE": "launchers", "on_calls": "launchers",
         "STORAGE_MODES": "storages", "StorageSupplier": "storages", "dispose": "storages",
         "optuna_storage": "storages"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"autotune.testing.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'autotune.testing' has no attribute {name!r}")


__all__ = ["STORAGE_MODES", "SYNTHETIC_NOTE", "FakeLauncher", "StorageSupplier", "dispose",
           "on_calls", "optuna_storage"]
