"""What devices each framework sees, probed in a process of its own.

``python -m autotune.backends._probe BACKEND`` prints one JSON object (``version``,
``devices`` and ``notes``: what could not be probed and why). Every function takes the vendor
module (or a runner for a vendor tool, or an importer of optional vendor packages) as an
argument, so tests hand in fakes at exactly that boundary: a fake ``torch``/``tf``/``ms``
module, a fake ``torch_xla`` in ``sys.modules``, a fake ``nvidia-smi`` or ``npu-smi``
executable on ``PATH``.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

Runner = Callable[[list[str]], str]
Importer = Callable[[str], Any]


def optional_module(name: str) -> Any:
    """Module ``name`` if it is installed (imported now), else ``None``.

    Presence is checked without importing (``find_spec``), so a vendor plug-in that is
    absent costs nothing; one already in ``sys.modules`` is used as is.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    return importlib.import_module(name)


def _load(optional: Importer, name: str, notes: list[str]) -> Any:
    """``optional(name)``; an installed plug-in that fails to import is noted, not fatal."""
    try:
        return optional(name)
    except Exception as e:  # a vendor plug-in without its driver stack raises anything
        notes.append(f"{name} is installed but failed to import: {type(e).__name__}: {e}")
        return None


#: PCI vendor id of Google (TPU chips).
_GOOGLE_PCI_VENDOR = "0x1ae0"


def _vfio_tpu_present(sys_root: str = "/sys") -> bool:
    """A ``/dev/vfio/<group>`` whose IOMMU group holds a Google PCI device (TPU v5e and
    later); other passed-through devices (GPUs, NICs) also appear under ``/dev/vfio``."""
    for node in glob.glob("/dev/vfio/[0-9]*"):
        group = os.path.basename(node)
        for vendor in glob.glob(f"{sys_root}/kernel/iommu_groups/{group}/devices/*/vendor"):
            try:
                with open(vendor) as f:
                    if f.read().strip().lower() == _GOOGLE_PCI_VENDOR:
                        return True
            except OSError:
                continue
    return False


def tpu_hardware_present() -> bool:
    """Whether this machine looks like a TPU host (checked without any TPU runtime):
    ``/dev/accel*`` (TPU v2-v4 VMs), a Google device behind ``/dev/vfio/<n>`` (v5e and
    later) or ``TPU_NAME`` set (a Cloud TPU node reached over the network)."""
    return bool(glob.glob("/dev/accel[0-9]*") or os.environ.get("TPU_NAME")
                or _vfio_tpu_present())


def run_tool(argv: list[str]) -> str:
    """Run a vendor command-line tool; empty output when it is missing or fails."""
    if shutil.which(argv[0]) is None:
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_device() -> dict[str, Any]:
    """The CPU, as every backend sees it."""
    from autotune.profiling.fingerprint import machine_fingerprint

    fp = machine_fingerprint()
    return {"id": "cpu", "name": fp["cpu_model"], "memory_mb": fp["memory_total_mb"],
            "driver": None, "detail": f"{fp['logical_cores']} logical cores"}


def nvidia_smi(run: Runner = run_tool) -> dict[int, dict[str, Any]]:
    """Name, memory and driver of each NVIDIA GPU, from ``nvidia-smi`` (empty if absent)."""
    out = run(["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
               "--format=csv,noheader,nounits"])
    gpus = {}
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus[int(parts[0])] = {"name": parts[1], "memory_mb": _int(parts[2]),
                                   "driver": parts[3]}
    return gpus


