"""The TensorFlow backend on real TensorFlow, driven in-process the way the worker drives it.

``backend.configure(config)`` -> ``load_model_spec(ref, "tensorflow")`` -> ``setup`` ->
``step()`` ... -> ``evaluate()`` -> ``teardown()``, on the built-in workloads (``mlp``,
``digits_mlp``, ``cnn``, made small through their kwargs so each test takes seconds) and on
user models written here as factory files. No timing is asserted (the machine is shared);
what is asserted is what the trial *is*: its model, dtype, runtime, sparsity, parameter
count, FLOPs, quality and failure kind. Model-building unit tests come first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import math
import resource
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autotune.backends._base import cpu_capabilities
from autotune.config import Budget, TrialConfig
from autotune.exceptions import (
    ModelFactoryError,
    NonFiniteLossError,
    OutOfMemoryError,
    UnsupportedConfigError,
)
from autotune.workloads import WorkloadRef, load_model_spec
from autotune.workloads._builtin import CNNArch, MLPArch

# find_spec, not importorskip: importing TensorFlow at collection would cost seconds.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                reason="the tensorflow extra is not installed")

#: channels=16, blocks=2, classes=10 on 1-channel input, as torch counts it (trainable only):
#: stem conv + BN gamma/beta, per block two convs + two BNs, dense weights + bias
CNN_PARAMS = 1 * 16 * 9 + 32 + 2 * (2 * (16 * 16 * 9) + 2 * 32) + 16 * 10 + 10
SMALL_MLP = {"hidden": [128, 128]}
SMALL_CNN = {"channels": 8, "blocks": 1}
NATIVE = cpu_capabilities().precisions


def _config(workload: str, mode: str, *, kwargs: dict[str, Any] | None = None,
            budget: dict[str, Any] | None = None, **knobs: Any) -> TrialConfig:
    """A trial config as the study driver resolves it (execution already resolved)."""
    values: dict[str, Any] = {
        "workload": workload, "mode": mode, "backend": "tensorflow", "device": "cpu",
        "batch_size": 64, "precision": "fp32", "learning_rate": 1e-3, "optimizer": "adam",
        "pruning_ratio": 0.0, "threads": 2, "pruning_structure": "unstructured",
        "execution": "graph", "seed": 0,
        "budget": Budget(**{"train_epochs": 1, **(budget or {})}),
        "workload_kwargs": dict(kwargs or {}), "factory_hash": None}
    values.update(knobs)
    return TrialConfig(**values)


@pytest.fixture(scope="module")
def backend() -> Iterator[Any]:
    from autotune.backends._tensorflow import TensorFlowBackend

    b = TensorFlowBackend()
    # RuntimeError: the runtime was created earlier in this process and its pools are fixed
    with contextlib.suppress(RuntimeError):
        b.set_threads(2)
    yield b


class Trial:
    """One trial's backend, set up as the worker does; ``teardown`` on exit."""

    def __init__(self, backend: Any, config: TrialConfig) -> None:
        self.backend, self.config = backend, config

    def __enter__(self) -> Trial:
        b, config = self.backend, self.config
        ref = WorkloadRef(config.workload, config.workload_kwargs)
        b.factory_label = f"factory {ref.label()}"
        try:
            b.configure(config)
            self.spec = load_model_spec(ref, b.framework)
            self.info: dict[str, Any] = b.setup(config, self.spec)
        except BaseException:
            b.teardown()
            raise
        return self

    def steps(self, n: int) -> None:
        for _ in range(n):
            self.backend.step()
            self.backend.synchronize()
            self.backend.between_steps()

    def __exit__(self, *exc: object) -> None:
        self.backend.teardown()


def _run(backend: Any, config: TrialConfig, steps: int = 3) -> dict[str, Any]:
    with Trial(backend, config) as t:
        t.steps(steps)
        return {"info": t.info, "quality": backend.evaluate(), "loss": backend.last_loss,
                "dtype": backend.compute_dtype(), "versions": backend.versions(),
                "weights": backend.weight_arrays()}


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


