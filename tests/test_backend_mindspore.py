"""The MindSpore backend, driven in-process the way the worker drives it.

``set_threads`` once, then per trial ``configure`` -> ``load_model_spec`` -> ``setup`` ->
``step``/``synchronize``/``between_steps`` -> ``evaluate`` -> ``teardown``, on real MindSpore
on this CPU (``slow``: MindSpore is imported, graphs compile). The built-in models'
MindSpore builds are unit-tested here too. The device paths of hardware this machine lacks
(GPU, Ascend) run against a fake ``mindspore`` module at the vendor boundary, without
importing MindSpore (not slow).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from autotune.backends import capabilities
from autotune.backends._base import cpu_flags
from autotune.backends._mindspore import MindSporeBackend
from autotune.config import Budget, TrialConfig
from autotune.exceptions import (
    ModelFactoryError,
    NonFiniteLossError,
    OutOfMemoryError,
    UnsupportedConfigError,
)
from autotune.workloads import ModelSpec, WorkloadRef, load_model_spec
from tests.fakes import VendorLog, fake_mindspore

HAS_MINDSPORE = importlib.util.find_spec("mindspore") is not None


def real(test: Any) -> Any:
    """A test on real MindSpore: slow, and skipped where it is not installed."""
    skip = pytest.mark.skipif(not HAS_MINDSPORE, reason="mindspore is not installed")
    return pytest.mark.slow(skip(test))


#: Unpruned 64 -> 1000 -> 1000 -> 1000 -> 10, as torch counts it.
TORCH_MLP_PARAMS = 2077010
#: 2 FLOPs per multiply-add of the MLP's forward pass, per sample.
MLP_FORWARD_FLOPS = 2 * (64 * 1000 + 1000 * 1000 * 2 + 1000 * 10)
#: The built-in cnn (channels 16, blocks 2) as torch counts its trainable parameters.
CNN_PARAMS = 1 * 16 * 9 + 32 + 2 * (2 * (16 * 16 * 9) + 2 * 32) + 16 * 10 + 10


def _config(workload: str = "digits_mlp", mode: str = "train", **knobs: Any) -> TrialConfig:
    """A trial's config as the study driver resolves it (execution already resolved)."""
    values: dict[str, Any] = {
        "backend": "mindspore", "device": "cpu", "batch_size": 64, "precision": "fp32",
        "learning_rate": 1e-3, "optimizer": "adam", "pruning_ratio": 0.0, "threads": 1,
        "execution": "graph", "pruning_structure": "unstructured", "seed": 0,
        "budget": Budget(train_epochs=1), "workload_kwargs": {}, "factory_hash": None}
    values.update(knobs)
    return TrialConfig(workload=workload, mode=mode, **values)


@dataclasses.dataclass
class Trial:
    info: dict[str, Any]
    quality: float | None
    loss: float
    compute_dtype: str
    weights: list[np.ndarray]
    versions: dict[str, str]


@pytest.fixture(scope="module")
def backend() -> Iterator[MindSporeBackend]:
    """One backend per module, as a warm worker keeps one per process."""
    if not HAS_MINDSPORE:
        pytest.skip("mindspore is not installed")
    b = MindSporeBackend()
    b.set_threads(1)
    yield b


def _trial(backend: MindSporeBackend, config: TrialConfig, *, steps: int = 3,
           factory: str | None = None, edit: Any = None) -> Trial:
    """One trial as the worker runs it (``edit`` may shrink the spec's epoch for speed)."""
    ref = WorkloadRef(factory or config.workload, dict(config.workload_kwargs))
    backend.factory_label = ref.label()
    backend.configure(config)
    try:
        spec = load_model_spec(ref, backend.framework)
        if edit is not None:
            spec = edit(spec)
        info = backend.setup(config, spec)
        for _ in range(steps):
            backend.step()
            backend.synchronize()
            backend.between_steps()
        return Trial(info, backend.evaluate(), backend.last_loss, backend.compute_dtype(),
                     backend.weight_arrays(), backend.versions())
    finally:
        backend.teardown()


def _short_epoch(samples: int) -> Any:
    return lambda spec: dataclasses.replace(spec, epoch_samples=samples)


def _zeros(weights: list[np.ndarray]) -> float:
    return sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)


