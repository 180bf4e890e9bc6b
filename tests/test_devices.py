"""Device discovery against fakes at the vendor boundary: fake framework modules and fake
nvidia-smi / npu-smi executables on PATH. No GPU, TPU or NPU exists on the test machine."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import autotune
from autotune.backends._probe import (
    npu_smi,
    nvidia_smi,
    optional_module,
    probe_mindspore,
    probe_tensorflow,
    probe_torch,
    run_tool,
)
from autotune.devices import BackendDevices, Device, device_ids
from tests.fakes import VendorLog, fake_tensorflow

NVIDIA_SMI_OUT = ("0, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n"
                  "1, NVIDIA H100 80GB HBM3, 81559, 550.54.15\n")
NPU_SMI_OUT = """\
+------------------------------------------------------------------------------------------------+
| npu-smi 23.0.rc3                 Version: 23.0.rc3                                             |
+---------------------------+---------------+----------------------------------------------------+
| NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
| Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
+===========================+===============+====================================================+
| 0     910B3               | OK            | 93.6        38                0    / 0             |
| 0                         | 0000:C1:00.0  | 0           0    / 0          3396 / 65536         |
+===========================+===============+====================================================+
| 1     910B3               | OK            | 90.1        37                0    / 0             |
| 0                         | 0000:C2:00.0  | 0           0    / 0          3390 / 65536         |
+===========================+===============+====================================================+
"""


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fake nvidia-smi and npu-smi executables first on PATH."""
    for name, out in (("nvidia-smi", NVIDIA_SMI_OUT), ("npu-smi", NPU_SMI_OUT)):
        tool = tmp_path / name
        tool.write_text(f"#!/bin/sh\ncat <<'EOF'\n{out}EOF\n")
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_nvidia_smi_parsed_from_a_fake_executable(fake_tools: Path) -> None:
    gpus = nvidia_smi()
    assert gpus[0] == {"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559,
                       "driver": "550.54.15"}
    assert set(gpus) == {0, 1}


def test_npu_smi_parsed_from_a_fake_executable(fake_tools: Path) -> None:
    npus = npu_smi()
    assert npus[0] == {"name": "Ascend 910B3", "memory_mb": 65536, "driver": "23.0.rc3"}
    assert set(npus) == {0, 1}


def test_missing_tools_give_nothing_not_a_crash(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert run_tool(["nvidia-smi"]) == ""
    assert nvidia_smi() == {} and npu_smi() == {}


def _fake_torch(n_gpus: int, npus: int = 0) -> Any:
    props = SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30)
    cuda = SimpleNamespace(is_available=lambda: n_gpus > 0, device_count=lambda: n_gpus,
                           get_device_properties=lambda i: props)
    torch = SimpleNamespace(__version__="2.13.0", cuda=cuda,
                            version=SimpleNamespace(cuda="12.8"))
    if npus:
        torch.npu = SimpleNamespace(is_available=lambda: True, device_count=lambda: npus,
                                    get_device_name=lambda i: "Ascend910B3")
    return torch


def test_probe_torch_with_fake_cuda_and_npu(fake_tools: Path) -> None:
    report = probe_torch(_fake_torch(2, npus=1))
    ids = [d["id"] for d in report["devices"]]
    assert ids == ["cpu", "cuda:0", "cuda:1", "npu:0"]
    gpu = report["devices"][1]
    assert gpu["memory_mb"] == 80 * 1024 and gpu["driver"] == "550.54.15"
    assert "12.8" in gpu["detail"]
    assert report["devices"][3]["memory_mb"] == 65536


def test_probe_torch_cpu_only() -> None:
    report = probe_torch(_fake_torch(0))
    assert [d["id"] for d in report["devices"]] == ["cpu"]