# -- the built-in models, built directly ------------------------------------------------------


def test_mlp_is_torchs_layout_and_init() -> None:
    from autotune.workloads import _models_tensorflow as models

    model = models.build_mlp((64, 100, 10), seed=3)
    assert model.count_params() == 64 * 100 + 100 + 100 * 10 + 10
    kernel = model.layers[0].kernel.numpy()
    bound = 1 / math.sqrt(64)  # torch.nn.Linear: U(+-1/sqrt(fan_in)) weights and biases
    assert kernel.shape == (64, 100) and np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.9 * bound
    assert np.abs(model.layers[0].bias.numpy()).max() <= bound
    again = models.build_mlp((64, 100, 10), seed=3)
    np.testing.assert_array_equal(again.layers[0].kernel.numpy(), kernel)  # seeded


def test_cnn_parameter_count_equals_torchs() -> None:
    from autotune.workloads import _models_tensorflow as models

    arch = CNNArch(1, 8, 8, 16, 2, 10)
    model = models.build_cnn(arch, seed=0)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    expected = CNN_PARAMS
    if importlib.util.find_spec("torch") is not None and \
            importlib.util.find_spec("autotune.workloads._models_torch") is not None:
        from autotune.workloads import _models_torch

        expected = sum(p.numel() for p in _models_torch.build_cnn(arch, 0).parameters())
    assert trainable == expected == CNN_PARAMS
    assert model(np.zeros((2, 8, 8, 1), np.float32)).shape == (2, 10)
    # no conv biases; BN moving statistics are buffers, not parameters
    assert all(not getattr(layer, "use_bias", False) for layer in model.layers
               if type(layer).__name__ == "Conv2D")


def test_structured_pruning_of_the_built_in_cnn_keeps_the_strongest_channels() -> None:
    from autotune.backends._pruning import channel_keep
    from autotune.workloads import _models_tensorflow as models

    arch = CNNArch(1, 8, 8, 16, 2, 10)
    model = models.build_cnn(arch, seed=0)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # distinct BN statistics, so copying them is visible
        if type(layer).__name__ == "BatchNormalization":
            layer.set_weights([rng.uniform(0.5, 2, w.shape).astype(np.float32)
                               for w in layer.get_weights()])
    x = rng.standard_normal((4, 8, 8, 1)).astype(np.float32)
    same = models.prune_structured(model, arch, 0.0)
    np.testing.assert_allclose(same(x), model(x), rtol=1e-5, atol=1e-5)

    smaller = models.prune_structured(model, arch, 0.5)
    assert smaller.count_params() < model.count_params()
    keep = channel_keep(model.get_layer("block1_conv1").kernel.numpy().transpose(3, 2, 0, 1),
                        0.5)
    assert len(keep) == 8
    np.testing.assert_array_equal(smaller.get_layer("block1_conv1").kernel.numpy(),
                                  model.get_layer("block1_conv1").kernel.numpy()[..., keep])
    for new, old in zip(smaller.get_layer("block1_bn1").get_weights(),
                        model.get_layer("block1_bn1").get_weights(), strict=True):
        np.testing.assert_array_equal(new, old[keep])  # gamma, beta, moving mean/var
    np.testing.assert_array_equal(smaller.get_layer("block1_conv2").kernel.numpy(),
                                  model.get_layer("block1_conv2").kernel.numpy()[:, :, keep])


