"""Run a trial in a fresh worker process, with a hard time limit and crash capture."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autotune.config import TrialConfig

#: How much of the worker's stderr is kept when it crashes.
STDERR_TAIL_CHARS = 4000


@dataclass(frozen=True)
class WorkerOutcome:
    """What came back from a worker.

    ``status`` is ``ok`` (a measurement in ``result``), ``infeasible`` (an out-of-memory,
    unsupported combination or diverged loss: data for the sampler) or ``fail`` (crash,
    timeout, killed worker: recorded as FAIL).
    """

    status: Literal["ok", "infeasible", "fail"]
    result: dict[str, Any] = field(default_factory=dict)
    failure_kind: str | None = None
    reason: str = ""
    traceback: str = ""
    wall_s: float = 0.0


def worker_environment(memory_mb: int | None,
                       cpus: Sequence[int] | None = None) -> dict[str, str]:
    """The environment a worker starts with: the driver's, plus the launch time (so process
    start-up is measured), the driver's directory on ``PYTHONPATH`` (custom workloads stay
    importable from the worker's own working directory), an absolute cache dir and the
    cores it may use (``cpus``; ``None``: the driver's)."""
    path = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "AUTOTUNE_LAUNCH_TIME": repr(time.time()), "PYTHONPATH": path}
    if cpus is not None:
        env["AUTOTUNE_CPUS"] = ",".join(str(c) for c in sorted(cpus))
    if memory_mb is not None:
        # glibc reserves 64 MB of address space per thread arena; under an address
        # space cap that is phantom memory (MindSpore needs 800 MB less headroom).
        env.setdefault("MALLOC_ARENA_MAX", "2")
    if env.get("AUTOTUNE_CACHE_DIR"):  # a relative cache dir means the driver's
        env["AUTOTUNE_CACHE_DIR"] = os.path.abspath(env["AUTOTUNE_CACHE_DIR"])
    return env


class ProcessLauncher:
    """Starts a fresh ``python -m autotune.launch._worker`` per trial; enforces its budget.

    Every trial pays process start and framework import (seconds); :class:`WarmLauncher`
    pays them once per (backend, device, threads). Fresh processes are the reference the
    warm ones are checked against (``benchmarks/overhead_benchmark.py``).

    The worker runs in its own session (process group), so on timeout the whole group,
    including any helper processes a framework started, is killed with SIGKILL.
    """

    def __init__(self, python: str = sys.executable, *,
                 cpus: Sequence[int] | None = None) -> None:
        self.python = python
        #: The cores its workers may use (``None``: the driver's).
        self.cpus = None if cpus is None else tuple(cpus)
        self._lock = threading.Lock()
        self._closed = False
        self._running: set[subprocess.Popen[bytes]] = set()

    def close(self) -> None:
        """Kill the workers still running (a trial thread of ``--jobs`` waits on one when
        the run is interrupted); a :meth:`run` after this starts none."""
        with self._lock:
            self._closed = True
            running = list(self._running)
        for proc in running:
            kill_group(proc)

    def run(self, config: TrialConfig) -> WorkerOutcome:
        """Run ``config`` to completion, failure or its ``budget.trial_seconds`` limit."""
        with tempfile.TemporaryDirectory(prefix="autotune-trial-") as tmp:
            config_path = Path(tmp, "config.json")
            result_path = Path(tmp, "result.json")
            stderr_path = Path(tmp, "stderr.txt")
            config_path.write_text(json.dumps(config.to_dict()))
            start = time.perf_counter()
            # The worker runs in the trial's temporary directory, so whatever a framework
            # writes to its working directory (MindSpore's rank_0/ logs) goes away with it;
            # the driver's directory stays importable for custom workloads.
            env = worker_environment(config.budget.memory_mb, self.cpus)
            with open(stderr_path, "wb") as stderr, self._lock:
                if self._closed:
                    return closed_outcome()
                proc = subprocess.Popen(
                    [self.python, "-m", "autotune.launch._worker", str(config_path),
                     str(result_path)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    start_new_session=True, env=env, cwd=tmp,
                )
                self._running.add(proc)
            try:
                timed_out = False
                try:
                    proc.wait(timeout=config.budget.trial_seconds)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    kill_group(proc)
                except BaseException:  # Ctrl-C in the driver: never leave an orphan
                    kill_group(proc)
                    raise
                finally:
                    kill_group(proc)  # helpers the worker left behind
            finally:
                with self._lock:
                    self._running.discard(proc)
            wall = time.perf_counter() - start
            stderr_tail = stderr_path.read_text(errors="replace")[-STDERR_TAIL_CHARS:]
            return _outcome(proc.returncode, timed_out, result_path, stderr_tail, wall,
                            config.budget.trial_seconds)


def closed_outcome() -> WorkerOutcome:
    """What a launcher closed by an ending run answers a trial it no longer starts."""
    return WorkerOutcome("fail", failure_kind="interrupted",
                         reason="not started: the run is ending (its launcher was closed)")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker's whole process group (helpers a framework started included)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _outcome(returncode: int, timed_out: bool, result_path: Path, stderr_tail: str,
             wall: float, limit_s: float) -> WorkerOutcome:
    result: dict[str, Any] = {}
    if result_path.exists():  # written atomically: complete or absent
        try:
            result = json.loads(result_path.read_text())
        except json.JSONDecodeError:
            result = {}
    return outcome_of(result, returncode=returncode, timed_out=timed_out,
                      stderr_tail=stderr_tail, wall=wall, limit_s=limit_s)


def outcome_of(result: dict[str, Any], *, returncode: int | None, timed_out: bool,
               stderr_tail: str, wall: float, limit_s: float) -> WorkerOutcome:
    """Classify what a worker said (``result``, possibly empty) and how it ended.

    ``returncode`` is ``None`` while the worker process is still alive (a warm worker that
    answered).
    """
    status = result.get("status")
    # A result written before the kill is a result: only exiting was late.
    if status == "ok" and (not returncode or timed_out):
        return WorkerOutcome("ok", result=result, wall_s=wall)
    if timed_out:
        return WorkerOutcome("fail", failure_kind="timeout", wall_s=wall,
                             reason=f"killed after exceeding its {limit_s:g} s budget",
                             traceback=stderr_tail)
    if status == "infeasible":
        return WorkerOutcome("infeasible", result=result, failure_kind=result["failure_kind"],
                             reason=result.get("reason", ""), wall_s=wall)
    if status == "crash":
        # the worker names the kind (model_error: the user's factory; crash: anything else)
        return WorkerOutcome("fail", failure_kind=result.get("failure_kind") or "crash",
                             reason=result.get("reason", ""),
                             traceback=result.get("traceback", "") or stderr_tail, wall_s=wall)
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:  # real-time signals have no name
            name = f"signal {-returncode}"
        if name == "SIGKILL":
            # Not retried: the kernel's OOM killer sends this, and it would strike again.
            return WorkerOutcome("fail", failure_kind="killed", wall_s=wall, traceback=stderr_tail,
                                 reason="worker killed by SIGKILL (the kernel's OOM killer "
                                        "sends this)")
        return WorkerOutcome("fail", failure_kind="crash", wall_s=wall,
                             reason=f"worker died of {name}", traceback=stderr_tail)
    return WorkerOutcome("fail", failure_kind="crash", wall_s=wall, traceback=stderr_tail,
                         reason=f"worker exited with code {returncode} without a result")
