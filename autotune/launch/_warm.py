"""Warm workers: one long-lived process per (backend, device, threads) serves many trials.

A fresh process per trial pays process start and framework import every time (about 4 s
for torch on the development VM, against a 1 s measured window). A warm worker pays them
once. Isolation is kept where it matters:

* a worker is replaced after any trial that did not end ``ok`` (a crash, out-of-memory,
  timeout, unsupported call or diverged loss can leave a framework unusable: MindSpore
  after a failed mixed-precision call) and after every ``recycle_after`` trials;
* between trials a worker is stopped (SIGSTOP), so an idle framework's spinning thread
  pools never steal CPU from the worker that is measuring;
* a hung trial is killed at its budget, a worker that dies is noticed within
  :data:`POLL_S`, and :meth:`WarmLauncher.close` kills every worker's process group, so
  nothing outlives a study.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.config import TrialConfig
from autotune.launch._process import (
    STDERR_TAIL_CHARS,
    WorkerOutcome,
    closed_outcome,
    kill_group,
    outcome_of,
    worker_environment,
)

if TYPE_CHECKING:
    from autotune.space import SearchSpace

#: How often a waiting driver checks that its worker is still alive (a dead worker whose
#: pipe is held open by a stray child would otherwise go unnoticed until the budget ends).
POLL_S = 0.2
#: Seconds a worker may take to start and import its framework before it is given up.
STARTUP_TIMEOUT_S = 180.0
#: Default number of trials after which a worker is replaced even if all went well.
RECYCLE_AFTER = 50
#: Default number of warm workers kept at once (least recently used ones are closed).
MAX_WORKERS = 3

#: The thread count of a worker key whose backend changes it per trial (torch).
THREADS_PER_TRIAL = "per trial"

WorkerKey = tuple[str, str, int | str | None, int | None]


def worker_key(config: TrialConfig) -> WorkerKey:
    """Trials that may share a worker: same backend, device, memory cap and thread count
    (TensorFlow and MindSpore size their thread pools and memory pools once per process);
    a backend that resizes its pool in place (torch) shares one worker over thread counts,
    which saves a framework import (about a second) per thread count a study tries."""
    from autotune.backends import BackendLookupError, get_spec

    threads: int | str | None = config.threads
    try:
        if get_spec(config.backend).threads_in_place:
            threads = THREADS_PER_TRIAL
    except BackendLookupError:
        pass  # the worker says why it cannot load the backend
    return config.backend, config.device, threads, config.budget.memory_mb


def shared_worker_key(space: SearchSpace) -> WorkerKey | None:
    """The worker key every trial of ``space`` has, when it is known before any trial: one
    backend and one device, and the thread count fixed or changed in place by the backend
    (torch); ``None`` when trials may need different workers."""
    from autotune.backends import BackendLookupError, get_spec

    searched = {p.name for p in space.params if p.kind != "fixed"}
    if searched & {"backend", "device"}:
        return None
    config = TrialConfig.from_params(space, {})
    if "threads" in searched:
        try:
            if not get_spec(config.backend).threads_in_place:
                return None
        except BackendLookupError:
            return None
    return worker_key(config)


class WarmWorker:
    """One serving worker process and the pipes to it."""

    def __init__(self, key: WorkerKey, python: str = sys.executable,
                 cpus: Sequence[int] | None = None) -> None:
        backend, _device, threads, memory_mb = key
        self.key = key
        self.trials = 0
        self._dir = tempfile.TemporaryDirectory(prefix="autotune-worker-")
        self._stderr_path = Path(self._dir.name, "stderr.txt")
        self._buffer = b""
        reply_r, reply_w = os.pipe()
        try:
            with open(self._stderr_path, "wb") as stderr:
                self.proc = subprocess.Popen(
                    [python, "-m", "autotune.launch._worker", "--serve", backend,
                     "auto" if threads in (None, THREADS_PER_TRIAL) else str(threads),
                     str(reply_w)],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                    pass_fds=(reply_w,), start_new_session=True,
                    env=worker_environment(memory_mb, cpus), cwd=self._dir.name,
                )
        except BaseException:
            os.close(reply_r)
            self._dir.cleanup()
            raise
        finally:
            os.close(reply_w)
        self._reply = reply_r
        self._closed = False
        self.startup: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        """The worker's process id (also its process group id)."""
        return self.proc.pid

    def start(self) -> WorkerOutcome | None:
        """Wait for the worker to import its framework; ``None`` when it is ready, else
        the outcome the trial that needed it gets."""
        t0 = time.perf_counter()
        reply, timed_out = self._read_reply(STARTUP_TIMEOUT_S)
        if reply is not None and reply.get("status") == "ready":
            self.startup = reply
            self._pause()
            return None
        return self._failure(reply, timed_out, time.perf_counter() - t0, STARTUP_TIMEOUT_S)

    def run(self, config: TrialConfig) -> WorkerOutcome:
        """Send one trial and wait for its reply, at most ``budget.trial_seconds``."""
        stderr_offset = self._stderr_size()
        t0 = time.perf_counter()
        limit = config.budget.trial_seconds
        self._resume()
        try:
            assert self.proc.stdin is not None
            # CLOCK_MONOTONIC is system-wide on Linux: the worker's deadline counts from
            # here, and a wall-clock step (NTP) cannot move it.
            self.proc.stdin.write(json.dumps({"config": config.to_dict(),
                                              "sent_at": time.monotonic()}).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the read below reports how
        reply, timed_out = self._read_reply(limit)
        wall = time.perf_counter() - t0
        self.trials += 1
        if reply is None or timed_out:
            return self._failure(reply, timed_out, wall, limit, stderr_offset)
        self._pause()
        if self.trials == 1:  # the start-up this trial waited for is part of its cost
            reply["process_start_s"] = self.startup.get("process_start_s", 0.0)
            reply["import_s"] = self.startup.get("import_s", 0.0)
        return outcome_of(reply, returncode=None, timed_out=False,
                          stderr_tail=self._stderr_tail(stderr_offset), wall=wall, limit_s=limit)

    def kill(self) -> None:
        """SIGKILL the worker's process group, leaving its pipes open: safe from another
        thread than the one reading its reply (which then sees it gone)."""
        if self.proc.returncode is None:  # once reaped, its pid may belong to another
            kill_group(self.proc)

    def close(self) -> None:
        """Kill the worker's process group and remove its directory (once: a second call
        must not close a descriptor number that is another file's by then)."""
        if self._closed:
            return
        self._closed = True
        kill_group(self.proc)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(OSError):
            os.close(self._reply)
        self._dir.cleanup()

    # -- internals -------------------------------------------------------------------------

    def _pause(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGSTOP)

    def _resume(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGCONT)

    def _read_reply(self, limit_s: float) -> tuple[dict[str, Any] | None, bool]:
        """One JSON line from the worker, ``(None, True)`` after ``limit_s`` and
        ``(None, False)`` when it died first."""
        deadline = time.perf_counter() + limit_s
        while b"\n" not in self._buffer:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                if self._drain():  # a reply that arrived just in time is a reply
                    continue
                return None, True
            ready, _, _ = select.select([self._reply], [], [], min(POLL_S, remaining))
            if ready:
                chunk = os.read(self._reply, 1 << 16)
                if not chunk:  # EOF: the worker is gone
                    self.proc.wait()
                    return None, False
                self._buffer += chunk
            elif self.proc.poll() is not None:
                if self._drain():  # it replied, then exited
                    continue
                return None, False
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply: dict[str, Any] = json.loads(line)
        except json.JSONDecodeError:
            return None, False
        return reply, False

    def _drain(self) -> bool:
        """Read whatever is already in the reply pipe without waiting; whether a whole
        line is now buffered."""
        while select.select([self._reply], [], [], 0)[0]:
            chunk = os.read(self._reply, 1 << 16)
            if not chunk:
                break
            self._buffer += chunk
        return b"\n" in self._buffer

    def _failure(self, reply: dict[str, Any] | None, timed_out: bool, wall: float,
                 limit_s: float, stderr_offset: int = 0) -> WorkerOutcome:
        kill_group(self.proc)  # a timed-out or broken worker is never reused
        return outcome_of(reply or {}, returncode=self.proc.returncode, timed_out=timed_out,
                          stderr_tail=self._stderr_tail(stderr_offset), wall=wall,
                          limit_s=limit_s)

    def _stderr_size(self) -> int:
        try:
            return self._stderr_path.stat().st_size
        except OSError:
            return 0

    def _stderr_tail(self, offset: int) -> str:
        try:
            with open(self._stderr_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")[-STDERR_TAIL_CHARS:]
        except OSError:
            return ""


class WarmLauncher:
    """Runs trials on warm workers, one per (backend, device, threads, memory cap); threads
    left out for a backend that changes them per trial (torch).

    Use it as a context manager (or call :meth:`close`): closing kills every worker.

    Args:
        recycle_after: trials after which a worker is replaced although all went well
            (bounds what a framework may accumulate: caches, fragmentation).
        max_workers: warm workers kept at once; the least recently used is closed first.
        cpus: the cores its workers may use (one job's share of the machine; ``None``:
            the driver's).
    """

    def __init__(self, *, recycle_after: int = RECYCLE_AFTER, max_workers: int = MAX_WORKERS,
                 python: str = sys.executable, cpus: Sequence[int] | None = None) -> None:
        if recycle_after < 1 or max_workers < 1:
            raise ValueError("recycle_after and max_workers must be at least 1")
        self.recycle_after = recycle_after
        self.max_workers = max_workers
        self.python = python
        self.cpus = None if cpus is None else tuple(cpus)
        self._workers: OrderedDict[WorkerKey, WarmWorker] = OrderedDict()
        self.started = 0  # workers started so far (replacements included)
        # close() from another thread (Ctrl-C in --jobs) must not miss a worker that a
        # trial thread is starting at that moment, nor let one start after it
        self._lock = threading.Lock()
        self._closed = False
        self._busy: set[WorkerKey] = set()  # workers running a trial now

    def prestart(self, key: WorkerKey) -> None:
        """Start the worker of ``key`` now without waiting for it: its framework imports
        while the caller gets on with its own start-up (storage, sampler), and the first
        trial of that key waits only for what is left of it."""
        with self._lock:
            if self._closed or key in self._workers:
                return
            _worker, evicted = self._take(key)
        for each in evicted:
            each.close()

    def run(self, config: TrialConfig) -> WorkerOutcome:
        """Run ``config`` on its warm worker, starting one if needed."""
        key = worker_key(config)
        with self._lock:
            if self._closed:
                return closed_outcome()
            worker, evicted = self._take(key)
            self._busy.add(key)
        try:
            for each in evicted:
                each.close()
            return self._run_on(key, worker, config)
        finally:
            with self._lock:
                self._busy.discard(key)
                closed_meanwhile = self._closed
            if closed_meanwhile:  # close() only killed it: its pipes are this thread's
                worker.close()

    def _take(self, key: WorkerKey) -> tuple[WarmWorker, list[WarmWorker]]:
        """The worker for ``key`` (a new one, not yet started, if it has none) and the
        workers that make way for it; called holding the lock."""
        evicted = []
        worker = self._workers.get(key)
        if worker is not None and worker.proc.poll() is not None:
            # It died while idle (e.g. the OOM killer chose it): not this trial's doing.
            evicted.append(self._workers.pop(key))
            worker = None
        if worker is not None:
            self._workers.move_to_end(key)
            return worker, evicted
        # An accelerator's memory is held by the framework in its worker (TensorFlow takes
        # nearly all of it at the first op): one warm worker per device, or the next
        # backend's trial would be out of memory for no reason of its own.
        if key[1] != "cpu":
            evicted += [self._workers.pop(k) for k in list(self._workers) if k[1] == key[1]]
        while len(self._workers) >= self.max_workers:
            evicted.append(self._workers.popitem(last=False)[1])
        worker = WarmWorker(key, self.python, self.cpus)
        self.started += 1
        self._workers[key] = worker
        return worker, evicted

    def _run_on(self, key: WorkerKey, worker: WarmWorker, config: TrialConfig,
                ) -> WorkerOutcome:
        startup_s = 0.0
        if not worker.startup:
            t0 = time.perf_counter()
            try:
                failed = worker.start()
            except BaseException:  # Ctrl-C: its late "ready" must not answer a trial
                self._discard(key)
                raise
            if failed is not None:
                self._discard(key)
                return failed
            startup_s = time.perf_counter() - t0
        try:
            outcome = worker.run(config)
        except BaseException:  # Ctrl-C mid-trial: its late reply must not answer the next
            self._discard(key)
            raise
        # The trial that waited for a worker to start pays for it in its wall time.
        outcome = dataclasses.replace(outcome, wall_s=outcome.wall_s + startup_s)
        if outcome.status != "ok" or worker.trials >= self.recycle_after:
            self._discard(key)
        return outcome

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for tests and diagnostics)."""
        with self._lock:
            return [w.pid for w in self._workers.values()]

    def close(self) -> None:
        """Kill every worker; none starts after this. Safe from another thread than the
        trials' (Ctrl-C in --jobs): a worker in the middle of a trial is only killed, and
        the trial's thread, seeing it gone, closes it."""
        with self._lock:
            self._closed = True
            workers = list(self._workers.items())
            self._workers.clear()
            busy = set(self._busy)
        for key, worker in workers:
            if key in busy:
                worker.kill()
            else:
                worker.close()

    def __enter__(self) -> WarmLauncher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _discard(self, key: WorkerKey) -> None:
        with self._lock:
            worker = self._workers.pop(key, None)
        if worker is not None:
            worker.close()
