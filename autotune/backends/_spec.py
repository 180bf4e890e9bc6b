"""What a backend declares about itself, without importing its framework.

A :class:`BackendSpec` is everything the study driver needs to know about a backend before
a worker starts: where its class lives, what makes it installed, which device kinds and
execution modes it has, what it can run on each device (:meth:`BackendSpec.capabilities`),
how a recommended configuration is spelled in its framework
(:meth:`BackendSpec.launch_config`) and how its devices are listed (``probe``). The
registry (:mod:`autotune.backends`), the space checker, :mod:`autotune.devices`,
``recommend`` and the CLI all read it.

The built-in specs live in ``_spec_torch.py``, ``_spec_tensorflow.py`` and
``_spec_mindspore.py``; a third-party backend class sets ``backend_spec`` (a
:class:`BackendSpec`) as a class attribute, or gets :func:`default_spec`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.backends._base import Capabilities, cpu_capabilities

__all__ = ["ALL_MODES", "TRAIN_INFER", "BackendLookupError", "BackendSpec", "CapabilityRule",
           "LaunchSpelling", "default_spec", "native_precisions"]

#: What a backend can run on one supported device kind (``"cpu"``, ``"cuda"``, ...).
CapabilityRule = Callable[[str], Capabilities]
#: ``(device kind, mode, knobs) -> why the language-model knobs cannot run, or None``
KnobRule = Callable[[str, str, Mapping[str, Any]], "str | None"]
#: ``(config, mode, threads) -> the framework's spelling of the knobs`` (see
#: :func:`autotune._recommend.launch_config`).
LaunchSpelling = Callable[[Mapping[str, Any], str, int | None], dict[str, Any]]

TRAIN_INFER = frozenset({"train", "infer"})
#: every mode, for backends that also generate (language models)
ALL_MODES = frozenset({"train", "infer", "generate"})


class BackendLookupError(LookupError):
    """A backend name that is neither registered nor an importable ``module:Class`` with
    a spec; the message is one line and says which."""


@dataclass(frozen=True)
class BackendSpec:
    """A backend's framework-free declaration.

    ``target`` is the ``"module:Class"`` of the :class:`~autotune.backends.Backend`;
    ``distribution`` is the import name whose presence means installed (checked with
    ``importlib.util.find_spec``, never imported); ``extra`` is this project's pip extra
    for a built-in backend (``pip install 'autotune[torch]'``) or a pip requirement for a
    third-party one (``pip install 'jax[cpu]>=0.4'``).

    ``device_kinds`` are the kinds trials run on; ``unsupported_kinds`` says why another
    kind cannot (default: "backend X does not run on K devices"). ``best_execution`` is
    what ``execution: auto`` means; ``executions`` the modes it accepts.

    What it can run on a supported kind comes from ``capability_rule(kind)`` when given,
    else from ``precisions``, ``modes``, ``int8_modes``, ``executions`` and ``reasons``
    (why a precision or ``"execution:X"`` is missing) on every supported kind.

    ``launch`` spells a configuration in the framework (``None``: the knobs as autotune
    names them). ``probe`` is the ``"module:function"`` that lists the devices: it runs in
    a process of its own, is called with the imported ``distribution`` module and returns
    ``{"version", "devices", "notes"}`` (see :mod:`autotune.backends._probe`); ``None``:
    the CPU only, listed without a subprocess.
    """

    name: str
    target: str
    distribution: str
    extra: str
    device_kinds: tuple[str, ...] = ("cpu",)
    best_execution: str = "eager"
    #: ``best_execution`` where a mode's best differs (MindSpore generates in PyNative)
    best_execution_by_mode: Mapping[str, str] = field(default_factory=dict)
    executions: frozenset[str] = frozenset({"eager"})
    precisions: frozenset[str] = frozenset({"fp32"})
    modes: frozenset[str] = TRAIN_INFER
    int8_modes: frozenset[str] = frozenset()
    reasons: Mapping[str, str] = field(default_factory=dict)
    unsupported_kinds: Mapping[str, str] = field(default_factory=dict)
    capability_rule: CapabilityRule | None = None
    #: what the language-model knobs (kv_cache, attention, weight_quant...) cannot do on a
    #: device kind, known without the framework (the backend refuses the same in a worker)
    knob_rule: KnobRule | None = None
    launch: LaunchSpelling | None = None
    probe: str | None = None
    #: whether one warm worker may change its thread count between trials (torch: its
    #: intra-op pool is resized by ``set_threads``); TensorFlow and MindSpore size their
    #: pools once per process, so they get a worker per thread count
    threads_in_place: bool = False
    #: device kind -> how a data-parallel trial runs there (the framework's machinery and
    #: its collective, e.g. ``DistributedDataParallel over gloo``); a kind not listed
    #: cannot run ``data_parallel > 1`` (:meth:`data_parallel_reason` says why)
    data_parallel: Mapping[str, str] = field(default_factory=dict)
    #: why data parallelism is missing where :attr:`data_parallel` does not list a kind
    #: (default: "backend X has no data-parallel path on K devices")
    no_data_parallel: str = ""

    @property
    def builtin(self) -> bool:
        """Whether the backend is part of this project (its ``extra`` is an extra here)."""
        return self.target.startswith("autotune.")

    @property
    def install_hint(self) -> str:
        """The exact command that installs the backend's framework."""
        if self.builtin:
            return f"pip install 'autotune[{self.extra}]'"
        return f"pip install '{self.extra or self.distribution}'"

    def is_installed(self) -> bool:
        """Whether the framework can be imported (checked without importing it)."""
        try:
            return importlib.util.find_spec(self.distribution) is not None
        except (ImportError, ValueError):  # a parent package that is missing or broken
            return False

    def unsupported_device_reason(self, device: str) -> str | None:
        """Why trials cannot run on ``device`` (``None`` when they can)."""
        kind = device.split(":")[0]
        if kind in self.device_kinds:
            return None
        return self.unsupported_kinds.get(
            kind, f"backend {self.name!r} does not run on {kind!r} devices")

    def capabilities(self, device: str) -> Capabilities:
        """What the backend can run on ``device``, decided without importing it."""
        unsupported = self.unsupported_device_reason(device)
        if unsupported is not None:
            return Capabilities(precisions=frozenset(), modes=frozenset(),
                                reasons={"*": unsupported})
        kind = device.split(":")[0]
        if self.capability_rule is not None:
            return self.capability_rule(kind)
        reasons = {p: f"backend {self.name!r} has no {p} (it runs "
                      f"{', '.join(sorted(self.precisions))} only)"
                   for p in ("fp32", "bf16", "fp16", "int8") if p not in self.precisions}
        reasons.update(self.reasons)
        return Capabilities(self.precisions, self.modes, self.int8_modes, reasons,
                            executions=self.executions)

    def knob_reason(self, device: str, mode: str, knobs: Mapping[str, Any]) -> str | None:
        """Why these language-model knobs cannot run on ``device`` (``None``: they may)."""
        if self.knob_rule is None:
            return None
        return self.knob_rule(device.split(":")[0], mode, knobs)

    def data_parallel_reason(self, device: str) -> str | None:
        """Why a trial with ``data_parallel > 1`` cannot run on ``device`` (``None``: it
        can)."""
        kind = device.split(":")[0]
        if kind in self.data_parallel:
            return None
        return self.no_data_parallel or (
            f"backend {self.name!r} has no data-parallel path on {kind!r} devices")

    def resolve_execution(self, execution: str) -> str:
        """``auto`` -> :attr:`best_execution`; anything else unchanged."""
        return self.best_execution if execution == "auto" else execution

    def launch_config(self, config: Mapping[str, Any], *, mode: str,
                      threads: int | None = None) -> dict[str, Any]:
        """``config``'s knobs as the framework spells them (without the common
        ``framework``/``mode``/``batch_size`` keys)."""
        if self.launch is None:
            return {"knobs": dict(config)}
        return self.launch(config, mode, threads)


def default_spec(target: str, cls: type) -> BackendSpec:
    """The spec of a third-party backend class that declares none: the CPU only, eager
    execution, fp32, train and infer; its module stands for its distribution."""
    module = target.partition(":")[0]
    return BackendSpec(name=str(getattr(cls, "name", "") or target), target=target,
                       distribution=module, extra=module.split(".")[0])


def native_precisions(kind: str) -> tuple[set[str], dict[str, str]]:
    """The 16-bit precisions with native arithmetic on ``kind`` (on CPU: per the CPU's
    instructions, :func:`~autotune.backends._base.cpu_capabilities`; accelerators: fp32,
    bf16 and fp16) and why the missing ones are missing; the framework rules start here."""
    if kind == "cpu":
        cpu = cpu_capabilities()
        return set(cpu.precisions), dict(cpu.reasons)
    return {"fp32", "bf16", "fp16"}, {}
