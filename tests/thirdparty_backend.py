"""A third-party backend as a user would write one: a Backend subclass in a module of its
own, declaring its framework-free spec as the class attribute ``backend_spec``.

It reuses the numpy fake's runtime (:class:`autotune.testing.fake_backend.NumpyBackend`)
under a name and spec of its own: cpu only, fp32 and fp16, eager. Named in a space as
``backend: tests.thirdparty_backend:ThirdPartyBackend`` (the repository root is on
``sys.path`` in tests and on the worker's ``PYTHONPATH``).
"""

from __future__ import annotations

from autotune.backends import BackendSpec
from autotune.testing.fake_backend import NumpyBackend

TARGET = "tests.thirdparty_backend:ThirdPartyBackend"


class ThirdPartyBackend(NumpyBackend):
    """The numpy fake under a third-party spec."""

    name = "numpy_thirdparty"
    backend_spec = BackendSpec(
        name="numpy_thirdparty", target=TARGET, distribution="numpy",
        extra="numpy>=1.26", device_kinds=("cpu",), best_execution="eager",
        executions=frozenset({"eager"}), precisions=frozenset({"fp32", "fp16"}),
        reasons={"int8": "numpy_thirdparty has no int8 kernels"})


class NoSpecBackend(NumpyBackend):
    """A third-party class that declares no spec (``None`` hides the numpy fake's, which
    it would inherit): it gets the default one."""

    name = "numpy_nospec"
    backend_spec = None


class NotABackend:
    """Named as a backend by mistake."""
