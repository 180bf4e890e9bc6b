"""Test doubles at the process boundary.

:class:`FakeLauncher` stands in for :class:`autotune.launch.ProcessLauncher`: instead of
starting a worker process it returns a synthetic :class:`~autotune.launch.WorkerOutcome`
computed from the :class:`~autotune.config.TrialConfig`. Its results are shaped exactly
like a real worker's ``status: ok`` result (see ``autotune/launch/_worker.py`` and
``autotune/profiling/loop.py``) so that storage and study logic can be tested in
milliseconds.

The numbers it returns are made up: they are NOT measurements. Every result says so in its
``warnings``, its ``versions`` and its energy ``model`` string.
"""

from __future__ import annotations

import math
import os
import time
import zlib
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autotune.config import TrialConfig
from autotune.launch import WorkerOutcome

#: Said in every synthetic result, so nothing downstream can mistake it for a measurement.
SYNTHETIC_NOTE = "synthetic result from tests.fakes.FakeLauncher; not a measurement"

#: Which trial configs a fake outcome applies to: a predicate on the config, or the
#: 0-based indices of the launcher's calls.
Selector = Callable[[TrialConfig], bool] | Collection[int] | None

FAIL_KINDS = ("crash", "timeout", "killed")
INFEASIBLE_KINDS = ("oom", "unsupported", "nan_loss")


def _selected(selector: Selector, config: TrialConfig, index: int) -> bool:
    if selector is None:
        return False
    if callable(selector):
        return bool(selector(config))
    return index in selector


def _config_seed(config: TrialConfig, seed: int) -> int:
    """A stable seed per trial config (Python's ``hash`` is salted per process)."""
    return zlib.crc32(repr((sorted(config.knobs().items()), config.seed, seed)).encode())


def synthetic_step_time_s(config: TrialConfig) -> float:
    """Noise-free step time: a fixed overhead plus per-sample work split over threads."""
    threads = config.threads or os.cpu_count() or 1
    return 1e-3 + config.batch_size * 4e-5 / threads ** 0.8


def synthetic_accuracy(config: TrialConfig) -> float:
    """Accuracy peaking at a learning rate of 1e-3, lower the further away (log scale)."""
    distance = abs(math.log10(config.learning_rate) + 3.0)
    return float(min(1.0, max(0.0, 0.95 - 0.15 * distance)))