def npu_smi(run: Runner = run_tool) -> dict[int, dict[str, Any]]:
    """Ascend NPUs from ``npu-smi info``: name, HBM memory and driver version."""
    out = run(["npu-smi", "info"])
    driver = re.search(r"Version:\s*([\w.\-]+)", out)
    npus: dict[int, dict[str, Any]] = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        # "| 0     910B3               | OK            | 93.6        38                0    / 0 |"
        m = re.match(r"^\|\s*(\d+)\s+([\w\-]+)\s*\|\s*(OK|Warning|Alarm|Critical)", line)
        if not m:
            continue
        memory = None
        if i + 1 < len(lines):
            # next row: "... | 0    0    | 0      1    / 1      3396 / 65536 |" (HBM used / total)
            hbm = re.findall(r"(\d+)\s*/\s*(\d+)", lines[i + 1])
            if hbm:
                memory = _int(hbm[-1][1])
        npus[int(m.group(1))] = {"name": f"Ascend {m.group(2)}", "memory_mb": memory,
                                 "driver": driver.group(1) if driver else None}
    return npus


def _int(text: str) -> int | None:
    try:
        return int(float(text))
    except ValueError:
        return None


def probe_torch(torch: Any, run: Runner = run_tool,
                optional: Importer = optional_module) -> dict[str, Any]:
    """CPU and CUDA GPUs (``torch.cuda``); Ascend NPUs when ``torch_npu`` is installed
    (imported here: it registers ``torch.npu``); TPUs when ``torch_xla`` is installed.

    NPUs and TPUs are listed so that a person sees every device, but the torch backend
    runs trials on cpu and cuda only: ``capabilities()`` refuses the others, with the
    reason (:func:`autotune.backends.unsupported_device_reason`).
    """
    devices = [cpu_device()]
    notes: list[str] = []
    if torch.cuda.is_available():
        smi = nvidia_smi(run)
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"id": f"cuda:{i}", "name": props.name,
                            "memory_mb": int(props.total_memory) // 2**20,
                            "driver": smi.get(i, {}).get("driver"),
                            "detail": f"CUDA runtime {torch.version.cuda}"})
    _load(optional, "torch_npu", notes)  # registers torch.npu
    npu = getattr(torch, "npu", None)
    if npu is not None and npu.is_available():
        smi = npu_smi(run)
        for i in range(npu.device_count()):
            devices.append({"id": f"npu:{i}", "name": npu.get_device_name(i),
                            "memory_mb": smi.get(i, {}).get("memory_mb"),
                            "driver": smi.get(i, {}).get("driver"),
                            "detail": "torch_npu (listed only: torch trials run on cpu/cuda)"})
    if _load(optional, "torch_xla", notes) is not None:
        try:
            devices.extend(torch_xla_tpus(optional))
        except Exception as e:  # the XLA runtime failed to start (no TPU, TPU busy...)
            notes.append(f"torch_xla could not list its devices: {type(e).__name__}: {e}")
    return {"version": torch.__version__, "devices": devices, "notes": notes}


def torch_xla_tpus(optional: Importer = optional_module) -> list[dict[str, Any]]:
    """The TPUs ``torch_xla`` sees (``xla:N`` devices whose hardware is a TPU), with the
    HBM size where the runtime reports it (``xm.get_memory_info``: ``bytes_limit``, or
    ``kb_total`` before torch_xla 2.1). Neither torch_xla nor libtpu reports a driver
    version, so ``driver`` is ``None`` and the detail says so."""
    xla = optional("torch_xla")
    xm = optional("torch_xla.core.xla_model")
    if xla is None or xm is None:
        return []
    out: list[dict[str, Any]] = []
    for device in xm.get_xla_supported_devices():
        if xm.xla_device_hw(device) != "TPU":
            continue  # torch_xla on a GPU: those GPUs are listed through torch.cuda
        kind_of = getattr(xm, "xla_device_kind", None)
        kind = str(kind_of(device)) if kind_of is not None else "TPU"
        out.append({"id": f"tpu:{len(out)}", "name": kind,
                    "memory_mb": _xla_memory_mb(xm, device), "driver": None,
                    "detail": f"torch_xla {getattr(xla, '__version__', '?')} ({device}); "
                              "driver version not reported; listed only: torch trials run "
                              "on cpu/cuda"})
    return out


