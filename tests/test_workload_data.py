"""The built-in digits data is fit for every precision: no extreme values after
standardisation, and int8 inference keeps the fp32 model's accuracy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from autotune.config import Budget, TrialConfig
from autotune.testing.inprocess import set_up
from autotune.workloads._builtin import digits_data


def test_digits_split_has_no_extreme_values() -> None:
    """Pixels blank in the training split once became 1e6 in the held-out split."""
    data = digits_data()
    for x in (data.x_train, data.x_test):
        assert np.isfinite(x).all()
        assert np.abs(x).max() <= 20.0  # raw pixels are 0-16
    assert np.abs(data.x_train.mean(axis=0)).max() < 1e-4  # still centred


@pytest.mark.slow
def test_torch_int8_keeps_the_fp32_accuracy_on_digits() -> None:
    """Dynamic int8 quantisation scales activations per batch: an outlier in the inputs
    had taken the accuracy to 0.1 (chance) while fp32 stayed at 0.96."""
    pytest.importorskip("torch")
    from autotune.backends._torch import TorchBackend

    accuracy = {}
    for precision in ("fp32", "int8"):
        config = TrialConfig("digits_mlp", "infer", "torch", "cpu", 127, precision, 1e-3,
                             "adam", 0.0, 1, Budget(), execution="eager")
        backend = TorchBackend()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            set_up(backend, config)
            accuracy[precision] = backend.evaluate()
        backend.teardown()
    assert accuracy["fp32"] > 0.9
    assert accuracy["int8"] == pytest.approx(accuracy["fp32"], abs=0.03)