@dataclass
class FakeLauncher:
    """A drop-in for ``ProcessLauncher`` that computes outcomes instead of measuring.

    Args:
        infeasible: configs (predicate, or call indices) that come back ``infeasible``
            with ``infeasible_kind`` (default ``oom``), like a worker that ran out of memory.
        fail: configs (predicate, or call indices) that come back ``fail`` with
            ``fail_kind`` (``crash``, ``timeout`` or ``killed``).
        sleep_s: seconds each call sleeps (to test timeouts).
        steps: measured steps per trial (at least the budget's ``window_min_steps``).
        noise: relative standard deviation of the seeded noise on step times.
        seed: base seed of the noise.
        with_energy: ``False`` reports no energy (source ``none``).
        device_peak_memory_bytes: reported device peak (``None``: CPU, no device memory).
        contended: report foreign CPU load during every window.
    """

    infeasible: Selector = None
    fail: Selector = None
    infeasible_kind: str = "oom"
    fail_kind: str = "crash"
    sleep_s: float = 0.0
    steps: int = 32
    noise: float = 0.02
    seed: int = 0
    with_energy: bool = True
    device_peak_memory_bytes: int | None = None
    contended: bool = False
    calls: list[TrialConfig] = field(default_factory=list, init=False)
    call_times: list[float] = field(default_factory=list, init=False)
    closed: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.fail_kind not in FAIL_KINDS:
            raise ValueError(f"fail_kind must be one of {FAIL_KINDS}, got {self.fail_kind!r}")
        if self.infeasible_kind not in INFEASIBLE_KINDS:
            raise ValueError(f"infeasible_kind must be one of {INFEASIBLE_KINDS}, "
                             f"got {self.infeasible_kind!r}")

    def close(self) -> None:
        """Nothing to release (part of the launcher interface)."""
        self.closed = True

    def run(self, config: TrialConfig) -> WorkerOutcome:
        """Same interface as :meth:`autotune.launch.ProcessLauncher.run`."""
        index = len(self.calls)
        self.calls.append(config)
        self.call_times.append(time.monotonic())
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if _selected(self.fail, config, index):
            return self._fail(config)
        if _selected(self.infeasible, config, index):
            return self._infeasible()
        result = self.raw_result(config)
        wall = self.sleep_s + result["process_start_s"] + result["import_s"] + \
            result["data_s"] + result["setup_s"] + result["warmup_s"] + result["window_s"]
        return WorkerOutcome("ok", result=result, wall_s=wall)

    # -- outcomes ----------------------------------------------------------------------------

    def _infeasible(self) -> WorkerOutcome:
        reasons = {
            "oom": "out of memory: synthetic allocation failure (FakeLauncher)",
            "unsupported": "synthetic unsupported combination (FakeLauncher)",
            "nan_loss": "synthetic non-finite loss (FakeLauncher)",
        }
        reason = reasons[self.infeasible_kind]
        result = {"status": "infeasible", "failure_kind": self.infeasible_kind,
                  "reason": reason}
        return WorkerOutcome("infeasible", result=result, failure_kind=self.infeasible_kind,
                             reason=reason, wall_s=0.5)

    def _fail(self, config: TrialConfig) -> WorkerOutcome:
        if self.fail_kind == "timeout":
            limit = config.budget.trial_seconds
            return WorkerOutcome("fail", failure_kind="timeout", wall_s=limit,
                                 reason=f"killed after exceeding its {limit:g} s budget",
                                 traceback="")
        if self.fail_kind == "killed":
            return WorkerOutcome("fail", failure_kind="killed", wall_s=0.5,
                                 reason="worker killed by SIGKILL (the kernel's OOM killer "
                                        "sends this)", traceback="")
        return WorkerOutcome(
            "fail", failure_kind="crash", wall_s=0.5,
            reason="RuntimeError: synthetic crash (FakeLauncher)",
            traceback='Traceback (most recent call last):\n  File "fake", line 1\n'
                      "RuntimeError: synthetic crash (FakeLauncher)\n")

    def raw_result(self, config: TrialConfig) -> dict[str, Any]:
        """A worker's ``status: ok`` result dict for ``config`` (synthetic numbers)."""
        rng = np.random.default_rng(_config_seed(config, self.seed))
        base = synthetic_step_time_s(config)
        n = max(self.steps, config.budget.window_min_steps)
        steps = base * (1.0 + self.noise * np.abs(rng.standard_normal(n)))
        warmup = base * np.linspace(3.0, 1.05, 10)
        step_times = [float(x) for x in steps]
        window_s = float(sum(step_times))
        threads = config.threads or os.cpu_count() or 1
        train = config.mode == "train"
        budget_steps = config.budget.train_epochs * 10 if train else None
        watts = 10.0
        energy = {
            "energy_j": window_s * threads * watts if self.with_energy else None,
            "source": "estimated" if self.with_energy else "none",
            "window_s": window_s,
            "samples": 2 if self.with_energy else 0,
            "model": f"process CPU time x {watts:g} W per busy core ({SYNTHETIC_NOTE})"
            if self.with_energy else "",
            "fallback_reason": "" if self.with_energy else "no energy source (fake)",
        }
        return {
            "step_times_s": step_times,
            "warmup_step_times_s": [float(x) for x in warmup],
            "samples": config.batch_size * n,
            "window_s": window_s,
            "warmup_s": float(warmup.sum()),
            "first_step_s": float(warmup[0]) * 3,
            "eval_s": 0.001,
            "stop_reason": "stable",
            # every warm-up and window step trains; a short window is topped up to the budget
            "train_steps": max(budget_steps or 0, len(warmup) + n),
            "budget_steps": budget_steps,
            "accuracy": synthetic_accuracy(config),
            "energy": energy,
            "warnings": [SYNTHETIC_NOTE],
            "process_start_s": 0.05,
            "import_s": 0.4,
            "data_s": 0.01,
            "setup_s": 0.02,
            "status": "ok",
            "threads": threads,
            "model": {"name": "fake", "parameters": 1000, "flops_per_sample": 2000},
            "versions": {"fake": "0 (synthetic)"},
            "peak_rss_bytes": 200 * 2**20 + config.batch_size * 2**20,
            "device_peak_memory_bytes": self.device_peak_memory_bytes,
            "peak_rss_scope": "trial",
            "environment": {"OMP_NUM_THREADS": str(threads)},
            "worker": {"pid": 0, "trial": 1, "warm": False},
            "remeasured": 0,
            "contention": {"available": True, "contended": self.contended,
                           "foreign_fraction": 0.3 if self.contended else 0.0,
                           "reason": "fake contention" if self.contended else ""},
        }


