"""The backends' device code for hardware this machine lacks, driven through fakes at the
vendor boundary: torch on CUDA, TensorFlow on GPU and TPU, MindSpore on GPU and Ascend.

Each backend is the real class with its real ``setup`` / ``synchronize`` /
``peak_memory_bytes`` / ``teardown``; only the framework module handed to it is a fake
(``tests.fakes.fake_torch`` / ``fake_tensorflow`` / ``fake_mindspore``) that records every
call. The profiler's real ``run_profile`` drives the timing path, with its clock reads
recorded in the same log, so the tests check what a GPU run depends on: the device is
synchronised before every clock read around a step, the peak-memory statistics are reset
when the trial is placed and read after it, the trial lands on the requested device index,
and a device index that does not exist is refused naming the devices that do.

Each trial runs the worker's lifecycle, ``configure`` (device, peak reset, seed) then
``setup``; the model build inside ``setup`` (the base's ``_setup``) is replaced by a
recorder, and steps by a counter: both are framework work the CPU tests already cover for
real. No framework is imported here, except
torch in the pruning check at the end.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import autotune.backends._tensorflow as tf_module
from autotune.backends._mindspore import MindSporeBackend
from autotune.backends._pruning import structured_keep, unstructured_masks
from autotune.backends._tensorflow import TensorFlowBackend, initialize_tpu_system
from autotune.backends._torch import TorchBackend
from autotune.config import TrialConfig
from autotune.exceptions import UnsupportedConfigError
from autotune.profiling import loop
from autotune.profiling.power import NullMeter
from autotune.space import parse_space
from tests.fakes import VendorLog, fake_mindspore, fake_tensorflow, fake_torch

BUDGET = {"trial_seconds": 30, "warmup_max_s": 0.3, "window_min_s": 0.05,
          "window_max_s": 0.1, "window_min_steps": 5, "train_epochs": 1}


def _config(backend: str, device: str, mode: str = "infer", **knobs: Any) -> TrialConfig:
    space = parse_space({"workload": "digits_mlp", "mode": mode,
                         "objectives": {"throughput_sps": "maximize"}, "budget": BUDGET})
    return TrialConfig.from_params(
        space, {"backend": backend, "device": device, "threads": 1, "batch_size": 8,
                "execution": "graph", **knobs}, seed=7)


#: the factory's model spec: no framework model exists here (the build is recorded instead)
SPEC: Any = SimpleNamespace(model=None)


def _record_build(log: VendorLog, backend: Any, monkeypatch: pytest.MonkeyPatch,
                  where: str) -> None:
    """Replace the model build (the base's ``_setup``: placement, batches, pruning, facts)
    by a recorder of where the backend placed the trial; the backend's ``setup`` around it
    runs for real."""

    def build(config: TrialConfig, spec: Any) -> dict[str, Any]:
        log.calls.append(("build", str(getattr(backend, where))))
        return {}

    monkeypatch.setattr(backend, "model_type_error", lambda model: None)
    monkeypatch.setattr(backend, "_setup", build)


def _set_up(backend: Any, config: TrialConfig) -> dict[str, Any]:
    """As the worker runs a trial: ``configure`` (device, peak reset, seed, device scope)
    before the factory (nothing to run here), then ``setup`` (the recorded build)."""
    backend.configure(config)
    info: dict[str, Any] = backend.setup(config, SPEC)
    return info


def _profile(log: VendorLog, backend: Any, config: TrialConfig,
             monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The profiler's real measured loop over counted steps, clock reads logged."""
    real_clock = time.perf_counter

    def clock() -> float:
        log.calls.append(("clock",))
        return real_clock()

    def step() -> int:
        log.calls.append(("step",))
        return config.batch_size

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(backend, "step", step)
    monkeypatch.setattr(backend, "evaluate", lambda: 0.5)
    return loop.run_profile(backend, config, NullMeter(), real_clock() + 20)


def _assert_synchronised_steps(log: VendorLog, sync: str) -> None:
    """Every step lies between two clock reads, each right after a device sync."""
    steps = [i for i, call in enumerate(log.calls) if call == ("step",)]
    assert len(steps) >= 10  # first step, warm-up and the measured window
    for i in steps:
        assert log.calls[i - 2][0] == sync and log.calls[i - 1] == ("clock",), \
            log.calls[i - 3:i + 1]
        assert log.calls[i + 1][0] == sync and log.calls[i + 2] == ("clock",), \
            log.calls[i:i + 3]


# -- torch on CUDA ---------------------------------------------------------------------------


def _fake_torch(log: VendorLog, n_gpus: int = 2) -> Any:
    """``fake_torch`` with the dtype ``configure`` names (the fed-input dtype; no tensor
    is made here, so a name stands for it)."""
    torch = fake_torch(log, n_gpus=n_gpus)
    if not hasattr(torch, "float32"):
        torch.float32 = "float32"
    return torch


def test_torch_cuda_trial_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Placement on cuda:1 and peak reset in configure (before the factory and the build),
    sync around every timed step, peak read after the trial, cache emptied at teardown:
    all on cuda:1."""
    log = VendorLog()
    backend = TorchBackend(torch=_fake_torch(log, n_gpus=2))
    _record_build(log, backend, monkeypatch, "device")
    config = _config("torch", "cuda:1")

    backend.configure(config)
    assert log.calls == [("cuda.reset_peak_memory_stats", backend.device), ("manual_seed", 7)]
    backend.setup(config, SPEC)
    assert log.calls[2:] == [("build", "cuda:1")]  # setup builds; it places nothing again
    _profile(log, backend, config, monkeypatch)
    assert backend.peak_memory_bytes() == 3 * 2**30
    backend.teardown()

    _assert_synchronised_steps(log, "cuda.synchronize")
    assert {c[1] for c in log.calls if c[0].startswith("cuda.")} == {backend.device}
    assert str(backend.device) == "cuda:1"
    names = log.names()
    assert names.count("cuda.reset_peak_memory_stats") == 1
    assert names.index("cuda.max_memory_allocated") > max(
        i for i, n in enumerate(names) if n == "step")
    assert names[-3:] == ["cuda.max_memory_allocated", "cuda.device", "cuda.empty_cache"]


def test_torch_each_trial_resets_its_own_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """A warm worker runs trials back to back: every setup resets the peak again."""
    log = VendorLog()
    backend = TorchBackend(torch=_fake_torch(log, n_gpus=1))
    _record_build(log, backend, monkeypatch, "device")
    for _ in range(2):
        _set_up(backend, _config("torch", "cuda:0"))
        backend.peak_memory_bytes()
        backend.teardown()
    assert [n for n in log.names() if n.startswith("cuda.")] == [
        "cuda.reset_peak_memory_stats", "cuda.max_memory_allocated", "cuda.device",
        "cuda.empty_cache"] * 2


def test_a_torch_training_replica_on_cuda_joins_an_nccl_group_on_its_own_gpu() -> None:
    """A data-parallel replica on cuda:1 makes cuda:1 current, then joins NCCL (torch's
    collective for CUDA) at the coordinator's rendezvous with its rank and the world."""
    import dataclasses

    log = VendorLog()
    torch = _fake_torch(log, n_gpus=2)
    torch.distributed = SimpleNamespace(
        is_initialized=lambda: False,
        init_process_group=lambda *a, **kw: log.calls.append(("init_process_group", a, kw)))
    torch.cuda.set_device = lambda device: log.calls.append(("cuda.set_device", device))
    backend = TorchBackend(torch=torch)
    config = dataclasses.replace(
        _config("torch", "cuda:1", mode="train", data_parallel=2), replica={
            "rank": 1, "world": 2, "device": "cuda:1", "cpus": [1], "ports": [29533, 29534],
            "deadline": time.perf_counter() + 30})
    backend.configure(config)
    names = log.names()
    assert names.index("cuda.set_device") < names.index("init_process_group")
    _, args, kwargs = log.calls[names.index("init_process_group")]
    assert args == ("nccl",)
    assert kwargs["init_method"] == "tcp://127.0.0.1:29533"
    assert (kwargs["rank"], kwargs["world_size"]) == (1, 2)
    assert str(log.calls[names.index("cuda.set_device")][1]) == "cuda:1"


@pytest.mark.parametrize(("n_gpus", "device", "message"), [
    (2, "cuda:3", r"cuda:3: torch sees 2 CUDA device\(s\): cuda:0, cuda:1"),
    (0, "cuda:0", r"cuda:0: torch sees no CUDA device"),
    (2, "npu:0", r"npu:0: the torch backend runs trials on cpu and cuda only.*torch_npu"),
    (2, "tpu:0", r"tpu:0: the torch backend runs trials on cpu and cuda only.*torch_xla"),
])
def test_torch_refuses_a_device_it_cannot_use(monkeypatch: pytest.MonkeyPatch, n_gpus: int,
                                              device: str, message: str) -> None:
    log = VendorLog()
    backend = TorchBackend(torch=_fake_torch(log, n_gpus=n_gpus))
    _record_build(log, backend, monkeypatch, "device")
    with pytest.raises(UnsupportedConfigError, match=message):
        _set_up(backend, _config("torch", device))
    assert log.calls == []  # nothing reset, nothing built


def test_torch_cpu_never_touches_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    log = VendorLog()
    torch = _fake_torch(log)
    for name in ("synchronize", "max_memory_allocated", "reset_peak_memory_stats",
                 "empty_cache"):
        setattr(torch.cuda, name, log.never(f"cuda.{name}"))
    backend = TorchBackend(torch=torch)
    _record_build(log, backend, monkeypatch, "device")
    config = _config("torch", "cpu")
    _set_up(backend, config)
    _profile(log, backend, config, monkeypatch)
    assert backend.peak_memory_bytes() is None  # the worker's peak RSS is used instead
    backend.teardown()


# -- TensorFlow on GPU and TPU ---------------------------------------------------------------


@pytest.fixture
def no_tf_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The gradient-registry bookkeeping reads TensorFlow's own module: stubbed, so nothing
    here imports TensorFlow (checked after each test), and each test starts with no TPU
    system initialised in this process."""
    monkeypatch.setattr(tf_module, "_custom_gradient_names", lambda: frozenset())
    monkeypatch.setattr(tf_module, "_forget_custom_gradients", lambda before: None)
    monkeypatch.setattr(tf_module, "_tpu_systems", {})
    monkeypatch.delenv("TPU_NAME", raising=False)
    # tests/test_backend_tensorflow.py drives the real backend in this process: then only
    # "this test imported nothing" can be checked
    imported_before = "tensorflow" in sys.modules
    yield
    assert imported_before or "tensorflow" not in sys.modules


@pytest.mark.usefixtures("no_tf_runtime")
def test_tensorflow_gpu_trial_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak reset, seed and the device scope in configure (the factory builds inside the
    scope); setup builds inside that same scope, which stays open until teardown."""
    log = VendorLog()
    tf, keras = fake_tensorflow(log, gpus=2)
    enter_scope = tf.device

    @contextlib.contextmanager
    def device(name: str) -> Iterator[None]:  # also logs when the scope is left
        with enter_scope(name):
            yield
        log.calls.append(("device exit", name))

    tf.device = device
    backend = TensorFlowBackend(tf=tf, keras=keras)
    _record_build(log, backend, monkeypatch, "_device")
    config = _config("tensorflow", "cuda:1")

    backend.configure(config)
    assert log.calls == [("config.experimental.reset_memory_stats", "GPU:1"),
                         ("keras.utils.set_random_seed", 7), ("device", "/GPU:1")]
    backend.setup(config, SPEC)
    assert log.calls[3:] == [("build", "/GPU:1")]  # in the open scope, not a second one
    _profile(log, backend, config, monkeypatch)
    assert backend.peak_memory_bytes() == 2 * 2**30
    assert log.calls[-1] == ("config.experimental.get_memory_info", "GPU:1")
    _assert_synchronised_steps(log, "test.experimental.sync_devices")
    assert "device exit" not in log.names()
    backend.teardown()
    assert log.names().count("device exit") == 1 and ("device exit", "/GPU:1") in log.calls


@pytest.mark.usefixtures("no_tf_runtime")
def test_tensorflow_missing_gpu_index_names_the_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    log = VendorLog()
    tf, keras = fake_tensorflow(log, gpus=2)
    backend = TensorFlowBackend(tf=tf, keras=keras)
    _record_build(log, backend, monkeypatch, "_device")
    with pytest.raises(UnsupportedConfigError,
                       match=r"cuda:2: TensorFlow sees 2 GPU\(s\): cuda:0, cuda:1"):
        _set_up(backend, _config("tensorflow", "cuda:2"))
    assert log.calls == []


@pytest.mark.usefixtures("no_tf_runtime")
def test_tensorflow_tpu_is_initialised_before_its_devices_are_listed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Resolver -> connect -> initialise, then the logical TPU devices; the trial runs on
    the logical device by its full name; the TPU's memory statistics are its own."""
    log = VendorLog()
    tf, keras = fake_tensorflow(log, gpus=0, tpu_cores=4)
    backend = TensorFlowBackend(tf=tf, keras=keras)
    _record_build(log, backend, monkeypatch, "_device")
    config = _config("tensorflow", "tpu:1", precision="bf16")

    _set_up(backend, config)
    tpu1 = "/job:localhost/replica:0/task:0/device:TPU:1"
    assert log.calls[:7] == [
        ("TPUClusterResolver", "local"),
        ("config.experimental_connect_to_cluster", "local"),
        ("tpu.experimental.initialize_tpu_system", "local"),
        ("config.list_logical_devices", "TPU"),
        ("config.experimental.reset_memory_stats", "TPU:1"),
        ("keras.utils.set_random_seed", 7),
        ("device", tpu1)]
    assert log.calls[7] == ("build", tpu1)
    _profile(log, backend, config, monkeypatch)
    _assert_synchronised_steps(log, "test.experimental.sync_devices")
    assert backend.peak_memory_bytes() == 2 * 2**30
    assert log.calls[-1] == ("config.experimental.get_memory_info", "TPU:1")
    backend.teardown()

    # The next trial in this worker reuses the TPU system: initialising again would wipe
    # the TPU's memory.
    del log.calls[:]
    _set_up(backend, _config("tensorflow", "tpu:0"))
    assert "tpu.experimental.initialize_tpu_system" not in log.names()
    assert log.calls[0] == ("config.list_logical_devices", "TPU")


@pytest.mark.usefixtures("no_tf_runtime")
def test_tensorflow_tpu_named_by_tpu_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPU_NAME", "my-tpu-node")
    log = VendorLog()
    tf, _ = fake_tensorflow(log, gpus=0, tpu_cores=8)
    assert initialize_tpu_system(tf) == "topology"
    assert log.calls == [("TPUClusterResolver", "my-tpu-node"),
                         ("config.experimental_connect_to_cluster", "my-tpu-node"),
                         ("tpu.experimental.initialize_tpu_system", "my-tpu-node")]


@pytest.mark.usefixtures("no_tf_runtime")
def test_tensorflow_tpu_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    log = VendorLog()
    tf, keras = fake_tensorflow(log, gpus=0, tpu_cores=0,
                                tpu_error=RuntimeError("TPUs not found in the cluster.\nmore"))
    backend = TensorFlowBackend(tf=tf, keras=keras)
    _record_build(log, backend, monkeypatch, "_device")
    with pytest.raises(UnsupportedConfigError,
                       match=r"^tpu:0: no TPU system could be initialised here \(TPU "
                             r"'local'\): RuntimeError: TPUs not found in the cluster\.$"):
        _set_up(backend, _config("tensorflow", "tpu:0"))
    assert "build" not in log.names()

    tf, keras = fake_tensorflow(VendorLog(), gpus=0, tpu_cores=2)
    monkeypatch.setattr(tf_module, "_tpu_systems", {})
    backend = TensorFlowBackend(tf=tf, keras=keras)
    with pytest.raises(UnsupportedConfigError,
                       match=r"tpu:2: the initialised TPU system has 2 TPU core\(s\): "
                             r"tpu:0, tpu:1"):
        backend.configure(_config("tensorflow", "tpu:2"))
    # TPUs compute in bfloat16, not float16
    with pytest.raises(UnsupportedConfigError, match="TPUs have no float16"):
        backend.configure(_config("tensorflow", "tpu:0", precision="fp16", execution="xla"))


@pytest.mark.usefixtures("no_tf_runtime")
def test_tensorflow_cpu_never_touches_device_apis(monkeypatch: pytest.MonkeyPatch) -> None:
    log = VendorLog()
    tf, keras = fake_tensorflow(log, gpus=2)
    tf.test.experimental.sync_devices = log.never("sync_devices")
    tf.config.experimental.get_memory_info = log.never("get_memory_info")
    tf.config.experimental.reset_memory_stats = log.never("reset_memory_stats")
    backend = TensorFlowBackend(tf=tf, keras=keras)
    _record_build(log, backend, monkeypatch, "_device")
    config = _config("tensorflow", "cpu")
    _set_up(backend, config)
    _profile(log, backend, config, monkeypatch)
    assert backend.peak_memory_bytes() is None


# -- MindSpore on GPU and Ascend -------------------------------------------------------------


@pytest.fixture
def no_ms_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MindSpore's one-time NumPy init runs a real op: stubbed (no MindSpore import here)."""
    monkeypatch.setattr(MindSporeBackend, "_absorb_numpy_init_failure", lambda self: None)
    # tests/test_backend_mindspore.py drives the real backend in this process: then only
    # "this test imported nothing" can be checked
    imported_before = "mindspore" in sys.modules
    yield
    assert imported_before or "mindspore" not in sys.modules


@pytest.mark.usefixtures("no_ms_runtime")
@pytest.mark.parametrize(("device", "target"), [("npu:1", "Ascend"), ("cuda:1", "GPU")])
def test_mindspore_device_trial_order(monkeypatch: pytest.MonkeyPatch, device: str,
                                      target: str) -> None:
    log = VendorLog()
    backend = MindSporeBackend(ms=fake_mindspore(log, gpus=2, npus=2))
    _record_build(log, backend, monkeypatch, "_device_kind")
    config = _config("mindspore", device)

    _set_up(backend, config)
    names = log.names()
    assert log.calls[0] == ("set_device", target, 1)
    assert names[1] == "runtime.reset_peak_memory_stats"
    assert names.index("set_context") > 1 and names[-1] == "build"
    assert ("set_context", "mode=0") in log.calls  # graph execution is GRAPH_MODE
    _profile(log, backend, config, monkeypatch)
    _assert_synchronised_steps(log, "runtime.synchronize")
    assert backend.peak_memory_bytes() == 5 * 2**30
    assert backend.versions()["mode"] == "GRAPH_MODE"
    backend.teardown()
    assert log.names()[-3:] == ["runtime.max_memory_allocated", "ms_memory_recycle",
                                "runtime.empty_cache"]


@pytest.mark.usefixtures("no_ms_runtime")
@pytest.mark.parametrize(("gpus", "npus", "device", "message"), [
    (0, 2, "npu:5", r"npu:5: MindSpore sees 2 Ascend device\(s\): npu:0, npu:1"),
    (0, 2, "cuda:0", r"cuda:0: this MindSpore install has no GPU support"),
    (1, 0, "npu:0", r"npu:0: this MindSpore install has no Ascend support"),
    (1, 1, "tpu:0", r"tpu:0: MindSpore has no TPU support"),
])
def test_mindspore_refuses_a_device_it_cannot_use(monkeypatch: pytest.MonkeyPatch, gpus: int,
                                                  npus: int, device: str,
                                                  message: str) -> None:
    log = VendorLog()
    backend = MindSporeBackend(ms=fake_mindspore(log, gpus=gpus, npus=npus))
    _record_build(log, backend, monkeypatch, "_device_kind")
    with pytest.raises(UnsupportedConfigError, match=message):
        _set_up(backend, _config("mindspore", device))
    assert log.calls == []  # set_device never called with an id that does not exist
    backend.teardown()  # the failed trial's teardown touches no device
    assert "runtime.empty_cache" not in log.names()


@pytest.mark.usefixtures("no_ms_runtime")
def test_mindspore_cpu_waits_on_the_output_not_the_runtime(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU ``runtime.synchronize`` is unsupported: the last output is waited for."""
    log = VendorLog()
    ms = fake_mindspore(log)
    ms.runtime.synchronize = log.never("runtime.synchronize")
    ms.runtime.max_memory_allocated = log.never("runtime.max_memory_allocated")
    backend = MindSporeBackend(ms=ms)
    _record_build(log, backend, monkeypatch, "_device_kind")
    _set_up(backend, _config("mindspore", "cpu"))
    assert log.calls[0] == ("set_device", "CPU")
    backend._pending = SimpleNamespace(asnumpy=log.record("output.asnumpy"))
    backend.synchronize()
    assert log.calls[-1] == ("output.asnumpy",) and backend._pending is None
    assert backend.peak_memory_bytes() is None


# -- pruning: the shared numpy definition, and torch's pruning agrees with it ----------------


def test_unstructured_masks_prune_the_globally_smallest_fraction() -> None:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(8, 4)), rng.normal(size=(3, 8)) * 10]
    masks = unstructured_masks(weights, 0.25)
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    kept = np.concatenate([m.ravel() for m in masks])
    assert (~kept).sum() == round(0.25 * flat.size)
    # global, not per layer: every pruned weight is smaller than every kept one
    assert flat[~kept].max() < flat[kept].min()
    # the large layer loses fewer weights than the small-valued one
    assert (~masks[1]).sum() < (~masks[0]).sum()
    assert all(m.all() for m in unstructured_masks(weights, 0.0))
    with pytest.raises(ValueError, match="pruning ratio must be in"):
        unstructured_masks(weights, 1.0)


def test_unstructured_ties_prune_exactly_the_ratio() -> None:
    weights = [np.ones((10, 10)), np.ones((5, 10))]
    masks = unstructured_masks(weights, 0.3)
    assert sum(int((~m).sum()) for m in masks) == 45


def test_structured_keep_uses_l1_norm_of_incoming_rows() -> None:
    w0 = np.array([[1.0, 1.0], [5.0, 0.0], [0.1, 0.1], [-3.0, -3.0]])  # L1: 2, 5, .2, 6
    w1 = np.ones((2, 4))
    keep = structured_keep([w0, w1], 0.5)
    assert len(keep) == 1 and keep[0].tolist() == [1, 3]  # sorted indices of the top 2


def test_torch_global_l1_pruning_selects_the_numpy_mask() -> None:
    """The torch backend prunes with torch.nn.utils.prune.global_unstructured (L1); it must
    zero exactly the weights the shared definition (used by TF and MindSpore) zeroes."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils import prune

    torch.manual_seed(0)
    layers = [torch.nn.Linear(16, 12), torch.nn.Linear(12, 6), torch.nn.Linear(6, 3)]
    weights = [m.weight.detach().numpy().copy() for m in layers]
    prune.global_unstructured([(m, "weight") for m in layers],
                              pruning_method=prune.L1Unstructured, amount=0.4)
    torch_masks = [m.weight_mask.numpy().astype(bool) for m in layers]
    for ours, theirs in zip(unstructured_masks(weights, 0.4), torch_masks, strict=True):
        np.testing.assert_array_equal(ours, theirs)
