"""Worker process entry point.

Two ways to run it:

* ``python -m autotune.launch._worker CONFIG.json RESULT.json`` runs one trial in a fresh
  process and writes one JSON result (:class:`autotune.launch.ProcessLauncher`);
* ``python -m autotune.launch._worker --serve BACKEND THREADS REPLY_FD`` is a warm worker
  (:class:`autotune.launch.WarmLauncher`): it pins its threads and imports the framework
  once, then runs one trial per JSON line read from stdin and answers each with one JSON
  line on ``REPLY_FD`` (a pipe of its own, so nothing a framework prints can corrupt it).

Outcomes of a trial:

* ``{"status": "ok", ...}`` - a measurement;
* ``{"status": "infeasible", "failure_kind": "oom"|"unsupported"|"nan_loss", ...}`` - a
  result that is itself data (the study records a complete, infeasible trial);
* ``{"status": "crash", ...}`` - anything else, with the traceback.

A worker that dies without answering (killed, segfault) is detected by the launcher.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import json
import math
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.config import SAFETY_MARGIN_S

if TYPE_CHECKING:
    from autotune.backends import Backend
    from autotune.config import TrialConfig
    from autotune.exceptions import OutOfMemoryError
    from autotune.profiling.loop import Agreement

#: Environment variables that change performance, recorded with every measurement so a
#: trial can be re-run under the same conditions.
#: The cores a driver assigns to its worker (comma-separated CPU numbers).
CPUS_ENV = "AUTOTUNE_CPUS"
PERFORMANCE_ENV_PREFIXES = ("OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_", "MALLOC_",
                            "TF_", "XLA_", "ONEDNN_", "DNNL_", "TORCH", "PYTORCH_",
                            "CUDA_", "NVIDIA_", "ASCEND_", "MS_", "GLOG_")


#: The thread-pool sizes a worker sets (before its framework loads) to its thread count.
THREAD_COUNT_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _thread_cores(n: int, cores: list[int]) -> list[int]:
    """The first ``n`` of ``cores`` for a pool of ``n`` threads, with the thread-count
    environment set to ``n`` (OpenMP and MKL read it once at start-up; every trial records
    it); refused beyond ``cores``."""
    from autotune.exceptions import UnsupportedConfigError

    if n > len(cores):
        raise UnsupportedConfigError(
            f"threads={n} but this worker may run on {len(cores)} cores only")
    for var in THREAD_COUNT_ENV:
        os.environ[var] = str(n)
    return cores[:n]


def _pin_threads(threads: int | None) -> int:
    """Pin the process to ``threads`` cores and size every thread pool to match.

    Environment variables must be set before the framework is imported: OpenMP and MKL
    read them once at start-up.
    """
    allowed = sorted(os.sched_getaffinity(0))
    n = threads or len(allowed)
    os.sched_setaffinity(0, _thread_cores(n, allowed))
    return n


def _pin_process(cores: list[int]) -> None:
    """Move every thread of this process (not only the caller, which is all
    ``sched_setaffinity(0)`` moves on Linux) to ``cores``."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), cores)


