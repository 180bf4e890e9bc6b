"""A small, honest numpy backend: the fake against which the conformance suite is itself
tested, and a template for third-party backends.

It really computes (a dense ReLU MLP, softmax cross-entropy, SGD/Adam/AdamW written out in
numpy), so its accuracy and step times are real, only slow. It supports fp32 and fp16
compute, train and infer, unstructured and structured pruning, and raises
``OutOfMemoryError`` when numpy cannot allocate. Its framework name is ``numpy``: a
workload factory called with ``framework="numpy"`` returns a :class:`NumpyMLP` (see
:func:`autotune.testing.workloads.tiny`). It implements :class:`~autotune.backends.Backend`
directly, the way a third-party backend that does not share the framework base would.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends._base import Backend
from autotune.backends._pruning import apply_structured, unstructured_masks
from autotune.backends._spec import BackendSpec
from autotune.exceptions import (
    ModelFactoryError,
    NonFiniteLossError,
    OutOfMemoryError,
    UnsupportedConfigError,
)

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads import ModelSpec

_DTYPES = {"fp32": np.float32, "fp16": np.float16}


class NumpyMLP:
    """The numpy framework's "model": dense layers as ``(out, in)`` weights and biases,
    initialised as ``torch.nn.Linear`` is."""

    def __init__(self, widths: tuple[int, ...], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.dtype: Any = np.float32
        for a, b in itertools.pairwise(widths):
            bound = 1 / math.sqrt(a)  # torch.nn.Linear's default init range
            self.w.append(rng.uniform(-bound, bound, (b, a)).astype(np.float32))
            self.b.append(rng.uniform(-bound, bound, b).astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits of ``x``."""
        h = x.astype(self.dtype)
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            h = h @ w.T.astype(self.dtype) + b.astype(self.dtype)
            if i < len(self.w) - 1:
                h = np.maximum(h, 0)
        return h


