"""Worker process of :mod:`autotune.profiling.peak`: one GEMM-peak measurement, as JSON.

Run as ``python -m autotune.profiling._peak_worker --device cpu --precision fp32
--threads 2 --cpus 0,1``. Before any numerical library loads, it pins every thread of the
process to ``--cpus`` and sets ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``/``OPENBLAS_NUM_THREADS``;
then it imports torch (numpy when torch is missing), times square matmuls and a large
copy, and prints one JSON object on its last stdout line (see :func:`measure`).

The parent has already decided that the precision is worth measuring (native support);
this process only measures, and reports an operation that raises (``torch._int_mm`` on a
build without it) as ``error`` rather than failing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "int8": "int8"}

#: Size search: start here, double while one call is shorter than ``min_call_s`` (up to
#: ``N_MAX``), halve while it is longer than ``MAX_CALL_S`` (down to ``N_MIN``).
N_START, N_MIN, N_MAX = 1024, 256, 4096
MAX_CALL_S = 0.5


def pin(cpus: Sequence[int], threads: int) -> None:
    """Pin the whole process (every existing thread, and so every later one) to ``cpus``
    and cap the thread pools of OpenMP/MKL/OpenBLAS at ``threads``."""
    for name in _THREAD_ENV:
        os.environ[name] = str(threads)
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    tids = [0]
    with contextlib.suppress(OSError):
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, set(cpus))
        except OSError:
            continue


def spread(values: Sequence[float]) -> float:
    """IQR/median of ``values`` (0 for a single value)."""
    if len(values) < 2:
        return 0.0
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / med if med > 0 else math.inf


def timed_blocks(call: Callable[[], object], sync: Callable[[], None], calls: int,
                 blocks: int) -> list[float]:
    """Seconds per call of ``blocks`` blocks of ``calls`` calls; ``sync`` runs before each
    clock read (``torch.cuda.synchronize`` on a GPU, a no-op on the CPU)."""
    per_call = []
    for _ in range(blocks):
        sync()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        per_call.append((time.perf_counter() - start) / calls)
    return per_call


def time_one(call: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds of one call (after ``sync``)."""
    return timed_blocks(call, sync, 1, 1)[0]


def _threads(threads: int) -> str:
    return f"{threads} thread" + ("" if threads == 1 else "s")


def _error_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class _Lib:
    """The array library in use: matrix factories, matmul, copy and synchronisation."""

    def __init__(self, name: str, device: str) -> None:
        self.name = name
        self.device = device
        self.version: str | None = None
        self.sync: Callable[[], None] = lambda: None
        if name == "torch":
            import torch

            self.torch: Any = torch
            self.version = str(torch.__version__)
            if device.startswith("cuda"):
                torch.cuda.set_device(torch.device(device))
                self.sync = torch.cuda.synchronize
        else:
            import numpy

            self.numpy: Any = numpy
            self.version = str(numpy.__version__)

    def operands(self, precision: str, n: int) -> tuple[Any, Any]:
        if self.name == "torch":
            torch = self.torch
            if precision == "int8":
                def rand() -> Any:
                    return torch.randint(-128, 128, (n, n), dtype=torch.int8, device=self.device)
            else:
                dtype = getattr(torch, _TORCH_DTYPES[precision])

                def rand() -> Any:
                    return torch.randn(n, n, device=self.device).to(dtype)
            return rand(), rand()
        rng = self.numpy.random.default_rng(0)
        return (rng.standard_normal((n, n), dtype=self.numpy.float32),
                rng.standard_normal((n, n), dtype=self.numpy.float32))

    def matmul(self, precision: str, a: Any, b: Any) -> Callable[[], object]:
        if self.name == "torch":
            fn = self.torch._int_mm if precision == "int8" else self.torch.matmul
            return lambda: fn(a, b)
        return lambda: self.numpy.matmul(a, b)

    def copy_pair(self, nbytes: int) -> Callable[[], object]:
        count = nbytes // 4
        if self.name == "torch":
            src = self.torch.ones(count, dtype=self.torch.float32, device=self.device)
            dst = self.torch.empty_like(src)
            return lambda: dst.copy_(src)
        src_np = self.numpy.ones(count, dtype=self.numpy.float32)
        dst_np = self.numpy.empty_like(src_np)
        return lambda: self.numpy.copyto(dst_np, src_np)


