"""TensorFlow (Keras 3) backend, used the way an expert would on each device.

* training: a custom ``GradientTape`` step, run as plain Python (``eager``), as a
  ``tf.function`` (``graph``: 4-5x faster than eager for this MLP) or as a
  ``tf.function(jit_compile=True)`` (``xla``: fastest for the MLP; research/frameworks_on_cpu.md).
  Keras 3's ``jit_compile='auto'`` resolves to *no* XLA on CPU, so the mode is chosen here
  explicitly. Mixed precision through Keras policies (``mixed_bfloat16``; ``mixed_float16``
  plus a ``LossScaleOptimizer``), with float32 logits.
* inference: the trained model converted to the trial's dtype (weights and compute, like
  torch's ``model.to(bfloat16)``), called through the execution mode; int8 through TFLite
  dynamic-range quantisation (about 10x faster than fp32 on CPU), run by the TFLite
  interpreter.
* pruning: the shared numpy definitions of :mod:`autotune.backends._pruning`, so a pruning
  ratio means the same model on every backend. Unstructured masks are re-applied inside the
  compiled step after every optimizer update (pruned weights stay exactly zero); structured
  pruning rebuilds smaller ``Dense`` layers.

The model is the workload's dense stack (``Dense`` + ReLU, linear logits) with torch's
default initialisation (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for weights and biases), so
both frameworks start from the same distribution and their accuracies compare like for like.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends import _pruning
from autotune.backends._base import EVAL_CHUNK as _EVAL_CHUNK
from autotune.backends._base import RECIPE_BATCH as _RECIPE_BATCH
from autotune.backends._base import RECIPE_LR as _RECIPE_LR
from autotune.backends._base import RECIPE_OPTIMIZER as _RECIPE_OPTIMIZER
from autotune.backends._base import Backend, epoch_steps
from autotune.exceptions import (
    NonFiniteLossError,
    OutOfMemoryError,
    UnsupportedConfigError,
)

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads import Dataset, Workload

_INFER_BATCHES = 4

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


def _quiet_tensorflow_logging() -> None:
    """Silence TensorFlow's C++ and Python logging before it is imported.

    Level 2 drops INFO and WARNING lines (oneDNN banners, "could not find cuda drivers",
    XNNPACK delegate notes) but keeps errors, which the launcher keeps as the crash tail.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Keras 3 is multi-backend: this backend is only correct on its TensorFlow backend.
    os.environ["KERAS_BACKEND"] = "tensorflow"


