"""The built-in workloads. Data is generated or ships in a package: nothing is downloaded."""

from __future__ import annotations

import numpy as np

from autotune.workloads._base import Dataset, Workload

_WIDE = (1000, 1000, 1000)


def _teacher_data(n_train: int = 8192, n_test: int = 2048, dim: int = 64,
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


def _digits_data(seed: int = 0) -> Dataset:
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


def mlp() -> Workload:
    """The classic dense model: 64 -> 1000 -> 1000 -> 1000 -> 10 on generated teacher data."""
    return Workload("mlp", 64, _WIDE, 10, _teacher_data,
                    "3x1000 ReLU MLP on 8192 generated samples labelled by a teacher network")


def digits_mlp() -> Workload:
    """The same 3x1000 MLP on scikit-learn's bundled handwritten digits (real data)."""
    return Workload("digits_mlp", 64, _WIDE, 10, _digits_data,
                    "3x1000 ReLU MLP on scikit-learn's 8x8 digits, 25 % held out")
