"""The simulator backend's spec: ``sim:NAME`` devices declared by the ``simulated``
workload (see :mod:`autotune.simulation`). Which precisions a simulated device has is
declared per device; the driver checks it before any worker starts
(:func:`autotune._run.precheck`)."""

from __future__ import annotations

from autotune.backends._spec import TRAIN_INFER, BackendSpec

SPEC = BackendSpec(
    name="sim", target="autotune.backends._sim:SimBackend",
    # nothing beyond autotune's own dependencies: numpy stands for "installed"
    distribution="numpy", extra="sim", device_kinds=("sim",), best_execution="graph",
    executions=frozenset({"eager", "graph"}),
    precisions=frozenset({"fp32", "bf16", "fp16", "int8"}), modes=TRAIN_INFER,
    int8_modes=frozenset({"infer"}),
    unsupported_kinds={k: f"backend 'sim' runs only on simulated devices (sim:NAME), not "
                          f"{k!r}" for k in ("cpu", "cuda", "npu", "tpu")},
)
