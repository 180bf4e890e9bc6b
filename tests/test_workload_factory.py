"""The model-factory contract: naming and checking a factory without importing it, loading
it in the worker, and every way a user's factory or ModelSpec can be wrong, each one line
naming the factory. The torch tests drive the real backend in this process."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import autotune
from autotune.config import Budget, TrialConfig
from autotune.exceptions import ModelFactoryError, UnsupportedConfigError, WorkloadError
from autotune.workloads import (
    ModelSpec,
    WorkloadRef,
    factory_hash,
    load_model_spec,
    parse_workload,
)
from autotune.workloads._spec import check_batch

MODELS = Path(__file__).parent / "models"
SPACE: dict[str, Any] = {"mode": "train", "objectives": {"throughput_sps": "maximize"}}


def _space_file(tmp_path: Path, workload: Any) -> Path:
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({**SPACE, "workload": workload}))
    return path


# -- naming and checking, without importing --------------------------------------------


def test_builtin_names_and_kwargs() -> None:
    ref = parse_workload({"factory": "cnn", "kwargs": {"channels": 8}})
    assert ref.is_builtin and ref.kwargs == {"channels": 8}
    assert ref.label() == "cnn(channels=8)"
    assert parse_workload("mlp").to_dict() == {"factory": "mlp", "kwargs": {}}


def test_a_relative_file_is_resolved_against_the_space_file(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text("def build(framework):\n    pass\n")
    space = autotune.load_space(_space_file(tmp_path, {"factory": "models/net.py:build",
                                                       "kwargs": {"width": 4}}))
    assert space.workload == f"{tmp_path / 'models' / 'net.py'}:build"
    assert space.workload_kwargs == {"width": 4}
    # the stored form round-trips
    again = autotune.parse_space(space.to_dict())
    assert again.workload == space.workload and again.workload_kwargs == {"width": 4}


def test_the_factory_is_never_imported_at_create(tmp_path: Path) -> None:
    """A factory may import its framework at top level; create only parses the file."""
    (tmp_path / "net.py").write_text(
        "import sys\nsys.exit('imported!')\n\ndef build(framework):\n    pass\n")
    space = autotune.load_space(_space_file(tmp_path, "net.py:build"))
    study = autotune.create_study("s", space, storage=f"sqlite:///{tmp_path}/s.db")
    assert study.space.workload.endswith("net.py:build")


@pytest.mark.parametrize(("workload", "needle"), [
    ("nope.py:build", "factory file"),
    ("net.py:missing", "has no top-level function 'missing' (functions there: build)"),
    ("broken.py:build", "syntax error at line 1"),
    ("net.py:1bad", "unknown workload"),
    ("autotune.testing.no_such_module:f", "no module named 'autotune.testing.no_such_module'"),
    ("autotune.testing.workloads:no_such_factory", "has no top-level function"),
    ("not a module:f", "is not a module name"),
    ({"factory": "mlp", "kwargs": {"width": float("nan")}}, "JSON-able"),
    ({"factory": "mlp", "kwargs": {"width": {1, 2}}}, "JSON-able"),
    ({"factory": "mlp", "kwargs": {"not an identifier": 1}}, "mapping of identifiers"),
    ({"factory": "mlp", "extra": 1}, "unknown key(s) extra"),
    (7, "must be a built-in name"),
])
def test_bad_factories_are_refused_at_create_in_one_line(tmp_path: Path, workload: Any,
                                                         needle: str) -> None:
    (tmp_path / "net.py").write_text("def build(framework):\n    pass\n")
    (tmp_path / "broken.py").write_text("def build(:\n")
    with pytest.raises(autotune.SpaceError) as info:
        autotune.parse_space({**SPACE, "workload": workload}, base_dir=tmp_path)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    assert message.startswith("<space>: workload: ")


def test_a_stored_space_stays_readable_when_its_file_is_gone(tmp_path: Path) -> None:
    """list/show/export/dashboard never look the factory up."""
    (tmp_path / "net.py").write_text("def build(framework):\n    pass\n")
    space = autotune.load_space(_space_file(tmp_path, "net.py:build"))
    storage = f"sqlite:///{tmp_path}/s.db"
    autotune.create_study("s", space, storage=storage)
    (tmp_path / "net.py").unlink()
    assert autotune.load_study("s", storage=storage).space.workload == space.workload
    assert [s.name for s in autotune.list_studies(storage=storage)] == ["s"]


def test_the_factory_hash_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "net.py"
    path.write_text("def build(framework):\n    pass\n")
    ref = WorkloadRef(f"{path}:build")
    first = factory_hash(ref)
    path.write_text("def build(framework):\n    return 1\n")
    assert first is not None and factory_hash(ref) not in (None, first)
    assert factory_hash(WorkloadRef("mlp")) is None
    module = factory_hash(WorkloadRef("autotune.testing.workloads:tiny"))
    assert module is not None and len(module) == 16


# -- loading in the worker ---------------------------------------------------------------


def _ref(name: str, **kwargs: Any) -> WorkloadRef:
    return WorkloadRef(f"{MODELS / 'user_torch.py'}:{name}", kwargs)


@pytest.mark.parametrize(("name", "needle"), [
    ("raises", "raised ValueError: checkpoint missing (at "),
    ("not_a_spec", "returned dict, not an autotune.ModelSpec"),
])
def test_a_broken_factory_is_one_line_naming_it(name: str, needle: str) -> None:
    with pytest.raises(ModelFactoryError) as info:
        load_model_spec(_ref(name), "torch")
    message = str(info.value)
    assert message.startswith(f"factory {MODELS / 'user_torch.py'}:{name}")
    assert needle in message and "\n" not in message


def test_modelspec_validates_at_construction() -> None:
    def batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((n, 2), np.float32), np.zeros(n, np.int64)

    with pytest.raises(ValueError, match="loss must be one of cross_entropy, mse"):
        ModelSpec(object(), batch, loss="hinge")
    with pytest.raises(TypeError, match="make_batch must be callable"):
        ModelSpec(object(), 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quality_direction"):
        ModelSpec(object(), batch, quality_direction="up")
    assert ModelSpec(object(), batch).samples_per_epoch == autotune.workloads.DEFAULT_EPOCH_SAMPLES


def test_check_batch_names_the_bad_dimension() -> None:
    x = np.zeros((4, 3), np.float32)
    assert check_batch(x, np.zeros(4), 4) is None
    assert check_batch((x, x), np.zeros(4), 4) is None
    assert "first (batch) dimension must be 5" in (check_batch(x, np.zeros(4), 5) or "")
    assert "targets have shape (3,)" in (check_batch(x, np.zeros(3), 4) or "")
    assert "not a numpy array" in (check_batch([[1.0]] * 4, None, 4) or "")


# -- a user's torch model through the real backend ---------------------------------------

torch = pytest.importorskip("torch")


def _config(ref: WorkloadRef, mode: str = "train", **knobs: Any) -> TrialConfig:
    base: dict[str, Any] = {"backend": "torch", "device": "cpu", "batch_size": 32,
                            "precision": "fp32", "learning_rate": 1e-2, "optimizer": "adam",
                            "pruning_ratio": 0.0, "threads": 1, "execution": "eager"}
    base.update(knobs)
    return TrialConfig(workload=ref.factory, workload_kwargs=dict(ref.kwargs), mode=mode,
                       budget=Budget(train_epochs=1), factory_hash=factory_hash(ref), **base)


@pytest.fixture(scope="module")
def backend() -> Any:
    from autotune.backends._torch import TorchBackend

    b = TorchBackend()
    b.set_threads(1)
    return b


def _set_up(backend: Any, config: TrialConfig) -> dict[str, Any]:
    from autotune.testing.inprocess import set_up

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return set_up(backend, config)


def test_parameter_count_is_the_models_own(backend: Any) -> None:
    info = _set_up(backend, _config(_ref("mlp", width=32)))
    assert info["param_count"] == sum(p.numel() for p in backend.model.parameters())
    assert info["param_count"] == 16 * 32 + 32 + 32 * 2 + 2
    # forward + backward of two Linear layers: 2 FLOPs per multiply-add, counted by torch
    assert info["flops_per_sample"] > 2 * (16 * 32 + 32 * 2)
    assert "FlopCounterMode" in info["flops_method"]
    backend.teardown()


def test_a_model_that_computes_its_own_loss_trains(backend: Any) -> None:
    _set_up(backend, _config(_ref("self_loss"), learning_rate=3e-3))
    before = backend.evaluate()
    losses = []
    for _ in range(3 * backend.steps_per_epoch):
        backend.step()
        backend.between_steps()
        losses.append(backend.last_loss)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert backend.evaluate() > max(before, 0.8)
    backend.teardown()


@pytest.mark.parametrize(("name", "mode", "needle"), [
    ("frozen", "train", "has no trainable parameters, so it cannot be trained"),
    ("wrong_batch", "train", "make_batch(32): input 0 has shape (33, 16)"),
    ("not_torch", "infer", "returned a builtins.object as the model; the torch backend needs"),
])
def test_unusable_specs_fail_in_setup_naming_the_factory(backend: Any, name: str, mode: str,
                                                         needle: str) -> None:
    with pytest.raises(ModelFactoryError) as info:
        _set_up(backend, _config(_ref(name), mode))
    assert str(info.value).startswith(f"factory {MODELS / 'user_torch.py'}:{name}")
    assert needle in str(info.value)
    backend.teardown()


@pytest.mark.parametrize(("name", "needle"), [
    ("rejected", "the model rejected a batch from make_batch (inputs (4, 16) float32)"),
    ("vector_loss", "the loss must be a scalar, got a tensor of shape (4,)"),
])
def test_a_model_that_rejects_its_batches_fails_in_one_line(backend: Any, name: str,
                                                             needle: str) -> None:
    with pytest.raises(ModelFactoryError, match=r"^factory .*user_torch\.py") as info:
        _set_up(backend, _config(_ref(name)))  # the FLOP count is the model's first batch
        backend.step()
    assert needle in str(info.value)
    backend.teardown()


def test_structured_pruning_of_a_user_model_goes_through_torch_pruning(backend: Any) -> None:
    pytest.importorskip("torch_pruning")
    full = _set_up(backend, _config(_ref("mlp", width=64), "infer"))["param_count"]
    backend.teardown()
    info = _set_up(backend, _config(_ref("mlp", width=64), "infer", pruning_ratio=0.5,
                                    pruning_structure="structured"))
    # the hidden layer loses half its neurons; the output layer keeps its 2 classes
    linear = [m for m in backend.model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linear] == [32, 2]
    assert info["param_count"] == 16 * 32 + 32 + 32 * 2 + 2 < full
    backend.teardown()


def test_unstructured_pruning_keeps_weights_zero_while_training(backend: Any) -> None:
    info = _set_up(backend, _config(_ref("mlp", width=64), pruning_ratio=0.7))
    for _ in range(5):
        backend.step()
    weights = backend.weight_arrays()
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert abs(zeros - 0.7) < 0.01 and abs(info["sparsity"] - 0.7) < 0.01
    backend.teardown()


def test_int8_of_a_cnn_is_unsupported_not_silently_fp32(backend: Any) -> None:
    with pytest.raises(UnsupportedConfigError, match=r"Conv2d layer.* would stay fp32"):
        _set_up(backend, _config(WorkloadRef("cnn"), "infer", precision="int8"))
    backend.teardown()


def test_the_builtin_cnn_is_a_resnet_and_prunes_its_inner_channels(backend: Any) -> None:
    full = _set_up(backend, _config(WorkloadRef("cnn"), "train"))
    assert full["param_count"] == (1 * 16 * 9 + 32 + 2 * (2 * 16 * 16 * 9 + 2 * 32)
                                   + 16 * 10 + 10)
    backend.teardown()
    pruned = _set_up(backend, _config(WorkloadRef("cnn"), "train", pruning_ratio=0.5,
                                      pruning_structure="structured"))
    assert [b.conv1.out_channels for b in backend.model.blocks] == [8, 8]
    assert pruned["param_count"] < full["param_count"]
    assert pruned["flops_per_sample"] < full["flops_per_sample"]
    backend.teardown()


def test_unknown_framework_for_a_builtin_is_a_factory_error() -> None:
    with pytest.raises(ModelFactoryError, match="written for torch, tensorflow, mindspore"):
        load_model_spec(WorkloadRef("mlp"), "jax")


def test_workload_error_is_a_value_error() -> None:
    assert issubclass(WorkloadError, ValueError)
    assert issubclass(ModelFactoryError, WorkloadError)
