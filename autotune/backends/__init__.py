"""Backend registry: names map to dotted paths, imported only when a worker needs them.

The study driver consults :func:`capabilities` (no framework import) to reject unsupported
combinations without starting a worker; the worker calls :func:`load_backend`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass

from autotune.backends._base import Backend, Capabilities, cpu_capabilities

__all__ = ["BACKENDS", "BEST_EXECUTION", "Backend", "BackendEntry", "Capabilities",
           "capabilities", "load_backend", "resolve_execution", "unsupported_device_reason"]


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend lives and how to install it."""

    name: str
    target: str  # "module:Class"
    distribution: str  # the import name whose presence means "installed"
    extra: str  # pip extra of this project

    @property
    def install_hint(self) -> str:
        """The exact command that installs the backend's framework."""
        return f"pip install 'autotune[{self.extra}]'"

    def is_installed(self) -> bool:
        """Whether the framework can be imported (checked without importing it)."""
        return importlib.util.find_spec(self.distribution) is not None


BACKENDS: Mapping[str, BackendEntry] = {
    "torch": BackendEntry("torch", "autotune.backends._torch:TorchBackend", "torch", "torch"),
    "tensorflow": BackendEntry("tensorflow", "autotune.backends._tensorflow:TensorFlowBackend",
                               "tensorflow", "tensorflow"),
    "mindspore": BackendEntry("mindspore", "autotune.backends._mindspore:MindSporeBackend",
                              "mindspore", "mindspore"),
}

#: What ``execution: auto`` means per backend: the mode an expert would use on CPU
#: (research/frameworks_on_cpu.md: torch.compile does not pay for MLPs at these sizes;
#: TensorFlow eager is 4-5x slower than tf.function; MindSpore PyNative 5x slower than graph).
BEST_EXECUTION: Mapping[str, str] = {"torch": "eager", "tensorflow": "graph",
                                     "mindspore": "graph"}

#: Device kinds each backend runs trials on. Discovery may list more (torch sees Ascend NPUs
#: through torch_npu and TPUs through torch_xla): those are refused with a reason below.
_DEVICE_KINDS: Mapping[str, tuple[str, ...]] = {
    "torch": ("cpu", "cuda"),
    "tensorflow": ("cpu", "cuda", "tpu"),
    "mindspore": ("cpu", "cuda", "npu"),
}

#: Why a device that discovery lists cannot run a backend's trials.
_UNSUPPORTED_KINDS: Mapping[tuple[str, str], str] = {
    ("torch", "npu"): (
        "the torch backend runs trials on cpu and cuda only: `autotune devices` lists "
        "torch_npu's Ascend NPUs, but placement, synchronisation and memory statistics "
        "through torch.npu are not implemented (use backend mindspore on npu)"),
    ("torch", "tpu"): (
        "the torch backend runs trials on cpu and cuda only: `autotune devices` lists "
        "torch_xla's TPUs, but the backend has no XLA device path (lazy tensors, "
        "mark_step) (use backend tensorflow on tpu)"),
    ("tensorflow", "npu"): "TensorFlow has no Ascend NPU support (use backend mindspore)",
    ("mindspore", "tpu"): "MindSpore has no TPU support (use backend tensorflow)",
}


def unsupported_device_reason(backend: str, device: str) -> str | None:
    """Why ``backend`` cannot run trials on ``device`` (``None`` when it can)."""
    kind = device.split(":")[0]
    if backend in _DEVICE_KINDS and kind in _DEVICE_KINDS[backend]:
        return None
    return _UNSUPPORTED_KINDS.get(
        (backend, kind), f"backend {backend!r} does not run on {kind!r} devices")


def resolve_execution(backend: str, execution: str) -> str:
    """``auto`` -> the backend's best mode; anything else unchanged."""
    return BEST_EXECUTION.get(backend, "eager") if execution == "auto" else execution


def capabilities(backend: str, device: str) -> Capabilities:
    """What ``backend`` can run on ``device``, decided without importing the framework.

    CPU precisions follow the CPU's native instructions (:func:`cpu_capabilities`); the
    per-framework limits come from research/frameworks_on_cpu.md.
    """
    kind = device.split(":")[0]
    unsupported = unsupported_device_reason(backend, device)
    if unsupported is not None:
        return Capabilities(precisions=frozenset(), modes=frozenset(),
                            reasons={"*": unsupported})
    both = frozenset({"train", "infer"})
    if kind == "cpu":
        cpu = cpu_capabilities()
        precisions, reasons = set(cpu.precisions), dict(cpu.reasons)
    else:
        precisions, reasons = {"fp32", "bf16", "fp16"}, {}
    if backend == "torch":
        if kind == "cpu":
            # int8: dynamic quantisation of Linear layers, a CPU inference path
            precisions.add("int8")
        else:
            reasons["int8"] = "torch dynamic int8 quantisation runs on CPU only"
        reasons["execution:xla"] = "torch has no xla execution mode here; use eager or graph"
        return Capabilities(precisions, both, {"infer"}, reasons,
                            executions={"eager", "graph"})
    if backend == "tensorflow":
        excluded: dict[tuple[str, str], str] = {}
        if kind == "cpu":
            precisions.add("int8")  # TFLite dynamic-range quantisation
            # TF's fp16 CPU kernels take ~1.2 s per MLP step without XLA (research).
            for ex in ("eager", "graph"):
                excluded[("fp16", ex)] = "TensorFlow fp16 on CPU is usable only with xla"
            # int8 runs on TFLite whatever the execution knob says: one measured variant
            for ex in ("eager", "xla"):
                excluded[("int8", ex)] = ("TensorFlow int8 runs on TFLite; execution has no "
                                          "effect (use graph or auto)")
        else:
            reasons["int8"] = "TensorFlow int8 (TFLite) runs on CPU only here"
        if kind == "tpu":
            precisions.discard("fp16")
            reasons["fp16"] = ("TPUs have no float16 arithmetic; their 16-bit type is "
                               "bfloat16 (use bf16)")
        return Capabilities(precisions, both, {"infer"}, reasons,
                            executions={"eager", "graph", "xla"}, excluded=excluded)
    # mindspore
    if kind == "cpu":
        precisions.discard("bf16")
        reasons["bf16"] = "MindSpore has no bf16 CPU kernels (MatMul, ReLU)"
    reasons["int8"] = "MindSpore has no int8 inference path on this install"
    reasons["execution:xla"] = "mindspore has no xla execution mode; use eager or graph"
    precisions.discard("int8")
    return Capabilities(precisions, both, frozenset(), reasons,
                        executions={"eager", "graph"})


def load_backend(name: str) -> Backend:
    """Import and instantiate backend ``name`` (in the worker process only).

    ``name`` is a registered backend or ``"package.module:Class"`` (a third-party backend,
    e.g. one being checked with :mod:`autotune.testing.conformance`).
    """
    if name not in BACKENDS and ":" in name:
        module_name, _, cls_name = name.partition(":")
        custom: Backend = getattr(importlib.import_module(module_name), cls_name)()
        return custom
    entry = BACKENDS[name]
    if not entry.is_installed():
        from autotune.exceptions import UnsupportedConfigError

        raise UnsupportedConfigError(
            f"backend {name!r} is not installed; install it with: {entry.install_hint}"
        )
    module_name, _, cls_name = entry.target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: Backend = cls()
    return backend
