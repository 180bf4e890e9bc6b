"""FLOP counts kept across workers (:mod:`autotune.backends._flop_cache`): only for models
whose every module class is torch's, transformers' or autotune's, keyed by what the count
depends on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from autotune.backends import _flop_cache  # noqa: E402
from autotune.backends._torch import TorchBackend  # noqa: E402


class Doubler(torch.nn.Module):  # type: ignore[misc]
    """A module of a user's own: its forward may call code in any file."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(16, 16)

    def forward(self, x: Any) -> Any:
        return self.linear(x) * 2


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    return tmp_path


def _backend(model: Any) -> TorchBackend:
    backend = TorchBackend()
    backend.model = model
    return backend


def _counting_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.utils.flop_counter as flop_counter

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("counted again")

    monkeypatch.setattr(flop_counter, "FlopCounterMode", refuse)


def test_a_model_of_torch_modules_is_counted_once(monkeypatch: pytest.MonkeyPatch,
                                                   own_cache: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, 4))
    x = (torch.randn(4, 16),)
    flops, method = _backend(model).count_flops(x, None, "infer")
    assert flops == 2 * 4 * (16 * 32 + 32 * 4)  # 2 FLOPs per multiply-add, 4 samples
    assert len(list(own_cache.glob("flops-*.json"))) == 1
    _counting_forbidden(monkeypatch)
    assert _backend(model).count_flops(x, None, "infer") == (flops, method)


def test_a_model_with_a_class_of_its_own_is_counted_every_time(
        monkeypatch: pytest.MonkeyPatch, own_cache: Path) -> None:
    x = (torch.randn(4, 16),)
    flops, _ = _backend(Doubler()).count_flops(x, None, "infer")
    assert flops == 2 * 4 * 16 * 16
    assert _flop_cache.flop_key(Doubler(), x, "infer") is None
    assert not list(own_cache.glob("flops-*.json"))
    _counting_forbidden(monkeypatch)
    with pytest.raises(AssertionError, match="counted again"):
        _backend(Doubler()).count_flops(x, None, "infer")


def test_the_key_follows_what_the_count_depends_on() -> None:
    def mlp(width: int) -> Any:
        return torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.Linear(width, 4))

    x = (torch.randn(4, 16),)
    key = _flop_cache.flop_key(mlp(32), x, "infer")
    assert key is not None and key == _flop_cache.flop_key(mlp(32), x, "infer")
    others = {_flop_cache.flop_key(mlp(32), x, "train"),  # backward counted too
              _flop_cache.flop_key(mlp(24), x, "infer"),  # a structured prune's shapes
              _flop_cache.flop_key(mlp(32), (torch.randn(8, 16),), "infer"),
              _flop_cache.flop_key(torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                                       torch.nn.Linear(32, 4)), x, "infer"),
              # same classes and shapes, but activation checkpointing recomputes the forward
              _flop_cache.flop_key(mlp(32), x, "infer", {"checkpointing": "on"})}
    assert key not in others and len(others) == 5
    assert key == _flop_cache.flop_key(mlp(32), x, "infer", {})