def test_structured_pruning_of_the_built_in_mlp_follows_the_shared_rule() -> None:
    from autotune.backends._pruning import apply_structured
    from autotune.workloads import _models_tensorflow as models

    model = models.build_mlp((64, 40, 30, 10), seed=1)
    smaller = models.prune_structured(model, MLPArch((64, 40, 30, 10)), 0.5)
    widths = [layer.kernel.shape[1] for layer in smaller.layers]
    assert widths == [20, 15, 10]
    weights = [layer.kernel.numpy().T for layer in model.layers]
    biases = [layer.bias.numpy() for layer in model.layers]
    new_w, _ = apply_structured(weights, biases, 0.5)
    for layer, w in zip(smaller.layers, new_w, strict=True):
        np.testing.assert_array_equal(layer.kernel.numpy().T, w)


# -- the built-ins through the backend ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["eager", "graph", "xla"])
@pytest.mark.parametrize(("workload", "kwargs"), [("mlp", SMALL_MLP),
                                                  ("digits_mlp", SMALL_MLP),
                                                  ("cnn", SMALL_CNN)])
def test_builtins_train_in_each_execution_mode(backend: Any, workload: str,
                                               kwargs: dict[str, Any],
                                               execution: str) -> None:
    out = _run(backend, _config(workload, "train", kwargs=kwargs, execution=execution))
    info = out["info"]
    assert info["execution"] == execution and info["runtime"] == "tensorflow"
    assert info["compute_dtype"] == out["dtype"] == "float32"
    assert info["quality_name"] == "accuracy" and info["quality_direction"] == "maximize"
    assert info["param_count"] > 0 and info["sparsity"] == 0.0
    assert info["flops_per_sample"] > 0 and "profiler" in info["flops_method"]
    assert info["weight_bytes"] >= 4 * info["param_count"]
    assert math.isfinite(out["loss"]) and 0.0 <= out["quality"] <= 1.0
    assert out["versions"]["tensorflow"].startswith("2.")
    assert out["versions"]["keras"].startswith("3.")


@pytest.mark.slow
def test_one_epoch_learns_the_digits(backend: Any) -> None:
    with Trial(backend, _config("digits_mlp", "train", kwargs=SMALL_MLP)) as t:
        t.steps(backend.steps_per_epoch)
        assert backend.evaluate() >= 0.7


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["eager", "graph", "xla"])
@pytest.mark.parametrize(("workload", "kwargs"), [("mlp", SMALL_MLP), ("cnn", SMALL_CNN)])
def test_builtins_infer_in_each_execution_mode(backend: Any, workload: str,
                                               kwargs: dict[str, Any],
                                               execution: str) -> None:
    out = _run(backend, _config(workload, "infer", kwargs=kwargs, execution=execution))
    info = out["info"]
    assert info["base_model"] in ("trained", "cached")
    assert info["execution"] == execution and out["dtype"] == "float32"
    assert out["quality"] > 0.3  # the base recipe trained it


@pytest.mark.slow
def test_mlp_facts_are_the_dense_formulas(backend: Any) -> None:
    widths = (64, 128, 128, 10)
    macs = sum(a * b for a, b in itertools.pairwise(widths))
    params = macs + sum(widths[1:])
    out = _run(backend, _config("mlp", "infer", kwargs=SMALL_MLP), steps=1)
    info = out["info"]
    assert info["param_count"] == params
    assert info["weight_bytes"] == 4 * params
    # 2 per multiply-add, plus the bias additions the profiler counts too
    assert 2 * macs <= info["flops_per_sample"] <= 2 * macs + sum(widths[1:])
    train = _run(backend, _config("mlp", "train", kwargs=SMALL_MLP), steps=1)["info"]
    assert train["flops_per_sample"] > 2.5 * info["flops_per_sample"]  # + the gradients