def _vm_size_bytes() -> int:
    return _status_kib("VmSize") * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cap_memory(memory_mb: int | None) -> None:
    """Make allocations beyond ``memory_mb`` more than now fail, like a device that is full."""
    if memory_mb is None:
        return
    limit = _vm_size_bytes() + memory_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the next trial's peak is its own.

    Writing ``5`` to ``/proc/self/clear_refs`` does this (Linux >= 4.0). Returns whether it
    worked; where it did not, a warm worker's figure is the process's lifetime peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """Peak resident memory since the last reset (VmHWM), else since the process began."""
    try:
        kib = _status_kib("VmHWM")
    except OSError:
        kib = 0
    return kib * 1024 if kib else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def performance_environment() -> dict[str, str]:
    """The environment variables of this process that can change performance."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith(PERFORMANCE_ENV_PREFIXES)}


def _copy_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """A copy of an object's attributes; containers are copied one level deep, so a trial
    that appends to a list never changes the saved one."""
    return {k: copy.copy(v) if isinstance(v, (list, dict, set)) else v
            for k, v in attributes.items()}


def _release_memory() -> None:
    """Collect garbage and give freed heap back to the OS (glibc keeps it otherwise), so a
    trial's memory cap and peak-RSS mark do not depend on what earlier trials left."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class WorkerState:
    """What a worker process keeps between trials: the imported backend and cached data."""

    def __init__(self, backend_name: str, threads: int | None) -> None:
        from autotune.backends import get_spec, load_backend

        self.backend_name = backend_name
        #: the cores this worker may use (its job's share); a trial uses the first N
        self.cores = sorted(os.sched_getaffinity(0))
        self.pinned_threads = _pin_threads(threads)
        self.threads_in_place = get_spec(backend_name).threads_in_place
        t0 = time.perf_counter()
        self.backend: Backend = load_backend(backend_name)
        self.import_s = time.perf_counter() - t0
        # The framework's modules are here for the process's life: out of the collector's
        # sight, the two collections per trial walk only what trials allocate (torch brings
        # ~280k objects: 7 % of a short trial's time went to walking them, measured)
        gc.freeze()
        # What the framework says it uses, recorded. Thread pools can be sized only once
        # per process in TensorFlow and MindSpore, which is why a warm worker serves one
        # thread count.
        self.threads = self.backend.set_threads(self.pinned_threads)
        # The backend as it is before any trial: restored before each trial so nothing a
        # trial leaves behind (a compiled model, a grad scaler, a dtype, an epoch counter)
        # reaches the next one, whatever the backend forgot to reset.
        self._pristine = _copy_attributes(vars(self.backend))
        self.trials_run = 0
        self._soft_as_limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        _reset_peak_rss()

    def use_threads(self, threads: int | None) -> None:
        """Run the next trials on ``threads`` cores (``None``: all of this worker's), in
        place: every thread of the process moves to the first ``threads`` cores first, so
        the threads the pool starts next inherit that affinity, then the framework's pool
        is resized (a backend with ``threads_in_place`` only)."""
        n = threads or len(self.cores)
        if n == self.pinned_threads:
            return
        if not self.threads_in_place:
            raise RuntimeError(f"this worker is pinned to {self.pinned_threads} threads, "
                               f"not {n}")
        # the environment too: a trial records what a fresh worker of n threads would have
        _pin_process(_thread_cores(n, self.cores))
        self.pinned_threads = n
        self.threads = self.backend.set_threads(n)

    def fresh_backend(self) -> Backend:
        """The backend with the attributes it had before its first trial."""
        attributes = vars(self.backend)
        attributes.clear()
        attributes.update(_copy_attributes(self._pristine))
        return self.backend

    def uncap_memory(self) -> None:
        """Lift a trial's memory cap back to what the process had before its first trial."""
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (self._soft_as_limit, hard))


