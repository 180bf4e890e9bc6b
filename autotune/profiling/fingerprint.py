"""The machine's hardware fingerprint, read without importing any framework."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import psutil

_FRAMEWORKS = ("torch", "tensorflow", "tensorflow-cpu", "mindspore", "optuna", "numpy")
_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni",
                      "amx_bf16", "amx_int8", "amx_tile", "amx_fp16")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_fingerprint() -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and installed framework versions."""
    from autotune.backends._base import cpu_flags

    versions = {}
    for dist in _FRAMEWORKS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    flags = cpu_flags()
    return {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_flags": [f for f in _FLAGS_OF_INTEREST if f in flags],
        "logical_cores": os.cpu_count() or 1,
        "physical_cores": psutil.cpu_count(logical=False) or 0,
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "os": platform.platform(),
        "python": platform.python_version(),
        "framework_versions": versions,
    }


def fingerprint_hash(fingerprint: dict[str, Any]) -> str:
    """Stable hash identifying a machine configuration (hostname excluded)."""
    data = {k: v for k, v in fingerprint.items() if k != "hostname"}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
