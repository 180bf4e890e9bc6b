"""Run one trial configuration: the pre-checks, the launch and a typed result.

Every path that measures a configuration goes through :func:`run_config`: a study's
trials and its drift rechecks (:mod:`autotune._trial_runner`), ``measure`` and
``measure --from-trial`` (:mod:`autotune._measure`), ``gate`` (:mod:`autotune._gate`) and
``verify`` (:mod:`autotune._verify`). What cannot run here is known without a worker: a
backend that is not installed, or a combination its capabilities rule out on the device;
those come back ``infeasible`` (``unsupported``) at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autotune.config import TrialConfig
from autotune.launch import Launcher, WorkerOutcome
from autotune.profiling.measurement import Measurement
from autotune.simulation import is_simulated

if TYPE_CHECKING:
    from autotune.config import Budget
    from autotune.space import SearchSpace

RunState = Literal["ok", "infeasible", "fail"]


@dataclass(frozen=True)
class RunResult:
    """How one run of a configuration went.

    ``state`` is ``ok`` (``measurement`` holds what was measured), ``infeasible`` (out of
    memory, unsupported, diverged: data for the sampler) or ``fail`` (crash, timeout,
    killed worker). ``launched`` is ``False`` when a pre-check ruled the configuration
    out and no worker was started.
    """

    state: RunState
    failure_kind: str | None = None
    reason: str = ""
    traceback: str = ""
    wall_s: float = 0.0
    measurement: Measurement | None = None
    launched: bool = True

    @property
    def ok(self) -> bool:
        """Whether there is a measurement."""
        return self.state == "ok"

    def summary(self) -> dict[str, Any]:
        """The measurement's :meth:`~Measurement.summary` (empty without one)."""
        return self.measurement.summary() if self.measurement is not None else {}

    def describe(self) -> str:
        """``ok``, or the failure kind and reason (``fail (timeout): killed after ...``)."""
        if self.ok:
            return "ok"
        return f"{self.state} ({self.failure_kind}): {self.reason}"

    @classmethod
    def of(cls, config: TrialConfig, outcome: WorkerOutcome, *,
           launched: bool = True) -> RunResult:
        """The typed form of a worker's outcome for ``config``."""
        measurement = None
        if outcome.status == "ok":
            measurement = Measurement.from_worker(
                outcome.result, samples_per_step=config.batch_size, mode=config.mode)
        return cls(state=outcome.status, failure_kind=outcome.failure_kind,
                   reason=outcome.reason, traceback=outcome.traceback, wall_s=outcome.wall_s,
                   measurement=measurement, launched=launched)

    @classmethod
    def unsupported(cls, reason: str) -> RunResult:
        """An infeasible result known in advance (no worker was started)."""
        return cls("infeasible", failure_kind="unsupported", reason=reason, launched=False)


def precheck(config: TrialConfig) -> str | None:
    """Why ``config`` cannot run on this machine, known without a worker; ``None`` if
    nothing rules it out (a backend that is not installed, or a mode/precision/execution
    its capabilities exclude on the device)."""
    from autotune.backends import BACKENDS, capabilities

    entry = BACKENDS.get(config.backend)
    if entry is not None and not entry.is_installed():  # no worker for an import error
        return (f"backend {config.backend!r} is not installed here; "
                f"install it with: {entry.install_hint}")
    reason = capabilities(config.backend, config.device).check(
        config.mode, config.precision, config.execution)
    if reason is None and is_simulated(config.device):
        reason = _simulated_reason(config)
    if reason is None and entry is not None:
        reason = entry.knob_reason(config.device, config.mode, config.knobs())
    if reason is None:
        from autotune._data_parallel import precheck_reason

        reason = precheck_reason(config)
    if reason is not None:
        return f"{config.backend} on {config.device}: {reason}"
    return None


