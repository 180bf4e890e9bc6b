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

__all__ = ["BACKENDS", "Backend", "BackendEntry", "Capabilities", "capabilities",
           "load_backend"]


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
}


def capabilities(backend: str, device: str) -> Capabilities:
    """What ``backend`` can run on ``device``, decided without importing the framework."""
    if backend == "torch" and device == "cpu":
        caps = cpu_capabilities()
        # PyTorch's int8 path on CPU is dynamic quantisation of Linear layers, inference only.
        return Capabilities(precisions=caps.precisions | {"int8"}, modes={"train", "infer"},
                            int8_modes={"infer"}, reasons=caps.reasons)
    return Capabilities(
        precisions=frozenset(), modes=frozenset(), int8_modes=frozenset(),
        reasons={"*": f"backend {backend!r} on device {device!r} is not supported yet "
                      "(this build runs torch on cpu)"},
    )


def load_backend(name: str) -> Backend:
    """Import and instantiate backend ``name`` (in the worker process only)."""
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