class NumpyBackend(Backend):
    """Dense MLP in numpy on the CPU."""

    name = "numpy"

    framework = "numpy"
    backend_spec = BackendSpec(
        name="numpy", target="autotune.testing.fake_backend:NumpyBackend",
        distribution="numpy", extra="numpy", device_kinds=("cpu",),
        precisions=frozenset({"fp32", "fp16"}),
        unsupported_kinds={"cuda": "the numpy backend runs on cpu only"})

    def __init__(self) -> None:
        self.config: TrialConfig | None = None
        self.spec: ModelSpec | None = None
        self.model: Any = None
        self._rng = np.random.default_rng(0)
        self._epoch: list[tuple[np.ndarray, np.ndarray]] = []
        self.w: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.masks: list[np.ndarray] | None = None
        self._opt_state: list[dict[str, np.ndarray]] = []
        self._t = 0
        self._cursor = 0
        self._batches: list[np.ndarray] = []
        self.dtype: Any = np.float32

    # -- model ---------------------------------------------------------------------------

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        acts = [x]
        h = x
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            h = h @ w.T.astype(self.dtype) + b.astype(self.dtype)
            if i < len(self.w) - 1:
                h = np.maximum(h, 0)
            acts.append(h)
        return h, acts

    def setup(self, config: TrialConfig, spec: ModelSpec) -> dict[str, Any]:
        if config.device != "cpu":
            raise UnsupportedConfigError("the numpy backend runs on cpu only")
        if config.precision not in _DTYPES:
            raise UnsupportedConfigError(f"numpy backend: precision {config.precision!r}")
        if not isinstance(spec.model, NumpyMLP):
            raise ModelFactoryError(f"{self.factory_label}: the numpy backend needs a "
                                    f"NumpyMLP, got {type(spec.model).__name__}")
        self.config, self.spec = config, spec
        self.model = spec.model
        self._rng = np.random.default_rng(config.seed)
        try:
            self.w, self.b = self.model.w, self.model.b
            if config.mode == "infer":
                self._fit_base(config)
            if config.pruning_ratio > 0:
                if config.pruning_structure == "structured":
                    self.w, self.b = apply_structured(self.w, self.b, config.pruning_ratio)
                else:
                    self.masks = unstructured_masks(self.w, config.pruning_ratio)
                    self.w = [w * m for w, m in zip(self.w, self.masks, strict=True)]
                self.model.w, self.model.b = self.w, self.b
            self.dtype = self.model.dtype = _DTYPES[config.precision]
            self._opt_state = [{} for _ in self.w]
            self._reshuffle()
            self._batches = [spec.make_batch(config.batch_size, self._rng)[0].astype(self.dtype)
                             for _ in range(4)]
        except MemoryError as e:
            raise OutOfMemoryError(f"numpy could not allocate: {e}") from e
        widths = (self.w[0].shape[1], *(w.shape[0] for w in self.w))
        forward = 2 * sum(a * b for a, b in itertools.pairwise(widths))
        return {"param_count": sum(w.size + b.size for w, b in zip(self.w, self.b, strict=True)),
                "flops_per_sample": forward * (3 if config.mode == "train" else 1),
                "flops_method": "2 per multiply-add of the dense layers, x3 in training",
                "widths": list(widths), "sparsity": self._sparsity(),
                "execution": config.execution, "runtime": "numpy",
                "quality_name": spec.quality_name, "has_quality": spec.quality is not None}

    def _fit_base(self, config: TrialConfig) -> None:
        assert self.spec is not None
        steps = config.budget.train_epochs * max(1, -(-self.spec.samples_per_epoch // 128))
        for _ in range(steps):
            x, y = self.spec.make_batch(128, self._rng)
            self._sgd_step(x, y, lr=0.05)

    def _sparsity(self) -> float:
        return float(sum(int((w == 0).sum()) for w in self.w) / sum(w.size for w in self.w))

    # -- training ------------------------------------------------------------------------

    def _grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray],
                                                             list[np.ndarray]]:
        logits, acts = self._forward(x.astype(self.dtype))
        logits = logits.astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        loss = float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean())
        g = p
        g[np.arange(len(y)), y] -= 1
        g /= len(y)
        gw: list[np.ndarray] = [np.empty(0)] * len(self.w)
        gb: list[np.ndarray] = [np.empty(0)] * len(self.w)
        for i in reversed(range(len(self.w))):
            a = acts[i].astype(np.float32)
            gw[i] = g.T @ a
            gb[i] = g.sum(axis=0)
            if i > 0:
                g = (g @ self.w[i]) * (acts[i] > 0)
        return loss, gw, gb

    def _sgd_step(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        loss, gw, gb = self._grads(x, y)
        for i in range(len(self.w)):
            self.w[i] -= lr * gw[i]
            self.b[i] -= lr * gb[i]
        return loss

    def _update(self, gw: list[np.ndarray], gb: list[np.ndarray]) -> None:
        assert self.config is not None
        lr, name = self.config.learning_rate, self.config.optimizer
        self._t += 1
        for i, (dw, db) in enumerate(zip(gw, gb, strict=True)):
            state = self._opt_state[i]
            for key, param, grad in (("w", self.w[i], dw), ("b", self.b[i], db)):
                if name == "sgd":
                    v = state.setdefault(key, np.zeros_like(param))
                    v *= 0.9
                    v += grad
                    param -= lr * v
                    continue
                m = state.setdefault(key + "m", np.zeros_like(param))
                v = state.setdefault(key + "v", np.zeros_like(param))
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                step = lr * (m / (1 - 0.9 ** self._t)) / (np.sqrt(v / (1 - 0.999 ** self._t))
                                                           + 1e-8)
                if name == "adamw":
                    param -= lr * 0.01 * param
                param -= step
            if self.masks is not None:
                self.w[i] *= self.masks[i]

    def _reshuffle(self) -> None:
        """The epoch's batches from the spec's make_batch (untimed)."""
        assert self.spec is not None and self.config is not None
        self._epoch = [self.spec.make_batch(self.config.batch_size, self._rng)
                       for _ in range(self.steps_per_epoch)]
        self._cursor = 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch of the spec's samples."""
        assert self.spec is not None and self.config is not None
        return max(1, math.ceil(self.spec.samples_per_epoch / self.config.batch_size))

    def between_steps(self) -> None:
        assert self.config is not None
        if self.config.mode == "train" and self._cursor >= self.steps_per_epoch:
            self._reshuffle()

    def step(self) -> int:
        assert self.config is not None
        bs = self.config.batch_size
        try:
            if self.config.mode == "infer":
                self._forward(self._batches[self._cursor % 4])
                self._cursor += 1
                return bs
            if self._cursor >= self.steps_per_epoch:
                self._reshuffle()
            x, y = self._epoch[self._cursor]
            self._cursor += 1
            loss, gw, gb = self._grads(x, y)
        except MemoryError as e:
            raise OutOfMemoryError(f"numpy could not allocate: {e}") from e
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss}")
        self._update(gw, gb)
        self.model.w, self.model.b = self.w, self.b
        return bs

    def synchronize(self) -> None:
        """numpy is synchronous: results exist when the call returns."""

    def evaluate(self) -> float | None:
        assert self.spec is not None
        return None if self.spec.quality is None else float(self.spec.quality(self.model))

    def compute_dtype(self) -> str:
        return str(np.dtype(self.dtype))

    def weight_arrays(self) -> list[Any]:
        return [w.copy() for w in self.w]

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "runtime": "numpy"}

    def teardown(self) -> None:
        self.w, self.b, self._batches, self._opt_state = [], [], [], []
        self.masks = None
        self._epoch = []
        self.model = self.spec = None
