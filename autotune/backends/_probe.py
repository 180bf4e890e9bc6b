"""What devices each framework sees, probed in a process of its own.

``python -m autotune.backends._probe BACKEND`` prints one JSON object. Every function takes
the vendor module (or a runner for a vendor tool) as an argument, so tests hand in fakes at
exactly that boundary: a fake ``torch``/``tf``/``ms`` module, a fake ``nvidia-smi`` or
``npu-smi`` executable on ``PATH``.
"""

from __future__ import annotations

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


def probe_torch(torch: Any, run: Runner = run_tool) -> dict[str, Any]:
    """CPU, CUDA GPUs (torch.cuda), Ascend NPUs (torch_npu) and TPUs (torch_xla)."""
    devices = [cpu_device()]
    if torch.cuda.is_available():
        smi = nvidia_smi(run)
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"id": f"cuda:{i}", "name": props.name,
                            "memory_mb": int(props.total_memory) // 2**20,
                            "driver": smi.get(i, {}).get("driver"),
                            "detail": f"CUDA runtime {torch.version.cuda}"})
    npu = getattr(torch, "npu", None)  # present once torch_npu is imported
    if npu is not None and npu.is_available():
        smi = npu_smi(run)
        for i in range(npu.device_count()):
            devices.append({"id": f"npu:{i}", "name": npu.get_device_name(i),
                            "memory_mb": smi.get(i, {}).get("memory_mb"),
                            "driver": smi.get(i, {}).get("driver"), "detail": "torch_npu"})
    return {"version": torch.__version__, "devices": devices}


def probe_tensorflow(tf: Any, run: Runner = run_tool) -> dict[str, Any]:
    """CPU, CUDA GPUs and TPUs as TensorFlow lists them."""
    devices = [cpu_device()]
    smi = nvidia_smi(run) if tf.config.list_physical_devices("GPU") else {}
    build = tf.sysconfig.get_build_info()
    for i, dev in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(dev)
        devices.append({"id": f"cuda:{i}", "name": details.get("device_name", dev.name),
                        "memory_mb": smi.get(i, {}).get("memory_mb"),
                        "driver": smi.get(i, {}).get("driver"),
                        "detail": f"CUDA {build.get('cuda_version', '?')}"})
    for i, dev in enumerate(tf.config.list_physical_devices("TPU")):
        devices.append({"id": f"tpu:{i}", "name": dev.name, "memory_mb": None,
                        "driver": None, "detail": "TPU runtime"})
    return {"version": tf.__version__, "devices": devices}


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
    return {"version": ms.__version__, "devices": devices}


def probe(backend: str) -> dict[str, Any]:
    """Import ``backend``'s framework here and list what it sees."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_v", "3")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if backend == "torch":
            import torch

            return probe_torch(torch)
        if backend == "tensorflow":
            import tensorflow as tf

            return probe_tensorflow(tf)
        if backend == "mindspore":
            import mindspore as ms

            return probe_mindspore(ms)
    raise SystemExit(f"unknown backend {backend!r}")


if __name__ == "__main__":
    print("AUTOTUNE-PROBE " + json.dumps(probe(sys.argv[1])))
