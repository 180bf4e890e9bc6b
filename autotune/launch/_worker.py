"""Worker process entry point: ``python -m autotune.launch._worker CONFIG.json RESULT.json``.

It pins its threads, imports the framework (timed apart), builds the workload, runs the
profiled loop and writes one JSON result. Outcomes:

* ``{"status": "ok", ...}`` - a measurement;
* ``{"status": "infeasible", "failure_kind": "oom"|"unsupported"|"nan_loss", ...}`` - a
  result that is itself data (the study records a complete, infeasible trial);
* ``{"status": "crash", ...}`` and exit code 1 - anything else, with the traceback.

A worker that dies without writing a result (killed, segfault) is detected by the launcher.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

#: Seconds the worker keeps for itself between the end of measuring and the hard kill.
SAFETY_MARGIN_S = 1.0


def _pin_threads(threads: int | None) -> int:
    """Pin the process to ``threads`` cores and size every thread pool to match.

    Environment variables must be set before the framework is imported: OpenMP and MKL
    read them once at start-up.
    """
    from autotune.exceptions import UnsupportedConfigError

    allowed = sorted(os.sched_getaffinity(0))
    n = threads or len(allowed)
    if n > len(allowed):
        raise UnsupportedConfigError(
            f"threads={n} but this worker may run on {len(allowed)} cores only")
    os.sched_setaffinity(0, allowed[:n])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
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


def run_trial(config_data: dict[str, Any], process_start: float) -> dict[str, Any]:
    """Run one trial in this process and return the raw result (raises on failure)."""
    from autotune.backends import load_backend
    from autotune.config import TrialConfig
    from autotune.profiling.loop import run_profile
    from autotune.profiling.power import EstimatedCpuMeter
    from autotune.workloads import get_workload

    config = TrialConfig.from_dict(config_data)
    deadline = (time.perf_counter() + config.budget.trial_seconds
                - (time.time() - process_start) - SAFETY_MARGIN_S)
    timings: dict[str, float] = {"process_start_s": time.time() - process_start}

    threads = _pin_threads(config.threads)
    t0 = time.perf_counter()
    backend = load_backend(config.backend)
    timings["import_s"] = time.perf_counter() - t0
    threads = backend.set_threads(threads)  # what the framework says it uses, recorded

    t0 = time.perf_counter()
    workload = get_workload(config.workload)
    data = workload.load_data()
    timings["data_s"] = time.perf_counter() - t0

    _cap_memory(config.budget.memory_mb)
    t0 = time.perf_counter()
    model_info = backend.setup(config, workload, data)
    timings["setup_s"] = time.perf_counter() - t0
    # Backends report FLOPs of the model they built (smaller after structured pruning).
    model_info.setdefault("flops_per_sample", workload.flops_per_sample(config.mode))

    result = run_profile(backend, config, EstimatedCpuMeter(), deadline)
    device_peak = backend.peak_memory_bytes()
    versions = backend.versions()
    backend.teardown()
    result.update(timings)
    result.update(
        status="ok",
        threads=threads,
        model=model_info,
        versions=versions,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        device_peak_memory_bytes=device_peak,
    )
    return result


def _die_with_parent_and_budget(trial_seconds: float) -> None:
    """Never outlive the driver or the budget, even if the driver is killed uncleanly.

    PR_SET_PDEATHSIG delivers SIGKILL when the parent dies (Linux); the alarm is a second,
    portable guard a few seconds past the budget (the driver normally kills us first).
    """
    import ctypes
    import math
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.alarm(math.ceil(trial_seconds) + 5)


def main(argv: list[str]) -> int:
    """Read the config file, run the trial, write the result file. Exit code 1 on a crash."""
    # The launcher passes the wall-clock time it started us (psutil's create_time has
    # only clock-tick resolution), so process start-up is measured, not guessed.
    process_start = float(os.environ.get("AUTOTUNE_LAUNCH_TIME", time.time()))
    config_path, result_path = argv
    from autotune.exceptions import TrialError

    config_data = json.loads(Path(config_path).read_text())
    _die_with_parent_and_budget(float(config_data["budget"]["trial_seconds"]))
    code = 0
    try:
        result = run_trial(config_data, process_start)
    except TrialError as e:
        result = {"status": "infeasible", "failure_kind": e.failure_kind, "reason": str(e)}
    except MemoryError as e:
        result = {"status": "infeasible", "failure_kind": "oom",
                  "reason": f"out of memory: {e or 'allocation failed'}"}
    except Exception as e:
        result = {"status": "crash", "failure_kind": "crash",
                  "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        code = 1
    tmp = Path(result_path + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)  # atomic: the launcher never reads half a result
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