class TensorFlowBackend(Backend):
    """TensorFlow 2 with Keras 3 on CPU (GPU where a GPU build sees one: same code)."""

    name = "tensorflow"

    def __init__(self, tf: Any = None, keras: Any = None) -> None:
        """``tf``/``keras`` are the framework modules; tests hand in fakes (the vendor
        boundary: ``tf.config``, ``tf.tpu``, ``tf.test.experimental``) to drive the GPU and
        TPU paths of hardware this machine lacks, without importing TensorFlow."""
        if tf is None:
            _quiet_tensorflow_logging()
            import keras as keras_module
            import tensorflow as tf_module

            tf_module.get_logger().setLevel("ERROR")
            tf, keras = tf_module, keras_module
        self.tf: Any = tf
        self.keras: Any = keras
        self.config: TrialConfig | None = None
        self.model: Any = None
        self.optimizer: Any = None
        self._device = "/CPU:0"
        #: "GPU" or "TPU" when the trial runs on one (asynchronous, with its own memory
        #: statistics under ``_memory_device``), None on CPU
        self._accelerator: str | None = None
        self._memory_device = ""
        #: XLA functions not called yet ("step", "eval"): their first call compiles
        self._xla_uncompiled: set[str] = set()
        self._threads = 1
        self._widths: tuple[int, ...] = ()
        self._masks: list[Any] = []
        self._step_fn: Callable[..., Any] | None = None
        self._forward: Callable[[Any], Any] | None = None
        self._eval_fn: Callable[[Any], Any] | None = None
        self._interpreter: Any = None
        self._interpreter_name = ""
        self._input_index = 0
        self._x_train: np.ndarray | None = None
        self._y_train: np.ndarray | None = None
        self._x_test: np.ndarray | None = None
        self._y_test: np.ndarray | None = None
        self._epoch_x: list[Any] = []
        self._epoch_y: list[Any] = []
        self._infer_batches: list[Any] = []
        self._last_output: Any = None
        self._cursor = 0
        self._epoch = 0
        self.last_loss = math.nan
        self._gradients_before: frozenset[str] = frozenset()

    # -- threads and devices ---------------------------------------------------------------

    def set_threads(self, n: int) -> int:
        """Size TensorFlow's pools; must run before any op creates the runtime.

        ``inter_op`` is 1: the model is a chain of dependent ops (matmul -> bias -> relu ->
        next matmul), and the few independent ops of a train step (weight and input
        gradients, per-variable optimizer updates) each already use all ``n`` intra-op
        threads; extra inter-op threads would only add hand-offs and compete for the same
        ``n`` pinned cores. Measured on the 2-vCPU AVX2 EPYC (batch 64, 2 intra threads,
        six interleaved runs each on a shared, loaded machine): inter 1 and 2 were not
        distinguishable (train graph 25-52 vs 20-38 ms, infer graph 4.1-8.3 vs 5.7-11.5 ms,
        CPU time per step equal), so the structural argument decides.

        The runtime (and with it both thread pools) is then created by a trivial op, here,
        before the worker applies ``budget.memory_mb``: creating threads under a tight
        address-space cap fails inside TensorFlow's C++ runtime, which aborts the process
        instead of raising, so a trial that should be "oom" would become "killed".
        """
        tf = self.tf
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        with tf.device("/CPU:0"):
            # The eager context and its thread pools, then the graph runtime's and XLA's
            # (XLA starts its own pools on its first compile: 17 threads here). Under 0.1 s.
            x = tf.ones((2, 2))
            tf.function(tf.linalg.matmul)(x, x).numpy()
            tf.function(tf.linalg.matmul, jit_compile=True)(x, x).numpy()
        self._threads = n
        return int(tf.config.threading.get_intra_op_parallelism_threads())

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

    def setup(self, config: TrialConfig, workload: Workload, data: Dataset) -> dict[str, Any]:
        from autotune.backends import resolve_execution

        execution = resolve_execution(self.name, config.execution)
        if execution != config.execution:
            from dataclasses import replace

            config = replace(config, execution=execution)
        if execution not in ("eager", "graph", "xla"):
            raise UnsupportedConfigError(f"unknown execution mode {execution!r}")
        if config.precision not in ("fp32", "bf16", "fp16", "int8"):
            raise UnsupportedConfigError(f"unknown precision {config.precision!r}")
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
        if config.budget.memory_mb is not None and self._accelerator is None:
            _check_activations_fit(config, workload)
        self.keras.utils.set_random_seed(config.seed)
        self._gradients_before = _custom_gradient_names()
        try:
            with self.tf.device(self._device):
                return self._build(config, workload, data)
        except Exception as e:
            _raise_if_oom(self.tf, e, "while building the model")
            raise

    def _build(self, config: TrialConfig, workload: Workload, data: Dataset) -> dict[str, Any]:
        tf = self.tf
        self._x_train, self._y_train = data.x_train, data.y_train
        self._x_test, self._y_test = data.x_test, data.y_test
        info: dict[str, Any] = {"execution": config.execution, "runtime": "tensorflow"}
        ratio = config.pruning_ratio
        if config.pruning_structure not in ("unstructured", "structured"):
            raise UnsupportedConfigError(
                f"unknown pruning structure {config.pruning_structure!r}")
        structured = config.pruning_structure == "structured" and ratio > 0
        full_widths = workload.layer_widths
        # Every model below starts from the seeded initialisation of the *full* model (so a
        # seed means the same initial weights whatever the precision or pruning). Models are
        # built once where possible: building twice would inflate the measured peak memory.
        if config.mode == "train":
            policy = _TRAIN_POLICY[config.precision]
            if structured:
                weights, biases = _pruning.apply_structured(
                    *_get_weights(self._make_model(full_widths, "float32")), ratio)
                self.model = self._model_from(weights, biases, policy)
            else:
                self.model = self._make_model(full_widths, policy)  # mixed: float32 variables
                if ratio > 0:
                    masks = self._mask_in_place(self.model, ratio)
                    # kept for the step: pruned weights stay zero through training
                    self._masks = [tf.constant(m.T, dtype=k.dtype)
                                   for m, k in zip(masks, self._kernels(), strict=True)]
            self.optimizer = self._make_optimizer(config.optimizer, config.learning_rate,
                                                  loss_scale=config.precision == "fp16")
            self._step_fn = self._compile(self._make_train_step(), config.execution)
            self._eval_fn = self._compile(self._make_predict(), _eval_execution(config))
            model = self.model  # its variables are float32 under mixed policies too
            self._new_epoch()
        else:
            # float32 until the precision conversion at the end
            model, info["base_model"] = self._base_model(config, workload)
            if structured:
                weights, biases = _pruning.apply_structured(*_get_weights(model), ratio)
                model = self._model_from(weights, biases, "float32")
            elif ratio > 0:
                self._mask_in_place(model, ratio)  # permanent: nothing to keep
        self._widths = _widths_of_model(model)
        expected = workload.widths_after(config.pruning_structure, ratio)
        if self._widths != expected:
            raise RuntimeError(f"built widths {self._widths} differ from the workload's "
                               f"{expected} after pruning")
        info["param_count"] = _pruning.dense_param_count(self._widths)
        if int(model.count_params()) != info["param_count"]:
            raise RuntimeError(f"Keras counts {model.count_params()} parameters, the "
                               f"dense formula {info['param_count']}")
        info["flops_per_sample"] = _pruning.dense_flops(self._widths, config.mode)
        info["widths"] = list(self._widths)
        info["sparsity"] = _sparsity(tf, [layer.kernel for layer in model.layers
                                          if hasattr(layer, "kernel")])
        if config.mode == "infer":
            if config.precision == "int8":
                self._convert_to_tflite(model)
                info["runtime"] = info["execution"] = "tflite"
                info["tflite_interpreter"] = self._interpreter_name
            elif config.precision == "fp32":
                self.model = model
            else:
                self.model = self._model_from(*_get_weights(model),
                                              _INFER_DTYPE[config.precision])
            del model
            if self.model is not None:
                self._forward = self._compile(self._make_forward(), config.execution)
                self._eval_fn = self._compile(self._make_predict(), _eval_execution(config))
            self._make_infer_batches(config.batch_size)
        # XLA compiles a function on its first call: the step's compile then falls in the
        # profiler's first step (timed apart as the compile phase), as a graph's trace does.
        self._xla_uncompiled = ({"step", "eval"} if config.execution == "xla"
                                and self.model is not None else set())
        info["compute_dtype"] = self.compute_dtype()
        return info

    def _make_model(self, widths: Sequence[int], dtype: str, *,
                    initialise: bool = True) -> Any:
        """Dense(+ReLU) stack of ``widths`` in Keras ``dtype`` (a dtype or a policy name).

        ``initialise=False`` fills zeros, for a model whose weights are assigned next (a
        random initialisation would cost time and temporary memory for nothing).
        """
        keras = self.keras
        mixed = dtype.startswith("mixed_")
        layers: list[Any] = [keras.Input(shape=(widths[0],),
                                         dtype="float32" if mixed else dtype)]
        n_layers = len(widths) - 1
        for i in range(n_layers):
            bound = 1.0 / math.sqrt(widths[i])
            layers.append(keras.layers.Dense(
                widths[i + 1],
                activation="relu" if i < n_layers - 1 else None,
                dtype=dtype,
                # torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
                kernel_initializer=keras.initializers.VarianceScaling(
                    scale=1.0 / 3.0, mode="fan_in", distribution="uniform")
                if initialise else "zeros",
                bias_initializer=keras.initializers.RandomUniform(-bound, bound)
                if initialise else "zeros",
            ))
        if mixed:
            # Logits (and so the loss and its NaN check) in float32, as Keras' mixed
            # precision guide prescribes: softmax cross-entropy in 16 bit loses accuracy.
            layers.append(keras.layers.Activation("linear", dtype="float32"))
        return keras.Sequential(layers)

    def _model_from(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                    dtype: str) -> Any:
        """A model of the widths of ``weights`` in ``dtype``, holding these weights."""
        model = self._make_model(_widths_of(weights), dtype, initialise=False)
        _set_weights(self.tf, model, weights, biases)
        return model

    def _mask_in_place(self, model: Any, ratio: float) -> list[np.ndarray]:
        """Zero the globally smallest ``ratio`` of ``model``'s weights; return the masks."""
        weights, _ = _get_weights(model)
        masks = _pruning.unstructured_masks(weights, ratio)
        del weights
        dense = [layer for layer in model.layers if hasattr(layer, "kernel")]
        for layer, mask in zip(dense, masks, strict=True):
            layer.kernel.assign(layer.kernel * self.tf.constant(mask.T, layer.kernel.dtype))
        return masks

    @contextlib.contextmanager
    def _compiling(self, function: str) -> Iterator[None]:
        """Around a call of ``function`` ("step" or "eval"): on XLA's first call, which
        compiles, the worker's memory cap is lifted meanwhile.

        Under ``budget.memory_mb`` (an address-space cap) LLVM's code memory fails to map
        while XLA compiles and XLA aborts the process, so a trial that should end "oom"
        would end killed. Compilation is the framework's one-off cost, not memory the model
        runs in. The step compiles in the profiler's first step (the compile phase, outside
        warm-up and the measured window), the evaluation in the first evaluation (untimed),
        exactly where graph mode traces them; later calls run under the cap.
        """
        if function not in self._xla_uncompiled:
            yield
            return
        self._xla_uncompiled.discard(function)
        with _address_space_cap_lifted():
            yield

    def _dense_layers(self) -> list[Any]:
        return [layer for layer in self.model.layers
                if isinstance(layer, self.keras.layers.Dense)]

    def _kernels(self) -> list[Any]:
        return [layer.kernel for layer in self._dense_layers()]

    def _make_optimizer(self, name: str, lr: float, *, loss_scale: bool = False,
                        model: Any = None) -> Any:
        """Keras optimizers with torch's defaults where Keras' differ (eps 1e-8, AdamW
        weight decay 0.01), built before any step so no variable is created while tracing."""
        optimizers = self.keras.optimizers
        model = self.model if model is None else model
        lr = float(lr)  # Keras rejects an int learning rate (a space may say 1000)
        if name == "sgd":
            opt = optimizers.SGD(learning_rate=lr, momentum=0.9)
        elif name == "adam":
            opt = optimizers.Adam(learning_rate=lr, epsilon=1e-8)
        elif name == "adamw":
            opt = optimizers.AdamW(learning_rate=lr, epsilon=1e-8, weight_decay=0.01)
        else:
            raise UnsupportedConfigError(f"unknown optimizer {name!r}")
        if loss_scale:
            opt = optimizers.LossScaleOptimizer(opt)
        opt.build(model.trainable_variables)
        return opt

    def _make_train_step(self) -> Callable[[Any, Any], Any]:
        tf = self.tf
        model, optimizer = self.model, self.optimizer
        variables = list(model.trainable_variables)
        masks = list(self._masks)
        kernels = self._kernels() if masks else []
        loss_scale = isinstance(optimizer, self.keras.optimizers.LossScaleOptimizer)

        def train_step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
                scaled = optimizer.scale_loss(loss) if loss_scale else loss
            grads = tape.gradient(scaled, variables)
            optimizer.apply(grads, variables)
            # Unstructured pruning: pruned weights stay zero after every update. Part of the
            # step, so in graph/xla it is compiled with it (one multiply per kernel).
            for kernel, mask in zip(kernels, masks, strict=True):
                kernel.assign(kernel * mask)
            return loss

        return train_step

    def _make_forward(self) -> Callable[[Any], Any]:
        model = self.model

        def forward(x: Any) -> Any:
            return model(x, training=False)

        return forward

    def _make_predict(self) -> Callable[[Any], Any]:
        tf, model = self.tf, self.model

        def predict(x: Any) -> Any:
            return tf.argmax(model(x, training=False), axis=1)

        return predict

    def _compile(self, fn: Callable[..., Any], execution: str) -> Callable[..., Any]:
        """``fn`` as the execution mode runs it: as is, a graph, or an XLA cluster."""
        if execution == "eager":
            return fn
        return self.tf.function(fn, jit_compile=execution == "xla")  # type: ignore[no-any-return]

    # -- inference model -------------------------------------------------------------------

    def _base_model(self, config: TrialConfig, workload: Workload) -> tuple[Any, str]:
        """The full fp32 model trained with the fixed recipe, so every inference trial
        measures the same model; ``"cached"`` or ``"trained"`` with it.

        The weights are cached per (workload, widths, epochs, seed, TensorFlow version) as an
        ``.npz`` of ``w0..`` ``(out, in)`` and ``b0..`` arrays (the shared pruning layout),
        readable without TensorFlow.
        """
        from autotune._cache import cache_dir, write_atomically

        tf = self.tf
        key = (f"tf-{workload.name}-{'x'.join(map(str, workload.layer_widths))}"
               f"-e{config.budget.train_epochs}-s{config.seed}-{tf.__version__}")
        path = cache_dir() / f"{key}.npz"
        n_layers = len(workload.layer_widths) - 1
        if path.exists():
            with np.load(path) as f:
                weights = [f[f"w{i}"] for i in range(n_layers)]
                biases = [f[f"b{i}"] for i in range(n_layers)]
            return self._model_from(weights, biases, "float32"), "cached"
        model = self._make_model(workload.layer_widths, "float32")
        self._train_recipe(config, model)
        weights, biases = _get_weights(model)
        arrays = {f"w{i}": w for i, w in enumerate(weights)}
        arrays.update({f"b{i}": b for i, b in enumerate(biases)})
        del weights, biases

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]

        write_atomically(path, save)
        return model, "trained"

    def _train_recipe(self, config: TrialConfig, model: Any) -> None:
        """Adam, lr 1e-3, batch 128, ``budget.train_epochs`` epochs, fp32, seeded shuffles."""
        tf = self.tf
        optimizer = self._make_optimizer(_RECIPE_OPTIMIZER, _RECIPE_LR, model=model)
        variables = list(model.trainable_variables)

        def recipe_step(x: Any, y: Any) -> None:
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels=y, logits=model(x, training=True)))
            optimizer.apply(tape.gradient(loss, variables), variables)

        # A graph: untimed setup, so the fastest mode that needs no compile. The last batch
        # of an epoch is smaller: a signature with an unknown batch keeps it to one trace.
        assert self._x_train is not None and self._y_train is not None
        step = tf.function(recipe_step, input_signature=[
            tf.TensorSpec((None, self._x_train.shape[1]), tf.float32),
            tf.TensorSpec((None,), tf.int64)])
        x_train, y_train = tf.constant(self._x_train), tf.constant(self._y_train)
        rng = np.random.default_rng(config.seed)
        n = len(self._x_train)
        for _ in range(config.budget.train_epochs):
            order = rng.permutation(n)
            for start in range(0, n, _RECIPE_BATCH):
                idx = tf.constant(order[start:start + _RECIPE_BATCH])
                step(tf.gather(x_train, idx), tf.gather(y_train, idx))

    def _convert_to_tflite(self, model: Any) -> None:
        """Dynamic-range int8 (int8 weights, activations quantised on the fly per batch).

        ``from_keras_model`` on the float32 Keras model: ``from_concrete_functions`` produces
        a model of READ_VARIABLE ops whose output is NaN (research/frameworks_on_cpu.md).
        """
        tf = self.tf
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # Keras 3's converter exports a SavedModel first (and prints its signature), then
        # converts it with TensorFlow's C++ converter, which starts threads of its own.
        # Conversion is a one-off compile step, not memory the int8 model runs in, and
        # under an address-space cap (budget.memory_mb) its thread stacks alone fail
        # pthread_create, which aborts the process: so it runs with the cap lifted.
        with contextlib.redirect_stdout(io.StringIO()), _address_space_cap_lifted():
            content = converter.convert()
        del converter
        self._interpreter, self._interpreter_name = _make_interpreter(tf, content,
                                                                      self._threads)
        assert self.config is not None
        self._input_index = self._interpreter.get_input_details()[0]["index"]
        self._interpreter.resize_tensor_input(self._input_index,
                                              [self.config.batch_size, self._widths[0]])
        try:
            self._interpreter.allocate_tensors()
        except RuntimeError as e:
            # TFLite reports a failed arena allocation as a failed delegate "prepare"; with
            # a memory cap that is what it means (without one, a real error stays one).
            if self.config.budget.memory_mb is not None:
                raise OutOfMemoryError(
                    f"out of memory allocating TFLite tensors for batch "
                    f"{self.config.batch_size} under budget.memory_mb="
                    f"{self.config.budget.memory_mb}: {str(e).strip()}") from e
            raise

    def _make_infer_batches(self, batch_size: int) -> None:
        """A few distinct input batches drawn from the held-out split (tiled if too small)."""
        assert self._x_test is not None
        x = self._x_test
        reps = math.ceil(batch_size * _INFER_BATCHES / len(x))
        pool = np.tile(x, (reps, 1)) if reps > 1 else x
        batches = [np.ascontiguousarray(pool[i * batch_size:(i + 1) * batch_size])
                   for i in range(_INFER_BATCHES)]
        if self._interpreter is not None:
            self._infer_batches = batches
        else:
            dtype = self.model.layers[0].compute_dtype
            self._infer_batches = [self.tf.cast(self.tf.constant(b), dtype) for b in batches]

    # -- stepping --------------------------------------------------------------------------

    def _new_epoch(self) -> None:
        """Shuffle once per epoch, called from between_steps (untimed), so a step only picks
        a batch.

        The order is extended cyclically to ``steps_per_epoch * batch_size`` samples: the
        last, partial batch wraps around to the first samples of this epoch's order (and a
        batch larger than the split repeats it), exactly as the torch backend does.
        """
        tf = self.tf
        assert self.config is not None and self._x_train is not None
        assert self._y_train is not None
        rng = np.random.default_rng(self.config.seed + self._epoch)
        order = rng.permutation(len(self._x_train))
        bs, steps = self.config.batch_size, self.steps_per_epoch
        order = np.resize(order, steps * bs)
        x = tf.reshape(tf.constant(self._x_train[order]), (steps, bs, -1))
        y = tf.reshape(tf.constant(self._y_train[order]), (steps, bs))
        # One unstack op here instead of a slice op per step (eager slices cost ~20 us).
        self._epoch_x, self._epoch_y = tf.unstack(x), tf.unstack(y)
        self._cursor = 0
        self._epoch += 1

    def between_steps(self) -> None:
        assert self.config is not None
        if self.config.mode == "train" and self._cursor >= self.steps_per_epoch:
            with self.tf.device(self._device):
                self._new_epoch()

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training split (last batch may wrap)."""
        assert self.config is not None and self._x_train is not None
        return epoch_steps(len(self._x_train), self.config.batch_size)

    def step(self) -> int:
        assert self.config is not None
        try:
            with self._compiling("step"):
                if self.config.mode == "train":
                    with self.tf.device(self._device):
                        return self._train_step()
                return self._infer_step()
        except NonFiniteLossError:
            raise
        except Exception as e:
            _raise_if_oom(self.tf, e, "in a step")
            raise

    def _train_step(self) -> int:
        assert self.config is not None and self._step_fn is not None
        if self._cursor >= self.steps_per_epoch:  # only if between_steps was not called
            self._new_epoch()
        x, y = self._epoch_x[self._cursor], self._epoch_y[self._cursor]
        self._cursor += 1
        loss = self._step_fn(x, y)
        # Reading the loss waits for the step: on CPU the step has already finished (see
        # synchronize), on GPU this is the sync a NaN check needs anyway.
        self.last_loss = float(loss)
        if not math.isfinite(self.last_loss):
            raise NonFiniteLossError(
                f"loss became {self.last_loss} at epoch {self._epoch} "
                f"(learning_rate={self.config.learning_rate}, optimizer={self.config.optimizer})"
            )
        return self.config.batch_size

    def _infer_step(self) -> int:
        assert self.config is not None
        batch = self._infer_batches[self._cursor % len(self._infer_batches)]
        self._cursor += 1
        if self._interpreter is not None:
            self._interpreter.set_tensor(self._input_index, batch)
            self._interpreter.invoke()  # synchronous: returns when the outputs are written
        else:
            assert self._forward is not None
            with self.tf.device(self._device):
                self._last_output = self._forward(batch)
        return self.config.batch_size

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

    def evaluate(self) -> float:
        assert self.config is not None
        assert self._x_test is not None and self._y_test is not None
        x, y = self._x_test, self._y_test
        correct = 0
        if self._interpreter is not None:
            # Through the int8 model itself, in chunks of its input size (padded at the end).
            bs = self.config.batch_size
            output = self._interpreter.get_output_details()[0]["index"]
            for start in range(0, len(x), bs):
                chunk = x[start:start + bs]
                n = len(chunk)
                if n < bs:
                    chunk = np.resize(chunk, (bs, x.shape[1]))
                self._interpreter.set_tensor(self._input_index,
                                             np.ascontiguousarray(chunk, dtype=np.float32))
                self._interpreter.invoke()
                pred = self._interpreter.get_tensor(output)[:n].argmax(axis=1)
                correct += int((pred == y[start:start + n]).sum())
            return correct / len(x)
        assert self._eval_fn is not None
        tf = self.tf
        dtype = "float32" if self.config.mode == "train" else \
            self.model.layers[0].compute_dtype
        with tf.device(self._device), self._compiling("eval"):
            for start in range(0, len(x), _EVAL_CHUNK):
                chunk = tf.cast(tf.constant(x[start:start + _EVAL_CHUNK]), dtype)
                pred = self._eval_fn(chunk).numpy()
                correct += int((pred == y[start:start + _EVAL_CHUNK]).sum())
        return correct / len(x)

    def compute_dtype(self) -> str:
        assert self.config is not None
        if self._interpreter is not None:
            kinds = {d["dtype"] for d in self._interpreter.get_tensor_details()}
            return "int8" if np.int8 in kinds else "float32"
        # For a mixed policy this is the matmul dtype (variables stay float32).
        return str(self._dense_layers()[0].compute_dtype)

    def dense_weights(self) -> list[Any]:
        if self._interpreter is None:
            return _get_weights(self.model)[0]
        # int8: the TFLite model's int8 weights, dequantised (per output channel)
        interpreter = self._interpreter
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        try:  # weight operand of each FULLY_CONNECTED op, in execution order
            order = [op["inputs"][1] for op in interpreter._get_ops_details()
                     if op["op_name"] == "FULLY_CONNECTED"]
        except (AttributeError, KeyError, IndexError):
            order = sorted(i for i, d in details.items()
                           if d["dtype"] == np.int8 and len(d["shape"]) == 2)
        weights = []
        for index in order:
            quant = details[index]["quantization_parameters"]
            raw = interpreter.get_tensor(index).astype(np.float32)
            scales = quant["scales"].reshape(-1, 1) if len(quant["scales"]) > 1 \
                else quant["scales"]
            zeros = quant["zero_points"].reshape(-1, 1) if len(quant["zero_points"]) > 1 \
                else quant["zero_points"]
            weights.append((raw - zeros) * scales)
        return weights

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
        out = {"tensorflow": str(tf.__version__), "keras": str(self.keras.__version__),
               "runtime": "tflite" if self._interpreter is not None else "tensorflow"}
        if self._interpreter is not None:
            out["tflite_interpreter"] = self._interpreter_name
        if self.config is not None:
            out["execution"] = ("tflite" if self._interpreter is not None
                                else self.config.execution)
        return out

    def teardown(self) -> None:
        self.model = self.optimizer = self._interpreter = None
        self._step_fn = self._forward = self._eval_fn = None
        self._masks, self._infer_batches = [], []
        self._epoch_x, self._epoch_y = [], []
        self._last_output = None
        self.keras.backend.clear_session()
        _forget_custom_gradients(self._gradients_before)


# -- helpers (numpy side; weights in the shared (out, in) layout) --------------------------


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


def _check_activations_fit(config: TrialConfig, workload: Workload) -> None:
    """Refuse a batch whose activations alone exceed the trial's memory budget.

    Under the worker's address-space cap, TensorFlow's own allocator raises
    ResourceExhaustedError, but its oneDNN kernels on AVX-512 CPUs dereference a failed
    allocation and the process dies of SIGSEGV (seen on an AVX512-BF16 EPYC; an AVX2 one
    raised). A batch that cannot hold its layer outputs (and, in training, their
    gradients) in the budget is out of memory on any device of that size, so it is
    reported as such before a kernel can crash.
    """
    widths = workload.widths_after(config.pruning_structure, config.pruning_ratio)
    per_sample = sum(widths[1:]) * 4 * (2 if config.mode == "train" else 1)
    needed = config.batch_size * per_sample
    budget = (config.budget.memory_mb or 0) * 2**20
    if needed > budget:
        raise OutOfMemoryError(
            f"out of memory: batch {config.batch_size} needs {needed / 2**20:.0f} MB of "
            f"activations, more than the trial's memory budget of "
            f"{config.budget.memory_mb} MB")


def _eval_execution(config: TrialConfig) -> str:
    """Evaluation is untimed: eager would only slow the trial down, so it runs as a graph;
    XLA trials evaluate with XLA (fp16 has usable CPU kernels only there)."""
    return "xla" if config.execution == "xla" else "graph"


def _get_weights(model: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Kernels as float32 ``(out, in)`` arrays and biases, input layer first."""
    weights, biases = [], []
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            weights.append(np.asarray(layer.kernel.numpy(), dtype=np.float32).T.copy())
            biases.append(np.asarray(layer.bias.numpy(), dtype=np.float32).copy())
    return weights, biases


