"""The conformance suite on every backend, and on the numpy fake."""

from __future__ import annotations

from typing import ClassVar

import pytest

from autotune.testing.conformance import BackendConformance


class TestNumpyFake(BackendConformance):
    backend = "autotune.testing.fake_backend:NumpyBackend"
    precisions: ClassVar[dict[str, str]] = {"fp32": "float32", "fp16": "float16"}


@pytest.mark.slow
class TestTorch(BackendConformance):
    backend = "torch"
    # autocast bf16/fp16 compute on any x86 CPU (slowly without native support); int8 is
    # dynamic quantisation in infer mode
    precisions: ClassVar[dict[str, str]] = {"fp32": "float32", "bf16": "bfloat16",
                                            "fp16": "float16", "int8": "int8"}


@pytest.mark.slow
class TestTensorFlow(BackendConformance):
    backend = "tensorflow"
    # bf16: the mixed_bfloat16 policy; int8: TFLite dynamic-range quantisation (infer).
    # fp16 needs XLA on CPU (capabilities) and is exercised in test_backend_tensorflow.
    precisions: ClassVar[dict[str, str]] = {"fp32": "float32", "bf16": "bfloat16",
                                            "int8": "int8"}


@pytest.mark.slow
class TestMindSpore(BackendConformance):
    backend = "mindspore"
    # fp16: auto mixed precision; MindSpore has no bf16 CPU kernels and no int8 path.
    precisions: ClassVar[dict[str, str]] = {"fp32": "float32", "fp16": "float16"}
