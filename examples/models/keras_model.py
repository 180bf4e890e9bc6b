"""A user's own Keras model, written as a user would: a functional CNN on 16x16 images.

autotune calls ``build("tensorflow", **kwargs)`` inside its worker, after it has set the
threads, the device and the mixed-precision policy, so the layers are built in the trial's
precision.
"""

from __future__ import annotations

import keras
import numpy as np
from shapes_data import make_shapes  # a sibling module: the file's folder is importable

import autotune


def build(framework: str, width: int = 16) -> autotune.ModelSpec:
    assert framework == "tensorflow", framework
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, activation="relu")(x)
    outputs = keras.layers.Dense(4, dtype="float32")(x)  # logits in fp32 under any policy
    model = keras.Model(inputs, outputs)
    x_test, y_test = make_shapes(512, np.random.default_rng(123), channels_last=True)

    def accuracy(model: object) -> float:
        # a keras.Model, or (int8) the TFLite runner the backend hands over
        logits = np.asarray(model(x_test))
        return float((logits.argmax(1) == y_test).mean())

    def make_batch(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return make_shapes(n, rng, channels_last=True)

    return autotune.ModelSpec(model, make_batch, loss="cross_entropy", quality=accuracy,
                              quality_name="accuracy", epoch_samples=2048,
                              train_before_infer=True)