def on_calls(*indices: int) -> frozenset[int]:
    """Selector for the launcher's ``indices``-th calls (0-based), e.g. ``fail=on_calls(3)``."""
    return frozenset(indices)


# -- vendor-boundary fakes ----------------------------------------------------------------
#
# Stand-ins for the parts of torch / TensorFlow / MindSpore that touch hardware this machine
# lacks (CUDA GPUs, TPUs, Ascend NPUs). Each records the calls the backend makes, in order,
# in a shared :class:`VendorLog`, so a test can assert what was called, with which device,
# and in which order relative to the profiler's clock reads. No framework is imported.


class VendorLog:
    """The vendor calls made so far, in order: ``(name, *args)`` tuples."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def record(self, name: str, result: Any = None) -> Callable[..., Any]:
        """A vendor function that records its call and returns ``result``."""

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, *args, *(f"{k}={v}" for k, v in kwargs.items())))
            return result

        return call

    def never(self, name: str) -> Callable[..., Any]:
        """A vendor function the code under test must not call."""

        def call(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"{name} was called on a path that must not use it")

        return call

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def index(self, name: str) -> int:
        """Position of the first call of ``name`` (ValueError if it was never made)."""
        return self.names().index(name)


@dataclass(frozen=True)
class FakeTorchDevice:
    """``torch.device`` as far as the backend uses it."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def fake_torch(log: VendorLog, n_gpus: int = 2, *, peak_bytes: int = 3 * 2**30) -> Any:
    """A ``torch`` whose ``cuda`` namespace sees ``n_gpus`` GPUs and records every call."""
    import contextlib
    from types import SimpleNamespace

    def device(kind: str, index: int | None = None) -> FakeTorchDevice:
        if ":" in kind:
            kind, _, text = kind.partition(":")
            index = int(text)
        return FakeTorchDevice(kind, index)

    @contextlib.contextmanager
    def current_device(device: Any) -> Any:  # torch.cuda.device: sets the current device
        log.calls.append(("cuda.device", device))
        current["device"] = device
        yield
        current["device"] = None

    def empty_cache() -> None:  # acts on the current device
        log.calls.append(("cuda.empty_cache", current["device"]))

    current: dict[str, Any] = {"device": None}
    cuda = SimpleNamespace(
        device=current_device, empty_cache=empty_cache,
        is_available=lambda: n_gpus > 0, device_count=lambda: n_gpus,
        reset_peak_memory_stats=log.record("cuda.reset_peak_memory_stats"),
        synchronize=log.record("cuda.synchronize"),
        max_memory_allocated=log.record("cuda.max_memory_allocated", peak_bytes))
    return SimpleNamespace(__version__="2.13.0", cuda=cuda, device=device,
                           manual_seed=log.record("manual_seed"),
                           version=SimpleNamespace(cuda="12.8"))