def gemm(lib: _Lib, precision: str, threads: int, *, n: int | None, blocks: int,
         block_s: float, min_call_s: float, warmup: int) -> dict[str, Any]:
    """Peak operations per second of square ``n``x``n`` matmuls (``n`` searched when None)."""
    size = n or N_START

    def probe(size: int) -> tuple[Callable[[], object], float]:
        call = lib.matmul(precision, *lib.operands(precision, size))
        call()  # first call: allocation, kernel selection
        return call, time_one(call, lib.sync)

    call, t = probe(size)
    if n is None:
        while t < min_call_s and size < N_MAX:
            size *= 2
            call, t = probe(size)
        while t > MAX_CALL_S and size > N_MIN:
            size //= 2
            call, t = probe(size)
    for _ in range(warmup):
        call()
    calls = max(1, min(1000, math.ceil(block_s / max(t, 1e-9))))
    per_call = timed_blocks(call, lib.sync, calls, blocks)
    ops = 2.0 * size ** 3
    rates = [ops / s for s in per_call]
    median_s = statistics.median(per_call)
    if lib.name == "torch":
        what = ("torch._int_mm int8 -> int32 (integer ops)" if precision == "int8"
                else f"torch.matmul {_TORCH_DTYPES[precision]}")
    else:
        what = "numpy.matmul float32 (torch unavailable)"
    device = "" if lib.device == "cpu" else f" on {lib.device}"
    return {
        "ops_per_s": ops / median_s,
        "op_kind": "int" if precision == "int8" else "flop",
        "n": size, "blocks": blocks, "calls_per_block": calls,
        "spread": spread(rates),
        "method": (f"{what} {size}x{size}{device}, 2*n^3 ops per call, median of {blocks} "
                   f"blocks of {calls} calls after {warmup} warm-up calls, {_threads(threads)}"),
    }


def bandwidth(lib: _Lib, threads: int, *, mib: int, blocks: int) -> dict[str, Any]:
    """Memory bandwidth of a large float32 copy: bytes read + written per second."""
    nbytes = mib * 2**20
    call = lib.copy_pair(nbytes)
    call()  # page faults of the destination
    call()
    per_call = timed_blocks(call, lib.sync, 1, blocks)
    moved = 2.0 * (nbytes // 4) * 4
    what = "torch copy_" if lib.name == "torch" else "numpy.copyto (torch unavailable)"
    return {
        "bandwidth_bytes_per_s": moved / statistics.median(per_call),
        "bandwidth_spread": spread([moved / s for s in per_call]),
        "bandwidth_method": (f"{what} of a {mib} MiB float32 tensor into another, read + "
                             f"written bytes, median of {blocks} copies, {_threads(threads)}"),
    }


def measure(device: str, precision: str, threads: int, cpus: Sequence[int], *,
            library: str = "auto", n: int | None = None, blocks: int = 7, block_s: float = 0.25,
            min_call_s: float = 0.02, warmup: int = 3, bandwidth_mib: int | None = 256,
            ) -> dict[str, Any]:
    """One measurement; the keys of the result are :class:`~autotune.profiling.peak.PeakEntry`
    fields (``ops_per_s`` None with ``error`` when the operation is unavailable)."""
    pin(cpus, threads)
    name = library
    if name == "auto":
        try:
            import torch  # noqa: F401
            name = "torch"
        except ImportError:
            name = "numpy"
    lib = _Lib(name, device)
    if name == "torch" and not device.startswith("cuda"):
        lib.torch.set_num_threads(threads)
    result: dict[str, Any] = {
        "library": name, "library_version": lib.version,
        "torch_version": lib.version if name == "torch" else None,
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
        "ops_per_s": None, "error": None,
    }
    if name == "numpy" and precision != "fp32":
        result["error"] = (f"{precision} needs torch, which is unavailable "
                           "(numpy measures fp32 only)")
    else:
        try:
            result.update(gemm(lib, precision, threads, n=n, blocks=blocks, block_s=block_s,
                               min_call_s=min_call_s, warmup=warmup))
        except Exception as exc:  # an unsupported operation, reported not raised
            result["error"] = _error_line(exc)
    if bandwidth_mib:
        result.update(bandwidth(lib, threads, mib=bandwidth_mib, blocks=blocks))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autotune.profiling._peak_worker")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(_TORCH_DTYPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpus", default="", help="comma-separated CPU ids to pin to")
    parser.add_argument("--library", default="auto", choices=("auto", "torch", "numpy"))
    parser.add_argument("--n", type=int, default=None, help="fixed matrix size (no search)")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--block-s", type=float, default=0.25)
    parser.add_argument("--min-call-s", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bandwidth-mib", type=int, default=256, help="0: no bandwidth")
    args = parser.parse_args(argv)
    cpus = [int(c) for c in args.cpus.split(",") if c.strip()]
    result = measure(args.device, args.precision, args.threads, cpus, library=args.library,
                     n=args.n, blocks=args.blocks, block_s=args.block_s,
                     min_call_s=args.min_call_s, warmup=args.warmup,
                     bandwidth_mib=args.bandwidth_mib or None)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
