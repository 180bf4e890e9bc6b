"""TensorFlow (Keras 3) backend: the runtime any ``keras.Model`` of a workload runs in, used
the way an expert would on each device.

* runtime: thread pools sized and created before the worker's memory cap; the trial placed
  on ``cpu``, ``cuda:N`` or ``tpu:N`` (TPU system initialised once per process) by a device
  scope entered in :meth:`~TensorFlowBackend.configure`, so the factory builds its model's
  variables there; Keras' global dtype policy set before the factory runs.
* training: a custom ``GradientTape`` step, run as plain Python (``eager``), as a
  ``tf.function`` (``graph``: 4-5x faster than eager for an MLP) or as a
  ``tf.function(jit_compile=True)`` (``xla``; research/frameworks_on_cpu.md). Keras 3's
  ``jit_compile='auto'`` resolves to *no* XLA on CPU, so the mode is chosen here
  explicitly. Mixed precision through Keras policies (``mixed_bfloat16``; ``mixed_float16``
  plus a ``LossScaleOptimizer``), outputs cast to float32 before the loss. The step traces
  (graph) or compiles (xla) on its first call: the profiler's first step, never in setup.
* inference: the trained model converted to the trial's dtype (weights and compute, like
  torch's ``model.to(bfloat16)``: Sequential and functional models are cloned in that
  dtype; a subclassed model, which Keras cannot clone, computes in it with float32
  weights), called through the execution mode; int8 through TFLite dynamic-range
  quantisation (about 10x faster than fp32 on CPU), run by the TFLite interpreter
  (:class:`TFLiteModel` is then the model the spec's ``quality`` gets).
* pruning: the shared numpy definitions of :mod:`autotune.backends._pruning` on every
  trainable weight of two or more dimensions (dense kernels, conv kernels, embeddings).
  Masks are re-applied inside the step after every optimizer update (pruned weights stay
  exactly zero). Structured pruning needs the spec's ``prune_structured``.
* model facts: FLOPs from TensorFlow's graph profiler on the traced forward / training step.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends import _spec_tensorflow
from autotune.backends._framework import FLOP_COUNT_BATCH, FrameworkBackend
from autotune.exceptions import (
    OutOfMemoryError,
    TrialError,
    UnsupportedConfigError,
)

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads._spec import ModelSpec

#: Keras dtype policy per precision in training (weights stay float32, matmuls in 16 bit).
_TRAIN_POLICY = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
#: Layer dtype per precision in inference (weights and compute in that dtype).
_INFER_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}

#: Texts of allocation failures that TensorFlow, XLA, TFLite or the C library report as
#: something other than ``ResourceExhaustedError``/``MemoryError``.
_OOM_TEXT = re.compile(
    r"can't allocate|cannot allocate|out of memory|OOM when allocating|failed to allocate|"
    r"RESOURCE_EXHAUSTED|bad_alloc|std::bad_alloc",
    re.IGNORECASE,
)
#: Texts of a kernel missing for a dtype or device (e.g. no float16 kernel of an op on CPU).
_UNSUPPORTED_TEXT = re.compile(
    r"No registered '[^']+' OpKernel|no registered kernels|Could not find (a )?device for "
    r"node|not supported on (this|the) (device|platform)", re.IGNORECASE)

#: Producers of batch-independent tensors (weights), skipped by the activation estimate.
_WEIGHT_OPS = frozenset({"ReadVariableOp", "Const", "VarHandleOp", "Placeholder",
                         "ResourceGather", "NoOp"})


def _quiet_tensorflow_logging() -> None:
    """Silence TensorFlow's C++ and Python logging before it is imported.

    Level 2 drops INFO and WARNING lines (oneDNN banners, "could not find cuda drivers",
    XNNPACK delegate notes) but keeps errors, which the launcher keeps as the crash tail.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Keras 3 is multi-backend: this backend is only correct on its TensorFlow backend.
    os.environ["KERAS_BACKEND"] = "tensorflow"


class TFLiteModel:
    """An int8 model on the TFLite interpreter: what ``ModelSpec.quality`` receives in an
    int8 trial. ``run(*inputs)`` takes numpy arrays of any batch size (fed in chunks of the
    batch the interpreter was allocated for, the last one padded) and returns the first
    output as numpy; ``invoke(*inputs)`` runs one batch of exactly that size."""

    def __init__(self, interpreter: Any, runtime: str, content_bytes: int,
                 batch_size: int, input_shapes: Sequence[tuple[int, ...]]) -> None:
        self.interpreter = interpreter
        self.runtime = runtime
        self.content_bytes = content_bytes
        self.batch_size = batch_size
        details = sorted(interpreter.get_input_details(), key=lambda d: d["index"])
        self._inputs = _match_inputs(details, input_shapes)
        for index, shape in zip(self._inputs, input_shapes, strict=True):
            interpreter.resize_tensor_input(index, [batch_size, *shape])
        interpreter.allocate_tensors()
        self._output = interpreter.get_output_details()[0]["index"]

    def invoke(self, *inputs: Any) -> None:
        """One batch of ``batch_size`` (synchronous: returns when the outputs exist)."""
        for index, x in zip(self._inputs, inputs, strict=True):
            self.interpreter.set_tensor(index, x)
        self.interpreter.invoke()

    def run(self, *inputs: np.ndarray) -> np.ndarray:
        """The first output for inputs of any batch size."""
        n, bs = len(inputs[0]), self.batch_size
        parts = []
        for start in range(0, n, bs):
            chunk = [np.ascontiguousarray(x[start:start + bs], dtype=np.float32)
                     if np.issubdtype(x.dtype, np.floating) else
                     np.ascontiguousarray(x[start:start + bs]) for x in inputs]
            m = len(chunk[0])
            if m < bs:
                chunk = [np.resize(c, (bs, *c.shape[1:])) for c in chunk]
            self.invoke(*chunk)
            parts.append(np.array(self.interpreter.get_tensor(self._output)[:m]))
        return np.concatenate(parts)

    __call__ = run

    def compute_dtype(self) -> str:
        kinds = {d["dtype"] for d in self.interpreter.get_tensor_details()}
        return "int8" if np.int8 in kinds else "float32"