def _native(precision: str) -> str | None:
    """Why ``precision`` is not run on this CPU (None: capabilities list it)."""
    caps = capabilities("mindspore", "cpu")
    if precision in caps.precisions:
        return None
    return caps.reasons.get(precision, f"{precision} not listed; CPU flags: "
                            f"{sorted(cpu_flags() & {'avx512_fp16', 'amx_fp16'})}")


# -- built-in workloads: train -------------------------------------------------------------


@pytest.mark.parametrize(("execution", "mode_name"),
                         [("graph", "GRAPH_MODE"), ("eager", "PYNATIVE_MODE")])
@real
def test_digits_mlp_trains(backend: MindSporeBackend, execution: str, mode_name: str) -> None:
    config = _config(execution=execution)
    spec_epoch = 1347 // 64 + 1
    trial = _trial(backend, config, steps=spec_epoch)
    info = trial.info
    assert info["param_count"] == TORCH_MLP_PARAMS
    # MindSpore's graph counter: forward, dW of every layer, dX of all but the first
    assert info["flops_per_sample"] == (MLP_FORWARD_FLOPS + MLP_FORWARD_FLOPS
                                        + 2 * (1000 * 1000 * 2 + 1000 * 10))
    assert "flops_collection" in info["flops_method"]
    assert info["execution"] == execution and info["sparsity"] == 0.0
    assert info["runtime"] == "mindspore" and info["compute_dtype"] == "float32"
    assert info["weight_bytes"] == 4 * TORCH_MLP_PARAMS
    assert trial.versions["mindspore"].startswith("2.") and trial.versions["mode"] == mode_name
    # One epoch of real digits: well above chance (0.1).
    assert trial.quality is not None and trial.quality >= 0.8
    assert 0 < trial.loss < 2.3


@real
@pytest.mark.parametrize("execution", ["graph", "eager"])
def test_cnn_trains(backend: MindSporeBackend, execution: str) -> None:
    trial = _trial(backend, _config("cnn", execution=execution), steps=4)
    assert trial.info["param_count"] == CNN_PARAMS
    assert trial.info["flops_per_sample"] > 0
    assert np.isfinite(trial.loss)
    assert trial.quality is not None and 0.0 <= trial.quality <= 1.0


@real
def test_diverging_sgd_is_nan_loss(backend: MindSporeBackend) -> None:
    with pytest.raises(NonFiniteLossError, match="learning_rate=1000"):
        _trial(backend, _config(optimizer="sgd", learning_rate=1000.0), steps=25)


# -- built-in workloads: infer -------------------------------------------------------------


@real
@pytest.mark.parametrize("execution", ["graph", "eager"])
@pytest.mark.parametrize("workload", ["mlp", "digits_mlp", "cnn"])
def test_builtin_infers(backend: MindSporeBackend, workload: str, execution: str) -> None:
    config = _config(workload, "infer", execution=execution, batch_size=32)
    # the cnn's base model on 16 recipe steps instead of 85: enough to be above chance
    short = _short_epoch(2048) if workload == "cnn" else None
    trial = _trial(backend, config, edit=short)
    info = trial.info
    assert info["base_model"] in ("trained", "cached")
    assert info["param_count"] == (CNN_PARAMS if workload == "cnn" else TORCH_MLP_PARAMS)
    if workload != "cnn":
        assert info["flops_per_sample"] == MLP_FORWARD_FLOPS
    assert trial.quality is not None
    assert trial.quality > 0.2
    # the base model is cached: the next trial loads it, and measures the same model
    again = _trial(backend, config, steps=1, edit=short)
    assert again.info["base_model"] == "cached" and again.quality == trial.quality


# -- precision ------------------------------------------------------------------------------


@real
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_low_precision_where_native(backend: MindSporeBackend, precision: str,
                                    mode: str) -> None:
    reason = _native(precision)
    if reason is not None:
        pytest.skip(reason)
    trial = _trial(backend, _config("digits_mlp", mode, precision=precision), steps=3)
    assert trial.compute_dtype == {"fp16": "float16", "bf16": "bfloat16"}[precision]
    assert trial.quality is not None and trial.quality > 0.2


@real
def test_bf16_on_cpu_is_refused_before_the_model_is_built(backend: MindSporeBackend) -> None:
    assert "bf16" not in capabilities("mindspore", "cpu").precisions
    with pytest.raises(UnsupportedConfigError, match="bf16"):
        backend.configure(_config(precision="bf16"))
    backend.teardown()


