"""The built-in models in PyTorch (see :mod:`autotune.workloads._builtin` for the
architectures, defined once for every framework)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from autotune.backends._pruning import apply_structured, channel_keep
from autotune.workloads._builtin import CNNArch, MLPArch


def build_mlp(widths: Sequence[int], seed: int) -> nn.Module:
    """``nn.Sequential`` of Linear layers with ReLU between them."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualBlock(nn.Module):
    """3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, plus the identity, then ReLU."""

    def __init__(self, channels: int, inner: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, inner, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class SmallResNet(nn.Module):
    """The built-in ``cnn``: stem conv, residual blocks, global average pool, classifier."""

    def __init__(self, arch: CNNArch) -> None:
        super().__init__()
        self.stem = nn.Conv2d(arch.in_channels, arch.channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(arch.channels)
        self.blocks = nn.Sequential(*(ResidualBlock(arch.channels, inner)
                                      for inner in arch.inner_widths()))
        self.head = nn.Linear(arch.channels, arch.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        out: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return out


def build_cnn(arch: CNNArch, seed: int) -> nn.Module:
    """The small ResNet of ``arch``."""
    torch.manual_seed(seed)
    return SmallResNet(arch)


def _input_spec(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32  # e.g. dynamically quantised int8 layers


def predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits of ``x`` (numpy), fed in the model's own dtype and on its device."""
    device, dtype = _input_spec(model)
    with torch.inference_mode():
        out = model(torch.from_numpy(x).to(device=device, dtype=dtype))
    return np.asarray(out.float().cpu().numpy())


def prune_structured(model: nn.Module, arch: MLPArch | CNNArch, ratio: float) -> nn.Module:
    """Rebuild ``model`` smaller with the neurons/channels the shared rules keep."""
    device = next(model.parameters()).device
    with torch.no_grad():
        if isinstance(arch, MLPArch):
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            weights = [m.weight.detach().cpu().numpy() for m in linears]
            biases = [m.bias.detach().cpu().numpy() for m in linears]
            new_w, new_b = apply_structured(weights, biases, ratio)
            widths = (new_w[0].shape[1], *(w.shape[0] for w in new_w))
            smaller = build_mlp(widths, 0)
            for m, w, b in zip((m for m in smaller.modules() if isinstance(m, nn.Linear)),
                               new_w, new_b, strict=True):
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(b))
            return smaller.to(device).train(model.training)
        assert isinstance(model, SmallResNet)
        blocks: list[Any] = list(model.blocks)
        keeps = [channel_keep(block.conv1.weight.detach().cpu().numpy(), ratio)
                 for block in blocks]
        new_arch = dataclasses.replace(arch, inner=tuple(len(k) for k in keeps))
        smaller_cnn = SmallResNet(new_arch)
        smaller_cnn.stem.load_state_dict(model.stem.state_dict())
        smaller_cnn.bn.load_state_dict(model.bn.state_dict())
        smaller_cnn.head.load_state_dict(model.head.state_dict())
        new_blocks: list[Any] = list(smaller_cnn.blocks)
        for old, new, keep in zip(blocks, new_blocks, keeps, strict=True):
            idx = torch.from_numpy(keep).to(device)
            new.conv1.weight.copy_(old.conv1.weight[idx])
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new.bn1, name).copy_(getattr(old.bn1, name)[idx])
            new.conv2.weight.copy_(old.conv2.weight[:, idx])
            new.bn2.load_state_dict(old.bn2.state_dict())
        return smaller_cnn.to(device).train(model.training)


__all__ = ["ResidualBlock", "SmallResNet", "build_cnn", "build_mlp", "predict",
           "prune_structured"]
