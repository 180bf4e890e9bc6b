"""The built-in models in Keras 3 on TensorFlow (see :mod:`autotune.workloads._builtin` for
the architectures, defined once for every framework).

Initialisation follows torch's defaults (``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for dense and
conv weights and dense biases; batch norm with gamma 1, beta 0, momentum 0.1 in torch's
sense, eps 1e-5), so every framework starts from the same distribution and accuracies
compare like for like. Layers take the dtype from Keras' global policy, which the backend
sets before the factory runs (``mixed_bfloat16`` in bf16 training, for example).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from autotune.backends._pruning import apply_structured, channel_keep
from autotune.workloads._builtin import CNNArch, MLPArch

#: torch's default weight initialisation, kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in))
_TORCH_SCALE = 1.0 / 3.0


def _kernel_init(seed: int) -> Any:
    return keras.initializers.VarianceScaling(scale=_TORCH_SCALE, mode="fan_in",
                                              distribution="uniform", seed=seed)


def _dense(units: int, fan_in: int, seed: int, name: str,
           activation: str | None = None) -> Any:
    bound = 1.0 / math.sqrt(fan_in)
    return keras.layers.Dense(
        units, activation=activation, name=name, kernel_initializer=_kernel_init(seed),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed + 1))


def build_mlp(widths: Sequence[int], seed: int) -> Any:
    """``keras.Sequential`` of Dense layers (``dense0``, ...), ReLU between, linear logits."""
    widths = tuple(int(w) for w in widths)
    layers: list[Any] = [keras.Input(shape=(widths[0],))]
    n = len(widths) - 1
    for i in range(n):
        layers.append(_dense(widths[i + 1], widths[i], seed * 1000 + 2 * i, f"dense{i}",
                             "relu" if i < n - 1 else None))
    return keras.Sequential(layers, name="mlp")


def _conv(filters: int, seed: int, name: str) -> Any:
    return keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name,
                               kernel_initializer=_kernel_init(seed))


def _bn(name: str) -> Any:
    # torch's BatchNorm2d: running = 0.9 running + 0.1 batch (Keras' momentum is the 0.9)
    return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def build_cnn(arch: CNNArch, seed: int) -> Any:
    """The small ResNet of ``arch`` as a functional model on NHWC inputs.

    Layer names: ``stem``/``stem_bn``, ``block{i}_conv1``/``_bn1``/``_conv2``/``_bn2``,
    ``head``; :func:`prune_structured` finds the layers by them.
    """
    s = seed * 1000
    inputs = keras.Input(shape=(arch.height, arch.width, arch.in_channels))
    x = _conv(arch.channels, s, "stem")(inputs)
    x = keras.layers.ReLU()(_bn("stem_bn")(x))
    for i, inner in enumerate(arch.inner_widths()):
        out = _conv(inner, s + 10 * i + 1, f"block{i}_conv1")(x)
        out = keras.layers.ReLU()(_bn(f"block{i}_bn1")(out))
        out = _bn(f"block{i}_bn2")(_conv(arch.channels, s + 10 * i + 2,
                                         f"block{i}_conv2")(out))
        x = keras.layers.ReLU()(keras.layers.Add()([out, x]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = _dense(arch.classes, arch.channels, s + 999, "head")(x)
    return keras.Model(inputs, outputs, name="cnn")


# -- inference ---------------------------------------------------------------------------------

#: A graph (XLA for float16, whose plain CPU kernels are unusably slow) per model.
_PREDICT: weakref.WeakKeyDictionary[Any, Callable[[Any], Any]] = weakref.WeakKeyDictionary()


def _predict_fn(model: Any) -> Callable[[Any], Any]:
    fn = _PREDICT.get(model)
    if fn is None:
        ref = weakref.ref(model)  # the cache must not keep the model alive

        def forward(x: Any) -> Any:
            m = ref()
            assert m is not None
            return m(x, training=False)

        fn = tf.function(forward, reduce_retracing=True,
                         jit_compile=_compute_dtype(model) == "float16")
        _PREDICT[model] = fn
    return fn


def _compute_dtype(model: Any) -> str:
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if any(len(w.shape) >= 2 for w in layer.trainable_weights):
            return str(layer.compute_dtype)
    return str(model.compute_dtype)


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits of ``x`` (numpy): through a Keras model in whatever dtype the backend converted
    it to, or through the int8 runtime object (``run(*inputs)`` on numpy arrays)."""
    if not isinstance(model, keras.Model) and callable(getattr(model, "run", None)):
        return np.asarray(model.run(x), dtype=np.float32)
    out = _predict_fn(model)(tf.constant(x))
    return np.asarray(tf.cast(out, tf.float32))


# -- structured pruning ------------------------------------------------------------------------


def prune_structured(model: Any, arch: MLPArch | CNNArch, ratio: float) -> Any:
    """Rebuild ``model`` smaller with the neurons/channels the shared rules keep (under the
    current global dtype policy, as the factory built the original)."""
    if isinstance(arch, MLPArch):
        dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
        weights = [np.asarray(layer.kernel.numpy(), dtype=np.float32).T for layer in dense]
        biases = [np.asarray(layer.bias.numpy(), dtype=np.float32) for layer in dense]
        new_w, new_b = apply_structured(weights, biases, ratio)
        smaller = build_mlp((new_w[0].shape[1], *(w.shape[0] for w in new_w)), 0)
        smaller_dense = [layer for layer in smaller.layers
                         if isinstance(layer, keras.layers.Dense)]
        for layer, w, b in zip(smaller_dense, new_w, new_b, strict=True):
            layer.set_weights([w.T, b])
        return smaller
    blocks = len(arch.inner_widths())
    keeps = []
    for i in range(blocks):
        kernel = model.get_layer(f"block{i}_conv1").kernel.numpy()  # (kh, kw, in, out)
        keeps.append(channel_keep(np.asarray(kernel, np.float32).transpose(3, 2, 0, 1),
                                  ratio))
    smaller = build_cnn(dataclasses.replace(arch, inner=tuple(len(k) for k in keeps)), 0)
    for name in ("stem", "stem_bn", "head", *(f"block{i}_bn2" for i in range(blocks))):
        smaller.get_layer(name).set_weights(model.get_layer(name).get_weights())
    for i, keep in enumerate(keeps):
        (kernel,) = model.get_layer(f"block{i}_conv1").get_weights()
        smaller.get_layer(f"block{i}_conv1").set_weights([kernel[..., keep]])
        # gamma, beta, moving mean, moving variance: all per channel
        bn = model.get_layer(f"block{i}_bn1").get_weights()
        smaller.get_layer(f"block{i}_bn1").set_weights([w[keep] for w in bn])
        (kernel,) = model.get_layer(f"block{i}_conv2").get_weights()
        smaller.get_layer(f"block{i}_conv2").set_weights([kernel[:, :, keep, :]])
    return smaller


__all__ = ["build_cnn", "build_mlp", "predict", "prune_structured"]