@pytest.fixture
def no_tpu_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TPU system initialised in this process yet, and none named by TPU_NAME."""
    import autotune.backends._tensorflow as tf_backend

    monkeypatch.setattr(tf_backend, "_tpu_systems", {})
    monkeypatch.delenv("TPU_NAME", raising=False)


@pytest.mark.usefixtures("no_tpu_system")
def test_probe_tensorflow_with_fake_gpu_and_tpu(fake_tools: Path) -> None:
    log = VendorLog()
    tf, _ = fake_tensorflow(log, gpus=1, tpu_cores=2)
    report = probe_tensorflow(tf, tpu_present=lambda: False)
    assert [d["id"] for d in report["devices"]] == ["cpu", "cuda:0", "tpu:0", "tpu:1"]
    assert report["devices"][1]["memory_mb"] == 81559
    # the TPU system is initialised first: its logical devices are what a trial uses
    assert log.names()[:4] == ["TPUClusterResolver", "config.experimental_connect_to_cluster",
                               "tpu.experimental.initialize_tpu_system",
                               "config.list_logical_devices"]
    tpu = report["devices"][2]
    assert tpu["name"].endswith("device:TPU:0")
    # TensorFlow reports neither: said, not guessed
    assert tpu["memory_mb"] is None and tpu["driver"] is None
    assert "memory and driver version not reported" in tpu["detail"]
    assert report["notes"] == []


@pytest.mark.usefixtures("no_tpu_system")
def test_probe_tensorflow_initialises_a_tpu_host_whose_cores_are_not_listed_yet() -> None:
    """On a TPU VM the cores are no TensorFlow devices before initialisation."""
    log = VendorLog()
    tf, _ = fake_tensorflow(log, gpus=0, tpu_cores=4)
    tf.config.list_physical_devices = lambda kind: []
    assert [d["id"] for d in probe_tensorflow(tf, tpu_present=lambda: False)["devices"]] \
        == ["cpu"]
    assert log.calls == []  # no TPU host: no TPU runtime started
    report = probe_tensorflow(tf, tpu_present=lambda: True)
    assert [d["id"] for d in report["devices"]] == ["cpu", "tpu:0", "tpu:1", "tpu:2", "tpu:3"]


@pytest.mark.usefixtures("no_tpu_system")
def test_probe_tensorflow_notes_a_tpu_that_does_not_initialise() -> None:
    tf, _ = fake_tensorflow(VendorLog(), gpus=0, tpu_cores=2,
                            tpu_error=RuntimeError("TPU is in use by process 4242"))
    report = probe_tensorflow(tf, tpu_present=lambda: True)
    assert [d["id"] for d in report["devices"]] == ["cpu"]
    assert len(report["notes"]) == 1
    assert "no TPU system could be initialised" in report["notes"][0]
    assert "TPU is in use by process 4242" in report["notes"][0]


def _fake_torch_xla(monkeypatch: pytest.MonkeyPatch, *, hw: str = "TPU",
                    memory: dict[str, int] | None = None,
                    devices_error: Exception | None = None) -> None:
    """A torch_xla package in sys.modules: two xla devices on ``hw`` hardware."""
    from types import ModuleType

    xla = ModuleType("torch_xla")
    xla.__version__ = "2.8.0"  # type: ignore[attr-defined]
    core = ModuleType("torch_xla.core")
    xm = ModuleType("torch_xla.core.xla_model")

    def supported() -> list[str]:
        if devices_error is not None:
            raise devices_error
        return ["xla:0", "xla:1"]

    xm.get_xla_supported_devices = supported  # type: ignore[attr-defined]
    xm.xla_device_hw = lambda device: hw  # type: ignore[attr-defined]
    xm.xla_device_kind = lambda device: "TPU v4"  # type: ignore[attr-defined]
    xm.get_memory_info = lambda device: (  # type: ignore[attr-defined]
        memory if memory is not None else {"bytes_used": 2**20, "bytes_limit": 32 * 2**30})
    for name, module in (("torch_xla", xla), ("torch_xla.core", core),
                         ("torch_xla.core.xla_model", xm)):
        monkeypatch.setitem(sys.modules, name, module)


def test_probe_torch_lists_torch_xla_tpus(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_xla(monkeypatch)
    report = probe_torch(_fake_torch(0))
    assert [d["id"] for d in report["devices"]] == ["cpu", "tpu:0", "tpu:1"]
    tpu = report["devices"][1]
    assert tpu["name"] == "TPU v4" and tpu["memory_mb"] == 32 * 1024
    assert tpu["driver"] is None and "driver version not reported" in tpu["detail"]
    assert "torch_xla 2.8.0" in tpu["detail"] and "listed only" in tpu["detail"]


def test_probe_torch_xla_memory_in_the_old_format_or_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_xla(monkeypatch, memory={"kb_free": 1, "kb_total": 16 * 2**20})
    assert probe_torch(_fake_torch(0))["devices"][1]["memory_mb"] == 16 * 1024
    _fake_torch_xla(monkeypatch, memory={})
    assert probe_torch(_fake_torch(0))["devices"][1]["memory_mb"] is None


def test_probe_torch_xla_on_gpus_adds_no_tpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_xla(monkeypatch, hw="CUDA")  # those GPUs come through torch.cuda
    assert [d["id"] for d in probe_torch(_fake_torch(0))["devices"]] == ["cpu"]


def test_probe_torch_xla_runtime_failure_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_torch_xla(monkeypatch, devices_error=RuntimeError("TPU busy"))
    report = probe_torch(_fake_torch(1))
    assert [d["id"] for d in report["devices"]] == ["cpu", "cuda:0"]
    assert report["notes"] == ["torch_xla could not list its devices: RuntimeError: TPU busy"]


def test_probe_torch_imports_torch_npu_before_looking_for_npus(fake_tools: Path) -> None:
    """torch.npu exists only once torch_npu is imported: the probe imports it."""
    torch = _fake_torch(0)
    imported = []

    def optional(name: str) -> Any:
        if name == "torch_npu":
            imported.append(name)
            torch.npu = SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                        get_device_name=lambda i: "Ascend910B3")
            return SimpleNamespace()
        return None

    report = probe_torch(torch, optional=optional)
    assert imported == ["torch_npu"]
    assert [d["id"] for d in report["devices"]] == ["cpu", "npu:0", "npu:1"]
    assert report["devices"][1]["driver"] == "23.0.rc3"


def test_probe_torch_notes_a_plugin_that_fails_to_import() -> None:
    def optional(name: str) -> Any:
        raise OSError(f"{name}: libascendcl.so: cannot open shared object file")

    report = probe_torch(_fake_torch(0), optional=optional)
    assert [d["id"] for d in report["devices"]] == ["cpu"]
    assert report["notes"][0].startswith("torch_npu is installed but failed to import: OSError")


def test_optional_module_prefers_sys_modules_and_never_imports_the_absent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = SimpleNamespace()
    monkeypatch.setitem(sys.modules, "torch_xla", fake)
    assert optional_module("torch_xla") is fake
    assert optional_module("autotune_no_such_vendor_plugin") is None


def test_probe_mindspore_with_fake_ascend(fake_tools: Path) -> None:
    hal = SimpleNamespace(is_available=lambda target: target == "Ascend",
                          device_count=lambda target: 2,
                          get_device_name=lambda i, target: "Ascend910B3")
    report = probe_mindspore(SimpleNamespace(__version__="2.10.0", hal=hal))
    assert [d["id"] for d in report["devices"]] == ["cpu", "npu:0", "npu:1"]
    assert report["devices"][1]["driver"] == "23.0.rc3"


def test_device_ids_are_unique_cpu_first() -> None:
    reports = [BackendDevices("torch", True, "", devices=(Device("cpu", "x"),
                                                          Device("cuda:1", "g"),
                                                          Device("cuda:0", "g"))),
               BackendDevices("tensorflow", True, "", devices=(Device("cpu", "x"),
                                                               Device("tpu:0", "t")))]
    assert device_ids(reports) == ["cpu", "cuda:0", "cuda:1", "tpu:0"]


# -- create-time checks ---------------------------------------------------------------------

SPACE: dict[str, Any] = {"workload": "mlp", "mode": "infer",
                         "objectives": {"throughput_sps": "maximize"}}


def _fake_discover(found: list[str]) -> Any:
    def discover(backends: Any = None) -> list[BackendDevices]:
        return [BackendDevices("torch", True, "", "2.13",
                               devices=tuple(Device(i, i) for i in found))]
    return discover


def test_missing_device_is_refused_at_create(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setattr("autotune.devices.discover", _fake_discover(["cpu"]))
    space = autotune.parse_space({**SPACE, "params": {"device": ["cpu", "cuda:3"]}})
    url = f"sqlite:///{tmp_path}/d.db"
    with pytest.raises(autotune.StudyError, match=r"device 'cuda:3' does not exist here; "
                                                  r"devices found by torch: cpu"):
        autotune.create_study("d", space, storage=url)
    assert not (tmp_path / "d.db").exists()  # nothing written


def test_device_auto_becomes_every_device_found(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    monkeypatch.setattr("autotune.devices.discover", _fake_discover(["cpu", "cuda:0"]))
    space = autotune.parse_space({**SPACE, "params": {"device": "auto"}})
    with autotune.create_study("a", space, storage=f"sqlite:///{tmp_path}/a.db") as study:
        spec = study.space.param("device")
        assert spec is not None and spec.choices == ("cpu", "cuda:0")
        assert study.space.distributions()["device"].choices == ("cpu", "cuda:0")


def test_device_auto_skips_devices_no_backend_can_run(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    """torch lists torch_xla TPUs and torch_npu NPUs but cannot run trials on them: a
    torch-only ``device: auto`` must not sample them, and naming one is refused."""
    monkeypatch.setattr("autotune.devices.discover",
                        _fake_discover(["cpu", "cuda:0", "tpu:0", "npu:0"]))
    space = autotune.parse_space({**SPACE, "params": {"device": "auto"}})
    with autotune.create_study("a", space, storage=f"sqlite:///{tmp_path}/a.db") as study:
        spec = study.space.param("device")
        assert spec is not None and spec.choices == ("cpu", "cuda:0")
    space = autotune.parse_space({**SPACE, "params": {"device": ["cpu", "npu:0"]}})
    with pytest.raises(autotune.StudyError, match=r"device 'npu:0' exists here but no "
                                                  r"backend of the space can run trials on "
                                                  r"it .*usable devices: cpu, cuda:0"):
        autotune.create_study("b", space, storage=f"sqlite:///{tmp_path}/b.db")
    assert not (tmp_path / "b.db").exists()


def test_uninstalled_backend_is_refused_with_the_install_command(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    original = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mindspore" else original(name, *a))
    space = autotune.parse_space({**SPACE, "params": {"backend": ["torch", "mindspore"]}})
    with pytest.raises(autotune.StudyError,
                       match=r"backend 'mindspore' .* not installed; install it with: "
                             r"pip install 'autotune\[mindspore\]'"):
        autotune.create_study("u", space, storage=f"sqlite:///{tmp_path}/u.db")
    assert not (tmp_path / "u.db").exists()


@pytest.mark.slow
def test_devices_cli_reports_every_backend(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from autotune.cli import main

    assert main(["devices", "--json"]) == 0
    reports = {r["backend"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(reports) == {"torch", "tensorflow", "mindspore", "sim"}
    sim = reports.pop("sim")  # simulated devices are declared in a space, never discovered
    assert sim["installed"] and sim["devices"] == [] and "declared in a space file" in \
        sim["notes"][0], sim
    for r in reports.values():
        assert r["installed"] and r["error"] is None, r
        assert r["devices"][0]["id"] == "cpu"


def test_probe_notes_reach_the_report() -> None:
    """What a probe could not list travels to ``autotune devices --json``."""
    import json

    from autotune.devices import _Probe

    data = {"version": "2.13.0", "notes": ["torch_xla could not list its devices: x"],
            "devices": [{"id": "cpu", "name": "cpu", "memory_mb": 1, "driver": None,
                         "detail": ""}]}
    script = f"print('AUTOTUNE-PROBE ' + {json.dumps(json.dumps(data))})"
    report = _Probe(argv_prefix=[sys.executable, "-c", script])("torch")
    assert report.error is None and report.notes == ("torch_xla could not list its devices: x",)
    assert report.to_dict()["notes"] == ["torch_xla could not list its devices: x"]


@pytest.mark.parametrize(("vendor", "expected"), [("0x1ae0", True), ("0x10de", False)])
def test_vfio_counts_as_a_tpu_only_for_a_google_device(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, vendor: str, expected: bool) -> None:
    """/dev/vfio also holds passed-through GPUs and NICs: only a Google PCI device in the
    node's IOMMU group makes this a TPU host."""
    import glob as glob_module

    from autotune.backends import _probe

    device = tmp_path / "kernel/iommu_groups/7/devices/0000:00:04.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    real_glob = glob_module.glob
    monkeypatch.setattr(_probe.glob, "glob", lambda pattern: ["/dev/vfio/7"]
                        if pattern.startswith("/dev/vfio/") else real_glob(pattern))
    assert _probe._vfio_tpu_present(str(tmp_path)) is expected


@pytest.mark.parametrize(("tpu_host", "most"), [(True, 1), (False, 3)])
def test_probes_run_one_at_a_time_on_a_tpu_host(monkeypatch: pytest.MonkeyPatch,
                                               tpu_host: bool, most: int) -> None:
    """A TPU opens in one process at a time: on a TPU host the probes must not race."""
    import threading
    import time

    from autotune import devices
    from autotune.backends import _probe

    lock, running, peak = threading.Lock(), [0], [0]

    def probe(self: Any, name: str) -> BackendDevices:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return BackendDevices(name, True, "", "1", devices=())

    monkeypatch.setattr(_probe, "tpu_hardware_present", lambda: tpu_host)
    monkeypatch.setattr(devices._Probe, "__call__", probe)
    reports = devices.discover(["torch", "tensorflow", "mindspore"])
    assert [r.backend for r in reports] == ["torch", "tensorflow", "mindspore"]
    assert peak[0] == most