@pytest.mark.slow
def test_base_model_is_cached_between_trials(backend: Any) -> None:
    config = _config("digits_mlp", "infer", kwargs={"hidden": [32]}, seed=5)
    first = _run(backend, config, steps=1)
    second = _run(backend, config, steps=1)
    assert first["info"]["base_model"] == "trained"
    assert second["info"]["base_model"] == "cached"
    assert second["quality"] == first["quality"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_native_half_precisions(backend: Any, precision: str, mode: str) -> None:
    if precision not in NATIVE:
        pytest.skip(f"{precision} is not native on this CPU (cpu_flags)")
    execution = "xla" if precision == "fp16" else "graph"  # TF fp16 on CPU: xla only
    for workload, kwargs in (("mlp", SMALL_MLP), ("cnn", SMALL_CNN)):
        out = _run(backend, _config(workload, mode, kwargs=kwargs, precision=precision,
                                    execution=execution))
        dtype = {"bf16": "bfloat16", "fp16": "float16"}[precision]
        assert out["dtype"] == out["info"]["compute_dtype"] == dtype, workload
        assert math.isfinite(out["loss"]) if mode == "train" else out["quality"] > 0.3


@pytest.mark.slow
def test_fp16_without_xla_is_refused_on_cpu(backend: Any) -> None:
    with pytest.raises(UnsupportedConfigError, match="usable only with xla"):
        backend.configure(_config("mlp", "train", precision="fp16", execution="graph"))
    backend.teardown()


@pytest.mark.slow
@pytest.mark.parametrize(("workload", "kwargs"), [("mlp", SMALL_MLP),
                                                  ("cnn", {"channels": 16, "blocks": 1})])
def test_int8_runs_on_tflite(backend: Any, workload: str, kwargs: dict[str, Any]) -> None:
    fp32 = _run(backend, _config(workload, "infer", kwargs=kwargs), steps=1)
    int8 = _run(backend, _config(workload, "infer", kwargs=kwargs, precision="int8"))
    info = int8["info"]
    assert info["base_model"] == "cached"  # the fp32 trial's model
    assert info["runtime"] == info["execution"] == "tflite"
    assert int8["versions"]["runtime"] == "tflite" and int8["dtype"] == "int8"
    assert info["param_count"] == fp32["info"]["param_count"]
    assert info["weight_bytes"] < fp32["info"]["weight_bytes"] / 2
    # dynamic-range int8 of the same trained model classifies almost identically
    assert int8["quality"] == pytest.approx(fp32["quality"], abs=0.05)
    with pytest.raises(UnsupportedConfigError, match="int8 training"):
        backend.configure(_config(workload, "train", kwargs=kwargs, precision="int8"))
    backend.teardown()


@pytest.mark.slow
def test_int8_of_a_model_tflite_leaves_in_float32_is_unsupported(backend: Any) -> None:
    # 8 channels: every conv kernel has < 1024 weights, which TFLite keeps in float32
    with pytest.raises(UnsupportedConfigError, match="left every weight") as e:
        _run(backend, _config("cnn", "infer", kwargs=SMALL_CNN, precision="int8"))
    _one_line(e.value)


@pytest.mark.slow
@pytest.mark.parametrize(("workload", "kwargs"), [("mlp", SMALL_MLP), ("cnn", SMALL_CNN)])
def test_unstructured_pruning_zeroes_the_ratio(backend: Any, workload: str,
                                               kwargs: dict[str, Any]) -> None:
    infer = _run(backend, _config(workload, "infer", kwargs=kwargs, pruning_ratio=0.6))
    assert infer["info"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    # training: AdamW's weight decay and momentum would move pruned weights back
    train = _run(backend, _config(workload, "train", kwargs=kwargs, pruning_ratio=0.5,
                                  optimizer="adamw", learning_rate=0.01), steps=5)
    weights = train["weights"]
    assert any(w.ndim == 4 for w in weights) == (workload == "cnn")  # conv kernels count
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.size for w in weights)
    assert zeros == pytest.approx(0.5, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize(("workload", "kwargs"), [("mlp", SMALL_MLP),
                                                  ("cnn", {"channels": 16, "blocks": 2})])
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_structured_pruning_gives_fewer_parameters(backend: Any, workload: str,
                                                   kwargs: dict[str, Any],
                                                   mode: str) -> None:
    full = _run(backend, _config(workload, mode, kwargs=kwargs), steps=1)["info"]
    pruned = _run(backend, _config(workload, mode, kwargs=kwargs, pruning_ratio=0.5,
                                   pruning_structure="structured"))
    info = pruned["info"]
    assert info["param_count"] < full["param_count"]
    assert info["flops_per_sample"] < full["flops_per_sample"]
    assert info["sparsity"] < 0.01  # neurons/channels removed, not weights zeroed
    if workload == "cnn":
        assert full["param_count"] == CNN_PARAMS
    if mode == "infer":
        assert pruned["quality"] > 0.2


@pytest.mark.slow
def test_diverging_training_is_nan_loss(backend: Any) -> None:
    with Trial(backend, _config("digits_mlp", "train", kwargs=SMALL_MLP, optimizer="sgd",
                                learning_rate=1000.0)) as t, \
            pytest.raises(NonFiniteLossError, match="optimizer=sgd"):
        t.steps(50)


@pytest.mark.slow
def test_batch_beyond_the_memory_budget_is_oom_before_a_step(backend: Any) -> None:
    # 8192 x 128 float32 activations in and out of one matmul (8 MB) cannot fit 4 MB:
    # refused before a oneDNN kernel can crash on a failed allocation (AVX-512 CPUs).
    with pytest.raises(OutOfMemoryError, match="out of memory: batch 8192"):
        _run(backend, _config("mlp", "train", kwargs=SMALL_MLP, batch_size=8192,
                              budget={"memory_mb": 4}))
    _run(backend, _config("mlp", "train", kwargs=SMALL_MLP, budget={"memory_mb": 512}))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_xla_compiles_on_the_first_step_with_the_cap_lifted(backend: Any,
                                                            mode: str) -> None:
    """``execution: xla`` compiles where graph mode traces: the timed function on its first
    call (the profiler's first step, the compile phase), nothing during setup; that call
    runs with the worker's memory cap lifted (under it LLVM's code memory fails to map
    and XLA aborts the process), the ones after under the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with Trial(backend, _config("digits_mlp", mode, kwargs=SMALL_MLP,
                                execution="xla")) as t:
        attr = "_train_step" if mode == "train" else "_infer_step"
        uncapped = getattr(backend, attr).__wrapped__
        compiled = uncapped.__wrapped__
        assert compiled.experimental_get_tracing_count() == 0
        capped: list[bool] = []

        def recording(*args: Any) -> Any:
            capped.append(resource.getrlimit(resource.RLIMIT_AS)[0] != hard)
            return compiled(*args)

        with open("/proc/self/status") as f:
            vm = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 2**33, hard))
        try:
            from autotune.backends._tensorflow import _first_call_uncapped, _oom_translated

            setattr(backend, attr, _oom_translated(backend.tf, _first_call_uncapped(recording),
                                                   "in a step"))
            t.steps(4)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        assert compiled.experimental_get_tracing_count() == 1
        assert capped == [False, True, True, True]
        assert backend.evaluate() > 0.05


# -- user models ------------------------------------------------------------------------------

USER_MODELS = textwrap.dedent('''
    import keras
    import numpy as np
    import tensorflow as tf

    from autotune.workloads import ModelSpec


    class Regressor(keras.Model):
        """Subclassed, never called before the backend gets it: no variables yet."""

        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(128, activation="relu")
            self.out = keras.layers.Dense(1)

        def call(self, x):
            return self.out(self.hidden(x))


    def regression(framework, train_before_infer=False):
        assert framework == "tensorflow"
        w = np.random.default_rng(0).standard_normal((16, 1)).astype(np.float32)

        def make_batch(n, rng):
            x = rng.standard_normal((n, 16)).astype(np.float32)
            return x, x @ w

        x_eval, y_eval = make_batch(256, np.random.default_rng(9))

        def neg_mse(model):
            out = model.run(x_eval) if hasattr(model, "run") else model(x_eval).numpy()
            return float(np.mean((np.asarray(out, np.float32) - y_eval) ** 2))

        return ModelSpec(model=Regressor(), make_batch=make_batch, loss="mse",
                         quality=neg_mse, quality_name="mse", quality_direction="minimize",
                         epoch_samples=512, train_before_infer=train_before_infer)


    def two_inputs(framework):
        a = keras.Input((32,))
        b = keras.Input((6,))
        x = keras.layers.Concatenate()([keras.layers.Dense(64)(a), keras.layers.Dense(8)(b)])
        model = keras.Model([a, b], keras.layers.Dense(3)(x))

        def make_batch(n, rng):
            return ((rng.standard_normal((n, 32)).astype(np.float32),
                     rng.standard_normal((n, 6)).astype(np.float32)),
                    rng.integers(0, 3, n))

        def loss(outputs, targets):
            return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=targets, logits=tf.cast(outputs, tf.float32)))

        return ModelSpec(model=model, make_batch=make_batch, loss=loss)


    def torch_model(framework):
        import torch
        return ModelSpec(model=torch.nn.Linear(4, 2),
                         make_batch=lambda n, rng: (np.zeros((n, 4), np.float32), None))


    def wrong_batch(framework):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        return ModelSpec(model=model, make_batch=lambda n, rng: (
            np.zeros((n + 1, 4), np.float32), np.zeros(n + 1, np.int64)))


    def rejected_batch(framework):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        return ModelSpec(model=model, make_batch=lambda n, rng: (
            np.zeros((n, 5), np.float32), np.zeros(n, np.int64)))
''')


@pytest.fixture(scope="module")
def user_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("user") / "user_models.py"
    path.write_text(USER_MODELS)
    return path


def _user(user_file: Path, function: str, mode: str, **knobs: Any) -> TrialConfig:
    return _config(f"{user_file}:{function}", mode, **knobs)


@pytest.mark.slow
@pytest.mark.parametrize("execution", ["eager", "graph", "xla"])
def test_a_subclassed_user_model_trains_and_infers(backend: Any, user_file: Path,
                                                   execution: str) -> None:
    train = _run(backend, _user(user_file, "regression", "train", execution=execution,
                                learning_rate=0.01), steps=30)
    info = train["info"]
    assert info["quality_name"] == "mse" and info["quality_direction"] == "minimize"
    assert info["param_count"] == 16 * 128 + 128 + 128 + 1
    assert info["flops_per_sample"] > 0
    assert train["quality"] < 8.0  # it learned (the targets' variance is ~16)
    infer = _run(backend, _user(user_file, "regression", "infer", execution=execution))
    assert "base_model" not in infer["info"]  # measured as the factory returned it
    assert math.isfinite(infer["quality"])


@pytest.mark.slow
def test_a_user_model_takes_every_knob_that_applies(backend: Any, user_file: Path) -> None:
    """Pruning, int8 and the base recipe on a model that is not a built-in; structured
    pruning without the spec's prune_structured is unsupported, with the reason."""
    kw = {"workload_kwargs": {"train_before_infer": True}}
    pruned = _run(backend, _user(user_file, "regression", "infer", pruning_ratio=0.5, **kw))
    assert pruned["info"]["base_model"] in ("trained", "cached")
    assert pruned["info"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    int8 = _run(backend, _user(user_file, "regression", "infer", precision="int8", **kw))
    assert int8["info"]["runtime"] == "tflite" and int8["dtype"] == "int8"
    assert int8["quality"] == pytest.approx(pruned["quality"], rel=0.5, abs=1.0)
    with pytest.raises(UnsupportedConfigError, match="prune_structured") as e:
        _run(backend, _user(user_file, "regression", "train", pruning_ratio=0.5,
                            pruning_structure="structured"))
    _one_line(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_a_two_input_functional_model(backend: Any, user_file: Path, mode: str) -> None:
    out = _run(backend, _user(user_file, "two_inputs", mode))
    assert out["quality"] is None
    assert out["info"]["param_count"] == 32 * 64 + 64 + 6 * 8 + 8 + 72 * 3 + 3
    if mode == "infer":
        int8 = _run(backend, _user(user_file, "two_inputs", mode, precision="int8"))
        assert int8["dtype"] == "int8"


@pytest.mark.slow
def test_a_model_of_another_framework_is_a_one_line_factory_error(backend: Any,
                                                                 user_file: Path) -> None:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    with pytest.raises(ModelFactoryError, match=r"torch\.nn.*not a keras\.Model") as e:
        _run(backend, _user(user_file, "torch_model", "infer"))
    _one_line(e.value)


@pytest.mark.slow
def test_a_batch_of_the_wrong_size_is_a_one_line_factory_error(backend: Any,
                                                               user_file: Path) -> None:
    with pytest.raises(ModelFactoryError, match=r"first \(batch\) dimension must be 64") as e:
        _run(backend, _user(user_file, "wrong_batch", "train"))
    _one_line(e.value)
    with pytest.raises(ModelFactoryError, match="rejected a batch from make_batch") as e:
        _run(backend, _user(user_file, "rejected_batch", "train"))
    _one_line(e.value)


@pytest.mark.slow
def test_teardown_leaves_nothing_for_the_next_trial(backend: Any) -> None:
    """Warm workers: the mixed policy is reset, traced gradient functions are forgotten
    (they hold the torn-down model's variables), the device scope is left."""
    import keras

    from autotune.backends._tensorflow import _custom_gradient_names

    before = _custom_gradient_names()
    config = _config("digits_mlp", "train", kwargs=SMALL_MLP)
    if "bf16" in NATIVE:
        config = dataclasses.replace(config, precision="bf16")
    _run(backend, config)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert _custom_gradient_names() <= before
    assert backend._device_scope is None and backend.model is None


# -- in a worker process, under a real memory cap ------------------------------------------------


@pytest.mark.slow
def test_in_a_worker_under_a_memory_cap_compiles_land_outside_the_cap() -> None:
    """The worker's address-space cap (``budget.memory_mb``): XLA's compile falls in the
    first step (the compile phase, not the model build) and TFLite's conversion runs, both
    with the cap lifted meanwhile (under it LLVM's code memory or the converter's threads
    fail to map and the process aborts: a trial that should end "oom" would end killed)."""
    from autotune.launch import ProcessLauncher
    from autotune.space import parse_space

    def trial(mode: str, **params: Any) -> dict[str, Any]:
        space = parse_space({
            "workload": {"factory": "digits_mlp", "kwargs": SMALL_MLP}, "mode": mode,
            "objectives": {"throughput_sps": "maximize"},
            "budget": {"trial_seconds": 60, "warmup_max_s": 1, "window_min_s": 0.3,
                       "window_max_s": 1, "window_min_steps": 10, "train_epochs": 1,
                       "memory_mb": 256}})
        config = TrialConfig.from_params(space, {"backend": "tensorflow", "threads": 2,
                                                 "batch_size": 64, **params})
        outcome = ProcessLauncher().run(config)
        assert outcome.status == "ok", (outcome.failure_kind, outcome.reason,
                                        outcome.traceback[-3000:])
        result: dict[str, Any] = outcome.result
        return result

    xla = trial("train", execution="xla")
    assert xla["model"]["execution"] == "xla"
    assert xla["first_step_s"] > xla["setup_s"], (xla["first_step_s"], xla["setup_s"])
    assert max(xla["step_times_s"]) < xla["first_step_s"]  # the compile is a one-off
    assert xla["accuracy"] >= 0.6
    int8 = trial("infer", precision="int8", execution="graph")
    assert int8["model"]["runtime"] == "tflite" and int8["versions"]["runtime"] == "tflite"
    assert int8["accuracy"] > 0.5
