"""Placing a study's workers on a Ray cluster (``study run NAME --jobs N --ray ADDRESS``).

Ray is the engine ML teams already run their clusters on; autotune does not schedule
machines itself. Each of the N workers is a Ray task with a resource request per trial
(CPUs, GPUs, custom resources such as ``NPU``) that runs a real ``autotune worker`` process
on the study's shared storage (PostgreSQL: several machines), so a worker on Ray is the
same as one started by hand, a Kubernetes Job or a Slurm array: heartbeats, the reaper,
device pinning and the front's lock all apply. Ray places the tasks and keeps the devices
it granted to them (``CUDA_VISIBLE_DEVICES``, ``ASCEND_RT_VISIBLE_DEVICES``); the driver
polls the storage for finished trials and reports them as a local run does.

Needs the ``ray`` extra (``pip install 'autotune[ray]'``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune.exceptions import StudyError

if TYPE_CHECKING:
    from autotune._trial_runner import TrialResult
    from autotune.study import Study

#: How often the driver reads the storage for trials the Ray workers finished.
POLL_S = 1.0


@dataclass(frozen=True)
class RayRequest:
    """What each worker task asks Ray for: the resources of one trial at a time."""

    cpus: float = 1.0
    gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``ray.remote(...).options``."""
        out: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.resources:
            out["resources"] = dict(self.resources)
        return out


def default_request(study: Study) -> RayRequest:
    """One trial's resources from the study's space: its largest ``threads`` in CPUs
    (1 when the space leaves threads to the worker), one GPU when it searches CUDA
    devices, one ``NPU`` when it searches Ascend NPUs."""
    from autotune._jobs import space_devices

    spec = study.space.param("threads")
    cpus = 1.0
    if spec is not None:
        values = [v for v in spec.values_for_check() if v is not None]
        if values:
            cpus = float(max(values))
    devices = space_devices(study.space)
    gpus = 1.0 if any(d.startswith("cuda") for d in devices) else 0.0
    custom = {"NPU": 1.0} if any(d.startswith("npu") for d in devices) else {}
    return RayRequest(cpus=cpus, gpus=gpus, resources=custom)


def shares(n_trials: int | None, workers: int) -> list[int | None]:
    """Each worker's ``--n-trials``: ``n_trials`` split as evenly as it goes."""
    if n_trials is None:
        return [None] * workers
    base, extra = divmod(n_trials, workers)
    return [base + (1 if i < extra else 0) for i in range(workers)]


def _worker_arguments(study: Study, n_trials: int | None, timeout: float | None,
                      recheck_every: int, devices: Sequence[str] | None) -> list[str]:
    command = [study.name, "--storage", study.storage.url, "--quiet", "--recheck-every",
               str(recheck_every)]
    if n_trials is not None:
        command += ["--n-trials", str(n_trials)]
    if timeout is not None:
        command += ["--timeout", f"{timeout:.0f}s"]
    if devices:
        command += ["--devices", ",".join(devices)]
    return command


def _run_worker(arguments: list[str], env: Mapping[str, str]) -> dict[str, Any]:
    """Body of one Ray task: ``autotune worker ARGUMENTS`` with the node's own Python,
    ended with the task (a cancelled or lost task must not leave trials running)."""
    import ctypes
    import socket

    def die_with_task() -> None:  # PR_SET_PDEATHSIG: the worker ends with this task
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)

    done = subprocess.run([sys.executable, "-m", "autotune", "worker", *arguments],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, **env}, preexec_fn=die_with_task)
    return {"host": socket.gethostname(), "returncode": done.returncode,
            "stderr": done.stderr[-4000:]}


def run_on_ray(study: Study, address: str, *, jobs: int, n_trials: int | None,
               timeout: float | None, recheck_every: int,
               request: RayRequest | None = None, devices: Sequence[str] | None = None,
               callbacks: list[Callable[[TrialResult], None]] | None = None,
               ) -> list[TrialResult]:
    """Run ``jobs`` autotune workers of ``study`` as Ray tasks on the cluster at
    ``address`` (``auto``: the one this machine belongs to) sharing ``n_trials``; call
    ``callbacks`` for each trial they finish, as :meth:`Study.optimize` does, and return
    those trials. Raises :class:`StudyError` when Ray is missing, the cluster cannot be
    reached, the storage is a SQLite file, or a worker fails."""
    from autotune.storage._url import sqlite_path

    try:
        import ray
    except ImportError:
        raise StudyError("--ray needs Ray: pip install 'autotune[ray]'") from None
    if sqlite_path(study.storage.url) is not None:
        raise StudyError(f"--ray runs workers on the cluster's machines, which cannot share "
                         f"the SQLite file {study.storage.url!r}; use a PostgreSQL storage "
                         "(postgresql+psycopg://...)")
    request = request or default_request(study)
    before = {t.number for t in study.trials()}
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    except Exception as e:  # ConnectionError and Ray's own: one line
        raise StudyError(f"--ray {address}: cannot connect to the Ray cluster "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
    try:
        task = ray.remote(_run_worker).options(**request.options())
        env = {k: v for k, v in os.environ.items() if k.startswith("AUTOTUNE_")}
        pending = [task.remote(_worker_arguments(study, share, timeout, recheck_every,
                                                 devices), env)
                   for share in shares(n_trials, jobs)]
        reported: set[int] = set()
        results: list[TrialResult] = []
        outcomes: list[dict[str, Any]] = []
        while True:
            finished, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S) \
                if pending else ([], [])
            for ref in finished:
                try:
                    outcomes.append(ray.get(ref))
                except ray.exceptions.RayError as e:  # a lost node, a crashed task
                    outcomes.append({"host": "?", "returncode": -1,
                                     "stderr": f"{type(e).__name__}: {e}"})
            for trial in study.trials():
                if trial.number in before or trial.number in reported or \
                        trial.state in ("running", "waiting"):
                    continue
                reported.add(trial.number)
                results.append(trial)
                for callback in callbacks or ():
                    callback(trial)
            if not pending:
                break
        failed = [o for o in outcomes if o["returncode"] != 0]
        if failed:
            last = (failed[0]["stderr"].strip().splitlines() or ["(no output)"])[-1]
            raise StudyError(f"{len(failed)} of {jobs} Ray worker(s) failed; on "
                             f"{failed[0]['host']}: {last}")
        return results
    finally:
        ray.shutdown()


__all__ = ["RayRequest", "default_request", "run_on_ray", "shares"]