def fake_tensorflow(log: VendorLog, *, gpus: int = 2, tpu_cores: int = 0,
                    tpu_error: Exception | None = None,
                    peak_bytes: int = 2 * 2**30) -> tuple[Any, Any]:
    """``(tf, keras)`` seeing ``gpus`` GPUs and, once the TPU system is initialised,
    ``tpu_cores`` logical TPU devices (``initialize_tpu_system`` raises ``tpu_error``)."""
    import contextlib
    from types import SimpleNamespace

    state = {"tpu_initialised": False}

    def list_physical_devices(kind: str) -> list[Any]:
        if kind == "GPU":
            return [SimpleNamespace(name=f"/physical_device:GPU:{i}") for i in range(gpus)]
        if kind == "TPU" and tpu_cores:
            return [SimpleNamespace(name=f"/physical_device:TPU:{i}")
                    for i in range(tpu_cores)]
        return []

    def list_logical_devices(kind: str) -> list[Any]:
        log.calls.append(("config.list_logical_devices", kind))
        if kind == "TPU" and state["tpu_initialised"]:
            return [SimpleNamespace(name=f"/job:localhost/replica:0/task:0/device:TPU:{i}")
                    for i in range(tpu_cores)]
        return []

    class TPUClusterResolver:
        def __init__(self, tpu: str | None = None) -> None:
            log.calls.append(("TPUClusterResolver", tpu))
            self.tpu = tpu

    def connect(resolver: TPUClusterResolver) -> None:
        log.calls.append(("config.experimental_connect_to_cluster", resolver.tpu))

    def initialize(resolver: TPUClusterResolver) -> str:
        log.calls.append(("tpu.experimental.initialize_tpu_system", resolver.tpu))
        if tpu_error is not None:
            raise tpu_error
        state["tpu_initialised"] = True
        return "topology"

    @contextlib.contextmanager
    def device(name: str) -> Any:
        log.calls.append(("device", name))
        yield

    experimental = SimpleNamespace(
        reset_memory_stats=log.record("config.experimental.reset_memory_stats"),
        get_memory_info=log.record("config.experimental.get_memory_info",
                                   {"current": 1024, "peak": peak_bytes}),
        get_device_details=lambda dev: {"device_name": "NVIDIA H100 80GB HBM3"})
    tf = SimpleNamespace(
        __version__="2.21.0", device=device,
        config=SimpleNamespace(list_physical_devices=list_physical_devices,
                               list_logical_devices=list_logical_devices,
                               experimental_connect_to_cluster=connect,
                               experimental=experimental),
        distribute=SimpleNamespace(cluster_resolver=SimpleNamespace(
            TPUClusterResolver=TPUClusterResolver)),
        tpu=SimpleNamespace(experimental=SimpleNamespace(initialize_tpu_system=initialize)),
        test=SimpleNamespace(experimental=SimpleNamespace(
            sync_devices=log.record("test.experimental.sync_devices"))),
        sysconfig=SimpleNamespace(get_build_info=lambda: {"cuda_version": "12.5"}))
    keras = SimpleNamespace(
        utils=SimpleNamespace(set_random_seed=log.record("keras.utils.set_random_seed")),
        backend=SimpleNamespace(clear_session=log.record("keras.backend.clear_session")))
    return tf, keras


def fake_mindspore(log: VendorLog, *, gpus: int = 0, npus: int = 2,
                   peak_bytes: int = 5 * 2**30) -> Any:
    """``mindspore`` with ``gpus`` GPUs and ``npus`` Ascend NPUs (0: that build lacks it)."""
    from types import SimpleNamespace

    def context(count: int) -> Any:
        return SimpleNamespace(is_available=lambda: count > 0, device_count=lambda: count)

    runtime = SimpleNamespace(
        reset_peak_memory_stats=log.record("runtime.reset_peak_memory_stats"),
        synchronize=log.record("runtime.synchronize"),
        max_memory_allocated=log.record("runtime.max_memory_allocated", peak_bytes),
        empty_cache=log.record("runtime.empty_cache"))
    return SimpleNamespace(
        __version__="2.10.0", GRAPH_MODE=0, PYNATIVE_MODE=1, float16="Float16",
        bfloat16="BFloat16",
        device_context=SimpleNamespace(gpu=context(gpus), ascend=context(npus)),
        set_device=log.record("set_device"), set_context=log.record("set_context"),
        set_seed=log.record("set_seed"), runtime=runtime,
        ms_memory_recycle=log.record("ms_memory_recycle"),
        get_context=lambda key: "Ascend")
