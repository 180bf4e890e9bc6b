"""Pruning definitions shared by every backend, on numpy arrays, so they mean the same thing
whatever the framework.

Weights are given as ``(out_features, in_features)`` arrays, one per dense layer, input
layer first (PyTorch's layout; TensorFlow and MindSpore backends transpose as needed).

* **unstructured** (global magnitude pruning): zero the ``ratio`` fraction of all weights
  with the smallest absolute value, counted over every layer together (what
  ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)`` does). Dense CPU kernels
  do not get faster from zeros: the tuner measures that instead of assuming a speed-up.
* **structured**: in every *hidden* layer keep the ``round((1 - ratio) * width)`` neurons
  (at least 1) whose incoming weight rows have the largest L1 norm, drop the others and the
  matching input columns of the next layer. The model is rebuilt smaller, so it really does
  less work; parameter count and FLOPs are counted again on the rebuilt model.
* **channels** (:func:`channel_keep`): the conv analogue, used by the built-in CNN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def unstructured_masks(weights: Sequence[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Boolean keep-masks (True = keep) zeroing the globally smallest ``ratio`` of weights."""
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    sizes = [w.size for w in weights]
    n_prune = round(ratio * sum(sizes))
    if n_prune == 0:
        return [np.ones(w.shape, dtype=bool) for w in weights]
    flat = np.concatenate([np.abs(w).ravel() for w in weights])
    # argpartition picks exactly n_prune entries even when magnitudes tie.
    pruned = np.zeros(flat.size, dtype=bool)
    pruned[np.argpartition(flat, n_prune - 1)[:n_prune]] = True
    masks, start = [], 0
    for w in weights:
        masks.append(~pruned[start:start + w.size].reshape(w.shape))
        start += w.size
    return masks


def structured_width(width: int, ratio: float) -> int:
    """Neurons a hidden layer of ``width`` keeps under structured pruning ``ratio``."""
    return max(1, round((1 - ratio) * width))


def structured_keep(weights: Sequence[np.ndarray], ratio: float) -> list[np.ndarray]:
    """Sorted indices of the neurons each hidden layer keeps (one array per hidden layer).

    ``weights[i]`` is layer i's ``(out, in)`` matrix; hidden layers are all but the last.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    keep = []
    for w in weights[:-1]:
        n = structured_width(w.shape[0], ratio)
        norms = np.abs(w).sum(axis=1)
        # stable sort: equal norms keep the lower index, identically on every backend
        keep.append(np.sort(np.argsort(-norms, kind="stable")[:n]))
    return keep


def apply_structured(weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                     ratio: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The smaller layers' weights and biases after structured pruning."""
    keep = structured_keep(weights, ratio)
    new_w, new_b = [], []
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        rows = keep[i] if i < len(keep) else np.arange(w.shape[0])
        cols = keep[i - 1] if i > 0 else np.arange(w.shape[1])
        new_w.append(np.ascontiguousarray(w[np.ix_(rows, cols)]))
        new_b.append(np.ascontiguousarray(b[rows]))
    return new_w, new_b


def channel_keep(kernel_oihw: np.ndarray, ratio: float) -> np.ndarray:
    """Sorted indices of the output channels a conv keeps under structured ``ratio``: the
    ``structured_width`` filters with the largest L1 norm (ties: lower index), the rule
    every framework's built-in CNN applies to the inner conv of each residual block.
    ``kernel_oihw`` is ``(out, in, kh, kw)`` (torch's layout; others transpose first)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    n = structured_width(kernel_oihw.shape[0], ratio)
    norms = np.abs(kernel_oihw).reshape(kernel_oihw.shape[0], -1).sum(axis=1)
    return np.sort(np.argsort(-norms, kind="stable")[:n])
