"""Launchers: run one trial configuration in an isolated worker process."""

from autotune.launch._process import ProcessLauncher, WorkerOutcome

__all__ = ["ProcessLauncher", "WorkerOutcome"]