def _set_weights(tf: Any, model: Any, weights: Sequence[np.ndarray],
                 biases: Sequence[np.ndarray]) -> None:
    dense = [layer for layer in model.layers if hasattr(layer, "kernel")]
    for layer, w, b in zip(dense, weights, biases, strict=True):
        layer.kernel.assign(tf.cast(tf.constant(w.T), layer.kernel.dtype))
        layer.bias.assign(tf.cast(tf.constant(b), layer.bias.dtype))


def _widths_of(weights: Sequence[np.ndarray]) -> tuple[int, ...]:
    return (weights[0].shape[1], *(w.shape[0] for w in weights))


def _widths_of_model(model: Any) -> tuple[int, ...]:
    kernels = [layer.kernel for layer in model.layers if hasattr(layer, "kernel")]
    return (int(kernels[0].shape[0]), *(int(k.shape[1]) for k in kernels))


def _sparsity(tf: Any, kernels: Sequence[Any]) -> float:
    """Fraction of zero weights (biases not counted, as in torch's backend)."""
    nonzero = sum(int(tf.math.count_nonzero(k, dtype=tf.int32)) for k in kernels)
    size = sum(int(np.prod(k.shape)) for k in kernels)
    return float((size - nonzero) / size)


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


def _raise_if_oom(tf: Any, error: BaseException, where: str) -> None:
    """Re-raise an allocation failure as :class:`OutOfMemoryError`; return otherwise."""
    if isinstance(error, OutOfMemoryError):
        raise error
    if isinstance(error, (MemoryError, tf.errors.ResourceExhaustedError)) or \
            _OOM_TEXT.search(str(error)):
        # TensorFlow's messages start with "Graph execution error:" or Keras' "Exception
        # encountered when calling ...": report the line that names the allocation.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        line = next((ln for ln in lines if _OOM_TEXT.search(ln)),
                    lines[0] if lines else type(error).__name__)
        raise OutOfMemoryError(f"out of memory {where}: {line}") from error
