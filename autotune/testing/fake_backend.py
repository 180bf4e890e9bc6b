"""A small, honest numpy backend: the fake against which the conformance suite is itself
tested, and a template for third-party backends.

It really computes (a dense ReLU MLP, softmax cross-entropy, SGD/Adam/AdamW written out in
numpy), so its accuracy and step times are real, only slow. It supports fp32 and fp16
compute, train and infer, unstructured and structured pruning, and raises
``OutOfMemoryError`` when numpy cannot allocate.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends._base import Backend
from autotune.backends._pruning import (
    apply_structured,
    dense_flops,
    unstructured_masks,
)
from autotune.exceptions import NonFiniteLossError, OutOfMemoryError, UnsupportedConfigError

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads import Dataset, Workload

_DTYPES = {"fp32": np.float32, "fp16": np.float16}


class NumpyBackend(Backend):
    """Dense MLP in numpy on the CPU."""

    name = "numpy"

    def __init__(self) -> None:
        self.config: TrialConfig | None = None
        self.w: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.masks: list[np.ndarray] | None = None
        self._opt_state: list[dict[str, np.ndarray]] = []
        self._t = 0
        self._cursor = 0
        self._data: Dataset | None = None
        self._order = np.arange(0)
        self._batches: list[np.ndarray] = []
        self.dtype: Any = np.float32

    # -- model ---------------------------------------------------------------------------

    def _init(self, widths: tuple[int, ...], seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.w, self.b = [], []
        for a, b in itertools.pairwise(widths):
            bound = 1 / math.sqrt(a)  # torch.nn.Linear's default init range
            self.w.append(rng.uniform(-bound, bound, (b, a)).astype(np.float32))
            self.b.append(rng.uniform(-bound, bound, b).astype(np.float32))

    def _forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        acts = [x]
        h = x
        for i, (w, b) in enumerate(zip(self.w, self.b, strict=True)):
            h = h @ w.T.astype(self.dtype) + b.astype(self.dtype)
            if i < len(self.w) - 1:
                h = np.maximum(h, 0)
            acts.append(h)
        return h, acts

    def setup(self, config: TrialConfig, workload: Workload, data: Dataset) -> dict[str, Any]:
        if config.device != "cpu":
            raise UnsupportedConfigError("the numpy backend runs on cpu only")
        if config.precision not in _DTYPES:
            raise UnsupportedConfigError(f"numpy backend: precision {config.precision!r}")
        self.config = config
        self._data = data
        try:
            self._init(workload.layer_widths, config.seed)
            if config.mode == "infer":
                self._fit_base(config)
            if config.pruning_ratio > 0:
                if config.pruning_structure == "structured":
                    self.w, self.b = apply_structured(self.w, self.b, config.pruning_ratio)
                else:
                    self.masks = unstructured_masks(self.w, config.pruning_ratio)
                    self.w = [w * m for w, m in zip(self.w, self.masks, strict=True)]
            self.dtype = _DTYPES[config.precision]
            self._opt_state = [{} for _ in self.w]
            self._reshuffle()
            bs = config.batch_size
            pool = np.resize(data.x_test, (bs * 4, data.x_test.shape[1]))
            self._batches = [pool[i * bs:(i + 1) * bs].astype(self.dtype) for i in range(4)]
        except MemoryError as e:
            raise OutOfMemoryError(f"numpy could not allocate: {e}") from e
        widths = (self.w[0].shape[1], *(w.shape[0] for w in self.w))
        return {"param_count": sum(w.size + b.size for w, b in zip(self.w, self.b, strict=True)),
                "flops_per_sample": dense_flops(widths, config.mode), "widths": list(widths),
                "sparsity": self._sparsity(), "execution": config.execution,
                "runtime": "numpy"}

    def _fit_base(self, config: TrialConfig) -> None:
        assert self._data is not None
        saved = self.config
        for _ in range(config.budget.train_epochs):
            order = np.random.default_rng(config.seed).permutation(len(self._data.x_train))
            for start in range(0, len(order), 128):
                idx = order[start:start + 128]
                self._sgd_step(self._data.x_train[idx], self._data.y_train[idx], lr=0.05)
        self.config = saved

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
        assert self._data is not None and self.config is not None
        n = len(self._data.x_train)
        rng = np.random.default_rng(self.config.seed + self._t)
        reps = math.ceil(self.config.batch_size / n)
        self._order = np.tile(rng.permutation(n), reps)
        self._cursor = 0

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training split."""
        assert self._data is not None and self.config is not None
        return max(1, math.ceil(len(self._data.x_train) / self.config.batch_size))

    def between_steps(self) -> None:
        assert self.config is not None
        if self.config.mode == "train" and self._cursor >= self.steps_per_epoch:
            self._reshuffle()

    def step(self) -> int:
        assert self.config is not None and self._data is not None
        bs = self.config.batch_size
        try:
            if self.config.mode == "infer":
                self._forward(self._batches[self._cursor % 4])
                self._cursor += 1
                return bs
            if self._cursor >= self.steps_per_epoch:
                self._reshuffle()
            idx = np.resize(self._order[self._cursor * bs:(self._cursor + 1) * bs], bs)
            self._cursor += 1
            loss, gw, gb = self._grads(self._data.x_train[idx], self._data.y_train[idx])
        except MemoryError as e:
            raise OutOfMemoryError(f"numpy could not allocate: {e}") from e
        if not math.isfinite(loss):
            raise NonFiniteLossError(f"loss became {loss}")
        self._update(gw, gb)
        return bs

    def synchronize(self) -> None:
        """numpy is synchronous: results exist when the call returns."""

    def evaluate(self) -> float:
        assert self._data is not None
        logits, _ = self._forward(self._data.x_test.astype(self.dtype))
        return float((logits.argmax(axis=1) == self._data.y_test).mean())

    def compute_dtype(self) -> str:
        return str(np.dtype(self.dtype))

    def dense_weights(self) -> list[Any]:
        return [w.copy() for w in self.w]

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "runtime": "numpy"}

    def teardown(self) -> None:
        self.w, self.b, self._batches, self._opt_state = [], [], [], []
        self.masks = None
        self._data = None