def run_trial(config_data: dict[str, Any], state: WorkerState, deadline: float,
              sync: Agreement | None = None) -> dict[str, Any]:
    """Run one trial on ``state``'s backend and return the raw result (raises on failure).

    ``deadline`` is the ``time.perf_counter()`` value by which measuring must be over.
    A trial with ``data_parallel > 1`` is run as that many replica processes, this one
    coordinating them (:mod:`autotune.launch._replicas`); a replica runs its share here
    with its ``sync`` (the agreement of the measured loop).
    """
    from autotune.config import TrialConfig
    from autotune.profiling.contention import ContentionMonitor
    from autotune.profiling.loop import SOLO, run_profile
    from autotune.profiling.power import meter_for_device
    from autotune.workloads import WorkloadRef, load_model_spec

    config = TrialConfig.from_dict(config_data)
    if config.backend != state.backend_name:
        raise RuntimeError(f"this worker serves {state.backend_name!r}, not {config.backend!r}")
    if config.data_parallel > 1 and config.replica is None:
        from autotune.launch._replicas import run_replicated

        return run_replicated(config, state.cores, deadline)
    if state.threads_in_place or config.threads is not None:
        state.use_threads(config.threads)
    if config.memory_probe is not None:
        return probe_memory(config, state, deadline)
    backend = state.fresh_backend()
    _release_memory()
    peak_is_trials = state.trials_run == 0 or _reset_peak_rss()
    baseline_rss = _status_kib("VmRSS") * 1024  # what the trial's own allocations add to
    timings: dict[str, float] = {}
    ref = WorkloadRef(config.workload, config.workload_kwargs)
    backend.factory_label = f"factory {ref.label()}"

    try:
        # The runtime first (device, precision policy, execution mode), then the user's
        # factory builds its model into it: the factory may import its framework freely.
        t0 = time.perf_counter()
        backend.configure(config)
        spec = load_model_spec(ref, backend.framework or config.backend)
        timings["data_s"] = time.perf_counter() - t0
        # The memory cap models a device that is full: it applies to what the trial
        # allocates (placement, batches, optimizer state, activations), not to the
        # factory's own host-side construction, which also warms the BLAS and framework
        # allocators that abort (instead of raising) when their first buffer fails.
        _cap_memory(config.budget.memory_mb)
        t0 = time.perf_counter()
        model_info = backend.setup(config, spec)
        timings["setup_s"] = time.perf_counter() - t0
        from autotune.workloads._memory import predict_memory

        prediction = predict_memory(config)
        if prediction is not None:
            model_info.update(predicted_memory_bytes=prediction.total_bytes,
                              predicted_memory_parts=dict(prediction.parts))
        peak = backend.declared_peak() or _peak_record(config.device, config.precision,
                                                       state.pinned_threads)
        model_info.update(factory=ref.label(), factory_hash=config.factory_hash, peak=peak)
        model_info.setdefault("memory_format", config.memory_format)
        # a simulator has its own power model, and no other process shares its time
        meter = backend.power_meter() or meter_for_device(config.device)
        monitor = None if backend.simulated else ContentionMonitor()
        result = run_profile(backend, config, meter, deadline, monitor, sync or SOLO)
        if backend.simulated:
            from autotune.simulation import SIMULATED_NOTE

            result["warnings"].append(SIMULATED_NOTE)
        device_peak = backend.peak_memory_bytes()
        versions = backend.versions()
    except SystemError as e:
        oom = _allocation_failure(e)
        if oom is None:
            raise
        raise oom from e
    finally:
        backend.teardown()
        state.uncap_memory()
        _release_memory()
        # What outlives a trial is the process's too (modules the framework imports on
        # first use, its kernel caches): frozen like the imports, or the next trial's two
        # collections walk it again (~120k objects after a first torch trial: 0.09 s a
        # trial, a fifth of a short one, measured)
        gc.freeze()
    result.update(timings)
    result.update(
        status="ok",
        threads=state.threads,
        model=model_info,
        versions=versions,
        environment=performance_environment(),
        peak_rss_bytes=_peak_rss_bytes(),
        peak_rss_scope="trial" if peak_is_trials else "process",
        baseline_rss_bytes=baseline_rss,
        device_peak_memory_bytes=device_peak,
    )
    return result


def probe_memory(config: TrialConfig, state: WorkerState, deadline: float) -> dict[str, Any]:
    """A memory probe (:mod:`autotune._memory_probe`): bisect for the largest batch that
    fits, each try one step of the trial's own code path under its memory cap. Reported
    ``infeasible`` (``oom``) when a try ran out, so the launcher replaces this worker (a
    framework may be left unusable by an allocation failure), with what was found."""
    import dataclasses

    from autotune._memory_probe import MAX_S, bisect, reply
    from autotune.exceptions import OutOfMemoryError
    from autotune.workloads import WorkloadRef, load_model_spec

    request = dict(config.memory_probe or {})
    ref = WorkloadRef(config.workload, config.workload_kwargs)

    def fits(batch: int) -> bool:
        trial = dataclasses.replace(config, batch_size=batch, memory_probe=None)
        backend = state.fresh_backend()
        backend.factory_label = f"factory {ref.label()}"
        _release_memory()
        try:
            backend.configure(trial)
            spec = load_model_spec(ref, backend.framework or trial.backend)
            _cap_memory(trial.budget.memory_mb)
            backend.setup(trial, spec)
            backend.step()
            backend.synchronize()
            return True
        except OutOfMemoryError:
            return False
        except MemoryError:
            return False
        except SystemError as e:
            if _allocation_failure(e) is None:
                raise
            return False
        finally:
            backend.teardown()
            state.uncap_memory()
            _release_memory()

    limit = min(deadline, time.perf_counter() + float(request.get("max_s", MAX_S)))
    return reply(bisect(fits, request, limit))


