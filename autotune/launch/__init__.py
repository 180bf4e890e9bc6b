"""Launchers: run one trial configuration in an isolated worker process.

:class:`WarmLauncher` (the default of a study) keeps one worker per (backend, device,
threads) alive between trials; :class:`ProcessLauncher` starts a fresh process per trial.
Both satisfy :class:`Launcher`.
"""

from typing import Protocol

from autotune.config import TrialConfig
from autotune.launch._process import ProcessLauncher, WorkerOutcome
from autotune.launch._warm import WarmLauncher


class Launcher(Protocol):
    """What the study driver needs from a launcher."""

    def run(self, config: TrialConfig) -> WorkerOutcome:
        """Run one trial and say how it went."""

    def close(self) -> None:
        """Release every worker process."""


__all__ = ["Launcher", "ProcessLauncher", "WarmLauncher", "WorkerOutcome"]