def _match_inputs(details: Sequence[dict[str, Any]],
                  shapes: Sequence[tuple[int, ...]]) -> list[int]:
    """The interpreter's input index for each of make_batch's inputs: by order, unless the
    per-sample shapes tell them apart otherwise."""
    if len(details) != len(shapes):
        raise UnsupportedConfigError(
            f"TFLite int8: the converted model has {len(details)} input(s), make_batch "
            f"gives {len(shapes)}")
    free = list(details)
    order = []
    for shape in shapes:
        match = next((d for d in free if tuple(int(s) for s in d["shape"][1:]) == shape),
                     free[0])
        free.remove(match)
        order.append(int(match["index"]))
    return order


class TensorFlowBackend(FrameworkBackend):
    """TensorFlow 2 with Keras 3 on CPU (GPU and TPU where the build sees one: same code)."""

    name = "tensorflow"
    framework = "tensorflow"
    backend_spec = _spec_tensorflow.SPEC
    weights_suffix = ".npz"
    recipe_execution = "graph"  # the base recipe: untimed, and eager is 4-5x slower

    def __init__(self, tf: Any = None, keras: Any = None) -> None:
        """``tf``/``keras`` are the framework modules; tests hand in fakes (the vendor
        boundary: ``tf.config``, ``tf.tpu``, ``tf.test.experimental``) to drive the GPU and
        TPU paths of hardware this machine lacks, without importing TensorFlow."""
        super().__init__()
        if tf is None:
            _quiet_tensorflow_logging()
            import keras as keras_module
            import tensorflow as tf_module

            tf_module.get_logger().setLevel("ERROR")
            tf, keras = tf_module, keras_module
        self.tf: Any = tf
        self.keras: Any = keras
        self._device = "/CPU:0"
        #: "GPU" or "TPU" when the trial runs on one (asynchronous, with its own memory
        #: statistics under ``_memory_device``), None on CPU
        self._accelerator: str | None = None
        self._memory_device = ""
        self._threads = 1
        #: the config configure() was called with, and the device scope it entered
        self._configured_from: TrialConfig | None = None
        self._device_scope: Any = None
        #: Keras global policy this trial set (restored to float32 at teardown)
        self._policy_set = False
        self._masks: list[tuple[Any, Any]] = []
        self._train_body: Callable[..., Any] | None = None
        self._forward_body: Callable[..., Any] | None = None
        self._feed_dtype = "float32"
        self._tflite: TFLiteModel | None = None
        self._param_count = 0
        self._activation_bytes_per_sample: float | None = None
        self._evaluated = False
        self._gradients_before: frozenset[str] = frozenset()
        #: a training replica's MultiWorkerMirroredStrategy (created with the runtime) and
        #: the scope it keeps entered during a trial
        self._strategy: Any = None
        self._strategy_scope: Any = None

    # -- threads and devices ---------------------------------------------------------------

    def set_threads(self, n: int) -> int:
        """Size TensorFlow's pools; must run before any op creates the runtime.

        ``inter_op`` is 1: a model is mostly a chain of dependent ops, and the few
        independent ops of a train step (weight and input gradients, per-variable
        optimizer updates) each already use all ``n`` intra-op threads; extra inter-op
        threads would only add hand-offs and compete for the same ``n`` pinned cores.
        Measured on the 2-vCPU AVX2 EPYC (MLP, batch 64, 2 intra threads, six interleaved
        runs each on a shared, loaded machine): inter 1 and 2 were not distinguishable
        (train graph 25-52 vs 20-38 ms, infer graph 4.1-8.3 vs 5.7-11.5 ms, CPU time per
        step equal), so the structural argument decides.

        The runtime (and with it both thread pools) is then created by a trivial op, here,
        before the worker applies ``budget.memory_mb``: creating threads under a tight
        address-space cap fails inside TensorFlow's C++ runtime, which aborts the process
        instead of raising, so a trial that should be "oom" would become "killed".
        """
        tf = self.tf
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        self._join_cluster()
        with tf.device("/CPU:0"):
            # The eager context and its thread pools, then the graph runtime's and XLA's
            # (XLA starts its own pools on its first compile: 17 threads here). Under 0.1 s.
            x = tf.ones((2, 2))
            tf.function(tf.linalg.matmul)(x, x).numpy()
            tf.function(tf.linalg.matmul, jit_compile=True)(x, x).numpy()
        self._threads = n
        return int(tf.config.threading.get_intra_op_parallelism_threads())

    def _join_cluster(self) -> None:
        """A training replica of a data-parallel trial (``TF_CONFIG`` set by
        :mod:`autotune.launch._replica`) joins the trial's cluster: its
        ``MultiWorkerMirroredStrategy`` must exist before the runtime runs an op (TF
        configures collective ops once, at start-up). Ring all-reduce: the
        implementation TensorFlow documents for CPU workers (NCCL is GPU-only)."""
        import os

        from autotune.launch._replicas import REPLICA_ENV

        if not (os.environ.get(REPLICA_ENV) and os.environ.get("TF_CONFIG")):
            return
        distribute = self.tf.distribute
        options = distribute.experimental.CommunicationOptions(
            implementation=distribute.experimental.CommunicationImplementation.RING)
        self._strategy = distribute.MultiWorkerMirroredStrategy(communication_options=options)

    def _select_device(self, device: str) -> None:
        """Place the trial on ``device`` (``cpu``, ``cuda:N`` or ``tpu:N``).

        A GPU's or TPU's peak memory statistics start afresh here, so the peak read after
        the trial is its own. A TPU is usable only once the TPU system is initialised
        (:func:`initialize_tpu_system`, once per process); its devices are then logical
        devices, placed by their full name.
        """
        tf = self.tf
        kind, _, index = device.partition(":")
        n = int(index) if index else 0
        if kind == "cpu":
            self._device, self._accelerator, self._memory_device = "/CPU:0", None, ""
            return
        if kind == "cuda":
            gpus = tf.config.list_physical_devices("GPU")
            if n >= len(gpus):
                raise UnsupportedConfigError(
                    f"{device}: TensorFlow sees {len(gpus)} GPU(s){_listed('cuda', gpus)} "
                    "(tensorflow-cpu has no GPU support; install tensorflow[and-cuda])")
            self._device, self._accelerator = f"/GPU:{n}", "GPU"
        elif kind == "tpu":
            initialize_tpu_system(tf, device)
            tpus = tf.config.list_logical_devices("TPU")
            if n >= len(tpus):
                raise UnsupportedConfigError(
                    f"{device}: the initialised TPU system has {len(tpus)} TPU core(s)"
                    f"{_listed('tpu', tpus)}")
            self._device, self._accelerator = tpus[n].name, "TPU"
        else:
            from autotune.backends import unsupported_device_reason

            reason = unsupported_device_reason(self.name, device) or "unknown device kind"
            raise UnsupportedConfigError(f"{device}: {reason}")
        self._memory_device = f"{self._accelerator}:{n}"
        # A warm worker runs many trials: each trial's peak is its own.
        tf.config.experimental.reset_memory_stats(self._memory_device)

    # -- lifecycle -------------------------------------------------------------------------

    def configure(self, config: TrialConfig) -> None:
        """Device, precision policy, seed and device scope, before the factory runs.

        The device scope stays entered until :meth:`teardown`: the factory's model (its
        variables), the batches and every step are created on the trial's device. In
        train mode the precision's Keras policy is global meanwhile (the factory's layers
        take it); in infer mode the model is built and trained in float32 and converted at
        the end of setup.
        """
        self._exit_device_scope()  # a previous trial that never reached teardown
        source = config
        execution = self._resolve_execution(config.execution, config.mode)
        if execution != config.execution:
            config = replace(config, execution=execution)
        if execution not in ("eager", "graph", "xla"):
            raise UnsupportedConfigError(f"unknown execution mode {execution!r}")
        if config.precision not in ("fp32", "bf16", "fp16", "int8"):
            raise UnsupportedConfigError(f"unknown precision {config.precision!r}")
        if config.pruning_structure not in ("unstructured", "structured"):
            raise UnsupportedConfigError(
                f"unknown pruning structure {config.pruning_structure!r}")
        self.config = config
        self._select_device(config.device)
        if config.precision == "fp16" and self._accelerator is None and execution != "xla":
            # Same rule as capabilities(): without XLA, TF's CPU fp16 kernels take ~1.2 s
            # per MLP step (research/frameworks_on_cpu.md), a trial that measures nothing.
            raise UnsupportedConfigError("TensorFlow fp16 on CPU is usable only with xla")
        if config.precision == "fp16" and self._accelerator == "TPU":
            raise UnsupportedConfigError("TPUs have no float16 arithmetic; their 16-bit type "
                                         "is bfloat16 (use bf16)")
        if config.precision == "int8":
            if config.mode == "train":
                raise UnsupportedConfigError("int8 training is not supported by tensorflow")
            if self._accelerator is not None:
                raise UnsupportedConfigError("TensorFlow int8 (TFLite) runs on CPU only here")
        if config.mode == "train" and config.precision in ("bf16", "fp16"):
            self.keras.mixed_precision.set_global_policy(_TRAIN_POLICY[config.precision])
            self._policy_set = True
        elif self._policy_set:
            self.keras.mixed_precision.set_global_policy("float32")
            self._policy_set = False
        self.keras.utils.set_random_seed(config.seed)
        self._gradients_before = _custom_gradient_names()
        if self._strategy is not None and config.mode == "train":
            # the factory's variables become mirrored ones, placed by the strategy
            self._strategy_scope = self._strategy.scope()
            self._strategy_scope.__enter__()
        else:
            self._device_scope = self.tf.device(self._device)
            self._device_scope.__enter__()
        self._configured_from = source

    def setup(self, config: TrialConfig, spec: ModelSpec) -> dict[str, Any]:
        """The base's setup on the trial's device, inside the scope :meth:`configure` (run
        by the worker before the factory) entered; ``config``'s execution is resolved as
        there."""
        if self._configured_from is None:
            raise RuntimeError("TensorFlowBackend.setup before configure: the worker calls "
                               "configure(config) before the factory, then setup")
        execution = self._resolve_execution(config.execution, config.mode)
        if execution != config.execution:
            config = replace(config, execution=execution)
        try:
            info = super().setup(config, spec)
            if self._tflite is not None:
                info["execution"] = "tflite"
                info["tflite_interpreter"] = self._tflite.runtime
            elif config.budget.memory_mb is not None and self._accelerator is None:
                self._check_activations_fit(config)
        except Exception as e:
            _raise_if_oom(self.tf, e, "while building the model")
            raise
        return info

    def _check_activations_fit(self, config: TrialConfig) -> None:
        """Refuse a batch whose activations alone exceed the trial's memory budget.

        Under the worker's address-space cap, TensorFlow's own allocator raises
        ResourceExhaustedError, but its oneDNN kernels on AVX-512 CPUs dereference a failed
        allocation and the process dies of SIGSEGV (seen on an AVX512-BF16 EPYC; an AVX2
        one raised). The forward graph traced for the FLOP count tells, per sample, the
        largest op's batch-dependent inputs plus outputs, which must exist at once (twice
        that in training, for their gradients): a batch that cannot hold them in the budget
        is out of memory on any device of that size, so it is reported as such before a
        kernel can crash. A lower bound: it never refuses a batch that could fit.
        """
        if self._activation_bytes_per_sample is None:
            return
        needed = config.batch_size * self._activation_bytes_per_sample * (
            2 if config.mode == "train" else 1)
        budget = (config.budget.memory_mb or 0) * 2**20
        if needed > budget:
            raise OutOfMemoryError(
                f"out of memory: batch {config.batch_size} needs {needed / 2**20:.0f} MB of "
                f"activations, more than the trial's memory budget of "
                f"{config.budget.memory_mb} MB")

    def teardown(self) -> None:
        super().teardown()
        self._masks = []
        self._train_body = self._forward_body = None
        self._tflite = None
        self._feed_dtype = "float32"
        self._activation_bytes_per_sample = None
        self._evaluated = False
        self._exit_device_scope()
        scope, self._strategy_scope = self._strategy_scope, None
        if scope is not None:
            with contextlib.suppress(RuntimeError):
                scope.__exit__(None, None, None)
        self._configured_from = None
        if self._policy_set:
            self.keras.mixed_precision.set_global_policy("float32")
            self._policy_set = False
        self.keras.backend.clear_session()
        _forget_custom_gradients(self._gradients_before)

    def _resolve_execution(self, execution: str, mode: str) -> str:
        """``auto`` -> this backend's best execution mode (configure and setup agree)."""
        from autotune.backends import resolve_execution

        return resolve_execution(self.name, execution, mode)

    def _exit_device_scope(self) -> None:
        scope, self._device_scope = self._device_scope, None
        if scope is not None:
            with contextlib.suppress(RuntimeError):  # not the innermost scope any more
                scope.__exit__(None, None, None)

    # -- the model -------------------------------------------------------------------------

    def model_type_error(self, model: Any) -> str | None:
        if isinstance(model, self.keras.Model):
            return None
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        return (f"the model is a {kind}, not a keras.Model (the tensorflow backend runs "
                f"Keras {getattr(self.keras, '__version__', '3')} models)")

    def place_model(self, model: Any) -> Any:
        """The model as built (inside the trial's device scope). A subclassed model that was
        never called has no variables yet: it is built by one call on a small batch."""
        if not model.built or not model.weights:
            xs, _ = self._make_batch(FLOP_COUNT_BATCH)
            with self._first_step_guard(xs):
                model(*self._device_batch((xs, None))[0], training=False)
        return model

    def to_device(self, array: np.ndarray) -> Any:
        if self._tflite is not None:
            if np.issubdtype(array.dtype, np.floating):
                return np.ascontiguousarray(array, dtype=np.float32)
            return np.ascontiguousarray(array)
        tf = self.tf
        with tf.device(self._device):
            tensor = tf.constant(array)
            if np.issubdtype(array.dtype, np.floating):
                tensor = tf.cast(tensor, self._feed_dtype)
        return tensor

    def _variables(self, *, trainable: bool = True) -> list[Any]:
        """The model's (trainable) variables, each shared variable once."""
        seen: set[int] = set()
        out = []
        for v in (self.model.trainable_variables if trainable else self.model.weights):
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def _weight_variables(self) -> list[Any]:
        return [v for v in self._variables() if len(v.shape) >= 2]

    def trainable_parameter_count(self) -> int:
        if self._tflite is not None:
            return self._param_count
        self._param_count = sum(int(np.prod(v.shape)) for v in self._variables())
        return self._param_count

    def weight_arrays(self) -> list[np.ndarray]:
        if self._tflite is not None:
            return []
        return [np.asarray(v.numpy(), dtype=np.float32) for v in self._weight_variables()]

    def apply_weight_masks(self, masks: Sequence[np.ndarray], *, permanent: bool) -> None:
        tf = self.tf
        kept = []
        for v, mask in zip(self._weight_variables(), masks, strict=True):
            m = tf.constant(mask, dtype=v.dtype)
            v.assign(v * m)
            kept.append((v, m))
        # in training, kept for the step: pruned weights stay zero through every update
        self._masks = [] if permanent else kept

    def prune_structured_default(self, ratio: float) -> None:
        raise UnsupportedConfigError(
            "structured pruning of a Keras model needs the ModelSpec's prune_structured "
            "(TensorFlow has no general channel-pruning tool like torch-pruning); "
            "use pruning_structure: unstructured")

    def _call(self, model: Any, xs: Sequence[Any], training: bool) -> Any:
        """``model(*inputs)``; a functional or Sequential model takes several inputs as one
        list (``model([a, b])``), as Keras defines them."""
        if len(xs) == 1:
            return model(xs[0], training=training)
        if isinstance(model, self.keras.Sequential) or \
                type(model).__name__ == "Functional":
            return model(list(xs), training=training)
        return model(*xs, training=training)

    # -- training --------------------------------------------------------------------------

    def make_optimizer(self, name: str, learning_rate: float) -> Any:
        """Keras optimizers with torch's defaults where Keras' differ (eps 1e-8, AdamW
        weight decay 0.01); built by :meth:`build_train_step`, before any step, so no
        variable is created while tracing."""
        optimizers = self.keras.optimizers
        lr = float(learning_rate)  # Keras rejects an int learning rate (a space may say 1000)
        if name == "sgd":
            return optimizers.SGD(learning_rate=lr, momentum=0.9)
        if name == "adam":
            return optimizers.Adam(learning_rate=lr, epsilon=1e-8)
        if name == "adamw":
            return optimizers.AdamW(learning_rate=lr, epsilon=1e-8, weight_decay=0.01)
        raise UnsupportedConfigError(f"unknown optimizer {name!r}")

    def _loss_fn(self) -> Callable[[Any, Any, Any], Any]:
        """``(model, inputs, targets) -> float32 scalar loss`` from the spec."""
        tf = self.tf
        assert self.spec is not None
        spec = self.spec
        call = self._call
        if spec.forward is not None:
            forward = spec.forward

            def custom(model: Any, xs: Any, y: Any) -> Any:
                return tf.cast(forward(model, xs, y), tf.float32)

            return custom
        loss = spec.loss

        def standard(model: Any, xs: Any, y: Any) -> Any:
            out = call(model, xs, True)
            if callable(loss):
                return tf.cast(loss(out, y), tf.float32)
            # Logits (and so the loss and its NaN check) in float32, as Keras' mixed
            # precision guide prescribes: softmax cross-entropy in 16 bit loses accuracy.
            out = tf.cast(out, tf.float32)
            if loss == "mse":
                return tf.reduce_mean(tf.square(out - tf.cast(y, tf.float32)))
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=y, logits=out))

        return standard

    def wrap_data_parallel(self, config: TrialConfig) -> dict[str, Any]:
        """The step runs under the replica's ``MultiWorkerMirroredStrategy``
        (``strategy.run`` in a ``tf.function``): Keras' optimizer all-reduces the
        gradients across the replicas."""
        if self._strategy is None:
            raise UnsupportedConfigError("this TensorFlow replica joined no cluster "
                                         "(TF_CONFIG missing)")
        if config.execution != "graph":
            raise UnsupportedConfigError(
                f"execution {config.execution!r} with data_parallel: autotune runs "
                "TensorFlow data-parallel steps as tf.function graphs (execution graph) only")
        if self._masks:
            raise UnsupportedConfigError(
                "unstructured pruning with data_parallel on TensorFlow: re-applying the masks "
                "inside strategy.run would update mirrored variables from a replica "
                "context, which autotune does not do; use pruning_ratio 0 or one replica")
        return {"replicas": int(self._strategy.num_replicas_in_sync),
                "how": "tf.distribute.MultiWorkerMirroredStrategy", "collective": "ring",
                "comm_reason": "TensorFlow runs the all-reduce inside the step's graph and "
                               "does not expose its time"}

    def build_train_step(self, precision: str, execution: str) -> Callable[..., Any]:
        if self._strategy is not None and self._strategy_scope is not None:
            return self._build_replica_train_step(precision)
        return self._build_train_step(precision, execution)

    def _build_replica_train_step(self, precision: str) -> Callable[..., Any]:
        """One replica's step: its shard's mean loss divided by the replicas (Keras sums
        the replicas' gradients: the global batch's mean gradient), in a tf.function."""
        strategy = self._strategy
        world = float(strategy.num_replicas_in_sync)
        body = self._build_train_step(precision, "eager", scale=1.0 / world)

        def replicated(xs: Any, y: Any) -> Any:
            return strategy.run(body, args=(xs, y))

        return _oom_translated(self.tf, self.tf.function(replicated), "in a step")

    def _build_train_step(self, precision: str, execution: str,
                          scale: float = 1.0) -> Callable[..., Any]:
        tf, keras = self.tf, self.keras
        if precision == "fp16" and not isinstance(self.optimizer,
                                                  keras.optimizers.LossScaleOptimizer):
            self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
        model, optimizer = self.model, self.optimizer
        variables = self._variables()
        optimizer.build(variables)
        masks = list(self._masks)
        loss_scale = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        compute_loss = self._loss_fn()

        def train_step(xs: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = compute_loss(model, xs, y)
                share = loss * scale if scale != 1.0 else loss
                scaled = optimizer.scale_loss(share) if loss_scale else share
            grads = tape.gradient(scaled, variables)
            optimizer.apply(grads, variables)
            # Unstructured pruning: pruned weights stay zero after every update. Part of the
            # step, so in graph/xla it is compiled with it (one multiply per kernel).
            for variable, mask in masks:
                variable.assign(variable * mask)
            return loss

        self._train_body = train_step
        return self._compiled(train_step, execution)

    # -- inference -------------------------------------------------------------------------

    def build_infer_step(self, execution: str) -> Callable[..., Any]:
        tflite = self._tflite
        if tflite is not None:
            # int8 runs on TFLite whatever the execution knob says
            return _oom_translated(self.tf, lambda xs: tflite.invoke(*xs), "in a step")
        model, call = self.model, self._call

        def forward(xs: Any) -> Any:
            return call(model, xs, False)

        return self._compiled(forward, execution)

    def _compiled(self, fn: Callable[..., Any], execution: str) -> Callable[..., Any]:
        """``fn`` as the execution mode runs it: as is, a graph, or an XLA cluster; traced or
        compiled on its first call (the profiler's first step), allocation failures
        reported as out of memory.

        XLA's first call runs with the worker's memory cap lifted: under ``budget.memory_mb``
        (an address-space cap) LLVM's code memory fails to map while XLA compiles and XLA
        aborts the process, so a trial that should end "oom" would end killed. Compilation
        is the framework's one-off cost, not memory the model runs in; later calls run
        under the cap.
        """
        if execution == "eager":
            return _oom_translated(self.tf, fn, "in a step")
        compiled = self.tf.function(fn, jit_compile=execution == "xla")
        if execution == "xla":
            compiled = _first_call_uncapped(compiled)
        return _oom_translated(self.tf, compiled, "in a step")

    # -- generate mode ---------------------------------------------------------------------

    def sdpa_unsupported_reason(self) -> str | None:
        return _spec_tensorflow.SDPA_REASON

    def apply_weight_quant(self, kind: str) -> None:
        raise UnsupportedConfigError(
            f"weight_quant {kind!r}: {_spec_tensorflow.WEIGHT_QUANT_REASON}")

    def _generation_fn(self, fn: Callable[..., Any], execution: str) -> Callable[..., Any]:
        if execution == "eager":
            return fn
        # a growing cache changes shapes every token: reduce_retracing relaxes them to
        # unknown dimensions after the first retrace instead of tracing per length
        return self.tf.function(fn, jit_compile=execution == "xla",  # type: ignore[no-any-return]
                                reduce_retracing=True)

    def build_lm_step(self, execution: str, kv_cache: str) -> Callable[..., Any]:
        tf, model = self.tf, self.model
        if execution == "xla" and kv_cache != "static":
            raise UnsupportedConfigError(_spec_tensorflow.XLA_DYNAMIC_REASON)
        if kv_cache == "static":
            static = self._static_cache  # captured: the same variables every request

            def static_step(idx: Any, pos: Any) -> Any:
                logits, _ = model.forward_cached(idx, static, pos)
                return tf.argmax(logits[:, -1], axis=-1, output_type=tf.int32)

            fn = self._generation_fn(static_step, execution)
            return lambda idx, cache, pos: (fn(idx, pos), cache)

        def step(idx: Any, cache: Any, pos: Any) -> tuple[Any, Any]:
            logits, cache = model.forward_cached(idx, cache, pos)
            return tf.argmax(logits[:, -1], axis=-1, output_type=tf.int32), cache

        return self._generation_fn(step, execution)

    def build_lm_full(self, execution: str) -> Callable[..., Any]:
        tf, model, call = self.tf, self.model, self._call

        def full(idx: Any) -> Any:
            return tf.argmax(call(model, [idx], False)[:, -1], axis=-1, output_type=tf.int32)

        return self._generation_fn(full, execution)

    def lm_host(self, ids: Any) -> np.ndarray:
        return np.asarray(ids.numpy())

    def lm_column(self, ids: Any) -> Any:
        return self.tf.reshape(ids, (-1, 1))

    def lm_concat(self, seq: Any, ids: Any) -> Any:
        tf = self.tf
        return tf.concat([seq, tf.cast(tf.reshape(ids, (-1, 1)), seq.dtype)], axis=1)

    def lm_position(self, pos: int) -> Any:
        return self.tf.constant(pos, dtype=self.tf.int32)  # a Python int retraces per value

    def convert_for_inference(self, precision: str) -> str:
        if precision == "fp32":
            return "tensorflow"
        if precision == "int8":
            self._convert_to_tflite()
            return "tflite"
        dtype = _INFER_DTYPE[precision]
        self.model = self._in_dtype(self.model, dtype)
        self._feed_dtype = dtype
        return "tensorflow"

    def _in_dtype(self, model: Any, dtype: str) -> Any:
        """``model`` with weights and compute in ``dtype``: Sequential and functional models
        are cloned layer by layer in that dtype (the weights cast); a subclassed model,
        which Keras cannot clone, gets the ``mixed_`` policy on every layer (computes in
        ``dtype``, weights stay float32 and are cast as they are read)."""
        keras = self.keras

        def in_dtype(layer: Any) -> Any:
            config = layer.get_config()
            config["dtype"] = dtype
            return type(layer).from_config(config)

        try:
            clone = keras.models.clone_model(model, clone_function=in_dtype, recursive=True)
            clone.set_weights([np.asarray(w) for w in model.get_weights()])
        except (ValueError, TypeError, NotImplementedError):
            for layer in model._flatten_layers(include_self=True, recursive=True):
                layer.dtype_policy = f"mixed_{dtype}"
            return model
        return clone

    def _convert_to_tflite(self) -> None:
        """Dynamic-range int8 (int8 weights, activations quantised on the fly per batch).

        ``from_keras_model`` on the float32 Keras model: ``from_concrete_functions`` produces
        a model of READ_VARIABLE ops whose output is NaN (research/frameworks_on_cpu.md).
        """
        tf = self.tf
        assert self.config is not None and self.spec is not None
        converter = tf.lite.TFLiteConverter.from_keras_model(self.model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # Keras 3's converter exports a SavedModel first (and prints its signature), then
        # converts it with TensorFlow's C++ converter, which starts threads of its own.
        # Conversion is a one-off compile step, not memory the int8 model runs in, and
        # under an address-space cap (budget.memory_mb) its thread stacks alone fail
        # pthread_create, which aborts the process: so it runs with the cap lifted.
        try:
            with contextlib.redirect_stdout(io.StringIO()), _address_space_cap_lifted():
                content = converter.convert()
        except TrialError:
            raise
        except Exception as e:
            if isinstance(e, MemoryError) or _OOM_TEXT.search(str(e)):
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise UnsupportedConfigError(
                f"TFLite int8 conversion of this model failed: {type(e).__name__}: "
                f"{first}") from None
        del converter
        interpreter, runtime = _make_interpreter(tf, content, self._threads)
        xs, _ = self._make_batch(self.config.batch_size)
        try:
            self._tflite = TFLiteModel(interpreter, runtime, len(content),
                                       self.config.batch_size, [x.shape[1:] for x in xs])
        except RuntimeError as e:
            # TFLite reports a failed arena allocation as a failed delegate "prepare"; with
            # a memory cap that is what it means (without one, a real error stays one).
            if self.config.budget.memory_mb is not None:
                raise OutOfMemoryError(
                    f"out of memory allocating TFLite tensors for batch "
                    f"{self.config.batch_size} under budget.memory_mb="
                    f"{self.config.budget.memory_mb}: {str(e).strip()}") from e
            raise
        if self._tflite.compute_dtype() != "int8":
            self._tflite = None
            raise UnsupportedConfigError(
                "TFLite dynamic-range int8 left every weight of this model in float32 (it "
                "quantises only weight tensors of 1024 or more elements)")
        self.model = self._tflite

    # -- errors, weights, facts ------------------------------------------------------------

    def classify_error(self, error: BaseException) -> type[TrialError] | None:
        tf = self.tf
        errors = getattr(tf, "errors", None)
        if (errors is not None and isinstance(error, errors.ResourceExhaustedError)) or \
                _OOM_TEXT.search(str(error)):
            return OutOfMemoryError
        if errors is not None and isinstance(error, errors.OpError) and \
                _UNSUPPORTED_TEXT.search(str(error)):
            return UnsupportedConfigError
        return None

    def save_weights(self, path: Path) -> None:
        """Every weight (incl. batch-norm statistics), in ``get_weights`` order, as an
        ``.npz`` readable without TensorFlow (Keras' own saver insists on its suffix)."""
        weights = [np.asarray(w) for w in self.model.get_weights()]
        with open(path, "wb") as f:
            np.savez(f, *weights)

    def load_weights(self, path: Path) -> None:
        with np.load(path) as f:
            self.model.set_weights([f[f"arr_{i}"] for i in range(len(f.files))])

    def count_flops(self, inputs: tuple[Any, ...], targets: Any,
                    mode: str) -> tuple[int | None, str]:
        """TensorFlow's graph profiler (``float_operation``: 2 per multiply-add, plus the
        elementwise ops it has costs for) on the graph of one forward pass (infer) or one
        whole training step (train: forward, gradients, optimizer update) at the FLOP-count
        batch. The forward graph also gives the activation estimate of the memory check."""
        tf = self.tf
        specs = tuple(tf.TensorSpec(x.shape, x.dtype) for x in inputs)
        model, call = self.model, self._call
        try:
            forward = tf.function(lambda xs: call(model, xs, False)).get_concrete_function(
                specs)
        except Exception as e:  # the first step reports a model that rejects the batch
            return None, f"not counted: tracing the forward pass failed ({type(e).__name__})"
        self._activation_bytes_per_sample = _activation_bytes(forward.graph, len(inputs[0]))
        try:
            profiler = tf.compat.v1.profiler
            builder = profiler.ProfileOptionBuilder
            options = builder(builder.float_operation()).with_empty_output().build()
        except AttributeError:
            return None, (f"TensorFlow {tf.__version__} has no graph profiler "
                          "(tf.compat.v1.profiler)")
        graph = forward.graph
        what = "one forward pass"
        if mode == "train":
            assert self._train_body is not None
            try:
                graph = tf.function(self._train_body).get_concrete_function(
                    specs, tf.TensorSpec(targets.shape, targets.dtype)).graph
            except Exception as e:
                return None, ("not counted: tracing the training step failed "
                              f"({type(e).__name__})")
            what = "one training step (forward, gradients, optimizer update)"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                flops = int(profiler.profile(graph=graph, cmd="op",
                                             options=options).total_float_ops)
        except Exception as e:
            return None, f"TensorFlow's graph profiler failed: {type(e).__name__}: {e}"
        if flops <= 0:
            return None, "TensorFlow's graph profiler found no counted op in the graph"
        return flops, f"tensorflow graph profiler (float_operation) of {what}"

    def weight_bytes(self) -> int | None:
        """Bytes of the weights as stored now: every variable at its dtype (float32 master
        weights under a mixed policy), or the TFLite flatbuffer of an int8 model."""
        if self._tflite is not None:
            return self._tflite.content_bytes
        return sum(int(np.prod(v.shape)) * int(self.tf.as_dtype(v.dtype).size)
                   for v in self._variables(trainable=False))

    def quality_context(self) -> contextlib.AbstractContextManager[Any]:
        """The first evaluation of an XLA trial (or of a float16 model, which evaluates with
        XLA) compiles: with the memory cap lifted, as for the first step."""
        assert self.config is not None
        first = not self._evaluated
        self._evaluated = True
        if first and (self.config.execution == "xla" or self._feed_dtype == "float16"):
            return _address_space_cap_lifted()
        return contextlib.nullcontext()

    def compute_dtype(self) -> str:
        if self._tflite is not None:
            return self._tflite.compute_dtype()
        # For a mixed policy this is the matmul dtype (variables stay float32).
        for layer in self.model._flatten_layers(include_self=False, recursive=True):
            if any(len(w.shape) >= 2 for w in layer.trainable_weights):
                return str(layer.compute_dtype)
        return str(self.model.compute_dtype)

    def synchronize(self) -> None:
        """Wait for queued device work.

        On CPU TensorFlow executes synchronously: an eager op, and a ``tf.function`` call
        (graph or XLA), return only after their kernels have run and their outputs exist
        (the CPU device has no stream to queue on). Checked with a 3000x3000 matmul: the
        eager, graph and XLA calls each returned after the whole ~450 ms product, and a
        ``.numpy()`` afterwards took only the 7-37 ms of copying the 36 MB result. GPUs and
        TPUs run asynchronously, so there all devices are drained (``sync_devices`` runs a
        ``SyncDevice`` op on every logical device, then waits for the eager queues).
        """
        if self._accelerator is not None:
            self.tf.test.experimental.sync_devices()

    def peak_memory_bytes(self) -> int | None:
        """Device allocator peak on GPU or TPU (since the trial's reset); ``None`` on CPU.

        ``get_memory_info('CPU:0')`` does work on CPU, but it only counts tensors from TF's
        allocator (not XLA buffers, TFLite arenas or numpy), so the worker's peak RSS is
        the figure comparable with the other backends.
        """
        if self._accelerator is not None:
            info = self.tf.config.experimental.get_memory_info(self._memory_device)
            return int(info["peak"])
        return None

    def versions(self) -> dict[str, str]:
        tf = self.tf
        tflite = self._tflite
        out = {"tensorflow": str(tf.__version__), "keras": str(self.keras.__version__),
               "runtime": "tflite" if tflite is not None else "tensorflow"}
        if tflite is not None:
            out["tflite_interpreter"] = tflite.runtime
        # (the execution mode is in setup's info: here it would change the base-model
        # cache key, which includes versions(), between execution modes)
        return out


# -- helpers -------------------------------------------------------------------------------------


#: TPU systems initialised in this process: initialising again would wipe the TPU's
#: memory (every variable on it) and is slow, so it happens once per process.
_tpu_systems: dict[str, Any] = {}


def initialize_tpu_system(tf: Any, device: str = "tpu") -> Any:
    """Connect to and initialise the TPU system once per process; return its topology.

    TPU cores are not TensorFlow devices until then (``list_logical_devices("TPU")`` is
    empty). The TPU is the one named by ``TPU_NAME`` (a Cloud TPU node), else the TPU
    attached to this VM (``"local"``, a TPU VM), as TensorFlow's TPU guide does it:
    ``TPUClusterResolver`` -> ``experimental_connect_to_cluster`` (a no-op for a local
    TPU) -> ``tpu.experimental.initialize_tpu_system``.
    """
    name = os.environ.get("TPU_NAME") or "local"
    if name in _tpu_systems:
        return _tpu_systems[name]
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
        tf.config.experimental_connect_to_cluster(resolver)
        topology = tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as e:  # NotFoundError, ValueError, RuntimeError from the TPU runtime
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise UnsupportedConfigError(
            f"{device}: no TPU system could be initialised here (TPU {name!r}): "
            f"{type(e).__name__}: {first_line}") from e
    _tpu_systems[name] = topology
    return topology


def _listed(prefix: str, devices: Sequence[Any]) -> str:
    """``": cuda:0, cuda:1"`` for the devices a framework sees (empty for none)."""
    return ": " + ", ".join(f"{prefix}:{i}" for i in range(len(devices))) if devices else ""


def _tensor_bytes(tensor: Any, batch: int) -> int:
    """Bytes of a batch-dependent graph tensor (first dimension ``batch``), else 0."""
    shape = tensor.shape
    if shape.rank is None or shape.rank == 0 or not shape.is_fully_defined() or \
            shape[0] != batch or tensor.op.type in _WEIGHT_OPS:
        return 0
    try:
        size = tensor.dtype.size
    except (AttributeError, TypeError):
        return 0
    return int(np.prod(shape.as_list())) * int(size)


def _activation_bytes(graph: Any, batch: int) -> float | None:
    """Per sample: the largest op's batch-dependent inputs plus outputs in ``graph``."""
    peak = 0
    for op in graph.get_operations():
        if op.type in _WEIGHT_OPS:
            continue
        total = sum(_tensor_bytes(t, batch) for t in (*op.inputs, *op.outputs))
        peak = max(peak, total)
    return peak / batch if peak else None


def _make_interpreter(tf: Any, content: bytes, threads: int) -> tuple[Any, str]:
    """The LiteRT interpreter where ``ai_edge_litert`` is installed, else ``tf.lite``'s
    (same runtime and XNNPACK kernels; it only warns that it moves to LiteRT)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        pass
    else:
        return Interpreter(model_content=content, num_threads=threads), "ai_edge_litert"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\s*Warning: tf\.lite\.Interpreter is "
                                r"deprecated", category=UserWarning)
        return tf.lite.Interpreter(model_content=content, num_threads=threads), "tf.lite"


def _gradient_registry() -> dict[str, Any] | None:
    """TensorFlow's global gradient-function registry (private), or None if it moved."""
    try:
        from tensorflow.python.framework import ops
    except ImportError:
        return None
    registry = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    return registry if isinstance(registry, dict) else None


def _custom_gradient_names() -> frozenset[str]:
    registry = _gradient_registry()
    return frozenset(registry) if registry is not None else frozenset()


def _forget_custom_gradients(before: frozenset[str]) -> None:
    """Unregister the ``CustomGradient-*`` functions traced since ``before``.

    Keras' optimizer all-reduces gradients through ``ReplicaContext.all_reduce``, a
    ``tf.custom_gradient``; in a ``tf.function`` each trace registers its gradient function
    in a global registry that is never cleaned. That function's closure holds the traced
    graph, the graph holds the captured variable handles, so without this every torn-down
    model and optimizer state (24 MB for the 3x1000 MLP with Adam) would stay allocated.
    """
    registry = _gradient_registry()
    if registry is None:
        return
    for name in [n for n in registry if n not in before and n.startswith("CustomGradient-")]:
        del registry[name]


@contextlib.contextmanager
def _address_space_cap_lifted() -> Iterator[None]:
    """Raise the soft ``RLIMIT_AS`` (the worker's memory cap) to the hard limit meanwhile.

    Only for one-off compile steps whose memory the measured model never uses.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == hard:
        yield
        return
    resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _first_call_uncapped(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` whose first call (XLA's compile) runs with the memory cap lifted."""
    pending = [True]

    def call(*args: Any) -> Any:
        if pending:
            pending.clear()
            with _address_space_cap_lifted():
                return fn(*args)
        return fn(*args)

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _oom_translated(tf: Any, fn: Callable[..., Any], where: str) -> Callable[..., Any]:
    """``fn`` with allocation failures raised as :class:`OutOfMemoryError` naming the line
    that says so (TensorFlow's messages start with "Graph execution error:")."""

    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:
            _raise_if_oom(tf, e, where)
            raise

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    return call


def _raise_if_oom(tf: Any, error: BaseException, where: str) -> None:
    """Re-raise an allocation failure as :class:`OutOfMemoryError`; return otherwise."""
    if isinstance(error, TrialError):
        return
    errors = getattr(tf, "errors", None)
    if isinstance(error, MemoryError) or (
            errors is not None and isinstance(error, errors.ResourceExhaustedError)) or \
            _OOM_TEXT.search(str(error)):
        # TensorFlow's messages start with "Graph execution error:" or Keras' "Exception
        # encountered when calling ...": report the line that names the allocation.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        line = next((ln for ln in lines if _OOM_TEXT.search(ln)),
                    lines[0] if lines else type(error).__name__)
        raise OutOfMemoryError(f"out of memory {where}: {line}") from error
