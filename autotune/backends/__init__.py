"""Backend registry: names map to framework-free specs; backends are imported only when a
worker needs them.

Each backend declares a :class:`BackendSpec` (name, install facts, device kinds, best
execution mode, capabilities, launch-config spelling, probe). The study driver reads it
(:func:`capabilities`, :func:`resolve_execution`, :func:`unsupported_device_reason`: no
framework import) to reject unsupported combinations without starting a worker; the worker
calls :func:`load_backend`.

A backend is a registered name (:data:`BACKENDS`) or a third-party ``"package.module:Class"``
(:func:`get_spec`): its module is imported (it must not import its framework at top level,
the same rule as the built-in backends) and the class's ``backend_spec`` is read.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping

from autotune.backends import _spec_mindspore, _spec_sim, _spec_tensorflow, _spec_torch
from autotune.backends._base import Backend, Capabilities, cpu_capabilities
from autotune.backends._spec import BackendLookupError, BackendSpec, default_spec

__all__ = ["BACKENDS", "BEST_EXECUTION", "Backend", "BackendEntry", "BackendLookupError",
           "BackendSpec", "Capabilities", "backend_class", "capabilities", "cpu_capabilities",
           "get_spec", "is_third_party_name", "load_backend", "resolve_execution",
           "unsupported_device_reason"]

#: The former name of :class:`BackendSpec` (what the registry held before specs).
BackendEntry = BackendSpec

BACKENDS: Mapping[str, BackendSpec] = {
    spec.name: spec for spec in (_spec_torch.SPEC, _spec_tensorflow.SPEC, _spec_mindspore.SPEC,
                                 _spec_sim.SPEC)
}

#: What ``execution: auto`` means per registered backend (each spec's ``best_execution``):
#: the mode an expert would use on CPU (research/frameworks_on_cpu.md).
BEST_EXECUTION: Mapping[str, str] = {n: s.best_execution for n, s in BACKENDS.items()}

_THIRD_PARTY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def is_third_party_name(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:Class`` (checked without importing)."""
    return bool(_THIRD_PARTY.match(name))


def backend_class(name: str) -> type[Backend]:
    """The Backend class ``name`` (registered or ``"package.module:Class"``) names.

    Imports its module (never the framework of a registered backend: their modules import
    it in the constructor). Raises :class:`BackendLookupError` with a one-line reason.
    """
    target = BACKENDS[name].target if name in BACKENDS else name
    if name not in BACKENDS and not is_third_party_name(name):
        if ":" in name:
            raise BackendLookupError(f"backend {name!r}: expected 'package.module:Class'")
        raise BackendLookupError(f"unknown backend {name!r}; registered: "
                                 f"{', '.join(BACKENDS)}, or a third-party "
                                 "'package.module:Class'")
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # a module that raises anything while importing
        detail = str(e) if isinstance(e, ImportError) else f"{type(e).__name__}: {e}"
        raise BackendLookupError(f"backend {name!r}: cannot import module {module_name!r} "
                                 f"({detail})") from e
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise BackendLookupError(f"backend {name!r}: module {module_name!r} has no "
                                 f"attribute {cls_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendLookupError(f"backend {name!r}: {cls_name} is not a subclass of "
                                 "autotune.backends.Backend")
    return cls


def get_spec(name: str) -> BackendSpec:
    """The spec of backend ``name``: a registered name, or ``"package.module:Class"``.

    A third-party class declares its spec as the class attribute ``backend_spec`` (a
    :class:`BackendSpec`; a class attribute ``spec`` holding one is accepted too). A class
    without one gets a minimal default spec (:func:`autotune.backends._spec.default_spec`):
    device kinds ``("cpu",)``, executions ``{"eager"}`` (best: eager), precision fp32
    only, modes train and infer, no launch spelling, the CPU as its only device.

    Raises :class:`BackendLookupError` (one line) for an unknown name, a module that cannot
    be imported, a missing class or one that is not a Backend.
    """
    spec = BACKENDS.get(name)
    if spec is not None:
        return spec
    cls = backend_class(name)
    for attribute in ("backend_spec", "spec"):
        declared = getattr(cls, attribute, None)
        if isinstance(declared, BackendSpec):
            return declared
        if attribute == "backend_spec" and declared is not None:
            raise BackendLookupError(f"backend {name!r}: {cls.__name__}.backend_spec is a "
                                     f"{type(declared).__name__}, not a BackendSpec")
    return default_spec(name, cls)


def _refusal(reason: str) -> Capabilities:
    return Capabilities(precisions=frozenset(), modes=frozenset(), reasons={"*": reason})


def _lookup_failure(backend: str, device: str, error: BackendLookupError) -> str:
    if is_third_party_name(backend):
        return str(error)
    return f"backend {backend!r} does not run on {device.split(':')[0]!r} devices"


def unsupported_device_reason(backend: str, device: str) -> str | None:
    """Why ``backend`` cannot run trials on ``device`` (``None`` when it can)."""
    try:
        spec = get_spec(backend)
    except BackendLookupError as e:
        return _lookup_failure(backend, device, e)
    return spec.unsupported_device_reason(device)


def resolve_execution(backend: str, execution: str, mode: str | None = None) -> str:
    """``auto`` -> the backend's best mode for ``mode`` (eager for an unknown backend);
    anything else unchanged."""
    if execution != "auto":
        return execution
    try:
        spec = get_spec(backend)
    except BackendLookupError:
        return "eager"
    return spec.best_execution_by_mode.get(mode or "", spec.best_execution)


def capabilities(backend: str, device: str) -> Capabilities:
    """What ``backend`` can run on ``device``, decided without importing the framework:
    the backend's spec (:meth:`BackendSpec.capabilities`); a backend that cannot be found
    runs nothing, with the reason."""
    try:
        spec = get_spec(backend)
    except BackendLookupError as e:
        return _refusal(_lookup_failure(backend, device, e))
    return spec.capabilities(device)


def load_backend(name: str) -> Backend:
    """Import and instantiate backend ``name`` (in the worker process only).

    ``name`` is a registered backend or ``"package.module:Class"`` (a third-party backend,
    e.g. one being checked with :mod:`autotune.testing.conformance`).
    """
    spec = get_spec(name)
    if not spec.is_installed():
        from autotune.exceptions import UnsupportedConfigError

        raise UnsupportedConfigError(
            f"backend {name!r} is not installed; install it with: {spec.install_hint}"
        )
    backend: Backend = backend_class(name)()
    return backend
