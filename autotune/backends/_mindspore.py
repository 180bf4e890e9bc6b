"""MindSpore backend: the runtime for any ``mindspore.nn.Cell``, used as an expert would.

* execution: ``graph`` is ``GRAPH_MODE`` with the train step compiled by ``ms.jit`` (a Cell
  called in ``GRAPH_MODE`` compiles on its first call, so inference needs no ``ms.jit``);
  ``eager`` is plain ``PYNATIVE_MODE`` without ``ms.jit``. PyNative plus ``ms.jit`` is the
  same compiled graph as ``GRAPH_MODE`` (10-12 against 10.2 ms per MLP step,
  research/frameworks_on_cpu.md), so putting ``ms.jit`` on the eager step would measure
  graph mode twice and hide what eager execution costs. Compilation happens in the trial's
  first step (timed apart by the profiler). In graph mode the model's ``construct`` and the
  spec's ``loss``/``forward`` callables are compiled too, so they must be graph syntax.
* training: ``ms.value_and_grad`` over the spec's loss, the optimizer applied in the same
  step function. SGD is ``nn.SGD(momentum=0.9)``, equal to torch's to 1e-8 after 15 steps.
  Adam is ``nn.Adam``; it differs from torch only in where eps enters (added to sqrt(v)
  before bias correction, i.e. torch with eps/sqrt(1 - beta2^t): 3e-7 at step 1, 1e-8 in
  the long run), which shows only on weights whose gradients are ~0. AdamW is ``nn.Adam``
  plus torch's decoupled weight decay ``w *= 1 - lr * 0.01`` applied before the Adam
  update, as ``torch.optim.AdamW`` does with its default weight_decay 0.01 (with eps -> 0
  the two agree to 1e-2 after 15 steps at lr 1e-2, loss to 1e-5). Not ``nn.AdamWeightDecay``:
  it has no bias correction (weights 0.67 away from torch's AdamW after 20 steps of a small
  MLP); not ``mindspore.experimental.optim.AdamW``: it matches torch but costs 1.5-4x an
  ``nn.Adam`` step on this CPU. fp16 is ``ms.amp.auto_mixed_precision(net, "O2")`` (fp32
  master weights, batch/layer norms in fp32, fp32 outputs for the loss) with a dynamic loss
  scaler that skips steps whose gradients overflow, as torch's GradScaler does.
* inference: ``set_train(False)``; fp16 through AMP "O2" with the weights of the cells that
  compute in fp16 converted once, as torch converts the model (no per-call weight casts),
  inputs fed in fp16. MindSpore 2.10 has no int8 inference path without the separate
  golden-stick package, so int8 is refused with that reason.
* pruning: the base's global magnitude masks over every trainable weight matrix and conv
  kernel; in training the masks are re-applied after every optimizer step inside the step
  function, so pruned weights stay zero. Structured pruning needs the spec's
  ``prune_structured`` (MindSpore has no dependency-graph channel pruner).
* facts: trainable parameters, each shared ``Parameter`` once; FLOPs from MindSpore's own
  graph-compiler counter ``mindspore.flops_collection`` on the model compiled as a graph
  (forward, or forward + backward in training; it counts MatMul, BatchMatMul, Conv2D and
  flash attention, 2 per multiply-add), on CPU too.

MindSpore is imported in ``__init__`` (the worker times it as import time), never at module
top: this module is imported by the registry without the framework.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import math
import os
import resource
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends import _spec_mindspore
from autotune.backends._framework import FrameworkBackend
from autotune.exceptions import OutOfMemoryError, TrialError, UnsupportedConfigError

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads import ModelSpec

_SGD_MOMENTUM = 0.9
#: torch.optim.AdamW's default weight_decay; AdamW here must mean the same update.
_ADAMW_WEIGHT_DECAY = 0.01
#: Initial loss scale of fp16 training, torch.amp.GradScaler's default (2**16).
_LOSS_SCALE = 2.0**16

#: Fragments of the error texts MindSpore (and the C++ allocator under it) raises when an
#: allocation fails: RuntimeError from the CPU/GPU memory pools, std::bad_alloc re-raised
#: as MemoryError or RuntimeError, ENOMEM from mmap under the worker's RLIMIT_AS cap.
_OOM_TEXTS = ("out of memory", "malloc", "memory not enough", "bad_alloc",
              "cannot allocate memory", "can't allocate memory", "allocate memory failed",
              "memory isn't enough", "alloc memory", "failed to alloc")
#: Kernel threads set in this process: ``threads_num`` can be set only once per process,
#: and MindSpore has no getter for it (``get_context("runtime_num_threads")`` ignores it).
_op_threads: int | None = None
#: What MindSpore says when no kernel exists for a dtype (bf16 MatMul on CPU, say).
_UNSUPPORTED_TEXTS = ("unsupported data type", "select cpu operator", "select gpu operator")


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    if any(t in text for t in _OOM_TEXTS):
        return True
    # EAGAIN from thread creation: under an address-space cap, a new thread's stack did not
    # fit. Without a cap it means something else, so it stays a crash.
    capped = resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY
    return capped and "resource temporarily unavailable" in text


def _is_unsupported(error: BaseException) -> bool:
    text = str(error).lower()
    return any(t in text for t in _UNSUPPORTED_TEXTS)


def _runtime_reserve_mb() -> int:
    """Address space MindSpore's runtime takes beyond the model, from the first op on.

    Measured on a 2-core VM (digits MLP, batch 64, pool grown in 64 MB steps): 470-755 MB
    with glibc's default malloc arenas (up to 64 MB reserved per thread that allocates),
    190-250 MB with ``MALLOC_ARENA_MAX`` 1-2. Reserved, mostly untouched: RSS grows by
    ~80 MB. It counts only under an address-space cap (the worker's ``memory_mb``).
    """
    arenas = os.environ.get("MALLOC_ARENA_MAX", "")
    return 320 if arenas.isdigit() and 0 < int(arenas) <= 2 else 800


def _vm_size_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_address_space() -> None:
    """Fail cleanly, before the first op, when an address-space cap leaves MindSpore's
    runtime too little room to start.

    With less, MindSpore does not raise: it dies in native threads (measured with
    ``memory_mb`` 16-384: SIGABRT ``std::bad_alloc``, SIGABRT ``cannot allocate memory for
    thread-local data``, SIGSEGV, ``RuntimeError: Resource temporarily unavailable`` from
    thread creation, ``RuntimeError: Unknown Error!`` from ``asnumpy``), depending on which
    thread first misses memory. Above it, running out is the pool's clean "Memory isn't
    enough" error, which :func:`_is_oom` maps.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    size = _vm_size_bytes()
    if soft == resource.RLIM_INFINITY or size is None:
        return
    headroom_mb = (soft - size) / 2**20
    need_mb = _runtime_reserve_mb()
    if headroom_mb < need_mb:
        raise OutOfMemoryError(
            f"MindSpore's runtime needs about {need_mb} MB of address space beyond the model "
            f"(thread stacks, malloc arenas, memory pool); the memory cap leaves "
            f"{headroom_mb:.0f} MB. Below that it crashes in native threads instead of "
            "reporting out-of-memory, so the trial is out of memory up front.")


def _lift_address_space_cap() -> None:
    """At exit, give the process back its full address space.

    A MindSpore exit hook starts a thread; under the worker's address-space cap, with the
    cap used up, that fails ("Resource temporarily unavailable") and Python aborts
    (``PyThreadState_Get ... GIL is released``, SIGABRT) after the trial's result was
    written, so an ok trial would read as killed. Nothing is measured any more at exit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))


def _import_mindspore() -> Any:
    """Import MindSpore quietly and arrange for a clean exit under a memory cap."""
    # MindSpore logs WARNINGs from C++ and Python at import and at model build (e.g.
    # "'FusedSparseAdam' is deprecated" when nn.Adam is built); they end up in every
    # worker's stderr. GLOG_v=3 keeps errors only; set before the import, which reads it.
    os.environ.setdefault("GLOG_v", "3")
    import mindspore

    # mindspore.train.serialization's exit hook calls the deprecated Thread.getName();
    # the warning would end every worker's stderr. Not ours to fix. (MindSpore's NumPy
    # 1.x/2 message is not a warning: see _absorb_numpy_init_failure.)
    warnings.filterwarnings("ignore", message=r"getName\(\) is deprecated",
                            category=DeprecationWarning, module=r"mindspore\.")
    # Registered after MindSpore's own exit hooks, so it runs before them (LIFO).
    atexit.register(_lift_address_space_cap)
    return mindspore


#: The precisions that run through mixed precision, by MindSpore dtype name.
_AMP_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}
#: What counts FLOPs, recorded with the count.
_FLOPS_METHOD = ("mindspore.flops_collection on the model compiled as a graph ({}; MatMul, "
                 "BatchMatMul, Conv2D and flash-attention FLOPs, 2 per multiply-add)")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _unique(params: Any) -> list[Any]:
    """``params`` with each Parameter once (a shared one appears under several cells)."""
    seen: set[int] = set()
    out = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _leaves(out: Any) -> list[Any]:
    """The tensors in a model's output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _leaves(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in _leaves(item)]
    return [out] if hasattr(out, "asnumpy") else []


def _call_cell(ms: Any, fn: Callable[..., Any]) -> Any:
    """A Cell whose ``construct(*args)`` is ``fn(*args)``: graph mode compiles a Cell under a
    phase name that ``flops_collection`` can be asked about (an ``ms.jit`` function's
    phase is not exposed)."""

    class _Call(ms.nn.Cell):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.fn = fn

        def construct(self, *args: Any) -> Any:
            return self.fn(*args)

    return _Call()


class MindSporeBackend(FrameworkBackend):
    """MindSpore 2.x on CPU (and GPU/Ascend where the install has them)."""

    name = "mindspore"
    framework = "mindspore"
    backend_spec = _spec_mindspore.SPEC
    weights_suffix = ".npz"

    def __init__(self, ms: Any = None) -> None:
        """``ms`` is the framework module; tests hand in a fake one (the vendor boundary:
        ``ms.set_device``, ``ms.device_context``, ``ms.runtime``) to drive the GPU and
        Ascend paths of hardware this machine lacks, without importing MindSpore."""
        super().__init__()
        if ms is None:
            ms = _import_mindspore()
        self.ms: Any = ms
        self._net: Any = None  # the network that runs (AMP-wrapped under fp16/bf16)
        self._device_kind = "cpu"
        self._mode_name = ""
        #: MindSpore dtype of the trial's fp16/bf16 (None: fp32)
        self._amp_dtype: Any = None
        #: dtype floating inputs are fed in (the inference precision; None: float32)
        self._feed_dtype: Any = None
        #: (Parameter, keep-mask tensor) re-applied after every optimizer step
        self._masks: list[tuple[Any, Any]] = []
        self._weight_decay = 0.0
        self._lr = 0.0
        self._pending: Any = None  # output of the last infer step, not yet waited for
        self._closures: list[Any] = []  # step functions to empty at teardown
        #: a training replica joined the trial's cluster; its gradients are averaged by
        #: ``nn.DistributedGradReducer`` (set up by wrap_data_parallel)
        self._cluster = False
        self._grad_reducer: Any = None
        self._configured_for: TrialConfig | None = None  # the config configure() ran for

    # -- threads and device ----------------------------------------------------------------

    def set_threads(self, n: int) -> int:
        """Size MindSpore's CPU kernel pool to ``n``.

        ``threads_num`` replaces ``set_context(runtime_num_threads)``; it may be set once per
        process, before any kernel runs (hence here, before the first trial). The runtime's
        dispatch threads (``ms.runtime.dispatch_threads_num``, default 5) are left alone:
        they queue work rather than compute; 1 measured the same as the default and 2 was
        three times slower (graph MLP train step, batch 64: 31-40 ms default or 1, 91-108 ms
        with 2). One kernel thread is often the fastest for MLP training in MindSpore
        (research: 10-12 against 24-28 ms with 2): the tuner measures that instead of
        assuming it.
        """
        global _op_threads
        if _op_threads is None:  # once per process: MindSpore refuses a second setting
            self.ms.device_context.cpu.op_tuning.threads_num(n)
            _op_threads = n
        return _op_threads  # what the kernels really use (a reused process keeps the first)

    def _join_cluster(self) -> None:
        """A training replica of a data-parallel trial (``MS_ROLE=MS_WORKER``, set by
        :mod:`autotune.launch._replica`) joins MindSpore's dynamic cluster, whose
        scheduler the coordinator started: ``communication.init()`` once per process,
        after the device is set and before any kernel runs (MindSpore's order)."""
        import os

        from autotune.launch._replicas import REPLICA_ENV

        if not self._cluster and os.environ.get(REPLICA_ENV) and \
                os.environ.get("MS_ROLE") == "MS_WORKER":
            from mindspore.communication import init

            init()
            self._cluster = True

    def _set_device(self, device: str) -> None:
        """Run the trial on ``device`` (``cpu``, ``cuda:N`` or ``npu:N``).

        The id is checked against the devices MindSpore sees before ``ms.set_device``, so
        a missing one is refused naming those that exist; the device's peak memory
        statistics start afresh here, so the peak read after the trial is its own.
        """
        ms = self.ms
        kind, _, index = device.partition(":")
        targets = {"cpu": "CPU", "cuda": "GPU", "npu": "Ascend"}
        self._device_kind = "cpu"  # until the device is known to work
        if kind not in targets:
            from autotune.backends import unsupported_device_reason

            reason = unsupported_device_reason(self.name, device) or "unknown device kind"
            raise UnsupportedConfigError(f"{device}: {reason}")
        if kind == "cpu":
            ms.set_device("CPU")
            return
        context = ms.device_context.gpu if kind == "cuda" else ms.device_context.ascend
        if not context.is_available():
            raise UnsupportedConfigError(
                f"{device}: this MindSpore install has no {targets[kind]} support")
        n, count = int(index or 0), int(context.device_count())
        if n >= count:
            seen = ", ".join(f"{kind}:{i}" for i in range(count))
            raise UnsupportedConfigError(
                f"{device}: MindSpore sees {count} {targets[kind]} device(s)"
                f"{': ' + seen if seen else ''}")
        ms.set_device(targets[kind], n)
        self._device_kind = kind
        # A warm worker runs many trials: each trial's peak is its own.
        ms.runtime.reset_peak_memory_stats()

    def _size_memory_pool(self, memory_mb: int) -> None:
        """Grow MindSpore's memory pool in small steps under a memory budget.

        By default the first op reserves about 1.1 GB of address space for the pool (CPU
        too), so under the worker's address-space cap every trial with ``memory_mb`` below
        that would fail at its first op, whatever its batch. Like a device of that size,
        the pool starts small and grows by 64 MB up to the budget. (On CPU MindSpore does
        not enforce ``max_size``: the cap itself stops growth, and the failing allocation
        is mapped to OutOfMemoryError.) Only applied with a budget: unbudgeted trials
        measure MindSpore's default pool.
        """
        step_gb = f"{min(memory_mb, 64) / 1024:.4f}GB"
        self.ms.runtime.set_memory(init_size=step_gb, increase_size=step_gb,
                                   max_size=f"{max(memory_mb, 1) / 1024:.4f}GB")

    def _absorb_numpy_init_failure(self) -> None:
        """Let MindSpore's one-time NumPy C-API init fail here, quietly, not in a step.

        MindSpore 2.10 is built against NumPy 1.x. On NumPy 2 the first Tensor operator
        call (``t * 0.5``, ``t * mask``) makes it initialise NumPy's C API, which fails:
        NumPy writes "A module that was compiled using NumPy 1.x cannot be run in NumPy 2"
        with a traceback to stderr, MindSpore logs "py_parse.cc Numpy init failed" and
        leaves the ImportError set, so that call raises ``SystemError: <method '__mul__'
        of 'TensorPy' objects> returned a result with an exception set``. The init is
        attempted once per process; later calls work (everything this backend does was
        checked to, NumPy conversions included). A one-element product absorbs it, after
        the device is set (an op initialises the device) and before the factory builds
        the model. Only that message is dropped; anything else written meanwhile is
        passed on.
        """
        ms = self.ms
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            one = ms.Tensor(np.ones(1, dtype=np.float32))
            try:
                (one * one).asnumpy()
            except SystemError as e:
                if "returned a result with an exception set" not in str(e):
                    raise
        text = captured.getvalue()
        if text and "compiled using NumPy 1.x" not in text:
            sys.stderr.write(text)

    # -- runtime ---------------------------------------------------------------------------

    def configure(self, config: TrialConfig) -> None:
        """Device, execution mode, memory pool, seed and precision, before the factory
        builds the model (the mode decides how everything built afterwards runs)."""
        ms = self.ms
        self.config = config
        if config.precision == "int8":
            raise UnsupportedConfigError(
                "MindSpore has no int8 inference path on this install (it needs the "
                "separate MindSpore Golden Stick quantisation package)")
        if config.precision not in ("fp32", *_AMP_DTYPES):
            raise UnsupportedConfigError(f"unknown precision {config.precision!r}")
        if config.execution not in ("eager", "graph"):
            raise UnsupportedConfigError(
                f"mindspore has no {config.execution!r} execution; use eager or graph")
        self._set_device(config.device)
        self._join_cluster()
        if config.precision == "bf16" and self._device_kind == "cpu":
            # Checked here, not left to fail: a failed AMP kernel selection poisons the
            # PyNative process (later fp32 nets fail too, research/frameworks_on_cpu.md).
            raise UnsupportedConfigError("MindSpore has no bf16 CPU kernels (MatMul, ReLU)")
        graph = config.execution == "graph"
        if graph and config.mode == "generate":
            raise UnsupportedConfigError(_spec_mindspore.GENERATE_GRAPH_REASON)
        ms.set_context(mode=ms.GRAPH_MODE if graph else ms.PYNATIVE_MODE)
        self._mode_name = "GRAPH_MODE" if graph else "PYNATIVE_MODE"
        if config.budget.memory_mb is not None:
            self._size_memory_pool(config.budget.memory_mb)
        _check_address_space()
        ms.set_seed(config.seed)
        dtype_name = _AMP_DTYPES.get(config.precision)
        self._amp_dtype = None if dtype_name is None else getattr(ms, dtype_name)
        self._feed_dtype = None
        try:
            # The first op allocates MindSpore's memory pool: inside the OOM mapping.
            self._absorb_numpy_init_failure()
        except Exception as e:
            kind = self.classify_error(e)
            if kind is None:
                raise
            raise kind(f"while starting MindSpore's runtime: {_first_line(e)}") from None
        self._configured_for = config

    def setup(self, config: TrialConfig, spec: ModelSpec) -> dict[str, Any]:
        """The base's setup, in the device and execution mode :meth:`configure` (run by the
        worker before the factory) set."""
        if self._configured_for is None:
            raise RuntimeError("MindSporeBackend.setup before configure: the worker calls "
                               "configure(config) before the factory, then setup")
        return super().setup(config, spec)

    def model_type_error(self, model: Any) -> str | None:
        if isinstance(model, self.ms.nn.Cell):
            return None
        return (f"returned a {type(model).__module__}.{type(model).__name__} as the model; "
                "the mindspore backend needs a mindspore.nn.Cell")

    def place_model(self, model: Any) -> Any:
        """MindSpore places by context (the device set in :meth:`configure`)."""
        model.set_train(True)
        return model

    def to_device(self, array: np.ndarray) -> Any:
        ms = self.ms
        if array.dtype.kind == "f" and array.dtype != np.float32:
            array = array.astype(np.float32)
        tensor = ms.Tensor(np.ascontiguousarray(array))
        if array.dtype.kind == "f" and self._feed_dtype is not None:
            tensor = tensor.astype(self._feed_dtype)
        return tensor

    def classify_error(self, error: BaseException) -> type[TrialError] | None:
        if not isinstance(error, (RuntimeError, TypeError, ValueError, MemoryError)):
            return None
        if _is_oom(error):
            return OutOfMemoryError
        if _is_unsupported(error):
            return UnsupportedConfigError
        return None

    # -- model facts -----------------------------------------------------------------------

    def _trainable(self) -> list[Any]:
        return _unique(self.model.trainable_params())

    def _weights(self) -> list[Any]:
        """Every trainable Parameter of 2+ dimensions (weight matrices, conv kernels,
        embeddings), each shared one once, in the model's order. Non-trainable Parameters
        (batch-norm moving statistics, frozen tables) are not pruned."""
        return [p for p in self._trainable() if len(p.shape) >= 2]

    def trainable_parameter_count(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self._trainable())

    def weight_arrays(self) -> list[np.ndarray]:
        return [p.asnumpy().astype(np.float32) for p in self._weights()]

    def weight_bytes(self) -> int | None:
        """Bytes of every Parameter as stored now (after the inference conversion; batch
        norm moving statistics included, as torch counts buffers)."""
        return sum(int(np.prod(p.shape)) * int(p.itemsize)
                   for p in _unique(self.model.get_parameters()))

    def count_flops(self, inputs: tuple[Any, ...], targets: Any,
                    mode: str) -> tuple[int | None, str]:
        """Compile the forward (infer) or forward + backward (train) as a graph and ask the
        graph compiler what it counted. In PyNative trials the count compiles in graph mode
        and switches back; the model's state (batch-norm statistics) is restored."""
        ms = self.ms
        method = _FLOPS_METHOD.format("forward + backward" if mode == "train" else "forward")
        net = self._net if (mode == "train" and self._net is not None) else self.model
        was_training = bool(net.training)
        buffers = [(p, p.asnumpy().copy()) for p in _unique(net.get_parameters())
                   if not p.requires_grad]
        switch = ms.get_context("mode") != ms.GRAPH_MODE
        try:
            if switch:
                ms.set_context(mode=ms.GRAPH_MODE)
            if mode == "train":
                forward = self._forward_fn(net, scale=None)
                params = tuple(self._trainable())
                cell = _call_cell(ms, ms.value_and_grad(forward, None, params))
                net.set_train(True)
                cell(*inputs, targets)
            else:
                cell = _call_cell(ms, net)
                net.set_train(False)
                cell(*inputs)
            flops, _, _, _, dynamic = ms.flops_collection(cell.current_phase)
        except Exception as e:
            return None, (f"mindspore.flops_collection could not count this model: the graph "
                          f"compiler failed: {type(e).__name__}: {_first_line(e)}")
        finally:
            if switch:
                ms.set_context(mode=ms.PYNATIVE_MODE)
            net.set_train(was_training)
            for p, value in buffers:
                p.set_data(ms.Tensor(value, dtype=p.dtype))
        if dynamic:
            return None, "mindspore.flops_collection counts static shapes only"
        return int(flops), method

    def compute_dtype(self) -> str:
        """The dtype the first Dense/Conv cell computes in, measured on one zero sample
        (AMP casts inside the cell, so its parameters' dtype would not say); without such
        a cell, the trial's mixed-precision dtype."""
        ms = self.ms
        net = self._net if self._net is not None else self.model
        if net is None:
            return "float32"
        mixed = self._amp_dtype is not None and net is not self.model
        fallback = str(self._amp_dtype).lower() if mixed else "float32"
        nn = ms.nn
        for _, cell in net.cells_and_names():
            if isinstance(cell, nn.Dense):
                probe = np.zeros((1, int(cell.in_channels)), dtype=np.float32)
            elif isinstance(cell, nn.Conv2d):
                side = 4 * max(int(k) for k in cell.kernel_size)
                probe = np.zeros((1, int(cell.in_channels), side, side), dtype=np.float32)
            else:
                continue
            was_training = bool(cell.training)
            try:
                cell.set_train(False)
                return str(cell(ms.Tensor(probe)).dtype).lower()  # Float16 -> float16
            except Exception:
                return fallback
            finally:
                cell.set_train(was_training)
        return fallback

    # -- pruning ---------------------------------------------------------------------------

    def apply_weight_masks(self, masks: Sequence[np.ndarray], *, permanent: bool) -> None:
        ms = self.ms
        weights = self._weights()
        for w, m in zip(weights, masks, strict=True):
            w.set_data(ms.Tensor(w.asnumpy() * m.astype(w.asnumpy().dtype), dtype=w.dtype))
        self._masks = ([] if permanent else
                       [(w, ms.Tensor(m.astype(np.float32)))
                        for w, m in zip(weights, masks, strict=True)])

    def prune_structured_default(self, ratio: float) -> None:
        raise UnsupportedConfigError(
            "structured pruning of a MindSpore model needs the ModelSpec's "
            "prune_structured(model, ratio): MindSpore has no dependency-graph channel "
            "pruner (torch uses torch-pruning)")

    # -- training --------------------------------------------------------------------------

    def make_optimizer(self, name: str, learning_rate: float) -> Any:
        nn = self.ms.nn
        params = self._trainable()
        self._lr = learning_rate
        self._weight_decay = _ADAMW_WEIGHT_DECAY if name == "adamw" else 0.0
        if name == "sgd":
            return nn.SGD(params, learning_rate=learning_rate, momentum=_SGD_MOMENTUM)
        if name in ("adam", "adamw"):  # adamw: decoupled decay is added in the step
            return nn.Adam(params, learning_rate=learning_rate)
        raise UnsupportedConfigError(f"unknown optimizer {name!r}")

    def _forward_fn(self, net: Any, *, scale: Any) -> Callable[..., Any]:
        """``forward(*inputs, targets) -> loss`` of the spec on ``net`` (scaled by the fp16
        loss scaler ``scale`` when given). Written for ``ms.jit``: closures over constants
        and Cells, branches on Python values resolved here, not in the graph."""
        ms = self.ms
        ops = ms.ops
        assert self.spec is not None
        spec = self.spec
        n_in = len(self.example_inputs)
        single = self.single_input
        user_forward: Any = spec.forward
        user_loss: Any = spec.loss if callable(spec.loss) else None
        f32, i32 = ms.float32, ms.int32
        sce = ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

        def first(out: Any) -> Any:  # a model returning (logits, ...) is scored on logits
            if isinstance(out, (tuple, list)):
                return out[0]
            return out

        def cross_entropy(out: Any, targets: Any) -> Any:
            out = first(out)
            logits = ops.reshape(out, (-1, out.shape[-1]))
            return sce(ops.cast(logits, f32), ops.cast(ops.reshape(targets, (-1,)), i32))

        def mse(out: Any, targets: Any) -> Any:
            out = first(out)
            return ops.mse_loss(ops.cast(out, f32), ops.cast(targets, f32))

        def callable_loss(out: Any, targets: Any) -> Any:
            return user_loss(first(out), targets)

        loss_of = (callable_loss if user_loss is not None
                   else mse if spec.loss == "mse" else cross_entropy)

        def own_loss(*args: Any) -> Any:
            xs = args[:n_in]
            if single:
                return user_forward(net, xs[0], args[n_in])
            return user_forward(net, xs, args[n_in])

        def model_loss(*args: Any) -> Any:
            return loss_of(net(*args[:n_in]), args[n_in])

        loss_fn = own_loss if user_forward is not None else model_loss
        if scale is None:
            self._closures += [first, cross_entropy, mse, callable_loss, own_loss, model_loss]
            return loss_fn

        def scaled(*args: Any) -> Any:
            return scale.scale(loss_fn(*args))

        self._closures += [first, cross_entropy, mse, callable_loss, own_loss, model_loss,
                           scaled]
        return scaled

    def wrap_data_parallel(self, config: TrialConfig) -> dict[str, Any]:
        """MindSpore's data-parallel mode: ``set_auto_parallel_context(DATA_PARALLEL,
        gradients_mean=True)`` and an ``nn.DistributedGradReducer`` that all-reduces each
        step's gradients across the cluster (graph execution only, as the dynamic
        cluster requires)."""
        ms = self.ms
        if not self._cluster:
            raise UnsupportedConfigError("this MindSpore replica joined no cluster "
                                         "(MS_ROLE missing)")
        if config.execution != "graph":
            raise UnsupportedConfigError(
                f"execution {config.execution!r} with data_parallel: MindSpore's dynamic "
                "cluster runs in graph mode only (execution graph)")
        from mindspore.communication import get_group_size

        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=True)
        self._grad_reducer = ms.nn.DistributedGradReducer(self._trainable())
        return {"replicas": int(get_group_size()),
                "how": "MindSpore DATA_PARALLEL + nn.DistributedGradReducer",
                "collective": "dynamic cluster (scheduler + workers)",
                "comm_reason": "MindSpore runs the all-reduce inside the compiled step and "
                               "does not expose its time"}

    def build_train_step(self, precision: str, execution: str) -> Callable[..., Any]:
        """One optimizer step as ``step(inputs, targets) -> loss`` (the unscaled loss).

        A closure over the network, optimizer and masks: ``ms.jit`` resolves free variables
        (Cells and Parameters become graph inputs, masks constants) and needs the source of
        a real file, which this is. In graph execution the step is ``ms.jit``-compiled on
        its first call (the trial's first step); in eager it runs op by op. The base
        recipe of inference trials (``execution='eager'``, the only step an infer trial
        builds) is compiled whatever the trial's execution: it is not what the trial
        measures, and it trains five times faster.
        """
        ms = self.ms
        ops = ms.ops
        assert self.config is not None
        dtype_name = _AMP_DTYPES.get(precision)
        net = self.model
        if dtype_name is not None:
            net = ms.amp.auto_mixed_precision(self.model, "O2", dtype=getattr(ms, dtype_name))
        self._net = net
        net.set_train(True)
        optimizer = self.optimizer
        params = tuple(optimizer.parameters)
        use_scaler = precision == "fp16"
        scaler: Any = ms.amp.DynamicLossScaler(_LOSS_SCALE, 2, 2000) if use_scaler else None
        grad_fn = ms.value_and_grad(self._forward_fn(net, scale=scaler), None, params)
        mask_weights = tuple(w for w, _ in self._masks)
        mask_tensors = tuple(m for _, m in self._masks)
        use_masks = bool(self._masks)
        decay = 1.0 - self._lr * self._weight_decay  # torch AdamW: w *= 1 - lr * wd, then Adam
        use_decay = self._weight_decay > 0

        def update(grads: Any) -> Any:
            done = True
            if use_decay:
                for p in params:
                    done = ops.depend(done, ops.assign(p, p * decay))
            grads = ops.depend(grads, done)
            done = optimizer(grads)
            if use_masks:
                # indexing, not zip(strict=...): ms.jit's parser rejects the keyword
                for i in range(len(mask_weights)):
                    w = mask_weights[i]
                    done = ops.depend(done, ops.assign(
                        w, ops.depend(w, done) * ops.cast(mask_tensors[i], w.dtype)))
            return done

        reducer = self._grad_reducer
        use_reducer = reducer is not None

        def train_step(*args: Any) -> Any:
            loss, grads = grad_fn(*args)
            if use_reducer:  # a data-parallel replica: the cluster's mean gradient
                grads = reducer(grads)
            if use_scaler:
                loss = scaler.unscale(loss)
                finite = ms.amp.all_finite(grads)
                if finite:  # an overflowed fp16 step is skipped, as GradScaler does
                    loss = ops.depend(loss, update(scaler.unscale(grads)))
                loss = ops.depend(loss, scaler.adjust(finite))
                return loss
            return ops.depend(loss, update(grads))

        self._closures += [update, train_step]
        jit = execution == "graph" or self.config.mode != "train"
        run = ms.jit(train_step) if jit else train_step

        def step(inputs: tuple[Any, ...], targets: Any) -> Any:
            return run(*inputs, targets)

        return step

    def to_float(self, loss: Any) -> float:
        # Reading the loss waits for the step (its optimizer update included), like torch's
        # float(loss); it is needed every step to catch divergence.
        return float(np.asarray(loss.asnumpy(), dtype=np.float64).reshape(-1)[0])

    # -- inference -------------------------------------------------------------------------

    def convert_for_inference(self, precision: str) -> str:
        ms = self.ms
        model = self.model
        model.set_train(False)
        net = model
        dtype_name = _AMP_DTYPES.get(precision)
        if dtype_name is not None:
            dtype = getattr(ms, dtype_name)
            # "O2": every cell but the normalisation blacklist computes in the low dtype,
            # the output is cast back to fp32.
            net = ms.amp.auto_mixed_precision(model, "O2", dtype=dtype)
            black = tuple(ms.amp.get_black_list())
            full = {id(p) for _, cell in model.cells_and_names() if isinstance(cell, black)
                    for p in cell.get_parameters()}
            # Convert the weights once, as torch converts the model, so no weight casts
            # run per batch; the norms keep fp32 parameters (they compute in fp32).
            # (set_dtype: set_data casts the new value back to the Parameter's own dtype)
            for p in _unique(model.get_parameters()):
                if id(p) not in full and p.dtype == ms.float32:
                    p.set_dtype(dtype)
            self._feed_dtype = dtype
        net.set_train(False)
        self._net = net
        return "mindspore"

    def build_infer_step(self, execution: str) -> Callable[..., Any]:
        """``step(inputs)``: the network called on the batch. In ``GRAPH_MODE`` the Cell
        compiles on its first call (the trial's first step); in PyNative it runs op by op
        and returns before its kernels have run (see :meth:`synchronize`)."""
        net = self._net

        def step(inputs: tuple[Any, ...]) -> Any:
            self._pending = net(*inputs)
            return self._pending

        return step

    # -- generate mode (PyNative) ----------------------------------------------------------

    def sdpa_unsupported_reason(self) -> str | None:
        return _spec_mindspore.SDPA_REASON

    def apply_weight_quant(self, kind: str) -> None:
        raise UnsupportedConfigError(
            f"weight_quant {kind!r}: {_spec_mindspore.WEIGHT_QUANT_REASON}")

    def build_lm_step(self, execution: str, kv_cache: str) -> Callable[..., Any]:
        ms, model = self.ms, self.model

        def step(idx: Any, cache: Any, pos: int) -> tuple[Any, Any]:
            logits, cache = model.forward_cached(idx, cache, pos)
            return logits[:, -1].argmax(axis=-1).astype(ms.int32), cache

        return step

    def build_lm_full(self, execution: str) -> Callable[..., Any]:
        ms, model = self.ms, self.model

        def full(idx: Any) -> Any:
            return model(idx)[:, -1].argmax(axis=-1).astype(ms.int32)

        return full

    def lm_host(self, ids: Any) -> np.ndarray:
        return np.asarray(ids.asnumpy())  # waits for PyNative's queued kernels

    def lm_concat(self, seq: Any, ids: Any) -> Any:
        return self.ms.ops.cat((seq, ids.reshape(-1, 1).astype(seq.dtype)), axis=1)

    @contextlib.contextmanager
    def _quality(self) -> Iterator[None]:
        model = self.model
        was_training = bool(model.training)
        model.set_train(False)
        try:
            yield
        finally:
            model.set_train(was_training)

    def quality_context(self) -> contextlib.AbstractContextManager[Any]:
        """Evaluation mode (batch norm on its moving statistics, no dropout)."""
        return self._quality()

    # -- the base-model cache --------------------------------------------------------------

    def save_weights(self, path: Path) -> None:
        """Every Parameter (moving statistics included) in the model's order, as numpy."""
        params = _unique(self.model.get_parameters())
        arrays = {f"p{i}": p.asnumpy() for i, p in enumerate(params)}
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a name
            np.savez(f, **arrays)

    def load_weights(self, path: Path) -> None:
        ms = self.ms
        params = _unique(self.model.get_parameters())
        with np.load(path) as f:
            arrays = [f[f"p{i}"] for i in range(len(f.files))]
        shapes = [tuple(p.shape) for p in params]
        if [a.shape for a in arrays] != shapes:
            raise ValueError(f"cached base model {path.name} does not fit the model "
                             f"({len(arrays)} arrays for {len(params)} parameters)")
        for p, a in zip(params, arrays, strict=True):
            p.set_data(ms.Tensor(a, dtype=p.dtype))

    # -- device ----------------------------------------------------------------------------

    def synchronize(self) -> None:
        """Wait for the work of the last step.

        PyNative queues kernels and returns before they have run, on CPU too (measured: a
        1024-sample forward returns after 121 ms with 108 ms of work still queued), so the
        profiler's clock must wait for the last output. ``asnumpy`` on a CPU tensor shares
        its storage (no copy) and blocks until it is computed. On GPU/Ascend the kernels run
        on device streams: ``ms.runtime.synchronize`` waits for them (it only logs an
        error on CPU, where it is not supported). A training step has been waited for
        already: its loss is read every step.
        """
        if self._device_kind != "cpu":
            self.ms.runtime.synchronize()
        elif self._pending is not None:
            for leaf in _leaves(self._pending):
                leaf.asnumpy()
        self._pending = None

    def peak_memory_bytes(self) -> int | None:
        """Device peak on GPU/Ascend; ``None`` on CPU, where MindSpore reports 0."""
        if self._device_kind == "cpu":
            return None
        return int(self.ms.runtime.max_memory_allocated())

    def versions(self) -> dict[str, str]:
        ms = self.ms
        out = {"mindspore": str(ms.__version__), "mode": self._mode_name}
        if self.config is not None:
            out["device_target"] = str(ms.get_context("device_target"))
        return out

    def _release_closures(self) -> None:
        """Empty the step functions' closures, which hold the network and optimizer.

        ``ms.jit`` and ``ms.value_and_grad`` keep the functions they were given (in caches
        that ``ms.ms_memory_recycle`` does not clear), so dropping our references alone
        frees nothing: measured, every setup/teardown cycle of the 3x1000 MLP kept its
        ~28 MB of parameters and optimizer state. Nothing calls these functions afterwards.
        """
        for fn in self._closures:
            for cell in fn.__closure__ or ():
                with contextlib.suppress(ValueError):  # an empty cell stays empty
                    cell.cell_contents = None
        self._closures = []

    def teardown(self) -> None:
        self._release_closures()
        self._grad_reducer = None
        self._net = self._pending = self._amp_dtype = self._feed_dtype = None
        self._masks = []
        self._configured_for = None
        self.last_loss = math.nan  # the next trial's infer mode reports no stale loss
        super().teardown()
        # Compiled graphs and the memory cached for them (MindSpore's documented call for
        # "several models trained in one process").
        self.ms.ms_memory_recycle()
        if self._device_kind != "cpu":
            self.ms.runtime.empty_cache()
