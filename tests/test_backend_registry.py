"""The backend registry: framework-free specs, and a third-party ``package.module:Class``
backend (``tests/thirdparty_backend.py``) accepted by every reader and run in a study.

``tests/test_capabilities.py`` holds the built-in backends' capability rules; here the
specs are checked to be what the registry, ``capabilities()`` and ``recommend`` read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

import autotune
import autotune.backends._base as base
from autotune.backends import (
    BACKENDS,
    BEST_EXECUTION,
    BackendLookupError,
    BackendSpec,
    capabilities,
    get_spec,
    resolve_execution,
    unsupported_device_reason,
)
from autotune.testing.conformance import BackendConformance
from tests.thirdparty_backend import TARGET, NoSpecBackend, ThirdPartyBackend

TINY = "autotune.testing.workloads:tiny"
BUDGET = {"trial_seconds": 8, "warmup_max_s": 0.3, "window_min_s": 0.05,
          "window_min_steps": 8, "window_max_s": 0.2, "train_epochs": 1,
          "early_stop": False}  # every trial here is checked complete: none pruned


def _space(backend: Any, **params: Any) -> dict[str, Any]:
    return {"workload": TINY, "mode": "train", "objectives": {"throughput_sps": "maximize"},
            "params": {"backend": backend, **params}, "budget": BUDGET}


@pytest.fixture
def no_native_16bit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "cpu_flags", lambda: frozenset({"avx2", "fma"}))


# -- the registered specs ---------------------------------------------------------------------


def test_registered_specs_are_what_the_backend_classes_declare() -> None:
    """Reading a spec imports no framework (checked in a fresh interpreter)."""
    assert list(BACKENDS) == ["torch", "tensorflow", "mindspore", "sim"]
    code = ("import sys, autotune.backends as b\n"
            "specs = [b.get_spec(n) for n in b.BACKENDS]\n"
            "caps = [b.capabilities(n, d) for n in b.BACKENDS for d in ('cpu', 'cuda:0')]\n"
            "print(sorted({'torch', 'tensorflow', 'mindspore'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
    for name, spec in BACKENDS.items():
        assert isinstance(spec, BackendSpec) and spec.name == name
        assert get_spec(name) is spec
        assert BEST_EXECUTION[name] == spec.best_execution == resolve_execution(name, "auto")
        assert spec.install_hint == f"pip install 'autotune[{name}]'"
        # the simulator finds no devices (they are declared) and has no framework spelling
        assert (spec.probe is not None and spec.launch is not None) or name == "sim"
    assert BEST_EXECUTION == {"torch": "eager", "tensorflow": "graph", "mindspore": "graph",
                              "sim": "graph"}
    assert {n: s.device_kinds for n, s in BACKENDS.items()} == {
        "torch": ("cpu", "cuda"), "tensorflow": ("cpu", "cuda", "tpu"),
        "mindspore": ("cpu", "cuda", "npu"), "sim": ("sim",)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch", "tensorflow", "mindspore"])
def test_each_backend_class_points_to_its_spec(name: str) -> None:
    """(slow: imports the backend module, which imports numpy and the base only, but its
    import chain is checked for real.)"""
    from autotune.backends import backend_class

    assert backend_class(name).backend_spec is BACKENDS[name]


@pytest.mark.usefixtures("no_native_16bit")
@pytest.mark.parametrize(("backend", "device", "precisions", "executions"), [
    ("torch", "cpu", {"fp32", "int8"}, {"eager", "graph"}),
    ("torch", "cuda:0", {"fp32", "bf16", "fp16"}, {"eager", "graph"}),
    ("torch", "tpu:0", set(), {"eager"}),
    ("torch", "npu:0", set(), {"eager"}),
    ("tensorflow", "cpu", {"fp32", "int8"}, {"eager", "graph", "xla"}),
    ("tensorflow", "cuda:0", {"fp32", "bf16", "fp16"}, {"eager", "graph", "xla"}),
    ("tensorflow", "tpu:0", {"fp32", "bf16"}, {"eager", "graph", "xla"}),
    ("tensorflow", "npu:0", set(), {"eager"}),
    ("mindspore", "cpu", {"fp32"}, {"eager", "graph"}),
    ("mindspore", "cuda:0", {"fp32", "bf16", "fp16"}, {"eager", "graph"}),
    ("mindspore", "tpu:0", set(), {"eager"}),
    ("mindspore", "npu:0", {"fp32", "bf16", "fp16"}, {"eager", "graph"}),
])
def test_registered_capabilities_are_unchanged(backend: str, device: str,
                                                precisions: set[str],
                                                executions: set[str]) -> None:
    caps = capabilities(backend, device)
    assert caps == BACKENDS[backend].capabilities(device)
    assert set(caps.precisions) == precisions
    assert set(caps.executions) == executions
    assert (unsupported_device_reason(backend, device) is None) == bool(precisions)


def test_launch_config_is_spelled_by_the_spec() -> None:
    from autotune._recommend import launch_config

    config = {"backend": "tensorflow", "device": "cpu", "precision": "fp32",
              "execution": "xla", "batch_size": 32, "threads": 2}
    launch = launch_config(config, mode="infer")
    assert launch == {"framework": "tensorflow", "mode": "infer", "batch_size": 32,
                      **BACKENDS["tensorflow"].launch_config(config, mode="infer",
                                                             threads=2)}
    assert launch["execution"] == "tf.function(jit_compile=True)"


# -- a third-party backend --------------------------------------------------------------------


def test_a_third_party_spec_is_read_from_its_class() -> None:
    spec = get_spec(TARGET)
    assert spec is ThirdPartyBackend.backend_spec and spec.name == "numpy_thirdparty"
    assert spec.is_installed() and spec.install_hint == "pip install 'numpy>=1.26'"
    assert resolve_execution(TARGET, "auto") == "eager"


def test_a_class_without_a_spec_gets_the_default() -> None:
    spec = get_spec("tests.thirdparty_backend:NoSpecBackend")
    assert spec.name == NoSpecBackend.name and spec.device_kinds == ("cpu",)
    caps = capabilities("tests.thirdparty_backend:NoSpecBackend", "cpu")
    assert set(caps.precisions) == {"fp32"} and set(caps.modes) == {"train", "infer"}
    assert set(caps.executions) == {"eager"}
    assert "fp16" in str(caps.check("train", "fp16"))
    assert "does not run on 'cuda'" in str(
        capabilities("tests.thirdparty_backend:NoSpecBackend", "cuda:0").check(
            "train", "fp32"))


def test_third_party_capabilities_follow_its_spec() -> None:
    caps = capabilities(TARGET, "cpu")
    assert caps.check("train", "fp32") is None
    assert caps.check("infer", "fp16") is None  # fp16 declared, whatever the CPU flags
    assert caps.check("infer", "int8") == "numpy_thirdparty has no int8 kernels"
    assert "execution 'graph' is not supported" in str(caps.check("train", "fp32", "graph"))
    assert capabilities(TARGET, "cuda:0").check("train", "fp32") == \
        "backend 'numpy_thirdparty' does not run on 'cuda' devices"


@pytest.mark.parametrize(("name", "needle"), [
    ("nosuch.module:Backend",
     "backend 'nosuch.module:Backend': cannot import module 'nosuch.module' "
     "(No module named 'nosuch')"),
    ("tests.thirdparty_backend:Missing",
     "module 'tests.thirdparty_backend' has no attribute 'Missing'"),
    ("tests.thirdparty_backend:NotABackend",
     "NotABackend is not a subclass of autotune.backends.Backend"),
])
def test_a_broken_third_party_name_is_refused_in_one_line(name: str, needle: str) -> None:
    with pytest.raises(BackendLookupError) as info:
        get_spec(name)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert capabilities(name, "cpu").check("train", "fp32") == str(info.value)
    with pytest.raises(autotune.SpaceError) as space_error:
        autotune.parse_space(_space([name]), source="space.yaml")
    assert str(space_error.value) == f"space.yaml: params.backend: {info.value}"


def test_the_space_checker_accepts_a_third_party_backend() -> None:
    space = autotune.parse_space(_space([TARGET, "torch"], batch_size=[16, 32]),
                                 source="space.yaml")
    param = space.param("backend")
    assert param is not None and param.choices == (TARGET, "torch")
    # a stored space is read without importing its backends
    stored = autotune.parse_space(_space("nosuch.module:Backend"), check_files=False)
    assert stored.fixed_params()["backend"] == "nosuch.module:Backend"
    with pytest.raises(autotune.SpaceError, match=r"params\.backend: got 'caffe'; allowed: "
                                                  r"one of torch, tensorflow, mindspore"):
        autotune.parse_space(_space("caffe"))


def test_devices_of_a_third_party_backend_are_the_cpu() -> None:
    from autotune.devices import check_installed, discover

    [report] = discover([TARGET])
    assert report.installed and report.error is None
    assert [d.id for d in report.devices] == ["cpu"] and report.version
    check_installed(autotune.parse_space(_space(TARGET)))


def test_the_cli_accepts_a_third_party_backend(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from autotune.cli import main

    assert main(["devices", "--json", "--backend", TARGET]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert report["backend"] == TARGET and report["devices"][0]["id"] == "cpu"
    with pytest.raises(SystemExit) as info:
        main(["devices", "--backend", "nosuch.module:Backend"])
    assert info.value.code == 2
    assert "cannot import module 'nosuch.module'" in capsys.readouterr().err


def test_launch_config_of_a_third_party_backend_names_the_knobs() -> None:
    from autotune._recommend import launch_config

    config = {"backend": TARGET, "device": "cpu", "precision": "fp16", "batch_size": 16}
    assert launch_config(config, mode="train") == {
        "framework": TARGET, "mode": "train", "batch_size": 16, "knobs": config}


@pytest.mark.slow
def test_a_study_runs_over_a_third_party_backend(tmp_path: Path) -> None:
    """The worker imports ``tests.thirdparty_backend`` too: the launcher puts the driver's
    working directory (the repository root under pytest) on the worker's PYTHONPATH."""
    space = autotune.parse_space(_space([TARGET], batch_size=[16, 32], threads=1,
                                        precision=["fp32", "fp16"]))
    study = autotune.create_study("thirdparty", space,
                                  storage=f"sqlite:///{tmp_path / 's.db'}", seed=0)
    results = study.optimize(n_trials=2)
    assert [r.state for r in results] == ["ok", "ok"], [r.metrics for r in results]
    assert all(r.feasible for r in results)
    assert all(r.params["backend"] == TARGET for r in results)


@pytest.mark.slow
class TestThirdPartyConformance(BackendConformance):
    backend = TARGET
    precisions: ClassVar[dict[str, str]] = {"fp32": "float32", "fp16": "float16"}
