"""The machine-peak measurement: real small GEMMs, precision gating, cache, pct_of_peak."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from autotune.profiling import _peak_worker, peak
from autotune.profiling.peak import PeakEntry, PeakTable, pct_of_peak

SMALL: dict[str, Any] = {"n": 256, "blocks": 5, "block_s": 0.05, "bandwidth_mib": 16}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path))
    return tmp_path


class FakeWorker:
    """Stands in for the worker process; records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, dict[str, Any]]] = []

    def __call__(self, device: str, precision: str, threads: int, cpus: list[int],
                 options: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((device, precision, threads, options))
        raw: dict[str, Any] = {
            "ops_per_s": 1e11 * threads, "op_kind": "flop", "n": 1024, "blocks": 7,
            "calls_per_block": 10, "spread": 0.01, "method": f"fake {precision}",
            "torch_version": "0.0", "library": "torch", "cpus": list(cpus), "error": None}
        if options.get("bandwidth_mib"):
            raw.update(bandwidth_bytes_per_s=2e10, bandwidth_method="fake copy",
                       bandwidth_spread=0.02)
        return raw


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> FakeWorker:
    worker = FakeWorker()
    monkeypatch.setattr(peak, "_run_worker", worker)
    return worker


def _flags(monkeypatch: pytest.MonkeyPatch, *flags: str) -> None:
    monkeypatch.setattr(peak, "cpu_flags", lambda: frozenset({"avx2", *flags}))


# ---------------------------------------------------------------- real measurements

@pytest.mark.slow
def test_real_fp32_one_thread_is_plausible(cache: Path) -> None:
    table = peak.measure_peak("cpu", ("fp32",), [1], **SMALL)
    entry = table.get("cpu", "fp32", 1)
    assert entry is not None and entry.flops_per_s is not None, entry
    # One core of anything this runs on: above 0.1 GFLOP/s, below 10 TFLOP/s.
    assert 1e8 < entry.flops_per_s < 1e13
    assert entry.n == 256 and entry.repeats == 5 and len(entry.cpus) == 1
    assert "torch.matmul 256x256" in entry.method.replace("float32 ", "")
    assert "1 thread" in entry.method and entry.torch_version
    assert entry.spread is not None and entry.spread >= 0
    assert entry.bandwidth_bytes_per_s is not None and entry.bandwidth_bytes_per_s > 1e8


def test_driver_side_imports_no_framework() -> None:
    code = ("import sys, autotune.profiling.peak; "
            "assert not {'torch', 'numpy'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_numpy_fallback_measures_fp32_and_bandwidth(cache: Path) -> None:
    table = peak.measure_peak("cpu", ("fp32", "int8"), [1], library="numpy", **SMALL)
    fp32, int8 = table.get("cpu", "fp32", 1), table.get("cpu", "int8", 1)
    assert fp32 is not None and fp32.flops_per_s is not None and fp32.flops_per_s > 1e8
    assert "numpy.matmul" in fp32.method and fp32.torch_version is None
    assert fp32.bandwidth_bytes_per_s is not None and "numpy" in fp32.bandwidth_method
    assert int8 is not None and int8.flops_per_s is None and "needs torch" in int8.reason


def test_worker_failure_is_an_unavailable_entry_not_cached(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peak, "_WORKER", "autotune.profiling._no_such_worker")
    entry = peak.measure_peak("cpu", ("fp32",), [1], **SMALL).get("cpu", "fp32", 1)
    assert entry is not None and entry.flops_per_s is None
    assert "worker failed" in entry.reason
    assert len(peak.load_peak_table()) == 0


# ---------------------------------------------------------------- precision gating

def test_bf16_follows_cpu_flags(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                fake_worker: FakeWorker) -> None:
    _flags(monkeypatch, "avx512_bf16")
    table = peak.measure_peak("cpu", ("fp32", "bf16", "fp16"), [1])
    assert [c[1] for c in fake_worker.calls] == ["fp32", "bf16"]
    bf16, fp16 = table.get("cpu", "bf16", 1), table.get("cpu", "fp16", 1)
    assert bf16 is not None and bf16.flops_per_s == 1e11
    assert fp16 is not None and fp16.flops_per_s is None and not fp16.available
    assert "AVX512-FP16" in fp16.reason
    # Bandwidth: measured once per thread count, shared by every entry of it.
    assert [bool(c[3]["bandwidth_mib"]) for c in fake_worker.calls] == [True, False]
    assert fp16.bandwidth_bytes_per_s == bf16.bandwidth_bytes_per_s == 2e10


def test_fp16_with_amx_and_no_bf16(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                   fake_worker: FakeWorker) -> None:
    _flags(monkeypatch, "amx_fp16")
    table = peak.measure_peak("cpu", ("bf16", "fp16"), [2])
    assert [c[1] for c in fake_worker.calls] == ["fp16"]
    bf16 = table.get("cpu", "bf16", 2)
    assert bf16 is not None and bf16.flops_per_s is None and "AVX512-BF16" in bf16.reason


def test_precision_reason() -> None:
    assert peak.precision_reason("cpu", "fp32", frozenset()) is None
    assert peak.precision_reason("cpu", "int8", frozenset()) is None
    assert peak.precision_reason("cpu", "bf16", frozenset({"amx_bf16"})) is None
    assert peak.precision_reason("cpu", "bf16", frozenset({"avx2"}))
    assert peak.precision_reason("cuda:0", "fp16", frozenset()) is None
    with pytest.raises(ValueError, match="unknown precision"):
        peak.precision_reason("cpu", "fp8")


def test_more_threads_than_cpus_is_unavailable(cache: Path, fake_worker: FakeWorker) -> None:
    too_many = len(peak.cpu_order()) + 1
    entry = peak.measure_peak("cpu", ("fp32",), [too_many]).get("cpu", "fp32", too_many)
    assert entry is not None and entry.flops_per_s is None and "CPUs are available" in entry.reason
    assert fake_worker.calls == []


def test_default_threads_and_cpu_order() -> None:
    order = peak.cpu_order()
    assert sorted(order) == sorted(peak._allowed_cpus())
    counts = peak.default_threads()
    assert counts[0] == 1 and counts[-1] == len(order) and counts == sorted(set(counts))
    assert peak.default_threads("cuda:0") == [1]


# ---------------------------------------------------------------- cache

def test_cache_round_trip(cache: Path, fake_worker: FakeWorker) -> None:
    assert len(peak.load_peak_table()) == 0
    measured = peak.measure_peak("cpu", ("fp32", "int8"), [1, 2])
    path = peak.peak_cache_path()
    assert path.parent == cache / "peak" and path.exists()
    assert json.loads(path.read_text())["fingerprint"] == path.stem
    loaded = peak.load_peak_table()
    assert loaded == measured and len(loaded) == 4
    assert PeakTable.from_dict(json.loads(json.dumps(loaded.to_dict()))) == loaded
    # Cached entries are reused; refresh measures again.
    peak.measure_peak("cpu", ("fp32", "int8"), [1, 2])
    assert len(fake_worker.calls) == 4
    peak.measure_peak("cpu", ("fp32",), [1], refresh=True)
    assert len(fake_worker.calls) == 5


def test_corrupt_or_old_cache_reads_empty(cache: Path) -> None:
    path = peak.peak_cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    assert len(peak.load_peak_table()) == 0
    path.write_text(json.dumps({"version": 0, "entries": [{"device": "cpu"}]}))
    assert len(peak.load_peak_table()) == 0


def test_entry_round_trip() -> None:
    entry = PeakEntry("cpu", "fp32", 2, 1.5e11, method="m", n=1024, repeats=7,
                      cpus=(0, 1), bandwidth_bytes_per_s=2e10)
    assert PeakEntry.from_dict(json.loads(json.dumps(entry.to_dict()))) == entry
    assert PeakTable().merged([entry]).get("cpu", "fp32", 2) == entry
    assert PeakTable().merged([entry]).get("cpu", "fp32", 1) is None


def test_peak_for_measures_only_the_missing_entry(cache: Path,
                                                  fake_worker: FakeWorker) -> None:
    peak.measure_peak("cpu", ("fp32",), [1])
    assert len(fake_worker.calls) == 1
    assert peak.peak_for("cpu", "fp32", 1) is not None
    assert len(fake_worker.calls) == 1  # cached
    assert peak.peak_for("cpu", "int8", 1, measure_if_missing=False) is None
    assert len(fake_worker.calls) == 1
    entry = peak.peak_for("cpu", "int8", 1)
    assert entry is not None and entry.flops_per_s == 1e11
    assert [c[1:3] for c in fake_worker.calls] == [("fp32", 1), ("int8", 1)]
    cached = peak.load_peak_table()
    assert cached.get("cpu", "fp32", 1) is not None and cached.get("cpu", "int8", 1) == entry
    assert len(cached) == 2


# ---------------------------------------------------------------- pct_of_peak

def test_pct_of_peak_arithmetic() -> None:
    entry = PeakEntry("cpu", "fp32", 2, 1e11)
    pct, reason = pct_of_peak(1e6, 2e4, entry)  # 2e10 FLOP/s achieved
    assert pct == pytest.approx(20.0) and reason == ""
    pct, _ = pct_of_peak(1e7, 2e4, entry)  # above the GEMM peak: reported, not clipped
    assert pct == pytest.approx(200.0)


@pytest.mark.parametrize(("flops", "sps", "entry", "needle"), [
    (None, 10.0, PeakEntry("cpu", "fp32", 1, 1e11), "unknown"),
    (0.0, 10.0, PeakEntry("cpu", "fp32", 1, 1e11), "positive"),
    (math.nan, 10.0, PeakEntry("cpu", "fp32", 1, 1e11), "positive"),
    (1e6, 0.0, PeakEntry("cpu", "fp32", 1, 1e11), "throughput"),
    (1e6, 10.0, None, "no peak measured"),
    (1e6, 10.0, PeakEntry("cpu", "bf16", 1, None, reason="bf16 needs AVX512-BF16"),
     "AVX512-BF16"),
])
def test_pct_of_peak_none_reasons(flops: float | None, sps: float, entry: PeakEntry | None,
                                  needle: str) -> None:
    pct, reason = pct_of_peak(flops, sps, entry)
    assert pct is None and needle in reason


# ---------------------------------------------------------------- worker internals

def test_cuda_path_synchronises_before_each_clock_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake torch with a CUDA device: every perf_counter read follows a synchronize."""
    events: list[str] = []

    class Tensor:
        def to(self, dtype: object) -> Tensor:
            return self

    fake = types.SimpleNamespace(
        __version__="9.9+fake", float32="float32", bfloat16="bfloat16",
        float16="float16", int8="int8",
        device=lambda name: name,
        randn=lambda *shape, device=None: Tensor(),
        matmul=lambda a, b: events.append("matmul"),
        cuda=types.SimpleNamespace(set_device=lambda d: None,
                                   synchronize=lambda: events.append("sync")))
    monkeypatch.setitem(sys.modules, "torch", fake)
    clock = iter(range(1, 10_000))

    def perf_counter() -> float:
        events.append("clock")
        return float(next(clock)) * 0.03

    monkeypatch.setattr("autotune.profiling._peak_worker.time.perf_counter", perf_counter)
    lib = _peak_worker._Lib("torch", "cuda:0")
    result = _peak_worker.gemm(lib, "bf16", 1, n=64, blocks=5, block_s=0.05,
                               min_call_s=0.02, warmup=2)
    assert "on cuda:0" in result["method"] and "bfloat16" in result["method"]
    assert result["ops_per_s"] > 0 and result["blocks"] == 5
    clocks = [i for i, e in enumerate(events) if e == "clock"]
    assert len(clocks) == 2 * (1 + 5)  # the size probe, then 5 timed blocks
    assert all(events[i - 1] == "sync" for i in clocks)


def test_worker_reports_a_raising_operation(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: object, precision: str, a: object, b: object) -> None:
        raise RuntimeError("_int_mm: not implemented for 'CPU'\nmore detail")

    monkeypatch.setattr(_peak_worker._Lib, "matmul", boom)
    monkeypatch.setattr(_peak_worker, "pin", lambda cpus, threads: None)
    result = _peak_worker.measure("cpu", "fp32", 1, [], library="numpy", n=32,
                                  bandwidth_mib=None)
    assert result["ops_per_s"] is None
    assert result["error"] == "RuntimeError: _int_mm: not implemented for 'CPU'"


def test_spread() -> None:
    assert _peak_worker.spread([1.0]) == 0.0
    assert _peak_worker.spread([1.0, 1.0, 1.0, 1.0, 1.0]) == 0.0
    assert _peak_worker.spread([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0 / 3.0)
