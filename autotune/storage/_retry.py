"""Retrying database work through transient faults: a lost connection, a restarting server,
a locked SQLite file.

A worker of a long study must not die because PostgreSQL restarted or an administrator ran
``pg_terminate_backend``: the operation is retried with exponential backoff (SQLAlchemy's
and Optuna's own storage errors alike, whichever wraps the driver's), and only a fault
that outlasts :data:`RETRY_BUDGET_S` reaches the caller. Errors that are not transient
(a constraint violated, a table missing) are never retried.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

_logger = logging.getLogger("autotune.storage")

T = TypeVar("T")

#: Seconds of retrying before a transient fault is given up (a server restart takes a few;
#: ``$AUTOTUNE_STORAGE_RETRY_S`` overrides it).
RETRY_BUDGET_S = 120.0
#: First and largest delay between attempts.
FIRST_DELAY_S, MAX_DELAY_S = 0.05, 2.0

#: Words of driver messages that mean the connection or the lock, not the statement, failed.
_TRANSIENT_WORDS = (
    "database is locked", "database table is locked", "server closed the connection",
    "terminating connection", "connection refused", "could not connect",
    "the database system is starting up", "the database system is shutting down",
    "connection already closed", "connection is closed", "consuming input failed",
    "ssl syscall", "eof detected", "connection reset", "broken pipe",
    "server conn crashed", "admin shutdown", "connection timeout expired",
    "no connection to the server", "lost synchronization",
    # libpq on a connection whose last command the server cut off mid-way
    "another command is already in progress",
)


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or what it wraps: Optuna wraps SQLAlchemy's, which wraps the
    driver's) is a lost connection or a busy database rather than a bad statement."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OperationalError | InterfaceError):
            text = str(getattr(current, "orig", None) or current).lower()
            if any(word in text for word in _TRANSIENT_WORDS):
                return True
        current = current.__cause__ or current.__context__
    return False


def retry_budget_s() -> float:
    """:data:`RETRY_BUDGET_S`, or ``$AUTOTUNE_STORAGE_RETRY_S`` when set."""
    try:
        return float(os.environ.get("AUTOTUNE_STORAGE_RETRY_S", RETRY_BUDGET_S))
    except ValueError:
        return RETRY_BUDGET_S


def retrying(operation: Callable[[], T], what: str = "storage operation", *,
             budget_s: float | None = None) -> T:
    """``operation()``, retried with exponential backoff while it fails transiently and
    ``budget_s`` (default :func:`retry_budget_s`) has not passed; the last error is raised.

    Each attempt must be a whole transaction: one that failed half way was rolled back by
    the database, so running it again is safe.
    """
    limit = retry_budget_s() if budget_s is None else budget_s
    start = time.monotonic()
    delay = FIRST_DELAY_S
    attempt = 0
    while True:
        try:
            return operation()
        except Exception as e:
            waited = time.monotonic() - start
            if not is_transient(e) or waited + delay > limit:
                raise
            attempt += 1
            log = _logger.warning if attempt == 1 else _logger.debug
            log("%s failed (%s); retrying (attempt %d, %.1f s so far)", what,
                str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__,
                attempt, waited)
            time.sleep(delay)
            delay = min(MAX_DELAY_S, delay * 2)
