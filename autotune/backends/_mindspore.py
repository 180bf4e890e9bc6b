"""MindSpore backend, used the way an expert would on each device.

* execution: ``graph`` is ``GRAPH_MODE`` with the train step compiled by ``ms.jit`` (the
  forward pass is a Cell, which ``GRAPH_MODE`` compiles on its first call); ``eager`` is plain
  ``PYNATIVE_MODE`` without ``ms.jit``. PyNative plus ``ms.jit`` is the same compiled graph
  as ``GRAPH_MODE`` (10-12 against 10.2 ms per MLP step, research/frameworks_on_cpu.md), so
  putting ``ms.jit`` on the eager step would measure graph mode twice and hide what eager
  execution costs; the tuner is there to find that graph mode wins.
* training: ``ms.value_and_grad`` over the network, the optimizer applied in the same step
  function. SGD is ``nn.SGD(momentum=0.9)``, equal to torch's to 1e-8 after 15 steps.
  Adam is ``nn.Adam``; it differs from torch only in where eps enters (added to sqrt(v)
  before bias correction, i.e. torch with eps/sqrt(1 - beta2^t): 3e-7 at step 1, 1e-8 in
  the long run), which shows only on weights whose gradients are ~0. AdamW is ``nn.Adam``
  plus torch's decoupled weight decay ``w *= 1 - lr * 0.01`` applied before the Adam
  update, as ``torch.optim.AdamW`` does with its default weight_decay 0.01 (with eps -> 0
  the two agree to 1e-2 after 15 steps at lr 1e-2, loss to 1e-5). Not ``nn.AdamWeightDecay``:
  it has no bias correction (weights 0.67 away from torch's AdamW after 20 steps of a small
  MLP); not ``mindspore.experimental.optim.AdamW``: it matches torch but costs 1.5-4x an
  ``nn.Adam`` step on this CPU. fp16 is ``ms.amp.auto_mixed_precision(net, "O2")`` (fp32
  master weights, fp32 logits for the loss) with a dynamic loss scaler that skips steps
  whose gradients overflow, as torch's GradScaler does.
* inference: ``set_train(False)``; fp16 through AMP "O2" with the weights themselves
  converted to fp16, as torch converts the model (no per-call weight casts).
* pruning: the shared numpy definitions of :mod:`autotune.backends._pruning`. In training
  the unstructured masks are re-applied after every optimizer step inside the step
  function, so pruned weights stay zero; in inference the zeros are permanent.
* weights are initialised like ``torch.nn.Linear`` (uniform in +-1/sqrt(fan_in) for weights
  and biases) from a numpy generator seeded with the trial's seed, so training behaves like
  the torch model.

MindSpore is imported in ``__init__`` (the worker times it as import time), never at module
top: this module is imported by the registry without the framework.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import math
import os
import resource
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends._base import EVAL_CHUNK as _EVAL_CHUNK
from autotune.backends._base import RECIPE_BATCH as _RECIPE_BATCH
from autotune.backends._base import RECIPE_LR as _RECIPE_LR
from autotune.backends._base import RECIPE_OPTIMIZER as _RECIPE_OPTIMIZER
from autotune.backends._base import Backend, epoch_steps
from autotune.backends._pruning import (
    apply_structured,
    dense_flops,
    dense_param_count,
    unstructured_masks,
)
from autotune.exceptions import (
    NonFiniteLossError,
    OutOfMemoryError,
    UnsupportedConfigError,
)

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads import Dataset, Workload

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


def _torch_like_init(widths: Sequence[int], seed: int) -> tuple[list[np.ndarray],
                                                              list[np.ndarray]]:
    """Weights and biases as ``torch.nn.Linear`` initialises them, ``(out, in)`` layout.

    torch uses kaiming_uniform(a=sqrt(5)) for weights, whose bound is
    ``sqrt(6 / ((1 + 5) * fan_in)) = 1 / sqrt(fan_in)``, and uniform(+-1/sqrt(fan_in)) for
    biases. Same distribution, so the same training dynamics (the values differ: torch's
    generator is not numpy's).
    """
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for fan_in, fan_out in itertools.pairwise(widths):
        bound = 1.0 / math.sqrt(fan_in)
        weights.append(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32))
        biases.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
    return weights, biases


class MindSporeBackend(Backend):
    """MindSpore 2.x on CPU (and GPU/Ascend where the install has them)."""

    name = "mindspore"

    def __init__(self, ms: Any = None) -> None:
        """``ms`` is the framework module; tests hand in a fake one (the vendor boundary:
        ``ms.set_device``, ``ms.device_context``, ``ms.runtime``) to drive the GPU and
        Ascend paths of hardware this machine lacks, without importing MindSpore."""
        if ms is None:
            ms = _import_mindspore()
        self.ms: Any = ms
        self.config: TrialConfig | None = None
        self.net: Any = None  # the network that runs (AMP-wrapped under fp16)
        self.optimizer: Any = None
        self._dense: list[Any] = []  # the Dense cells, input layer first
        self._train_step: Callable[[Any, Any], Any] | None = None
        self._device_kind = "cpu"
        self._mode_name = ""
        self._amp_dtype: Any = None
        self._compute_dtype: str | None = None
        self._widths: tuple[int, ...] = ()
        self._x_train: np.ndarray | None = None
        self._y_train: np.ndarray | None = None
        self._x_test: np.ndarray | None = None
        self._eval_chunks: list[Any] = []
        self._y_test: np.ndarray | None = None
        self._batches: list[tuple[Any, Any]] = []
        self._infer_batches: list[Any] = []
        self._pending: Any = None  # output of the last infer step, not yet waited for
        self._closures: list[Any] = []  # step functions to empty at teardown
        self._cursor = 0
        self._epoch = 0
        self.last_loss = math.nan

    # -- threads and device ----------------------------------------------------------------

    def set_threads(self, n: int) -> int:
        """Size MindSpore's CPU kernel pool to ``n``.

        ``threads_num`` replaces ``set_context(runtime_num_threads)``; it may be set once per
        process, before any kernel runs (hence here, before ``setup``). The runtime's
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
        the device is set (an op initialises the device). Only that message is dropped;
        anything else written meanwhile is passed on.
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

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self, config: TrialConfig, workload: Workload, data: Dataset) -> dict[str, Any]:
        ms = self.ms
        self.config = config
        if config.precision == "int8":
            raise UnsupportedConfigError("MindSpore has no int8 path on this install")
        if config.precision not in ("fp32", "fp16", "bf16"):
            raise UnsupportedConfigError(f"unknown precision {config.precision!r}")
        if config.execution not in ("eager", "graph"):
            raise UnsupportedConfigError(
                f"mindspore has no {config.execution!r} execution; use eager or graph")
        self._set_device(config.device)
        if config.precision == "bf16" and self._device_kind == "cpu":
            # Checked here, not left to fail: a failed AMP kernel selection poisons the
            # PyNative process (later fp32 nets fail too, research/frameworks_on_cpu.md).
            raise UnsupportedConfigError("MindSpore has no bf16 CPU kernels (MatMul, ReLU)")
        # The mode decides how everything built afterwards runs: set it first.
        mode = ms.GRAPH_MODE if config.execution == "graph" else ms.PYNATIVE_MODE
        ms.set_context(mode=mode)
        if config.budget.memory_mb is not None:
            self._size_memory_pool(config.budget.memory_mb)
        _check_address_space()
        self._mode_name = "GRAPH_MODE" if config.execution == "graph" else "PYNATIVE_MODE"
        ms.set_seed(config.seed)
        self._amp_dtype = {"fp16": ms.float16, "bf16": ms.bfloat16}.get(config.precision)
        try:
            # The first op allocates MindSpore's memory pool: inside the OOM mapping.
            self._absorb_numpy_init_failure()
            return self._build(config, workload, data)
        except (RuntimeError, TypeError, ValueError) as e:
            if _is_oom(e):
                raise OutOfMemoryError(f"out of memory while building the model: {e}") from e
            if _is_unsupported(e):
                raise UnsupportedConfigError(f"MindSpore cannot run this: {e}") from e
            raise

    def _build(self, config: TrialConfig, workload: Workload, data: Dataset) -> dict[str, Any]:
        ms = self.ms
        self._x_train, self._y_train = data.x_train, data.y_train.astype(np.int32)
        # Held-out split cut into evaluation chunks once; evaluation only runs them.
        self._x_test = data.x_test
        self._eval_chunks = [ms.Tensor(data.x_test[s:s + _EVAL_CHUNK])
                             for s in range(0, len(data.x_test), _EVAL_CHUNK)]
        self._y_test = data.y_test
        info: dict[str, Any] = {}
        if config.mode == "train":
            weights, biases = _torch_like_init(workload.layer_widths, config.seed)
            weights, biases, masks = self._prune(weights, biases, config)
            self._make_net(weights, biases)
            self.net.set_train(True)
            self.optimizer = self._make_optimizer(config.optimizer, config.learning_rate)
            self._train_step = self._make_train_step(
                masks, weight_decay=_ADAMW_WEIGHT_DECAY if config.optimizer == "adamw" else 0.0,
                lr=config.learning_rate, jit=config.execution == "graph")
            self._new_epoch()
        else:
            info["base_model"] = self._train_base_model(config, workload)
            weights, biases = self._weights()
            weights, biases, _ = self._prune(weights, biases, config)
            self._make_net(weights, biases, infer=True)
            self._make_infer_batches(config.batch_size)
        widths = self._widths
        param_count = sum(int(np.prod(p.shape)) for p in self.net.get_parameters())
        if param_count != dense_param_count(widths):  # the net is what the formula describes
            raise RuntimeError(f"built {param_count} parameters, expected "
                               f"{dense_param_count(widths)} for widths {widths}")
        # Sparsity of the fp32 weights the net was built from (an fp16 conversion could
        # flush tiny weights to zero; torch measures before conversion too).
        sparsity = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
        info.update(param_count=param_count, flops_per_sample=dense_flops(widths, config.mode),
                    widths=list(widths), sparsity=float(sparsity),
                    execution=config.execution, runtime="mindspore")
        return info

    def _prune(self, weights: list[np.ndarray], biases: list[np.ndarray],
               config: TrialConfig) -> tuple[list[np.ndarray], list[np.ndarray],
                                             list[np.ndarray]]:
        """Weights, biases and keep-masks after the trial's pruning (masks: unstructured
        pruning only, empty otherwise)."""
        ratio = config.pruning_ratio
        if ratio <= 0:
            return weights, biases, []
        if config.pruning_structure == "structured":
            new_w, new_b = apply_structured(weights, biases, ratio)
            return new_w, new_b, []
        masks = unstructured_masks(weights, ratio)
        return [w * m for w, m in zip(weights, masks, strict=True)], biases, masks

    def _make_net(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], *,
                  infer: bool = False) -> None:
        """The dense stack (ReLU between layers, logits out) with these weights."""
        ms = self.ms
        nn = ms.nn
        cells: list[Any] = []
        self._dense = []
        for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
            dense = nn.Dense(w.shape[1], w.shape[0], weight_init=ms.Tensor(w),
                             bias_init=ms.Tensor(b))
            self._dense.append(dense)
            cells.append(dense)
            if i < len(weights) - 1:
                cells.append(nn.ReLU())
        self._widths = (weights[0].shape[1], *(w.shape[0] for w in weights))
        net = nn.SequentialCell(cells)
        if infer:
            net.set_train(False)
        if self._amp_dtype is not None:
            # "O2": every cell but the normalisation blacklist computes in the low dtype,
            # the output is cast back to fp32 (the loss and argmax stay fp32). For this MLP
            # it is the same as "O3"; "O1" would leave ReLU and the bias add to casts.
            net = ms.amp.auto_mixed_precision(net, "O2", dtype=self._amp_dtype)
            if infer:
                # Inference: convert the weights once, as torch converts the model, so no
                # weight casts run per batch. Training keeps fp32 master weights.
                for p in net.get_parameters():
                    p.set_data(p.astype(self._amp_dtype))
            self._compute_dtype = str(self._amp_dtype).lower()  # Float16 -> float16
        else:
            self._compute_dtype = "float32"
        self.net = net

    def _weights(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The Dense weights and biases as float32 numpy arrays, ``(out, in)`` layout."""
        return self.dense_weights(), [d.bias.asnumpy().astype(np.float32) for d in self._dense]

    def dense_weights(self) -> list[Any]:
        """The Dense weights as they are now, float32 numpy ``(out, in)`` (MindSpore's Dense
        keeps torch's layout), input layer first."""
        return [d.weight.asnumpy().astype(np.float32) for d in self._dense]

    def _make_optimizer(self, name: str, lr: float) -> Any:
        nn = self.ms.nn
        params = self.net.trainable_params()
        if name == "sgd":
            return nn.SGD(params, learning_rate=lr, momentum=_SGD_MOMENTUM)
        if name in ("adam", "adamw"):  # adamw: decoupled decay is added in the step
            return nn.Adam(params, learning_rate=lr)
        raise UnsupportedConfigError(f"unknown optimizer {name!r}")

    def _make_train_step(self, masks: Sequence[np.ndarray], *, weight_decay: float, lr: float,
                         jit: bool) -> Callable[[Any, Any], Any]:
        """One optimizer step as a function of (x, y) returning the (unscaled) loss.

        A closure over the network, optimizer and masks: ``ms.jit`` resolves free variables
        (Cells and Parameters become graph inputs, masks constants) and needs the source of
        a real file, which this is. Branches on Python values (``use_scaler``...) are
        resolved at compile time; in eager mode the same function runs op by op.
        """
        ms = self.ms
        ops = ms.ops
        net, optimizer = self.net, self.optimizer
        params = tuple(optimizer.parameters)
        loss_fn = ms.nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        weights = tuple(d.weight for d in self._dense)
        mask_tensors = tuple(ms.Tensor(m.astype(np.float32)) for m in masks)
        use_masks = bool(masks)
        decay = 1.0 - lr * weight_decay  # torch AdamW: w *= 1 - lr * wd, then Adam
        use_decay = weight_decay > 0
        use_scaler = self._amp_dtype is not None
        scaler: Any = ms.amp.DynamicLossScaler(_LOSS_SCALE, 2, 2000) if use_scaler else None

        def forward(x: Any, y: Any) -> Any:
            loss = loss_fn(net(x), y)
            if use_scaler:
                return scaler.scale(loss)
            return loss

        grad_fn = ms.value_and_grad(forward, None, params)

        def update(grads: Any) -> Any:
            done = True
            if use_decay:
                for p in params:
                    done = ops.depend(done, ops.assign(p, p * decay))
            grads = ops.depend(grads, done)
            done = optimizer(grads)
            if use_masks:
                # indexing, not zip(strict=...): ms.jit's parser rejects the keyword
                for i in range(len(weights)):
                    w = weights[i]
                    done = ops.depend(done, ops.assign(w, ops.depend(w, done) * mask_tensors[i]))
            return done

        def train_step(x: Any, y: Any) -> Any:
            loss, grads = grad_fn(x, y)
            if use_scaler:
                loss = scaler.unscale(loss)
                finite = ms.amp.all_finite(grads)
                if finite:  # an overflowed fp16 step is skipped, as GradScaler does
                    loss = ops.depend(loss, update(scaler.unscale(grads)))
                loss = ops.depend(loss, scaler.adjust(finite))
                return loss
            return ops.depend(loss, update(grads))

        self._closures += [forward, update, train_step]
        return ms.jit(train_step) if jit else train_step

    def _release_closures(self) -> None:
        """Empty the step functions' closures, which hold the network and optimizer.

        ``ms.jit`` and ``ms.value_and_grad`` keep the functions they were given (in caches
        that ``ms.ms_memory_recycle`` does not clear), so dropping our references alone
        frees nothing: measured, every setup/teardown cycle of the 3x1000 MLP kept its
        ~28 MB of parameters and optimizer state. Nothing calls these functions afterwards.
        """
        for fn in self._closures:
            for cell in fn.__closure__ or ():
                cell.cell_contents = None
        self._closures = []

    def _train_base_model(self, config: TrialConfig, workload: Workload) -> str:
        """Train fp32 with the fixed recipe, so every inference trial measures the same model.

        Cached as numpy weights per (workload, widths, epochs, seed, MindSpore version): the
        same for every trial of a study, and training costs seconds. The step is compiled
        with ``ms.jit`` whatever the trial's execution (it is not what the trial measures,
        and jit works in both modes). Returns ``"cached"`` or ``"trained"``.
        """
        from autotune._cache import cache_dir, write_atomically

        ms = self.ms
        widths = workload.layer_widths
        key = (f"ms-{workload.name}-{'x'.join(map(str, widths))}"
               f"-e{config.budget.train_epochs}-s{config.seed}-{ms.__version__}")
        path = cache_dir() / f"{key}.npz"
        if path.exists():
            with np.load(path) as f:
                n = len(widths) - 1
                weights = [f[f"w{i}"] for i in range(n)]
                biases = [f[f"b{i}"] for i in range(n)]
            self._make_net_fp32(weights, biases)
            return "cached"
        weights, biases = _torch_like_init(widths, config.seed)
        self._make_net_fp32(weights, biases)
        self.net.set_train(True)
        self.optimizer = self._make_optimizer(_RECIPE_OPTIMIZER, _RECIPE_LR)
        step = self._make_train_step([], weight_decay=0.0, lr=_RECIPE_LR, jit=True)
        assert self._x_train is not None and self._y_train is not None
        rng = np.random.default_rng(config.seed)
        n = len(self._x_train)
        for _ in range(config.budget.train_epochs):
            order = rng.permutation(n)
            for start in range(0, n, _RECIPE_BATCH):
                idx = order[start:start + _RECIPE_BATCH]
                step(ms.Tensor(self._x_train[idx]), ms.Tensor(self._y_train[idx]))
        self.optimizer = None
        self._release_closures()
        self.net.set_train(False)
        trained_w, trained_b = self._weights()
        arrays: dict[str, Any] = {f"w{i}": w for i, w in enumerate(trained_w)}
        arrays.update({f"b{i}": b for i, b in enumerate(trained_b)})

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        write_atomically(path, save)
        return "trained"

    def _make_net_fp32(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray]) -> None:
        """The base model is always fp32 (the recipe), whatever the trial's precision."""
        amp, self._amp_dtype = self._amp_dtype, None
        try:
            self._make_net(weights, biases)
        finally:
            self._amp_dtype = amp

    def _make_infer_batches(self, batch_size: int) -> None:
        """A few distinct input batches drawn from the held-out split (tiled if too small)."""
        ms = self.ms
        assert self._x_test is not None
        x = self._x_test
        reps = math.ceil(batch_size * 4 / len(x))
        pool = np.tile(x, (reps, 1)) if reps > 1 else x
        # fp32 inputs: the AMP wrapper casts them to the compute dtype inside the graph.
        self._infer_batches = [ms.Tensor(np.ascontiguousarray(
            pool[i * batch_size:(i + 1) * batch_size])) for i in range(4)]

    # -- stepping --------------------------------------------------------------------------

    def _new_epoch(self) -> None:
        """Shuffle once per epoch and cut the batches as tensors, so a step only picks one;
        called from between_steps (untimed).

        Same order semantics as torch: a seeded permutation per epoch, tiled when the batch
        is larger than the split, the last partial batch filled from the epoch's start.
        """
        ms = self.ms
        assert self.config is not None
        assert self._x_train is not None and self._y_train is not None
        rng = np.random.default_rng(self.config.seed + self._epoch)
        order = rng.permutation(len(self._x_train))
        bs = self.config.batch_size
        reps = math.ceil(bs / len(order))
        if reps > 1:  # batch larger than the training split: wrap around
            order = np.tile(order, reps)
        x_all, y_all = self._x_train[order], self._y_train[order]
        self._batches = []
        for i in range(self.steps_per_epoch):
            x, y = x_all[i * bs:(i + 1) * bs], y_all[i * bs:(i + 1) * bs]
            if len(x) < bs:  # last partial batch: wrap to keep every step the same size
                x = np.concatenate([x, x_all[:bs - len(x)]])
                y = np.concatenate([y, y_all[:bs - len(y)]])
            self._batches.append((ms.Tensor(np.ascontiguousarray(x)),
                                  ms.Tensor(np.ascontiguousarray(y))))
        self._cursor = 0
        self._epoch += 1

    def between_steps(self) -> None:
        assert self.config is not None
        if self.config.mode == "train" and self._cursor >= len(self._batches):
            self._new_epoch()

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training split (last batch may wrap)."""
        assert self.config is not None and self._x_train is not None
        return epoch_steps(len(self._x_train), self.config.batch_size)

    def step(self) -> int:
        assert self.config is not None
        try:
            if self.config.mode == "train":
                return self._step_train()
            return self._step_infer()
        except (RuntimeError, TypeError, ValueError) as e:
            if _is_oom(e):
                raise OutOfMemoryError(f"out of memory in a step: {e}") from e
            if _is_unsupported(e):
                raise UnsupportedConfigError(f"MindSpore cannot run this: {e}") from e
            raise

    def _step_train(self) -> int:
        assert self.config is not None and self._train_step is not None
        if self._cursor >= len(self._batches):  # only if between_steps was not called
            self._new_epoch()
        x, y = self._batches[self._cursor]
        self._cursor += 1
        loss = self._train_step(x, y)
        # Reading the loss waits for the step (its optimizer update included), like torch's
        # float(loss); it is needed every step to catch divergence.
        self.last_loss = float(loss.asnumpy())
        if not math.isfinite(self.last_loss):
            raise NonFiniteLossError(
                f"loss became {self.last_loss} at epoch {self._epoch} "
                f"(learning_rate={self.config.learning_rate}, optimizer={self.config.optimizer})"
            )
        return self.config.batch_size

    def _step_infer(self) -> int:
        assert self.config is not None
        batch = self._infer_batches[self._cursor % len(self._infer_batches)]
        self._cursor += 1
        self._pending = self.net(batch)
        return self.config.batch_size

    def synchronize(self) -> None:
        """Wait for the work of the last step.

        PyNative queues kernels and returns before they have run, on CPU too (measured: a
        1024-sample forward returns after 121 ms with 108 ms of work still queued), so the
        profiler's clock must wait for the last output. ``asnumpy`` on a CPU tensor shares
        its storage (no copy) and blocks until it is computed. On GPU/Ascend the kernels run
        on device streams: ``ms.runtime.synchronize`` waits for them (it only logs an
        error on CPU, where it is not supported).
        """
        if self._device_kind != "cpu":
            self.ms.runtime.synchronize()
        elif self._pending is not None:
            self._pending.asnumpy()
        self._pending = None

    def evaluate(self) -> float:
        assert self.config is not None and self._y_test is not None
        training = self.config.mode == "train"
        if training:
            self.net.set_train(False)
        correct = 0
        try:
            for i, chunk in enumerate(self._eval_chunks):
                logits = self.net(chunk).asnumpy()
                labels = self._y_test[i * _EVAL_CHUNK:(i + 1) * _EVAL_CHUNK]
                correct += int((logits.argmax(axis=1) == labels).sum())
        except (RuntimeError, TypeError, ValueError) as e:
            if _is_oom(e):
                raise OutOfMemoryError(f"out of memory in evaluation: {e}") from e
            raise
        finally:
            if training:
                self.net.set_train(True)
        return correct / len(self._y_test)

    def compute_dtype(self) -> str:
        """The dtype the Dense matmuls run in: the first Dense layer's output dtype, measured
        on one sample (AMP casts inside the cell, so the parameters' dtype would not say)."""
        assert self.config is not None
        ms = self.ms
        if self._compute_dtype is None or not self._dense:
            return "float32"
        dense = self._dense[0]
        # fp32 in: an AMP cell casts it itself; a plain fp32 cell stays fp32.
        out = dense(ms.Tensor(np.zeros((1, self._widths[0]), dtype=np.float32)))
        return str(out.dtype).lower()

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

    def teardown(self) -> None:
        self._release_closures()
        self.net = self.optimizer = self._train_step = self._pending = None
        self._dense = []
        self._batches = []
        self._infer_batches = []
        self._eval_chunks = []
        # Compiled graphs and the memory cached for them (MindSpore's documented call for
        # "several models trained in one process").
        self.ms.ms_memory_recycle()
        if self._device_kind != "cpu":
            self.ms.runtime.empty_cache()
