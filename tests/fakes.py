"""Test doubles for the project's own tests.

The fake launcher (synthetic trial outcomes at the process boundary, no worker processes)
ships with autotune: :mod:`autotune.testing.launchers`; it is re-exported here so there is
one fake launcher. The vendor-boundary fakes below stand in for framework calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autotune.testing.launchers import (
    FAIL_KINDS,
    INFEASIBLE_KINDS,
    SYNTHETIC_NOTE,
    FakeLauncher,
    Outcomes,
    Selector,
    on_calls,
    synthetic_accuracy,
    synthetic_step_time_s,
)

__all__ = ["FAIL_KINDS", "INFEASIBLE_KINDS", "SYNTHETIC_NOTE", "FakeLauncher", "FakeTorchDevice",
           "Outcomes", "Selector", "VendorLog", "fake_mindspore", "fake_tensorflow",
           "fake_torch", "on_calls", "synthetic_accuracy", "synthetic_step_time_s"]


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