def _xla_memory_mb(xm: Any, device: str) -> int | None:
    try:
        info = xm.get_memory_info(device)
    except Exception:  # not every PJRT plug-in implements memory stats
        return None
    if "bytes_limit" in info:
        return int(info["bytes_limit"]) // 2**20
    if "kb_total" in info:
        return int(info["kb_total"]) // 1024
    return None


def probe_tensorflow(tf: Any, run: Runner = run_tool,
                     tpu_present: Callable[[], bool] = tpu_hardware_present) -> dict[str, Any]:
    """CPU, CUDA GPUs and TPUs as TensorFlow lists them.

    TPU cores become TensorFlow devices only once the TPU system is initialised, so on a
    TPU host it is initialised here (as the backend does before a trial) and the logical
    TPU devices are listed: the same ``tpu:N`` a trial is placed on. TensorFlow reports
    neither a TPU's memory size nor a driver version: both are left unknown.
    """
    devices = [cpu_device()]
    notes: list[str] = []
    smi = nvidia_smi(run) if tf.config.list_physical_devices("GPU") else {}
    build = tf.sysconfig.get_build_info()
    for i, dev in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(dev)
        devices.append({"id": f"cuda:{i}", "name": details.get("device_name", dev.name),
                        "memory_mb": smi.get(i, {}).get("memory_mb"),
                        "driver": smi.get(i, {}).get("driver"),
                        "detail": f"CUDA {build.get('cuda_version', '?')}"})
    tpus: list[Any] = []
    if tf.config.list_physical_devices("TPU") or tpu_present():
        from autotune.backends._tensorflow import initialize_tpu_system
        from autotune.exceptions import UnsupportedConfigError

        try:
            initialize_tpu_system(tf)
            tpus = list(tf.config.list_logical_devices("TPU"))
        except UnsupportedConfigError as e:
            notes.append(str(e))
    for i, dev in enumerate(tpus):
        devices.append({"id": f"tpu:{i}", "name": dev.name, "memory_mb": None,
                        "driver": None,
                        "detail": "TPU runtime; memory and driver version not reported"})
    return {"version": tf.__version__, "devices": devices, "notes": notes}


def probe_mindspore(ms: Any, run: Runner = run_tool) -> dict[str, Any]:
    """CPU, GPUs (MindSpore GPU build) and Ascend NPUs, through ``mindspore.hal``."""
    devices = [cpu_device()]
    for target, prefix, smi_fn in (("GPU", "cuda", nvidia_smi), ("Ascend", "npu", npu_smi)):
        if not ms.hal.is_available(target):
            continue
        smi = smi_fn(run)
        for i in range(ms.hal.device_count(target)):
            devices.append({"id": f"{prefix}:{i}", "name": ms.hal.get_device_name(i, target),
                            "memory_mb": smi.get(i, {}).get("memory_mb"),
                            "driver": smi.get(i, {}).get("driver"), "detail": target})
    return {"version": ms.__version__, "devices": devices, "notes": []}


def probe(backend: str) -> dict[str, Any]:
    """Import ``backend``'s framework here and list what it sees, with the probe its spec
    names (``"module:function"``, called with the framework module); a spec without one:
    the CPU only."""
    from autotune.backends import BackendLookupError, get_spec

    try:
        spec = get_spec(backend)
    except BackendLookupError as e:
        raise SystemExit(str(e)) from None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_v", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        framework = importlib.import_module(spec.distribution)
        if spec.probe is None:
            return {"version": getattr(framework, "__version__", None),
                    "devices": [cpu_device()], "notes": []}
        module_name, _, function = spec.probe.partition(":")
        result: dict[str, Any] = getattr(importlib.import_module(module_name),
                                         function)(framework)
        return result


if __name__ == "__main__":
    print("AUTOTUNE-PROBE " + json.dumps(probe(sys.argv[1])))
