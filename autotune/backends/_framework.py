"""The shared base of the framework backends: everything that is not framework-specific.

A :class:`FrameworkBackend` runs any :class:`~autotune.workloads.ModelSpec` of its
framework. The base owns the logic that used to be written three times: the trial's
batches (an epoch's pool generated untimed, the inference pool), step dispatch with the
NaN check, the base-model recipe and its cache, quality evaluation, model facts
(parameters, FLOPs, weight bytes, sparsity), unstructured magnitude pruning, and the
translation of framework errors into autotune's (:func:`map_exceptions`). A framework
supplies a handful of primitives (the abstract methods below).

Lifecycle inside the worker::

    backend.configure(config)          # device, precision policy, execution mode
    spec = load_model_spec(ref, backend.framework)   # the user's factory runs here
    info = backend.setup(config, spec)  # place, (train base), prune, convert, compile
    ... step() / synchronize() / between_steps() ... evaluate() ...
    backend.teardown()
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends._base import RECIPE_BATCH, RECIPE_LR, RECIPE_OPTIMIZER, Backend
from autotune.backends._generation import GenerationMixin
from autotune.backends._pruning import unstructured_masks
from autotune.exceptions import (
    ModelFactoryError,
    NonFiniteLossError,
    OutOfMemoryError,
    TrialError,
    UnsupportedConfigError,
)
from autotune.workloads._spec import ModelSpec, as_input_tuple, batch_nbytes, check_batch

if TYPE_CHECKING:
    from autotune.config import TrialConfig

#: Bytes of pre-generated batches a trial keeps at most (an epoch's batches are generated
#: untimed at its start; beyond this the pool is cycled).
POOL_BYTES = 64 * 2**20
#: Distinct batches an inference trial cycles through.
INFER_POOL = 4
#: Samples FLOPs are counted on (divided back to per sample).
FLOP_COUNT_BATCH = 4

ErrorClassifier = Callable[[BaseException], "type[TrialError] | None"]


@contextlib.contextmanager
def map_exceptions(classify: ErrorClassifier, where: str) -> Iterator[None]:
    """Turn a framework's exception into autotune's (httpx's ``map_exceptions`` pattern).

    ``classify(error)`` returns the :class:`TrialError` subclass an error means (out of
    memory, unsupported) or ``None``; autotune's own errors pass through unchanged, a
    ``MemoryError`` is always out of memory, anything else propagates as it is (a crash).
    """
    try:
        yield
    except (TrialError, ModelFactoryError):
        raise
    except MemoryError as e:
        raise OutOfMemoryError(f"out of memory {where}: {e or 'allocation failed'}") from None
    except Exception as e:
        kind = classify(e)
        if kind is None:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise kind(f"{where}: {first}") from None


class FrameworkBackend(GenerationMixin, Backend):
    """A backend that runs :class:`ModelSpec` models of one framework (see module doc)."""

    #: what the factory is called with: ``build(framework, **kwargs)``
    framework: str = ""

    def __init__(self) -> None:
        self.config: TrialConfig | None = None
        self.spec: ModelSpec | None = None
        self.model: Any = None
        self.optimizer: Any = None
        self.factory_label = "the factory"
        self._train_step: Callable[[tuple[Any, ...], Any], Any] | None = None
        self._infer_step: Callable[[tuple[Any, ...]], Any] | None = None
        self._pool: list[tuple[tuple[Any, ...], Any]] = []
        self._cursor = 0
        self._epoch = 0
        self._epoch_steps_done = 0
        self._steps_run = 0
        self._rng: np.random.Generator | None = None
        #: whether make_batch returns one input (not a tuple): ``forward`` gets it as is
        self.single_input = True
        #: a few samples of the trial's inputs on the device, for tracing pruners and FLOP
        #: counters (set before pruning)
        self.example_inputs: tuple[Any, ...] = ()
        self._example: tuple[tuple[Any, ...], Any] = ((), None)
        self.last_loss = math.nan
        #: generate mode: each token's time since the start of the last step's generation
        self.last_generation: list[float] | None = None
        self._lm_step: Callable[..., Any] | None = None
        self._lm_full: Callable[..., Any] | None = None
        self._static_cache: Any = None

    # -- primitives a framework supplies -------------------------------------------------

    @abstractmethod
    def configure(self, config: TrialConfig) -> None:
        """Set the runtime up for ``config`` before the factory runs: device placement,
        precision policy (Keras' global policy must be set before a model is built),
        execution mode (MindSpore's graph mode)."""

    @abstractmethod
    def model_type_error(self, model: Any) -> str | None:
        """Why ``model`` is not a model of this framework (``None`` when it is)."""

    @abstractmethod
    def place_model(self, model: Any) -> Any:
        """The model on the trial's device (may return the same object)."""

    @abstractmethod
    def to_device(self, array: np.ndarray) -> Any:
        """A contiguous tensor on the trial's device; floating arrays in the dtype the
        trial feeds the model (the inference precision, else float32)."""

    @abstractmethod
    def trainable_parameter_count(self) -> int:
        """Trainable parameters of the current model, each shared tensor counted once."""

    @abstractmethod
    def weight_arrays(self) -> list[np.ndarray]:
        """Every weight matrix and conv kernel (tensors of 2 or more dimensions) of the
        current model as numpy arrays, in a fixed order."""

    @abstractmethod
    def apply_weight_masks(self, masks: Sequence[np.ndarray], *, permanent: bool) -> None:
        """Zero the weights where ``masks`` (same order as :meth:`weight_arrays`) are
        False; with ``permanent=False`` (training) they must stay zero after every step."""

    @abstractmethod
    def prune_structured_default(self, ratio: float) -> None:
        """Structured pruning of a model whose spec has no ``prune_structured`` (raise
        :class:`UnsupportedConfigError` with the reason where the framework cannot)."""

    @abstractmethod
    def make_optimizer(self, name: str, learning_rate: float) -> Any:
        """The framework's optimizer over the current model's trainable parameters."""

    @abstractmethod
    def build_train_step(self, precision: str, execution: str) -> Callable[..., Any]:
        """``step(inputs, targets) -> loss`` (a scalar tensor or float): one optimizer step
        with :attr:`optimizer` on device tensors, in the trial's precision/execution."""

    @abstractmethod
    def build_infer_step(self, execution: str) -> Callable[..., Any]:
        """``step(inputs)``: one forward pass of the (converted) model."""

    @abstractmethod
    def convert_for_inference(self, precision: str) -> str:
        """Convert the trained, pruned model to the trial's precision; return the runtime
        that will run it (``torch``, ``tflite``, ...)."""

    @abstractmethod
    def classify_error(self, error: BaseException) -> type[TrialError] | None:
        """The :class:`TrialError` a framework error means (OOM, unsupported), or None."""

    @abstractmethod
    def save_weights(self, path: Path) -> None:
        """Write the current model's weights to ``path`` (the base-model cache)."""

    @abstractmethod
    def load_weights(self, path: Path) -> None:
        """Load weights written by :meth:`save_weights` into the current model."""

    def _use_replica_shard(self, config: TrialConfig) -> None:
        """A replica of a data-parallel trial draws its own shard of the samples from
        here on (rank 0 the samples a single-replica trial draws)."""
        rank = int((config.replica or {}).get("rank", 0))
        if rank:
            self._rng = np.random.default_rng([config.seed, rank])

    def wrap_data_parallel(self, config: TrialConfig) -> dict[str, Any]:
        """Make the training step of this replica (``config.replica``: rank, world,
        rendezvous ports) average its gradients with the other replicas' through the
        framework's own data-parallel machinery; returns what was used. The default
        refuses: a framework without a data-parallel path says why."""
        from autotune.backends import get_spec

        reason = get_spec(config.backend).data_parallel_reason(config.device)
        raise UnsupportedConfigError(reason or f"{self.framework} has no data-parallel "
                                               "training path here")

    def last_step_comm_s(self) -> float | None:
        """An inference replica exchanges nothing with the others: 0; else not measured
        here (a framework that can time its all-reduce overrides this)."""
        if self.config is not None and self.config.replica is not None and \
                self.config.mode != "train":
            return 0.0
        return None

    def count_flops(self, inputs: tuple[Any, ...], targets: Any,
                    mode: str) -> tuple[int | None, str]:
        """FLOPs of one forward (infer) or training step (train) on ``inputs`` as the
        framework counts them, with the method; ``(None, reason)`` where it cannot."""
        return None, f"{self.framework} offers no FLOP counter here"

    def weight_bytes(self) -> int | None:
        """Bytes of the model's weights as stored now (at the trial's precision)."""
        return None

    def quality_context(self) -> contextlib.AbstractContextManager[Any]:
        """Context the spec's ``quality`` runs in (eval mode, no gradients, autocast)."""
        return contextlib.nullcontext()

    def pack_inputs(self, xs: tuple[Any, ...]) -> Any:
        """The inputs as ``make_batch`` gave them (one tensor, or a tuple), for ``forward``."""
        return xs[0] if self.single_input else xs

    def to_float(self, loss: Any) -> float:
        """A loss tensor as a Python float."""
        return float(loss)

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self, config: TrialConfig, spec: ModelSpec) -> dict[str, Any]:
        """Place, (in infer mode) train with the base recipe, prune, measure the model's
        facts, convert and compile; prepare the trial's batches."""
        self.config, self.spec = config, spec
        self._rng = np.random.default_rng(config.seed)
        reason = self.model_type_error(spec.model)
        if reason is not None:
            raise ModelFactoryError(f"{self.factory_label}: {reason}")
        with map_exceptions(self.classify_error, "while building the model"):
            return self._setup(config, spec)

    def _setup(self, config: TrialConfig, spec: ModelSpec) -> dict[str, Any]:
        self.model = self.place_model(spec.model)
        probe = self._make_batch(config.batch_size)
        n = min(FLOP_COUNT_BATCH, len(probe[0][0]))
        self._example = self._device_batch(
            (tuple(x[:n] for x in probe[0]), None if probe[1] is None else probe[1][:n]))
        self.example_inputs = self._example[0]
        info: dict[str, Any] = {"quality_name": spec.quality_name,
                                "quality_direction": spec.quality_direction,
                                "has_quality": spec.quality is not None}
        if config.mode == "train":
            if config.precision == "int8":
                raise UnsupportedConfigError(f"int8 training is not supported by "
                                             f"{self.framework}")
            if self.trainable_parameter_count() == 0:
                raise ModelFactoryError(f"{self.factory_label}: the model has no trainable "
                                        "parameters, so it cannot be trained (use mode infer)")
            self._prune(config.pruning_ratio, config.pruning_structure, permanent=False)
            # after pruning: a structured prune rebuilds the model, which must keep them
            self.apply_llm_knobs(config)
            if config.replica is not None:
                info["data_parallel"] = self.wrap_data_parallel(config)
            self._use_replica_shard(config)
            self.optimizer = self.make_optimizer(config.optimizer, config.learning_rate)
            self._train_step = self.build_train_step(config.precision, config.execution)
            self._new_epoch()
        else:
            if spec.train_before_infer:
                info["base_model"] = self._base_model(config, spec)
            self._prune(config.pruning_ratio, config.pruning_structure, permanent=True)
            self.apply_llm_knobs(config)
        info.update(self._model_facts(probe, config.mode))
        info["tokens_per_sample"] = self._tokens_per_sample(probe)
        if config.mode != "train":
            info["runtime"] = self.convert_for_inference(config.precision)
            if config.weight_quant != "none":
                if config.precision == "int8":
                    raise UnsupportedConfigError(
                        "weight_quant and precision int8 both quantise the weights; use one")
                self.apply_weight_quant(config.weight_quant)
            info["weight_quant"] = config.weight_quant
        # after the base model: every replica (and every trial) measures the same one
        self._use_replica_shard(config)
        if config.mode == "infer":
            if config.replica is not None:  # replicas serving one stream: no collective
                info["data_parallel"] = {"replicas": config.data_parallel,
                                         "how": "independent replicas, one shard of each "
                                                "batch each (no collective)"}
            self._infer_step = self.build_infer_step(config.execution)
            self._pool = [self._device_batch(self._make_batch(config.batch_size))
                          for _ in range(INFER_POOL)]
        elif config.mode == "generate":
            info.update(self._setup_generation(config))
        info["weight_bytes"] = self.weight_bytes()
        info["compute_dtype"] = self.compute_dtype()
        info["execution"] = config.execution
        info.setdefault("runtime", self.framework)
        return info

    def _tokens_per_sample(self, probe: tuple[Any, Any]) -> int | None:
        """Tokens in one sample: the spec's, else a 2-D integer first input's length."""
        assert self.spec is not None
        if self.spec.tokens_per_sample is not None:
            return self.spec.tokens_per_sample
        first = probe[0][0]
        if first.ndim == 2 and np.issubdtype(first.dtype, np.integer):
            return int(first.shape[1])
        return None

    def _model_facts(self, probe: tuple[Any, Any], mode: str) -> dict[str, Any]:
        """Parameter count, FLOPs per sample and sparsity of the model as built (pruned,
        before int8 conversion replaces its layers)."""
        n = len(probe[0][0][:FLOP_COUNT_BATCH])
        # The first time the model sees the factory's inputs: a rejection is the factory's
        # error, said in one line.
        with self._first_step_guard(self._example[0]):
            if mode == "generate":
                flops, method = None, ("not counted in generate mode (a generation's decode "
                                       "steps are bound by memory traffic, not FLOPs: see "
                                       "decode_tokens_per_s)")
            else:
                flops, method = self.count_flops(self._example[0], self._example[1], mode)
        weights = self.weight_arrays()
        total = sum(w.size for w in weights)
        zeros = sum(int((w == 0).sum()) for w in weights)
        return {"param_count": self.trainable_parameter_count(),
                "flops_per_sample": None if flops is None else flops / n,
                "flops_method": method,
                "sparsity": zeros / total if total else 0.0}

    @contextlib.contextmanager
    def _first_step_guard(self, xs: tuple[Any, ...]) -> Iterator[None]:
        """The trial's first step (which also compiles in graph mode): a model that
        rejects make_batch's arrays fails with one line naming the factory, not a crash."""
        try:
            yield
        except (TrialError, ModelFactoryError):
            raise
        except Exception as e:
            if isinstance(e, MemoryError) or self.classify_error(e) is not None:
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            shapes = ", ".join(f"{tuple(x.shape)} {str(x.dtype).rsplit('.', 1)[-1]}"
                               for x in xs)
            raise ModelFactoryError(
                f"{self.factory_label}: the model rejected a batch from make_batch "
                f"(inputs {shapes}): {type(e).__name__}: {first}") from None

    def _check_loss_is_scalar(self, loss: Any) -> None:
        shape = tuple(getattr(loss, "shape", ()))
        if shape not in ((), (1,)):
            raise ModelFactoryError(f"{self.factory_label}: the loss must be a scalar, got a "
                                    f"tensor of shape {shape}")

    # -- batches ---------------------------------------------------------------------------

    def _make_batch(self, batch_size: int) -> tuple[tuple[np.ndarray, ...], Any]:
        assert self.spec is not None and self._rng is not None
        try:
            inputs, targets = self.spec.make_batch(batch_size, self._rng)
        except MemoryError as e:
            # under the trial's memory cap (a full device) a batch that does not fit is
            # out of memory, not a broken factory
            raise OutOfMemoryError(f"out of memory in make_batch({batch_size}): "
                                   f"{e or 'allocation failed'}") from None
        except Exception as e:
            raise ModelFactoryError(f"{self.factory_label}: make_batch raised "
                                    f"{type(e).__name__}: {e}") from None
        self.single_input = not isinstance(inputs, (tuple, list))
        reason = check_batch(inputs, targets, batch_size)
        if reason is not None:
            raise ModelFactoryError(f"{self.factory_label}: make_batch({batch_size}): {reason}")
        return as_input_tuple(inputs), targets

    def _device_batch(self, batch: tuple[tuple[np.ndarray, ...], Any]) -> tuple[Any, Any]:
        xs, y = batch
        return (tuple(self.to_device(np.ascontiguousarray(x)) for x in xs),
                None if y is None else self.to_device(np.ascontiguousarray(y)))

    def _new_epoch(self) -> None:
        """Generate the epoch's batches (untimed: called from :meth:`between_steps`)."""
        assert self.config is not None
        bs = self.config.batch_size
        first = self._make_batch(bs)
        per_batch = max(1, batch_nbytes(*first))
        n = max(1, min(self.steps_per_epoch, POOL_BYTES // per_batch))
        batches = [first, *(self._make_batch(bs) for _ in range(n - 1))]
        self._pool = [self._device_batch(b) for b in batches]
        self._cursor = 0
        self._epoch_steps_done = 0
        self._epoch += 1

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch of the spec's ``samples_per_epoch`` (a replica's
        batch is its share of the global batch: the replicas' steps make one epoch)."""
        assert self.config is not None and self.spec is not None
        global_batch = self.config.batch_size * self.config.data_parallel
        return max(1, -(-self.spec.samples_per_epoch // global_batch))

    def between_steps(self) -> None:
        assert self.config is not None
        if self.config.mode == "train" and self._epoch_steps_done >= self.steps_per_epoch:
            self._new_epoch()

    # -- stepping --------------------------------------------------------------------------

    def step(self) -> int:
        assert self.config is not None
        xs, y = self._pool[self._cursor % len(self._pool)]
        self._cursor += 1
        if self._steps_run == 0:
            with self._first_step_guard(xs):
                return self._step(xs, y, first=True)
        return self._step(xs, y, first=False)

    def _step(self, xs: tuple[Any, ...], y: Any, *, first: bool) -> int:
        assert self.config is not None
        self._steps_run += 1
        with map_exceptions(self.classify_error, "in a step"):
            if self.config.mode == "train":
                assert self._train_step is not None
                raw = self._train_step(xs, y)
                if first:
                    self._check_loss_is_scalar(raw)
                loss = self.to_float(raw)
                self._epoch_steps_done += 1
                self.last_loss = loss
                if not math.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss became {loss} at epoch {self._epoch} (learning_rate="
                        f"{self.config.learning_rate}, optimizer={self.config.optimizer})")
            elif self.config.mode == "generate":
                self.last_generation = self._generate(xs[0])
            else:
                assert self._infer_step is not None
                self._infer_step(xs)
        return self.config.batch_size

    def evaluate(self) -> float | None:
        """The spec's quality of the model as it is now (``None`` without one)."""
        assert self.spec is not None
        if self.spec.quality is None:
            return None
        with map_exceptions(self.classify_error, "while measuring quality"), \
                self.quality_context():
            value = self.spec.quality(self.model)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ModelFactoryError(f"{self.factory_label}: quality returned "
                                    f"{type(value).__name__}, not a number") from None

    # -- pruning ---------------------------------------------------------------------------

    def _prune(self, ratio: float, structure: str, *, permanent: bool) -> None:
        if ratio <= 0:
            return
        assert self.spec is not None
        if structure == "structured":
            if self.spec.prune_structured is not None:
                self.model = self.place_model(self.spec.prune_structured(self.model, ratio))
            else:
                self.prune_structured_default(ratio)
            return
        weights = self.weight_arrays()
        if not weights:
            raise UnsupportedConfigError("unstructured pruning: the model has no weight "
                                         "matrix or conv kernel")
        self.apply_weight_masks(unstructured_masks(weights, ratio), permanent=permanent)

    # -- the base model of inference trials ------------------------------------------------

    def _base_model(self, config: TrialConfig, spec: ModelSpec) -> str:
        """Train with the fixed recipe (adam, lr 1e-3, batch 128, fp32, eager,
        ``budget.train_epochs`` epochs), so every inference trial of a study measures the
        same model. Cached per (workload, kwargs, factory file, framework version, seed):
        returns ``"cached"`` or ``"trained"``."""
        from autotune._cache import cache_dir, write_atomically

        key = hashlib.sha256(json.dumps(
            [config.workload, config.workload_kwargs, config.factory_hash,
             # the framework's version only: execution mode or build facts in versions()
             # must not give each trial its own base model
             self.versions().get(self.framework, ""), config.budget.train_epochs,
             config.seed, "recipe-v1"],
            sort_keys=True, default=str).encode()).hexdigest()[:20]
        path = cache_dir() / f"base-{self.framework}-{key}{self.weights_suffix}"
        if path.exists():
            self.load_weights(path)
            return "cached"
        self.optimizer = self.make_optimizer(RECIPE_OPTIMIZER, RECIPE_LR)
        train = self.build_train_step("fp32", self.recipe_execution)
        steps = config.budget.train_epochs * max(1, -(-spec.samples_per_epoch // RECIPE_BATCH))
        for _ in range(steps):
            xs, y = self._device_batch(self._make_batch(RECIPE_BATCH))
            train(xs, y)
        self.optimizer = None
        write_atomically(path, lambda tmp: self.save_weights(Path(tmp)))
        return "trained"

    #: file suffix of :meth:`save_weights` files (some savers insist on one)
    weights_suffix = ".bin"
    #: execution mode the base recipe trains in: untimed setup, so a backend whose eager
    #: mode is slow (TensorFlow: 4-5x) may train it as a graph; same recipe, same model
    recipe_execution = "eager"

    def teardown(self) -> None:
        self.model = self.optimizer = self.spec = None
        self._train_step = self._infer_step = None
        self._pool = []
        self.last_loss = math.nan
        self.last_generation = None
        self._lm_step = self._lm_full = self._static_cache = None
        self.example_inputs = ()
        self._example = ((), None)
        self._cursor = self._epoch = self._epoch_steps_done = self._steps_run = 0
