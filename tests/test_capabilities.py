"""``capabilities(backend, device)``: what each backend declares per device kind, decided
without importing a framework, and refused with a reason a person can act on.

CPU precisions depend on the CPU's native instructions, so each test fixes the CPU flags
(``no_native_16bit``: an AVX2-only CPU like this one; ``native_16bit``: AVX512-BF16/FP16).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import pytest

import autotune.backends._base as base
from autotune.backends import capabilities, unsupported_device_reason
from autotune.backends._probe import probe_torch

BACKENDS = ("torch", "tensorflow", "mindspore")


@pytest.fixture
def no_native_16bit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "cpu_flags", lambda: frozenset({"avx2", "fma"}))


@pytest.fixture
def native_16bit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "cpu_flags",
                        lambda: frozenset({"avx2", "avx512_bf16", "avx512_fp16"}))


def _supported(backend: str, device: str, mode: str, precision: str,
               execution: str) -> bool:
    return capabilities(backend, device).check(mode, precision, execution) is None


# -- device kinds ----------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "kind", "runs"), [
    ("torch", "cpu", True), ("torch", "cuda", True), ("torch", "tpu", False),
    ("torch", "npu", False),
    ("tensorflow", "cpu", True), ("tensorflow", "cuda", True), ("tensorflow", "tpu", True),
    ("tensorflow", "npu", False),
    ("mindspore", "cpu", True), ("mindspore", "cuda", True), ("mindspore", "tpu", False),
    ("mindspore", "npu", True),
])
@pytest.mark.usefixtures("native_16bit")
def test_which_device_kinds_each_backend_runs(backend: str, kind: str, runs: bool) -> None:
    device = kind if kind == "cpu" else f"{kind}:0"
    caps = capabilities(backend, device)
    assert (unsupported_device_reason(backend, device) is None) == runs
    assert _supported(backend, device, "train", "fp32", "graph") == runs
    assert _supported(backend, device, "infer", "fp32", "eager") == runs
    if not runs:
        reason = caps.check("infer", "fp32", "eager")
        assert reason == unsupported_device_reason(backend, device)
        assert not caps.precisions and not caps.modes


@pytest.mark.parametrize(("backend", "kind", "needles"), [
    ("torch", "npu", ("torch_npu", "cpu and cuda only", "use backend mindspore")),
    ("torch", "tpu", ("torch_xla", "cpu and cuda only", "use backend tensorflow")),
    ("tensorflow", "npu", ("no Ascend NPU support", "mindspore")),
    ("mindspore", "tpu", ("no TPU support", "tensorflow")),
])
def test_unsupported_devices_say_why_and_what_to_use(backend: str, kind: str,
                                                     needles: tuple[str, ...]) -> None:
    reason = capabilities(backend, f"{kind}:0").check("train", "fp32", "eager")
    assert reason is not None
    for needle in needles:
        assert needle in reason, reason


def test_an_unknown_backend_or_kind_is_refused() -> None:
    assert capabilities("jax", "cpu").check("train", "fp32") == \
        "backend 'jax' does not run on 'cpu' devices"
    assert capabilities("torch", "xpu:0").check("train", "fp32") == \
        "backend 'torch' does not run on 'xpu' devices"


# -- CPU precisions follow the CPU ----------------------------------------------------------


@pytest.mark.usefixtures("no_native_16bit")
@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_without_native_16bit_offers_fp32_only(backend: str) -> None:
    caps = capabilities(backend, "cpu")
    assert {"bf16", "fp16"}.isdisjoint(caps.precisions)
    bf16 = str(caps.check("train", "bf16", "graph"))
    assert ("AVX512-BF16" if backend != "mindspore" else "no bf16 CPU kernels") in bf16
    assert "AVX512-FP16" in str(caps.check("train", "fp16", "xla"))
    assert caps.check("train", "fp32", "graph") is None


@pytest.mark.usefixtures("native_16bit")
def test_cpu_with_native_16bit() -> None:
    assert _supported("torch", "cpu", "train", "bf16", "eager")
    assert _supported("torch", "cpu", "infer", "fp16", "graph")
    assert _supported("tensorflow", "cpu", "train", "bf16", "graph")
    # MindSpore has no bf16 CPU kernels whatever the CPU
    assert "no bf16 CPU kernels" in str(capabilities("mindspore", "cpu").check(
        "train", "bf16", "graph"))
    assert _supported("mindspore", "cpu", "train", "fp16", "graph")


# -- TensorFlow's exclusions -----------------------------------------------------------------


@pytest.mark.usefixtures("native_16bit")
def test_tensorflow_fp16_on_cpu_only_with_xla() -> None:
    for execution in ("eager", "graph"):
        reason = capabilities("tensorflow", "cpu").check("train", "fp16", execution)
        assert reason == "TensorFlow fp16 on CPU is usable only with xla"
    assert _supported("tensorflow", "cpu", "train", "fp16", "xla")
    # on a GPU every execution mode has fp16 kernels
    for execution in ("eager", "graph", "xla"):
        assert _supported("tensorflow", "cuda:0", "train", "fp16", execution)


@pytest.mark.usefixtures("no_native_16bit")
def test_tensorflow_int8_is_tflite_inference_on_cpu_in_one_execution() -> None:
    cpu = capabilities("tensorflow", "cpu")
    assert cpu.check("infer", "int8", "graph") is None
    for execution in ("eager", "xla"):
        assert "TFLite" in str(cpu.check("infer", "int8", execution))
    assert cpu.check("train", "int8", "graph") == "int8 is supported only in infer mode"
    for device in ("cuda:0", "tpu:0"):
        assert capabilities("tensorflow", device).check("infer", "int8", "graph") == \
            "TensorFlow int8 (TFLite) runs on CPU only here"


def test_tensorflow_on_tpu_computes_in_bf16_not_fp16() -> None:
    tpu = capabilities("tensorflow", "tpu:3")
    assert tpu.precisions == {"fp32", "bf16"}
    assert tpu.executions == {"eager", "graph", "xla"}
    assert "bfloat16" in str(tpu.check("train", "fp16", "xla"))
    assert tpu.check("train", "bf16", "xla") is None


# -- execution modes: xla only where a framework has it --------------------------------------


@pytest.mark.usefixtures("no_native_16bit")
@pytest.mark.parametrize(("backend", "device"), [
    ("torch", "cpu"), ("torch", "cuda:0"), ("mindspore", "cpu"), ("mindspore", "npu:0"),
    ("mindspore", "cuda:0"),
])
def test_xla_execution_is_tensorflow_only(backend: str, device: str) -> None:
    caps = capabilities(backend, device)
    assert caps.executions == {"eager", "graph"}
    assert "no xla execution mode" in str(caps.check("train", "fp32", "xla"))
    assert caps.check("train", "fp32", "graph") is None


# -- int8 ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("no_native_16bit")
def test_int8_paths() -> None:
    assert _supported("torch", "cpu", "infer", "int8", "eager")
    assert _supported("torch", "cpu", "generate", "int8", "eager")
    assert capabilities("torch", "cpu").check("train", "int8") == \
        "int8 is supported only in infer or generate mode"
    assert "CPU only" in str(capabilities("torch", "cuda:0").check("infer", "int8"))
    for device in ("cpu", "npu:0"):
        assert "no int8" in str(capabilities("mindspore", device).check("infer", "int8"))


@pytest.mark.parametrize("device", ["cuda:0", "npu:0"])
def test_accelerators_offer_16bit_whatever_the_cpu(no_native_16bit: None, device: str) -> None:
    assert {"fp32", "bf16", "fp16"} <= set(capabilities("mindspore", device).precisions)
    if device == "cuda:0":
        assert {"fp32", "bf16", "fp16"} <= set(capabilities("torch", device).precisions)


# -- from discovery to capabilities: a listed device is runnable or refused with a reason ----


def _torch_with_npu_and_xla(monkeypatch: pytest.MonkeyPatch) -> Any:
    from types import ModuleType

    xm = ModuleType("torch_xla.core.xla_model")
    xm.get_xla_supported_devices = lambda: ["xla:0"]  # type: ignore[attr-defined]
    xm.xla_device_hw = lambda device: "TPU"  # type: ignore[attr-defined]
    xm.get_memory_info = lambda device: {"bytes_limit": 2**34}  # type: ignore[attr-defined]
    for name in ("torch_xla", "torch_xla.core"):
        monkeypatch.setitem(sys.modules, name, ModuleType(name))
    monkeypatch.setitem(sys.modules, "torch_xla.core.xla_model", xm)
    npu = SimpleNamespace(is_available=lambda: True, device_count=lambda: 1,
                          get_device_name=lambda i: "Ascend910B3")
    cuda = SimpleNamespace(is_available=lambda: False)
    return SimpleNamespace(__version__="2.13.0", cuda=cuda, npu=npu)


def test_every_device_torch_discovers_is_runnable_or_refused_with_a_reason(
        monkeypatch: pytest.MonkeyPatch, no_native_16bit: None) -> None:
    monkeypatch.setenv("PATH", "")  # no npu-smi: memory and driver unknown
    report = probe_torch(_torch_with_npu_and_xla(monkeypatch))
    ids = [d["id"] for d in report["devices"]]
    assert ids == ["cpu", "npu:0", "tpu:0"]
    for device in ids:
        reason = capabilities("torch", device).check("train", "fp32", "eager")
        if device == "cpu":
            assert reason is None
        else:
            # declared unsupported for torch, naming the plug-in and the backend to use
            assert reason is not None and "cpu and cuda only" in reason
    assert "torch_npu" in str(capabilities("torch", "npu:0").check("train", "fp32"))
    assert "torch_xla" in str(capabilities("torch", "tpu:0").check("train", "fp32"))
    # ...and the backends that do drive them accept the same ids
    assert _supported("mindspore", "npu:0", "train", "fp32", "graph")
    assert _supported("tensorflow", "tpu:0", "train", "bf16", "xla")
