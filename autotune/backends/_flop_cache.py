"""FLOP counts of torch models kept across workers, for models whose code is all known.

Counting FLOPs with ``FlopCounterMode`` enters a dispatch mode, and the first one in a
process imports ``torch._dynamo`` (1.2 s measured on this project's 2-core VM: a fifth of a
short study's worker start-up). A count depends only on the model's code, its parameter and
buffer shapes, the example inputs' shapes and the mode, so it is kept on disk (in
:func:`autotune._cache.cache_dir`) under a key made of those.

Only models whose every module class comes from a package whose code a version pins (torch,
transformers) or from autotune itself are cached: the key holds each class's source file
hash and the packages' versions. A model with a class of its own (a user's ``nn.Module``)
may call code in any other file, which no key can see: it is counted every time.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from autotune._cache import cache_dir, write_atomically

#: Packages whose module classes' code is pinned by their version or hashed here.
KNOWN_PACKAGES = ("torch", "transformers", "autotune")
#: Bumped when the way autotune counts changes (what a stored count means).
COUNT_VERSION = 1
#: Trial knobs that may change what a counted step runs while the model's classes and
#: shapes stay the same (activation checkpointing recomputes the forward in backward).
FLOP_KNOBS = ("precision", "checkpointing", "attention", "weight_quant",
              "pruning_structure")


@cache
def _file_hash(path: str | None) -> str:
    if path is None:
        return ""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def _package_version(package: str) -> str:
    import sys

    module = sys.modules.get(package)
    return str(getattr(module, "__version__", "")) if module is not None else ""


def flop_key(model: Any, inputs: tuple[Any, ...], mode: str,
             knobs: Mapping[str, Any] | None = None) -> str | None:
    """The cache key of counting ``model`` on ``inputs`` in ``mode`` under the trial's
    ``knobs`` (:data:`FLOP_KNOBS`), or ``None`` when a module class of the model is not
    from :data:`KNOWN_PACKAGES`."""
    classes: dict[str, Any] = {}
    for module in model.modules():
        cls = type(module)
        classes[f"{cls.__module__}.{cls.__qualname__}"] = cls
    sources = []
    for name, cls in sorted(classes.items()):
        if cls.__module__.split(".")[0] not in KNOWN_PACKAGES:
            return None
        try:
            path = inspect.getsourcefile(cls)
        except TypeError:  # a class without a source file (built in C)
            path = None
        sources.append([name, _file_hash(path)])
    tensors = [[n, list(t.shape), str(t.dtype)] for n, t in
               [*model.named_parameters(), *model.named_buffers()]]
    shapes = [[list(getattr(x, "shape", ())), str(getattr(x, "dtype", type(x).__name__))]
              for x in inputs]
    versions = {p: _package_version(p) for p in KNOWN_PACKAGES[:2]}
    blob = json.dumps([COUNT_VERSION, mode, sources, tensors, shapes, versions,
                       dict(knobs or {})], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_count(key: str) -> tuple[int, str] | None:
    """The stored ``(flops, method)`` of ``key``, or ``None``."""
    path = cache_dir() / f"flops-{key}.json"
    try:
        data = json.loads(path.read_text())
        return int(data["flops"]), str(data["method"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_count(key: str, flops: int, method: str) -> None:
    """Keep ``(flops, method)`` under ``key`` (atomically: workers count concurrently)."""
    path = cache_dir() / f"flops-{key}.json"
    text = json.dumps({"flops": flops, "method": method})

    def write(tmp: str) -> None:
        Path(tmp).write_text(text)

    write_atomically(path, write)
