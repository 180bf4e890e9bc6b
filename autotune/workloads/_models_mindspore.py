"""The built-in models in MindSpore (see :mod:`autotune.workloads._builtin` for the
architectures, defined once for every framework).

Layers are initialised as torch initialises them (uniform in +-1/sqrt(fan_in) for dense and
conv weights and dense biases, batch norm gamma 1, beta 0, moving mean 0, variance 1, torch's
momentum 0.1 = MindSpore's 0.9), from a numpy generator seeded with ``seed``: the same
distributions, so training behaves like the torch model (the values differ: torch's
generator is not numpy's). MindSpore's Dense and Conv2d keep torch's weight layouts
(``(out, in)`` and ``(out, in, kh, kw)``), so the shared pruning rules apply unchanged.

Imported only inside a MindSpore worker (it imports MindSpore at top). The classes live at
module level in a real file: graph mode compiles ``construct`` from its source.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import mindspore as ms
import numpy as np
from mindspore import nn, ops

from autotune.backends._pruning import apply_structured, channel_keep
from autotune.workloads._builtin import CNNArch, MLPArch

#: torch.nn.BatchNorm2d's defaults in MindSpore's terms (moving = m * moving + (1 - m) * x)
_BN_MOMENTUM, _BN_EPS = 0.9, 1e-5


def _uniform(rng: np.random.Generator, fan_in: int, shape: tuple[int, ...]) -> Any:
    """torch's default init (kaiming_uniform with a=sqrt(5): bound 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return ms.Tensor(rng.uniform(-bound, bound, shape).astype(np.float32))


def _dense(rng: np.random.Generator, fan_in: int, fan_out: int) -> Any:
    return nn.Dense(fan_in, fan_out, weight_init=_uniform(rng, fan_in, (fan_out, fan_in)),
                    bias_init=_uniform(rng, fan_in, (fan_out,)))


def _conv3x3(rng: np.random.Generator, c_in: int, c_out: int) -> Any:
    return nn.Conv2d(c_in, c_out, 3, stride=1, pad_mode="same", has_bias=False,
                     weight_init=_uniform(rng, c_in * 9, (c_out, c_in, 3, 3)))


def _bn(channels: int) -> Any:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


def build_mlp(widths: Sequence[int], seed: int) -> Any:
    """``nn.SequentialCell`` of Dense layers with ReLU between them."""
    rng = np.random.default_rng(seed)
    cells: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        cells.append(_dense(rng, a, b))
        if i < len(widths) - 2:
            cells.append(nn.ReLU())
    return nn.SequentialCell(cells)


class ResidualBlock(nn.Cell):  # type: ignore[misc]
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the identity, then ReLU."""

    def __init__(self, channels: int, inner: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.conv1 = _conv3x3(rng, channels, inner)
        self.bn1 = _bn(inner)
        self.conv2 = _conv3x3(rng, inner, channels)
        self.bn2 = _bn(channels)
        self.relu = nn.ReLU()

    def construct(self, x: Any) -> Any:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


class SmallResNet(nn.Cell):  # type: ignore[misc]
    """The built-in ``cnn`` (NCHW): stem conv, residual blocks, global average pool,
    classifier."""

    def __init__(self, arch: CNNArch, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.stem = _conv3x3(rng, arch.in_channels, arch.channels)
        self.bn = _bn(arch.channels)
        self.relu = nn.ReLU()
        self.blocks = nn.CellList([ResidualBlock(arch.channels, inner, rng)
                                   for inner in arch.inner_widths()])
        self.head = _dense(rng, arch.channels, arch.classes)
        self.mean = ops.ReduceMean(keep_dims=False)

    def construct(self, x: Any) -> Any:
        x = self.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(self.mean(x, (2, 3)))


def build_cnn(arch: CNNArch, seed: int) -> Any:
    """The small ResNet of ``arch``."""
    return SmallResNet(arch, seed)


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits of ``x`` (numpy, float32) from the model as it is now: fp32, or converted to
    fp16/bf16 by mixed precision (its cells cast their inputs themselves)."""
    out = model(ms.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
    return np.asarray(out.astype(ms.float32).asnumpy())


def _set(param: Any, array: np.ndarray) -> None:
    param.set_data(ms.Tensor(np.ascontiguousarray(array), dtype=param.dtype))


def _copy_bn(src: Any, dst: Any, keep: np.ndarray | None = None) -> None:
    """Gamma, beta and the moving statistics of ``src`` (channels ``keep``) into ``dst``."""
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        value = getattr(src, name).asnumpy()
        _set(getattr(dst, name), value if keep is None else value[keep])


def prune_structured(model: Any, arch: MLPArch | CNNArch, ratio: float) -> Any:
    """Rebuild ``model`` smaller with the neurons/channels the shared rules keep."""
    if isinstance(arch, MLPArch):
        dense = [c for _, c in model.cells_and_names() if isinstance(c, nn.Dense)]
        weights = [d.weight.asnumpy().astype(np.float32) for d in dense]
        biases = [d.bias.asnumpy().astype(np.float32) for d in dense]
        new_w, new_b = apply_structured(weights, biases, ratio)
        smaller = build_mlp((new_w[0].shape[1], *(w.shape[0] for w in new_w)), 0)
        new_dense = [c for _, c in smaller.cells_and_names() if isinstance(c, nn.Dense)]
        for d, w, b in zip(new_dense, new_w, new_b, strict=True):
            _set(d.weight, w)
            _set(d.bias, b)
        smaller.set_train(model.training)
        return smaller
    if not isinstance(model, SmallResNet):
        raise TypeError(f"expected the built-in SmallResNet, got {type(model).__name__}")
    keeps = [channel_keep(block.conv1.weight.asnumpy().astype(np.float32), ratio)
             for block in model.blocks]
    new_arch = dataclasses.replace(arch, inner=tuple(len(k) for k in keeps))
    new = SmallResNet(new_arch, 0)
    _set(new.stem.weight, model.stem.weight.asnumpy())
    _copy_bn(model.bn, new.bn)
    _set(new.head.weight, model.head.weight.asnumpy())
    _set(new.head.bias, model.head.bias.asnumpy())
    for old_block, new_block, keep in zip(model.blocks, new.blocks, keeps, strict=True):
        _set(new_block.conv1.weight, old_block.conv1.weight.asnumpy()[keep])
        _copy_bn(old_block.bn1, new_block.bn1, keep)
        _set(new_block.conv2.weight, old_block.conv2.weight.asnumpy()[:, keep])
        _copy_bn(old_block.bn2, new_block.bn2)
    new.set_train(model.training)
    return new


__all__ = ["ResidualBlock", "SmallResNet", "build_cnn", "build_mlp", "predict",
           "prune_structured"]
