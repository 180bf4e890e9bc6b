"""The built-in workloads, written as factories through the same contract a user writes.

``build(framework, **kwargs) -> ModelSpec`` for ``mlp``, ``digits_mlp`` and ``cnn``. The
architectures are defined once here (widths, channels, blocks) and built identically by each
framework's module (``_models_torch``, ``_models_tensorflow``, ``_models_mindspore``): same
layers, same parameter count, same FLOPs. Data is generated or ships in a package (nothing
is downloaded). Structured pruning of a built-in rebuilds smaller layers with the neurons /
channels :mod:`autotune.backends._pruning` selects, identically on every framework.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.exceptions import ModelFactoryError
from autotune.workloads._base import Dataset
from autotune.workloads._spec import ModelSpec

_WIDE = (1000, 1000, 1000)
#: Held-out samples the accuracy is computed on per forward pass.
EVAL_CHUNK = 1024
#: Frameworks the built-in models are written for.
FRAMEWORKS = ("torch", "tensorflow", "mindspore")


@dataclass(frozen=True)
class MLPArch:
    """``widths[0] -> widths[1] -> ... -> widths[-1]`` dense layers, ReLU between."""

    widths: tuple[int, ...]


@dataclass(frozen=True)
class CNNArch:
    """A small ResNet: a 3x3 stem conv ``in_channels -> channels`` + BN + ReLU, ``blocks``
    residual blocks (3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, + identity, ReLU; the inner
    width ``inner`` may be pruned below ``channels``), global average pooling and a dense
    classifier. 'same' padding, stride 1, biases only in the classifier (convs are followed
    by batch norm). Inputs are NCHW on torch and MindSpore, NHWC on TensorFlow."""

    in_channels: int
    height: int
    width: int
    channels: int
    blocks: int
    classes: int
    inner: tuple[int, ...] = ()

    def inner_widths(self) -> tuple[int, ...]:
        """Each block's inner width (``channels`` unless pruned)."""
        return self.inner or (self.channels,) * self.blocks


def framework_module(framework: str, prefix: str = "_models",
                     what: str = "the built-in models are") -> Any:
    """``autotune.workloads.{prefix}_{framework}``: a built-in model written for one
    framework, imported only in that framework's worker."""
    if framework not in FRAMEWORKS:
        raise ModelFactoryError(
            f"{what} written for {', '.join(FRAMEWORKS)}, not {framework!r}")
    return importlib.import_module(f"autotune.workloads.{prefix}_{framework}")


def _models(framework: str) -> Any:
    return framework_module(framework)