@real
def test_int8_is_refused_with_the_reason(backend: MindSporeBackend) -> None:
    caps = capabilities("mindspore", "cpu")
    assert "int8" not in caps.precisions and "int8" in caps.reasons
    with pytest.raises(UnsupportedConfigError, match="int8"):
        backend.configure(_config(mode="infer", precision="int8"))
    backend.teardown()


_FP16_SCRIPT = textwrap.dedent("""
    import dataclasses, json, sys
    from autotune.backends._mindspore import MindSporeBackend
    from autotune.workloads import WorkloadRef, load_model_spec
    from tests.test_backend_mindspore import _config

    mode, execution = sys.argv[1], sys.argv[2]
    config = _config("digits_mlp", mode, precision="fp16", execution=execution,
                     pruning_ratio=0.5, workload_kwargs={"hidden": [64, 64]})
    backend = MindSporeBackend()
    backend.set_threads(1)
    backend.configure(config)
    spec = load_model_spec(WorkloadRef("digits_mlp", {"hidden": [64, 64]}), "mindspore")
    info = backend.setup(config, spec)
    for _ in range(30):
        backend.step()
        backend.synchronize()
        backend.between_steps()
    weights = backend.weight_arrays()
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    print(json.dumps({"info": info, "dtype": backend.compute_dtype(),
                      "quality": backend.evaluate(), "zeros": zeros,
                      "loss": backend.last_loss}))
""")


