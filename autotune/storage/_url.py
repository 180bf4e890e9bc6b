"""Storage URLs: the default, the environment override, and checks with clear errors."""

from __future__ import annotations

import os
from pathlib import Path

from autotune.exceptions import StorageError

#: Relative to the working directory, like optuna-dashboard's usual ``sqlite:///db.sqlite3``.
DEFAULT_STORAGE = "sqlite:///studies/autotune.db"
ENV_VAR = "AUTOTUNE_STORAGE"


def resolve_storage_url(url: str | None = None) -> str:
    """``url``, else ``$AUTOTUNE_STORAGE``, else :data:`DEFAULT_STORAGE`, checked.

    Raises :class:`StorageError` for a malformed URL or an unknown database driver.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url is not None and not url.strip():
        raise StorageError("empty storage URL; expected e.g. sqlite:///studies/autotune.db")
    url = url or os.environ.get(ENV_VAR) or DEFAULT_STORAGE
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        raise StorageError(
            f"malformed storage URL {url!r} ({e}); expected e.g. sqlite:///studies/autotune.db "
            "or postgresql+psycopg://user@host:5432/db"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StorageError(f"storage URL {url!r} is an in-memory database: studies would "
                           "vanish with the process; use sqlite:///path/to/file.db")
    try:
        parsed.get_dialect()
    except Exception as e:  # NoSuchModuleError and driver import errors
        raise StorageError(f"storage URL {url!r}: unknown or missing database driver "
                           f"({type(e).__name__}: {e})") from None
    return url


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (``None`` for other databases or in-memory)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or \
            parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def check_sqlite_writable(url: str, *, create_parent: bool) -> None:
    """Fail early, before anything is written, when a SQLite file cannot be created/written."""
    path = sqlite_path(url)
    if path is None:
        return
    parent = path.parent if str(path.parent) else Path(".")
    blocking = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()),
                    None)
    if blocking is not None:
        raise StorageError(f"storage {url!r}: {blocking} is a file, not a directory")
    if not parent.exists():
        if not create_parent:
            raise StorageError(f"storage {url!r}: directory {parent} does not exist")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"storage {url!r}: cannot create directory {parent} "
                               f"({e.strerror})") from None
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"storage {url!r}: database file {path} is not writable")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise StorageError(f"storage {url!r}: directory {parent} is not writable")