def _peak_record(device: str, precision: str, threads: int) -> dict[str, Any]:
    """The machine's measured peak for this trial, read from the cache (the driver measures
    a missing entry before it launches the trial, outside the trial's budget)."""
    from autotune.profiling.peak import load_peak_table

    if precision == "int8" and device == "cpu":
        # torch._int_mm is a reference kernel on CPU, orders of magnitude below the
        # fbgemm/XNNPACK int8 kernels the runtimes use: no honest int8 peak to divide by.
        return {"flops_per_s": None, "reason": "no int8 GEMM peak on CPU: torch._int_mm is "
                "not the kernel quantised runtimes use, so its figure is no peak"}
    entry = load_peak_table().get(device, precision, threads)
    if entry is None:
        return {"flops_per_s": None, "reason": f"no measured {precision} peak for {device} "
                f"at {threads} thread(s): run autotune peak"}
    return {"flops_per_s": entry.flops_per_s, "reason": entry.reason, "method": entry.method,
            "precision": precision, "threads": threads,
            "bandwidth_bytes_per_s": entry.bandwidth_bytes_per_s}


def _guarded(run: Any) -> dict[str, Any]:
    """Run ``run()`` and turn its exceptions into a worker outcome."""
    from autotune.exceptions import ModelFactoryError, TrialError

    try:
        result: dict[str, Any] = run()
        return result
    except ModelFactoryError as e:
        # The user's model or factory is broken: a failed trial with one clear line, not
        # data for the sampler and not worth a retry.
        return {"status": "crash", "failure_kind": e.failure_kind, "reason": str(e),
                "traceback": traceback.format_exc()}
    except TrialError as e:
        return {"status": "infeasible", "failure_kind": e.failure_kind, "reason": str(e)}
    except MemoryError as e:
        return {"status": "infeasible", "failure_kind": "oom",
                "reason": f"out of memory: {e or 'allocation failed'}"}
    except Exception as e:
        return {"status": "crash", "failure_kind": "crash",
                "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def _allocation_failure(error: SystemError) -> OutOfMemoryError | None:
    """C code whose allocation failed without setting MemoryError (seen in torch's bindings
    under the address-space cap) raises ``SystemError: error return without exception
    set``: out of memory while the cap is on (asked before the cap is lifted), else
    ``None`` (a crash)."""
    from autotune.exceptions import OutOfMemoryError

    if "without exception set" in str(error) and _memory_capped():
        return OutOfMemoryError("out of memory: an allocation failed under the trial's "
                                f"memory cap ({type(error).__name__}: {error})")
    return None


def _memory_capped() -> bool:
    """Whether this process runs under an address-space cap (``budget.memory_mb``)."""
    return resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY


def _die_with_parent() -> None:
    """Never outlive the driver, even if it is killed uncleanly: PR_SET_PDEATHSIG delivers
    SIGKILL when the parent dies (Linux)."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _restrict_to_assigned_cpus() -> None:
    """Keep to the cores the driver gave this worker (``$AUTOTUNE_CPUS``, e.g. ``2,3``:
    one job of ``study run --jobs N``), before any thread pool exists, so every thread
    the framework starts inherits them and no two jobs' trials share a core."""
    assigned = os.environ.get(CPUS_ENV)
    if not assigned:
        return
    cpus = {int(c) for c in assigned.split(",") if c.strip()}
    os.sched_setaffinity(0, cpus & os.sched_getaffinity(0) or cpus)


def _arm_alarm(trial_seconds: float) -> None:
    """A second guard a few seconds past the trial's budget (the driver normally kills us
    first); a hung trial dies of SIGALRM."""
    signal.alarm(math.ceil(trial_seconds) + 5)


def run_once(argv: list[str]) -> int:
    """Fresh-process mode: read the config file, run the trial, write the result file.

    Exit code 1 on a crash.
    """
    # The launcher passes the wall-clock time it started us (psutil's create_time has
    # only clock-tick resolution), so process start-up is measured, not guessed.
    launched = float(os.environ.get("AUTOTUNE_LAUNCH_TIME", time.time()))
    config_path, result_path = argv
    config_data = json.loads(Path(config_path).read_text())
    budget_s = float(config_data["budget"]["trial_seconds"])
    _die_with_parent()
    _restrict_to_assigned_cpus()
    _arm_alarm(budget_s)
    process_start_s = time.time() - launched
    deadline = time.perf_counter() + budget_s - process_start_s - SAFETY_MARGIN_S
    holder: dict[str, WorkerState] = {}

    def trial() -> dict[str, Any]:
        holder["state"] = WorkerState(config_data["backend"], config_data.get("threads"))
        result = run_trial(config_data, holder["state"], deadline)
        result.update(process_start_s=process_start_s, import_s=holder["state"].import_s,
                      worker={"pid": os.getpid(), "trial": 1, "warm": False,
                              "cpus": sorted(os.sched_getaffinity(0))})
        return result

    result = _guarded(trial)
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)  # atomic: the launcher never reads half a result
    return 1 if result["status"] == "crash" else 0