def _epoch_sampler(x: np.ndarray, y: np.ndarray) -> Any:
    """``make_batch`` walking a fresh random permutation of the training split each epoch
    (the last batch of an epoch wraps into the next), as a data loader with shuffling."""
    state: dict[str, Any] = {"order": None, "pos": 0}

    def make_batch(batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        need = batch_size
        while need:
            if state["order"] is None or state["pos"] >= len(x):
                state["order"], state["pos"] = rng.permutation(len(x)), 0
            take = min(need, len(x) - state["pos"])
            parts.append(state["order"][state["pos"]:state["pos"] + take])
            state["pos"] += take
            need -= take
        idx = np.concatenate(parts)
        return x[idx], y[idx]

    return make_batch


def _classifier_spec(framework: str, arch: MLPArch | CNNArch, data: Dataset,
                     description: str, seed: int, passes_per_epoch: int = 1) -> ModelSpec:
    models = _models(framework)
    x_train, x_test = data.x_train, data.x_test
    if isinstance(arch, CNNArch):
        shape = (arch.in_channels, arch.height, arch.width)
        x_train = x_train.reshape(-1, *shape)
        x_test = x_test.reshape(-1, *shape)
        if framework == "tensorflow":  # Keras convolutions are channels-last
            x_train = np.ascontiguousarray(x_train.transpose(0, 2, 3, 1))
            x_test = np.ascontiguousarray(x_test.transpose(0, 2, 3, 1))
        model = models.build_cnn(arch, seed)
    else:
        model = models.build_mlp(arch.widths, seed)
    y_test = data.y_test

    def accuracy(model: Any) -> float:
        correct = 0
        for start in range(0, len(x_test), EVAL_CHUNK):
            logits = models.predict(model, x_test[start:start + EVAL_CHUNK])
            correct += int((np.argmax(logits, axis=1) == y_test[start:start + EVAL_CHUNK]).sum())
        return correct / len(x_test)

    def prune_structured(model: Any, ratio: float) -> Any:
        return models.prune_structured(model, arch, ratio)

    return ModelSpec(
        model=model, make_batch=_epoch_sampler(x_train, data.y_train),
        loss="cross_entropy", quality=accuracy, quality_name="accuracy",
        quality_direction="maximize", epoch_samples=passes_per_epoch * len(x_train),
        train_before_infer=True, prune_structured=prune_structured, description=description)


def _widths(input_dim: int, hidden: Sequence[int], classes: int) -> tuple[int, ...]:
    widths = (int(input_dim), *(int(w) for w in hidden), int(classes))
    if any(w < 1 for w in widths) or widths[-1] < 2:
        raise ValueError(f"widths must be positive with >= 2 classes, got {widths}")
    return widths


def mlp(framework: str, hidden: Sequence[int] = _WIDE, seed: int = 0) -> ModelSpec:
    """The classic dense model: 64 -> 1000 -> 1000 -> 1000 -> 10 on generated teacher data."""
    return _classifier_spec(framework, MLPArch(_widths(64, hidden, 10)), teacher_data(),
                            "ReLU MLP on 8192 generated samples labelled by a teacher network",
                            seed)


def digits_mlp(framework: str, hidden: Sequence[int] = _WIDE, seed: int = 0) -> ModelSpec:
    """The same 3x1000 MLP on scikit-learn's bundled handwritten digits (real data)."""
    return _classifier_spec(framework, MLPArch(_widths(64, hidden, 10)), digits_data(),
                            "ReLU MLP on scikit-learn's 8x8 digits, 25 % held out", seed)


def cnn(framework: str, channels: int = 16, blocks: int = 2, seed: int = 0) -> ModelSpec:
    """A small ResNet-style CNN on the 8x8 digits as 1-channel images."""
    if channels < 1 or blocks < 0:
        raise ValueError(f"channels must be >= 1 and blocks >= 0, got {channels}, {blocks}")
    arch = CNNArch(1, 8, 8, int(channels), int(blocks), 10)
    # One "epoch" of the cnn is 8 passes over the 1347 training images: the small CNN needs
    # about 8x the MLP's optimizer steps to learn the digits (0.97 held-out accuracy after
    # ~400 Adam steps at batch 128, measured), and train mode's budget is in epochs.
    return _classifier_spec(framework, arch, digits_data(),
                            f"ResNet-style CNN ({channels} channels, {blocks} residual blocks) "
                            "on scikit-learn's 8x8 digits", seed, passes_per_epoch=8)


def teacher_data(n_train: int = 8192, n_test: int = 2048, dim: int = 64,
                 classes: int = 10, seed: int = 1234) -> Dataset:
    """Gaussian inputs labelled by a fixed random two-layer teacher network.

    A student MLP can learn the labels, so accuracy rises with training and is a real
    quality signal, yet the data costs nothing to produce.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((dim, 32)) / np.sqrt(dim)
    w2 = rng.standard_normal((32, classes)) / np.sqrt(32)
    x = rng.standard_normal((n_train + n_test, dim)).astype(np.float32)
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1).astype(np.int64)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def digits_data(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images), 25 % held out, stratified,
    standardised with statistics of the training split only.

    The prepared split is cached: importing scikit-learn alone costs about 2 s a trial.
    """
    from autotune._cache import cache_dir, write_atomically

    # v2: standardised with a floored deviation (v1's held-out split held values of 1e6)
    path = cache_dir() / f"digits-split-v2-{seed}.npz"
    if path.exists():
        with np.load(path) as f:
            return Dataset(f["x_train"], f["y_train"], f["x_test"], f["y_test"])
    data = _prepare_digits(seed)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **vars(data))

    write_atomically(path, save)
    return data


def _prepare_digits(seed: int) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data.astype(np.float32), digits.target.astype(np.int64),
        test_size=0.25, random_state=seed, stratify=digits.target,
    )
    mean = x_train.mean(axis=0)
    # Pixels that are (almost) always blank in the training split have a deviation near 0;
    # dividing by it turned a rare ink pixel of the held-out split into values up to 1e6,
    # which wrecked int8 dynamic quantisation (one batch-wide activation scale: accuracy
    # 0.1). Such pixels keep their raw 0-16 scale instead.
    std = np.maximum(x_train.std(axis=0), 1.0)
    return Dataset(((x_train - mean) / std).astype(np.float32), y_train,
                   ((x_test - mean) / std).astype(np.float32), y_test)