@real
@pytest.mark.parametrize(("mode", "execution"), [("train", "graph"), ("infer", "eager")])
def test_fp16_amp_path_runs(mode: str, execution: str) -> None:
    """The AMP path itself, on a small MLP, even where capabilities do not offer fp16 (not
    native here: emulated, slower, still correct). In a process of its own: a failed AMP
    call poisons a MindSpore process (research/frameworks_on_cpu.md)."""
    proc = subprocess.run([sys.executable, "-c", _FP16_SCRIPT, mode, execution],
                          capture_output=True, text=True, timeout=300, check=False,
                          cwd=str(Path(__file__).parents[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float16" and out["info"]["compute_dtype"] == "float16"
    # Masks hold through fp16 training; fp16 weights may flush a few more tiny ones to 0.
    assert out["zeros"] == pytest.approx(0.5, abs=0.01)
    assert out["info"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert out["quality"] >= 0.5
    if mode == "train":
        assert 0 < out["loss"] < 2.3  # finite and below chance level (ln 10)
    else:  # fp16 weights: half the bytes of the fp32 ones
        assert out["info"]["weight_bytes"] == 2 * (64 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10)


# -- pruning --------------------------------------------------------------------------------


@real
def test_unstructured_pruning_holds_through_training(backend: MindSporeBackend) -> None:
    trial = _trial(backend, _config(execution="eager", pruning_ratio=0.5, optimizer="adamw"),
                   steps=10)
    assert trial.info["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert trial.info["param_count"] == TORCH_MLP_PARAMS  # zeros are still parameters
    assert _zeros(trial.weights) == pytest.approx(0.5, abs=0.01)  # masks re-applied
    assert trial.quality is not None and trial.quality >= 0.5


@real
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_unstructured_pruning_covers_every_conv_kernel(backend: MindSporeBackend,
                                                       mode: str) -> None:
    trial = _trial(backend, _config("cnn", mode, pruning_ratio=0.3, execution="graph"),
                   steps=2, edit=_short_epoch(256))
    # stem + 2 convs per block + the classifier; BN vectors are not pruned
    assert [w.ndim for w in trial.weights] == [4, 4, 4, 4, 4, 2]
    assert trial.info["sparsity"] == pytest.approx(0.3, abs=0.005)
    assert _zeros(trial.weights) == pytest.approx(0.3, abs=0.005)


@real
def test_structured_pruning_of_the_cnn(backend: MindSporeBackend) -> None:
    train = _trial(backend, _config("cnn", pruning_ratio=0.5,
                                    pruning_structure="structured"), steps=2)
    inner = 8  # each block keeps 8 of its 16 inner channels
    smaller = 16 * 9 + 32 + 2 * (2 * (16 * inner * 9) + 2 * inner + 2 * 16) + 170
    assert train.info["param_count"] == smaller < CNN_PARAMS
    assert train.info["flops_per_sample"] < _trial(
        backend, _config("cnn"), steps=1).info["flops_per_sample"]
    infer = _trial(backend, _config("cnn", "infer", pruning_ratio=0.5,
                                    pruning_structure="structured", batch_size=32),
                   steps=2, edit=_short_epoch(2048))
    assert infer.info["param_count"] == smaller
    assert infer.quality is not None and 0 <= infer.quality <= 1


@real
def test_structured_pruning_of_the_mlp(backend: MindSporeBackend) -> None:
    trial = _trial(backend, _config(pruning_ratio=0.7, pruning_structure="structured"),
                   steps=25)
    widths = (64, 300, 300, 300, 10)
    assert trial.info["param_count"] == sum(a * b + b for a, b in itertools.pairwise(widths))
    assert [w.shape for w in trial.weights] == [(300, 64), (300, 300), (300, 300), (10, 300)]
    assert trial.info["sparsity"] == 0.0
    assert trial.quality is not None and trial.quality >= 0.5  # the smaller model learns


@real
def test_structured_pruning_without_a_hook_is_unsupported(backend: MindSporeBackend) -> None:
    with pytest.raises(UnsupportedConfigError, match="prune_structured"):
        _trial(backend, _config("user", pruning_ratio=0.5, pruning_structure="structured"),
               factory=USER_FACTORY)


# -- a user's model (not a built-in) --------------------------------------------------------

USER_FACTORY = f"{__file__}:user_model"


def user_model(framework: str, forward: bool = False, tied: bool = True) -> ModelSpec:
    """A user's factory: a two-input regression model with a tied (shared) projection,
    LayerNorm and a loss of its own or ``mse``."""
    import mindspore as ms
    from mindspore import nn, ops

    assert framework == "mindspore"

    class TwoTower(nn.Cell):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Dense(12, 16)
            self.other = self.proj if tied else nn.Dense(12, 16)
            self.norm = nn.LayerNorm((16,))
            self.head = nn.Dense(16, 1)

        def construct(self, a: Any, b: Any) -> Any:
            h = ops.relu(self.proj(a)) + ops.relu(self.other(b))
            return self.head(self.norm(h))

    rng = np.random.default_rng(0)
    w_true = rng.normal(size=(12,)).astype(np.float32)

    def make_batch(n: int, rng: np.random.Generator) -> Any:
        a = rng.normal(size=(n, 12)).astype(np.float32)
        b = rng.normal(size=(n, 12))  # float64: fed as float32
        return (a, b), ((a + b) @ w_true)[:, None].astype(np.float32)

    def own_loss(model: Any, inputs: Any, targets: Any) -> Any:
        return ops.mean(ops.abs(model(*inputs) - targets))

    held_out = make_batch(256, np.random.default_rng(1))

    def quality(model: Any) -> float:
        (a, b), y = held_out
        pred = model(ms.Tensor(a), ms.Tensor(b.astype(np.float32))).asnumpy()
        return float(np.mean((pred.astype(np.float32) - y) ** 2))

    return ModelSpec(model=TwoTower(), make_batch=make_batch, loss="mse",
                     forward=own_loss if forward else None, quality=quality,
                     quality_name="mse", quality_direction="minimize", epoch_samples=512)


@real
@pytest.mark.parametrize("execution", ["graph", "eager"])
@pytest.mark.parametrize("forward", [False, True])
def test_user_model_trains(backend: MindSporeBackend, execution: str, forward: bool) -> None:
    config = _config("user", execution=execution, learning_rate=1e-2,
                     workload_kwargs={"forward": forward}, batch_size=32)
    trial = _trial(backend, config, factory=USER_FACTORY, steps=20)
    # proj shared with other: counted once (12*16 + 16), LayerNorm 32, head 17
    assert trial.info["param_count"] == 12 * 16 + 16 + 32 + 17
    assert trial.info["flops_per_sample"] is not None and trial.info["flops_per_sample"] > 0
    assert trial.info["quality_name"] == "mse" and trial.quality is not None
    assert np.isfinite(trial.loss)
    untied = _trial(backend, dataclasses.replace(
        config, workload_kwargs={"forward": forward, "tied": False}), factory=USER_FACTORY,
        steps=1)
    assert untied.info["param_count"] == 2 * (12 * 16 + 16) + 32 + 17


@real
@pytest.mark.parametrize("execution", ["graph", "eager"])
def test_user_model_infers_pruned(backend: MindSporeBackend, execution: str) -> None:
    config = _config("user", "infer", execution=execution, pruning_ratio=0.4, batch_size=16)
    trial = _trial(backend, config, factory=USER_FACTORY, steps=3)
    assert "base_model" not in trial.info  # train_before_infer is False: measured as built
    assert trial.info["sparsity"] == pytest.approx(0.4, abs=0.01)
    assert trial.info["flops_per_sample"] == 2 * (2 * 12 * 16 + 16)  # proj twice + head
    assert trial.quality is not None and trial.quality > 0


@real
def test_a_model_of_another_framework_is_a_factory_error(backend: MindSporeBackend) -> None:
    torch = pytest.importorskip("torch")
    spec = ModelSpec(model=torch.nn.Linear(4, 2),
                     make_batch=lambda n, rng: (np.zeros((n, 4), np.float32),
                                                np.zeros(n, np.int64)))
    backend.factory_label = "models.py:build"
    backend.configure(_config())
    with pytest.raises(ModelFactoryError) as err:
        backend.setup(_config(), spec)
    backend.teardown()
    message = str(err.value)
    assert "\n" not in message and message.startswith("models.py:build: ")
    assert "torch.nn.modules.linear.Linear" in message and "mindspore.nn.Cell" in message


@real
def test_a_batch_of_the_wrong_size_is_a_factory_error(backend: MindSporeBackend) -> None:
    from mindspore import nn

    spec = ModelSpec(model=nn.Dense(4, 2),
                     make_batch=lambda n, rng: (np.zeros((n + 1, 4), np.float32),
                                                np.zeros(n + 1, np.int64)))
    backend.factory_label = "models.py:build"
    backend.configure(_config())
    with pytest.raises(ModelFactoryError) as err:
        backend.setup(_config(), spec)
    backend.teardown()
    message = str(err.value)
    assert "\n" not in message
    assert message == ("models.py:build: make_batch(64): input 0 has shape (65, 4); its "
                       "first (batch) dimension must be 64")


@real
def test_a_model_rejecting_its_batch_is_a_factory_error(backend: MindSporeBackend) -> None:
    from mindspore import nn

    spec = ModelSpec(model=nn.Dense(5, 2),  # make_batch gives 4 features
                     make_batch=lambda n, rng: (np.zeros((n, 4), np.float32),
                                                np.zeros(n, np.int64)))
    backend.factory_label = "models.py:build"
    config = _config(execution="eager")
    backend.configure(config)
    try:
        with pytest.raises(ModelFactoryError, match=r"models\.py:build: ") as err:
            backend.setup(config, spec)
            backend.step()
    finally:
        backend.teardown()
    assert "\n" not in str(err.value)


# -- model facts against torch --------------------------------------------------------------


@real
def test_cnn_parameter_count_equals_torchs(backend: MindSporeBackend) -> None:
    from autotune.workloads._builtin import CNNArch
    from autotune.workloads._models_mindspore import build_cnn

    arch = CNNArch(1, 8, 8, 16, 2, 10)
    expected = CNN_PARAMS
    if importlib.util.find_spec("torch") is not None and importlib.util.find_spec(
            "autotune.workloads._models_torch") is not None:
        from autotune.workloads._models_torch import build_cnn as torch_cnn

        expected = sum(p.numel() for p in torch_cnn(arch, 0).parameters())
        assert expected == CNN_PARAMS
    model = build_cnn(arch, 0)
    assert sum(int(np.prod(p.shape)) for p in model.trainable_params()) == expected
    # moving statistics are Parameters too in MindSpore, but not trainable ones
    assert len(list(model.get_parameters())) > len(model.trainable_params())


# -- the built-in models' MindSpore builds (unit) -------------------------------------------


@real
class TestModels:
    @pytest.fixture(autouse=True)
    def _runtime(self, backend: MindSporeBackend) -> Iterator[None]:
        backend.configure(_config(execution="eager"))
        yield
        backend.teardown()

    def test_mlp_layout_and_torch_like_init(self) -> None:
        from mindspore import nn

        from autotune.workloads._models_mindspore import build_mlp, predict

        model = build_mlp((64, 100, 10), seed=3)
        dense = [c for _, c in model.cells_and_names() if isinstance(c, nn.Dense)]
        assert [tuple(d.weight.shape) for d in dense] == [(100, 64), (10, 100)]
        w = dense[0].weight.asnumpy()
        assert np.abs(w).max() <= 1 / np.sqrt(64) and w.std() > 0.5 / np.sqrt(3 * 64)
        again = build_mlp((64, 100, 10), seed=3)
        np.testing.assert_array_equal(
            w, next(c for _, c in again.cells_and_names() if isinstance(c, nn.Dense))
            .weight.asnumpy())
        assert predict(model, np.zeros((5, 64), np.float32)).shape == (5, 10)

    def test_cnn_layers(self) -> None:
        from mindspore import nn

        from autotune.workloads._builtin import CNNArch
        from autotune.workloads._models_mindspore import build_cnn, predict

        model = build_cnn(CNNArch(1, 8, 8, 4, 1, 3), seed=0)
        convs = [c for _, c in model.cells_and_names() if isinstance(c, nn.Conv2d)]
        assert len(convs) == 3 and all(c.bias is None for c in convs)  # no conv biases
        assert len([c for _, c in model.cells_and_names()
                    if isinstance(c, nn.BatchNorm2d)]) == 3
        logits = predict(model, np.random.default_rng(0).normal(
            size=(2, 1, 8, 8)).astype(np.float32))
        assert logits.shape == (2, 3) and logits.dtype == np.float32
        no_blocks = build_cnn(CNNArch(1, 8, 8, 4, 0, 3), seed=0)
        assert predict(no_blocks, np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 3)

    def test_mlp_structured_pruning_keeps_the_largest_rows(self) -> None:
        from mindspore import nn

        from autotune.backends._pruning import apply_structured
        from autotune.workloads._builtin import MLPArch
        from autotune.workloads._models_mindspore import build_mlp, predict, prune_structured

        model = build_mlp((8, 10, 6, 3), seed=1)

        def dense(m: Any) -> list[Any]:
            return [c for _, c in m.cells_and_names() if isinstance(c, nn.Dense)]

        old = dense(model)
        want_w, want_b = apply_structured([d.weight.asnumpy() for d in old],
                                          [d.bias.asnumpy() for d in old], 0.5)
        smaller = prune_structured(model, MLPArch((8, 10, 6, 3)), 0.5)
        for d, w, b in zip(dense(smaller), want_w, want_b, strict=True):
            np.testing.assert_array_equal(d.weight.asnumpy(), w)
            np.testing.assert_array_equal(d.bias.asnumpy(), b)
        assert predict(smaller, np.ones((2, 8), np.float32)).shape == (2, 3)

    def test_cnn_structured_pruning_copies_the_kept_channels(self) -> None:
        import mindspore as ms

        from autotune.backends._pruning import channel_keep
        from autotune.workloads._builtin import CNNArch
        from autotune.workloads._models_mindspore import build_cnn, predict, prune_structured

        arch = CNNArch(1, 8, 8, 6, 2, 4)
        model = build_cnn(arch, seed=2)
        rng = np.random.default_rng(0)
        for block in model.blocks:  # distinct BN statistics, to see that they are copied
            block.bn1.moving_mean.set_data(ms.Tensor(rng.normal(size=6).astype(np.float32)))
        smaller = prune_structured(model, arch, 0.5)
        for old, new in zip(model.blocks, smaller.blocks, strict=True):
            keep = channel_keep(old.conv1.weight.asnumpy(), 0.5)
            assert len(keep) == 3
            np.testing.assert_array_equal(new.conv1.weight.asnumpy(),
                                          old.conv1.weight.asnumpy()[keep])
            np.testing.assert_array_equal(new.conv2.weight.asnumpy(),
                                          old.conv2.weight.asnumpy()[:, keep])
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                np.testing.assert_array_equal(getattr(new.bn1, name).asnumpy(),
                                              getattr(old.bn1, name).asnumpy()[keep])
                np.testing.assert_array_equal(getattr(new.bn2, name).asnumpy(),
                                              getattr(old.bn2, name).asnumpy())
        np.testing.assert_array_equal(smaller.head.weight.asnumpy(),
                                      model.head.weight.asnumpy())
        x = rng.normal(size=(2, 1, 8, 8)).astype(np.float32)
        model.set_train(False)
        smaller.set_train(False)
        assert predict(smaller, x).shape == (2, 4)


# -- errors and memory (no real allocation failure needed) ----------------------------------


def test_framework_errors_are_classified() -> None:
    b = MindSporeBackend(ms=SimpleNamespace())
    assert b.classify_error(RuntimeError(
        "Memory isn't enough and alloc failed, kernel name: Default/MatMul")) is OutOfMemoryError
    assert b.classify_error(TypeError(
        "Unsupported data type BFloat16 for MatMul")) is UnsupportedConfigError
    assert b.classify_error(RuntimeError("something else")) is None
    assert b.classify_error(KeyError("out of memory")) is None  # not a framework error


def test_too_small_an_address_space_is_oom_before_the_first_op(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Below what MindSpore's runtime needs to start it would die in native threads
    (SIGABRT/SIGSEGV); configure reports out-of-memory before the first op instead."""
    import resource

    import autotune.backends._mindspore as module

    monkeypatch.setattr(module.resource, "getrlimit",
                        lambda which: (2**30 + 100 * 2**20, resource.RLIM_INFINITY))
    monkeypatch.setattr(module, "_vm_size_bytes", lambda: 2**30)
    log = VendorLog()
    ms = fake_mindspore(log)
    ms.runtime.set_memory = log.record("runtime.set_memory")
    b = MindSporeBackend(ms=ms)
    with pytest.raises(OutOfMemoryError, match="runtime needs about"):
        b.configure(_config(budget=Budget(memory_mb=16)))
    assert "set_seed" not in log.names()


# -- the vendor boundary: GPU and Ascend through a fake mindspore module --------------------
# (device placement, trial order and refusals are in tests/test_vendor_fakes.py)


@pytest.fixture
def no_ms_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """MindSpore's one-time NumPy init runs a real op: stubbed (no MindSpore import)."""
    monkeypatch.setattr(MindSporeBackend, "_absorb_numpy_init_failure", lambda self: None)
    had = "mindspore" in sys.modules
    yield
    assert had or "mindspore" not in sys.modules


@pytest.mark.usefixtures("no_ms_runtime")
def test_each_trial_resets_its_own_peak() -> None:
    log = VendorLog()
    b = MindSporeBackend(ms=fake_mindspore(log, gpus=1))
    for _ in range(2):
        b.configure(_config(device="cuda:0", execution="eager"))
        b.peak_memory_bytes()
        b.teardown()
    assert [n for n in log.names() if n.startswith("runtime.")] == [
        "runtime.reset_peak_memory_stats", "runtime.max_memory_allocated",
        "runtime.empty_cache"] * 2
    assert ("set_context", "mode=1") in log.calls  # eager is PyNative


@pytest.mark.usefixtures("no_ms_runtime")
def test_cpu_waits_on_the_output_not_the_runtime() -> None:
    """On CPU ``runtime.synchronize`` is unsupported: the last outputs are waited for."""
    log = VendorLog()
    ms = fake_mindspore(log)
    ms.runtime.synchronize = log.never("runtime.synchronize")
    ms.runtime.max_memory_allocated = log.never("runtime.max_memory_allocated")
    ms.runtime.empty_cache = log.never("runtime.empty_cache")
    b = MindSporeBackend(ms=ms)
    b.configure(_config(device="cpu"))
    assert log.calls[0] == ("set_device", "CPU")
    b._pending = (SimpleNamespace(asnumpy=log.record("out0.asnumpy")),
                  {"aux": SimpleNamespace(asnumpy=log.record("out1.asnumpy"))})
    b.synchronize()
    assert log.names()[-2:] == ["out0.asnumpy", "out1.asnumpy"] and b._pending is None
    assert b.peak_memory_bytes() is None
    b.teardown()


def test_memory_budget_sizes_the_pool(no_ms_runtime: None) -> None:
    log = VendorLog()
    ms = fake_mindspore(log)
    ms.runtime.set_memory = log.record("runtime.set_memory")
    b = MindSporeBackend(ms=ms)
    b.configure(_config(budget=Budget(memory_mb=4096)))
    assert ("runtime.set_memory", "init_size=0.0625GB", "increase_size=0.0625GB",
            "max_size=4.0000GB") in log.calls
