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