def serve(argv: list[str]) -> int:
    """Warm mode: import once, then one trial per stdin line, one reply line per trial.

    The first reply (``{"status": "ready", ...}`` or a failure) answers start-up itself.
    """
    launched = float(os.environ.get("AUTOTUNE_LAUNCH_TIME", time.time()))
    backend_name, threads_arg, reply_fd = argv
    _die_with_parent()
    _restrict_to_assigned_cpus()
    reply = os.fdopen(int(reply_fd), "w", buffering=1)
    os.set_inheritable(reply.fileno(), False)  # helpers a framework starts must not hold it
    process_start_s = time.time() - launched
    holder: dict[str, WorkerState] = {}

    def start() -> dict[str, Any]:
        threads = int(threads_arg) if threads_arg != "auto" else None
        holder["state"] = WorkerState(backend_name, threads)
        return {"status": "ready", "process_start_s": process_start_s,
                "import_s": holder["state"].import_s, "threads": holder["state"].threads}

    hello = _guarded(start)
    reply.write(json.dumps(hello) + "\n")
    if hello["status"] != "ready":
        return 1
    state = holder["state"]
    for line in sys.stdin:
        request = json.loads(line)
        config_data = request["config"]
        budget_s = float(config_data["budget"]["trial_seconds"])
        _arm_alarm(budget_s)
        # The budget counts from when the driver sent the trial.
        deadline = (time.perf_counter() + budget_s - (time.monotonic() - request["sent_at"])
                    - SAFETY_MARGIN_S)
        result = _guarded(functools.partial(run_trial, config_data, state, deadline))
        signal.alarm(0)
        state.trials_run += 1
        result.update(process_start_s=0.0, import_s=0.0,
                      worker={"pid": os.getpid(), "trial": state.trials_run, "warm": True,
                              "cpus": sorted(os.sched_getaffinity(0))})
        reply.write(json.dumps(result) + "\n")
    return 0


def main(argv: list[str]) -> int:
    """Dispatch to :func:`serve` (``--serve ...``) or :func:`run_once`."""
    if argv and argv[0] == "--serve":
        return serve(argv[1:])
    return run_once(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