def _simulated_reason(config: TrialConfig) -> str | None:
    """Why a simulated device cannot run ``config`` (undeclared, or a precision it lacks)."""
    from autotune import simulation

    try:
        sim = simulation.parse_simulator(config.workload_kwargs)
        return simulation.unsupported_reason(sim, config)
    except simulation.SimulationError as e:
        return str(e)


def _memory_limit(config: TrialConfig) -> tuple[int, str] | None:
    """The bytes a trial may use and what they are: ``budget.memory_mb``, else on a CPU
    the machine's memory (an accelerator's size is not known without its framework)."""
    if config.budget.memory_mb is not None:
        return config.budget.memory_mb * 2**20, f"budget.memory_mb={config.budget.memory_mb}"
    if config.device == "cpu":
        try:
            text = Path("/proc/meminfo").read_text(encoding="ascii")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024, "the machine's memory"
    return None


def predicted_out_of_memory(config: TrialConfig) -> str | None:
    """``predicted: needs X GiB of Y`` when the memory model of the workload (the built-in
    gpt's, :mod:`autotune.workloads._memory`) says the trial cannot fit; else ``None``."""
    from autotune.workloads._memory import predict_memory

    if is_simulated(config.device):  # the simulator's memory model is exact
        from autotune import simulation

        sim = simulation.parse_simulator(config.workload_kwargs)
        need = simulation.memory_bytes(sim, config)
        capacity = simulation.memory_limit_bytes(sim, config)
        if need <= capacity:
            return None
        return (f"predicted: needs {need / 2**30:.2f} GiB of {capacity / 2**30:.2f} GiB "
                f"(simulated device {config.device})")
    prediction = predict_memory(config)
    limit = _memory_limit(config)
    if prediction is None or limit is None or prediction.total_bytes <= limit[0]:
        return None
    return (f"predicted: needs {prediction.describe()} of {limit[0] / 2**30:.2f} GiB "
            f"({limit[1]})")


def run_config(config: TrialConfig, launcher: Launcher) -> RunResult:
    """Run ``config`` once on ``launcher``: the pre-checks, then a worker.

    A configuration the pre-checks rule out comes back ``infeasible`` (``unsupported``)
    without starting a worker. A worker's ``ok`` result is turned into its
    :class:`Measurement`.
    """
    reason = precheck(config)
    if reason is not None:
        return RunResult.unsupported(reason)
    reason = predicted_out_of_memory(config)
    if reason is not None:
        return RunResult("infeasible", failure_kind="oom", reason=reason, launched=False)
    from autotune.launch import ProcessLauncher, WarmLauncher

    if isinstance(launcher, (ProcessLauncher, WarmLauncher)) and \
            not is_simulated(config.device):
        # A real worker will compare the trial with the machine's peak: measure a missing
        # entry now, once per machine, outside the trial's budget.
        from autotune.profiling.peak import ensure_peak

        ensure_peak(config.device, config.precision, config.threads)
    return RunResult.of(config, launcher.run(config))


@contextlib.contextmanager
def launcher_for(launcher: Launcher | None,
                 default: Callable[[], Launcher]) -> Iterator[Launcher]:
    """``launcher``, or a fresh ``default()`` (e.g. :class:`ProcessLauncher`) closed on
    exit; a launcher passed in belongs to the caller and stays open."""
    if launcher is not None:
        yield launcher
        return
    own = default()
    try:
        yield own
    finally:
        own.close()


def trial_config(space: SearchSpace, params: Mapping[str, Any], *, seed: int,
                 budget: Budget | None = None) -> TrialConfig:
    """The configuration a trial with ``params`` of ``space`` runs: the space's fixed
    knobs, ``budget`` (default the space's) and the execution resolved for the backend."""
    from autotune.backends import resolve_execution

    config = TrialConfig.from_params(space, dict(params), seed=seed)
    changes: dict[str, Any] = {"execution": resolve_execution(config.backend,
                                                             config.execution, config.mode)}
    if budget is not None:
        changes["budget"] = budget
    return dataclasses.replace(config, **changes)


__all__ = ["RunResult", "launcher_for", "precheck", "run_config", "trial_config"]
