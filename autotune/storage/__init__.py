"""Storage: Optuna's tables plus typed ``autotune_*`` tables in the same database."""

from autotune.storage._db import SCHEMA_VERSION, AutotuneStorage
from autotune.storage._url import DEFAULT_STORAGE, resolve_storage_url

__all__ = ["DEFAULT_STORAGE", "SCHEMA_VERSION", "AutotuneStorage", "resolve_storage_url"]
