"""The hardware power meters, each tested against a fake at its vendor boundary: a
temporary powercap sysfs tree (RAPL), a fake ``pynvml`` module (NVML) and a fake
``npu-smi`` executable on PATH (Ascend); and the choice of meter per device."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from autotune.profiling import meters_rapl
from autotune.profiling.meters_npu import NpuSmiMeter, parse_npu_smi_power
from autotune.profiling.meters_nvml import NvmlMeter
from autotune.profiling.meters_rapl import RaplMeter, counter_delta_uj, discover_zones
from autotune.profiling.meters_sampling import integrate
from autotune.profiling.power import (
    METER_ENV,
    EnergyReading,
    EstimatedCpuMeter,
    MeterUnavailableError,
    NullMeter,
    combine,
    meter_for_device,
)

WINDOW_S = 0.25


@pytest.fixture(autouse=True)
def _no_meter_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """The automatic choice unless a test forces a meter; device maps are the identity."""
    for var in (METER_ENV, "CUDA_VISIBLE_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)


# -- integration of samples -----------------------------------------------------------------


def test_integrate_is_exact_for_piecewise_linear_power() -> None:
    # 100 W at t=1, 300 W at t=2: inside, the trapezoid; outside, the edge value held.
    samples = [(2.0, 300.0), (1.0, 100.0)]
    assert integrate(samples, 1.0, 2.0) == pytest.approx(200.0)
    assert integrate(samples, 0.0, 3.0) == pytest.approx(100.0 + 200.0 + 300.0)
    assert integrate(samples, 1.5, 2.0) == pytest.approx(0.5 * (200.0 + 300.0) / 2)
    assert integrate([(5.0, 42.0)], 0.0, 0.5) == pytest.approx(21.0)  # one sample
    assert integrate(samples, 2.0, 2.0) == 0.0
    with pytest.raises(ValueError):
        integrate([], 0.0, 1.0)


# -- RAPL: a temporary powercap tree ---------------------------------------------------------

MAX_RANGE_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def _zone(root: Path, dirname: str, name: str, energy_uj: int | None = None,
          max_range: int | None = MAX_RANGE_UJ) -> Path:
    zone = root / dirname
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    if energy_uj is not None:
        (zone / "energy_uj").write_text(f"{energy_uj}\n")
    if max_range is not None:
        (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages with subzones, a psys zone, the control-type dir and an mmio twin."""
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 1_000_000)
    _zone(root, "intel-rapl:0:0", "core", 500_000)
    _zone(root, "intel-rapl:0:1", "dram", 200_000)
    _zone(root, "intel-rapl:1", "package-1", MAX_RANGE_UJ - 2_000_000)
    _zone(root, "intel-rapl:1:0", "core", 7)
    _zone(root, "intel-rapl:2", "psys", 9_000_000)  # whole platform: overlaps packages
    _zone(root, "intel-rapl-mmio:0", "package-0", 1_000_000)  # same package, other path
    (root / "intel-rapl").mkdir()  # the control type itself: no zone
    return root


def _write_uj(root: Path, zone: str, value: int) -> None:
    (root / zone / "energy_uj").write_text(f"{value}\n")


def test_rapl_discovers_package_zones_only(powercap: Path) -> None:
    zones = discover_zones(powercap)
    assert [(z.path.name, z.name) for z in zones] == [("intel-rapl:0", "package-0"),
                                                      ("intel-rapl:1", "package-1")]
    assert zones[0].max_energy_range_uj == MAX_RANGE_UJ


def test_rapl_sums_packages_and_undoes_a_wrap_around(powercap: Path) -> None:
    meter = RaplMeter(powercap)
    meter.begin()
    # package-0 gains 3.5 J; package-1 wraps: 2 J to the top, then 1.25 J past zero.
    _write_uj(powercap, "intel-rapl:0", 1_000_000 + 3_500_000)
    _write_uj(powercap, "intel-rapl:1", 1_250_000)
    _write_uj(powercap, "intel-rapl:0:0", 99_000_000)  # subzones must not count
    _write_uj(powercap, "intel-rapl:2", 99_000_000)
    time.sleep(0.01)
    reading = meter.end()
    assert reading.source == "rapl"
    assert reading.energy_j == pytest.approx(3.5 + 2.0 + 1.25)
    assert reading.samples == 2
    assert reading.window_s >= 0.01
    assert "package-0+package-1" in reading.model and "all processes" in reading.model
    assert reading.fallback_reason == ""


def test_rapl_counter_delta() -> None:
    assert counter_delta_uj(10, 25, 100) == 15
    assert counter_delta_uj(90, 5, 100) == 15
    assert counter_delta_uj(90, 5, None) is None


def test_rapl_wrap_without_range_is_no_value_not_a_crash(tmp_path: Path) -> None:
    root = tmp_path / "powercap"
    _zone(root, "intel-rapl:0", "package-0", 5_000_000, max_range=None)
    meter = RaplMeter(root)
    meter.begin()
    _write_uj(root, "intel-rapl:0", 1_000)
    reading = meter.end()
    assert reading.energy_j is None and reading.source == "rapl"
    assert "max_energy_range_uj" in reading.fallback_reason


def _deny_energy_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """energy_uj as Linux 5.10+ serves it to non-root users. Tests may run as root, for whom
    permission bits do not apply, so the denial is made at the read itself."""
    real = Path.read_text

    def read_text(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)


def test_rapl_unreadable_counter_is_unavailable_with_reason(
        powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for zone in ("intel-rapl:0", "intel-rapl:1"):
        (powercap / zone / "energy_uj").chmod(stat.S_IWUSR)  # root-only write, as 5.10+
    _deny_energy_reads(monkeypatch)
    available, reason = RaplMeter.probe(powercap)
    assert not available
    assert "root only" in reason and "5.10" in reason and "energy_uj" in reason
    with pytest.raises(MeterUnavailableError, match="root only"):
        RaplMeter(powercap)


def test_rapl_no_zones_is_unavailable(tmp_path: Path) -> None:
    assert RaplMeter.probe(tmp_path / "missing") == (
        False, f"RAPL: no package zones (intel-rapl:N) under {tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    assert not RaplMeter.probe(tmp_path / "empty")[0]


def test_rapl_read_failing_mid_window_gives_no_value(powercap: Path) -> None:
    meter = RaplMeter(powercap)
    meter.begin()
    (powercap / "intel-rapl:1" / "energy_uj").unlink()
    reading = meter.end()
    assert reading.energy_j is None
    assert "window end" in reading.fallback_reason


# -- NVML: a fake pynvml module --------------------------------------------------------------


class FakeNvml:
    """The slice of pynvml the meter uses (pynvml's own names): errors as classes, energy
    in mJ, power in mW."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        def __str__(self) -> str:
            return "Not Supported"

    class NVMLError_LibraryNotFound(NVMLError):
        def __str__(self) -> str:
            return "NVML Shared Library Not Found"

    def __init__(self, *, energy_mj: list[int] | None = None, power_mw: Any = 250_000,
                 init_error: bool = False, devices: int = 4) -> None:
        self.energy_mj = energy_mj  # successive counter reads; None: no counter
        self.power_mw = power_mw  # a number, or a function of time.perf_counter()
        self.init_error = init_error
        self.devices = devices
        self.handles: list[Any] = []
        self.power_reads = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.NVMLError_LibraryNotFound()

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> tuple[str, int]:
        if index >= self.devices:
            raise self.NVMLError("Invalid Argument")
        self.handles.append(("index", index))
        return ("index", index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> tuple[str, str]:
        self.handles.append(("uuid", uuid))
        return ("uuid", uuid)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        if self.energy_mj is None:
            raise self.NVMLError_NotSupported()
        return self.energy_mj.pop(0)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        self.power_reads += 1
        if self.power_mw is None:
            raise self.NVMLError_NotSupported()
        value = self.power_mw(time.perf_counter()) if callable(self.power_mw) \
            else self.power_mw
        return int(value)


def test_nvml_energy_counter_difference() -> None:
    # Reads: the constructor's check, begin, end (mJ since the driver loaded).
    fake = FakeNvml(energy_mj=[1_000_000, 5_000_000, 5_012_345])
    meter = NvmlMeter(2, fake)
    assert meter.mode == "counter"
    meter.begin()
    reading = meter.end()
    assert reading.energy_j == pytest.approx(12.345)
    assert (reading.source, reading.samples, reading.fallback_reason) == ("nvml", 2, "")
    assert "energy counter" in reading.model and "whole GPU board" in reading.model
    assert fake.handles == [("index", 2)]
    assert fake.power_reads == 0  # no sampling thread when a counter exists
    meter.close()
    assert fake.shutdowns == 1


def test_nvml_samples_power_when_the_counter_is_not_supported() -> None:
    start = time.perf_counter()
    step_at = start + 0.12

    def power_mw(t: float) -> float:  # 100 W, then 200 W from 0.12 s on
        return 100_000.0 if t < step_at else 200_000.0

    fake = FakeNvml(energy_mj=None, power_mw=power_mw)
    meter = NvmlMeter(0, fake, sample_interval_s=0.01)
    assert meter.mode == "sampling"
    meter.begin()
    time.sleep(WINDOW_S)
    reading = meter.end()
    t0 = meter._t0
    expected = 100.0 * (step_at - t0) + 200.0 * (t0 + reading.window_s - step_at)
    assert reading.source == "nvml"
    assert reading.window_s == pytest.approx(WINDOW_S, abs=0.1)
    # Linear interpolation across the step errs by at most 50 W x one sampling gap.
    assert reading.energy_j == pytest.approx(expected, rel=0.08)
    assert reading.samples >= 5
    assert "Not Supported" in reading.fallback_reason
    assert "sampled every 10 ms" in reading.model


def test_nvml_initialisation_failure_is_unavailable() -> None:
    available, reason = NvmlMeter.probe(0, FakeNvml(init_error=True))
    assert not available
    assert reason == "NVML: initialisation failed: NVML Shared Library Not Found"


def test_nvml_device_without_energy_or_power_is_unavailable() -> None:
    with pytest.raises(MeterUnavailableError, match="neither energy"):
        NvmlMeter(0, FakeNvml(energy_mj=None, power_mw=None))
    with pytest.raises(MeterUnavailableError, match="no device 9"):
        NvmlMeter(9, FakeNvml())


def test_nvml_follows_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    fake = FakeNvml(energy_mj=[0])
    NvmlMeter(1, fake)
    assert fake.handles == [("index", 1)]
    fake = FakeNvml(energy_mj=[0])
    NvmlMeter(0, fake)
    assert fake.handles == [("index", 3)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f1c2a4e")
    fake = FakeNvml(energy_mj=[0])
    NvmlMeter(0, fake)
    assert fake.handles == [("uuid", "GPU-8f1c2a4e")]
    with pytest.raises(MeterUnavailableError, match="CUDA_VISIBLE_DEVICES"):
        NvmlMeter(1, FakeNvml(energy_mj=[0]))


def test_nvml_counter_going_back_gives_no_value() -> None:
    meter = NvmlMeter(0, FakeNvml(energy_mj=[0, 5_000, 10]))
    meter.begin()
    reading = meter.end()
    assert reading.energy_j is None and "went back" in reading.fallback_reason


# -- npu-smi: a fake executable on PATH ------------------------------------------------------

NPU_SMI_OUTPUT = """\
        NPU ID                         : {npu}
        Chip Count                     : 1

        Chip ID                        : 0
        NPU Real-time Power(W)         : {watts}
"""


@pytest.fixture
def fake_npu_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``npu-smi`` on PATH that prints the power in ``state/watts`` in the real format, or
    fails when ``state/fail`` exists; it logs its arguments to ``state/calls``."""
    bindir, state = tmp_path / "bin", tmp_path / "state"
    bindir.mkdir()
    state.mkdir()
    (state / "watts").write_text("67.3")
    script = bindir / "npu-smi"
    body = NPU_SMI_OUTPUT.format(npu="$6", watts="$(cat \"$STATE/watts\")")
    script.write_text(f"""#!/bin/sh
STATE="{state}"
echo "$@" >> "$STATE/calls"
if [ -e "$STATE/fail" ]; then
    echo "Error: the device does not exist or the chip id is invalid" >&2
    exit 1
fi
cat <<EOF
{body}EOF
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return state


def test_parse_npu_smi_power_formats() -> None:
    assert parse_npu_smi_power(NPU_SMI_OUTPUT.format(npu=0, watts="67.3")) == 67.3
    assert parse_npu_smi_power("Power Dissipation(W)           : 8.2\n") == 8.2
    assert parse_npu_smi_power("Rated Power Dissipation(W)     : 8.0\n") == 8.0
    assert parse_npu_smi_power("NPU Real-time Power(W)         : NA\n") is None
    assert parse_npu_smi_power("HBM Capacity(MB)               : 65536\n") is None


def test_npu_smi_integrates_power_over_the_window(fake_npu_smi: Path) -> None:
    meter = NpuSmiMeter(3, interval_s=0.02)
    meter.begin()
    time.sleep(WINDOW_S)
    reading = meter.end()
    assert reading.source == "npu-smi"
    assert reading.window_s == pytest.approx(WINDOW_S, abs=0.1)
    assert reading.energy_j == pytest.approx(67.3 * reading.window_s, rel=1e-9)
    assert reading.power_w == pytest.approx(67.3)
    assert reading.samples >= 2
    assert reading.fallback_reason == ""
    calls = (fake_npu_smi / "calls").read_text().splitlines()
    assert calls[0] == "info -t power -i 3"


def test_npu_smi_follows_a_power_change(fake_npu_smi: Path) -> None:
    meter = NpuSmiMeter(0, interval_s=0.02)
    meter.begin()
    time.sleep(WINDOW_S / 2)
    (fake_npu_smi / "watts").write_text("200.0")
    time.sleep(WINDOW_S / 2)
    reading = meter.end()
    assert reading.power_w is not None and 67.3 < reading.power_w < 200.0


def test_npu_smi_maps_visible_devices_and_chip(fake_npu_smi: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,6")
    NpuSmiMeter(1, chip_id=0)
    assert (fake_npu_smi / "calls").read_text().splitlines() == ["info -t power -i 6 -c 0"]


def test_npu_smi_missing_executable_is_unavailable(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    available, reason = NpuSmiMeter.probe(0)
    assert not available
    assert reason == "npu-smi: 'npu-smi' not found on PATH"


def test_npu_smi_error_is_unavailable_with_its_message(fake_npu_smi: Path) -> None:
    (fake_npu_smi / "fail").touch()
    available, reason = NpuSmiMeter.probe(7)
    assert not available
    assert "exited with 1" in reason and "does not exist" in reason
    (fake_npu_smi / "fail").unlink()
    (fake_npu_smi / "watts").write_text("NA")
    with pytest.raises(MeterUnavailableError, match="no power reading"):
        NpuSmiMeter(0)


def test_npu_smi_failing_during_the_window_gives_no_value(fake_npu_smi: Path) -> None:
    meter = NpuSmiMeter(0, interval_s=0.02)
    (fake_npu_smi / "fail").touch()
    meter.begin()
    time.sleep(0.1)
    reading = meter.end()
    assert reading.energy_j is None and reading.samples == 0
    assert "failed calls" in reading.fallback_reason
    assert "does not exist" in reading.fallback_reason


# -- choosing a meter ------------------------------------------------------------------------


@pytest.fixture
def no_rapl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meters_rapl, "DEFAULT_ROOT", str(tmp_path / "no-powercap"))


@pytest.fixture
def no_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError


def _reading(meter: Any) -> EnergyReading:
    meter.begin()
    reading: EnergyReading = meter.end()
    json.dumps(asdict(reading))  # stored as JSON: every field must serialise
    return reading


def test_cpu_uses_rapl_when_readable(powercap: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meters_rapl, "DEFAULT_ROOT", str(powercap))
    meter = meter_for_device("cpu")
    assert isinstance(meter, RaplMeter)
    assert _reading(meter).source == "rapl"


def test_cpu_falls_back_to_the_labelled_estimate(powercap: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meters_rapl, "DEFAULT_ROOT", str(powercap))
    _deny_energy_reads(monkeypatch)
    meter = meter_for_device("cpu")
    assert isinstance(meter, EstimatedCpuMeter)
    reading = _reading(meter)
    assert reading.source == "estimated"
    assert "root only" in reading.fallback_reason
    assert "process CPU time" in reading.model


def test_cuda_uses_nvml_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(energy_mj=[0, 10_000, 12_000]))
    meter = meter_for_device("cuda:1")
    assert isinstance(meter, NvmlMeter) and meter.index == 1
    assert _reading(meter).energy_j == pytest.approx(2.0)


def test_cuda_without_nvml_reports_no_energy_and_why(no_pynvml: None) -> None:
    meter = meter_for_device("cuda:0")
    assert isinstance(meter, NullMeter)
    reading = _reading(meter)
    assert (reading.energy_j, reading.source) == (None, "none")
    assert "nvidia-ml-py" in reading.fallback_reason


def test_cuda_with_failing_nvml_reports_no_energy_and_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error=True))
    reading = _reading(meter_for_device("cuda:0"))
    assert reading.source == "none"
    assert "initialisation failed" in reading.fallback_reason


def test_npu_uses_npu_smi_when_on_path(fake_npu_smi: Path) -> None:
    meter = meter_for_device("npu:0")
    assert isinstance(meter, NpuSmiMeter)
    reading = _reading(meter)
    assert reading.source == "npu-smi" and reading.energy_j is not None


def test_npu_without_npu_smi_reports_no_energy_and_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    reading = _reading(meter_for_device("npu:0"))
    assert reading.source == "none" and "not found on PATH" in reading.fallback_reason


def test_tpu_and_unknown_devices() -> None:
    reading = _reading(meter_for_device("tpu:0"))
    assert reading.source == "none" and "TPU" in reading.fallback_reason
    with pytest.raises(ValueError, match="unknown device"):
        meter_for_device("gpu:0")


def test_environment_override(monkeypatch: pytest.MonkeyPatch, no_rapl: None,
                              no_pynvml: None) -> None:
    monkeypatch.setenv(METER_ENV, "none")
    assert _reading(meter_for_device("cpu")).fallback_reason == f"{METER_ENV}=none"
    monkeypatch.setenv(METER_ENV, "estimated")
    reading = _reading(meter_for_device("cuda:0"))
    assert reading.source == "estimated" and METER_ENV in reading.fallback_reason
    monkeypatch.setenv(METER_ENV, "rapl")
    reading = _reading(meter_for_device("cpu"))
    assert reading.source == "none"
    assert reading.fallback_reason.startswith(f"{METER_ENV}=rapl, but RAPL: no package zones")
    monkeypatch.setenv(METER_ENV, "nvml")
    assert "nvidia-ml-py" in _reading(meter_for_device("cuda:0")).fallback_reason
    monkeypatch.setenv(METER_ENV, "bogus")
    with pytest.raises(ValueError, match=METER_ENV):
        meter_for_device("cpu")


def test_combine_keeps_each_reason_once() -> None:
    a = EnergyReading(1.0, "nvml", 0.5, 10, "m", "counter unsupported")
    b = EnergyReading(2.0, "nvml", 0.25, 5, "m", "counter unsupported")
    joined = combine([a, b])
    assert (joined.energy_j, joined.window_s, joined.samples) == (3.0, 0.75, 15)
    assert (joined.model, joined.fallback_reason) == ("m", "counter unsupported")
    # Constructors written before fallback_reason existed still work.
    assert EnergyReading(None, "none", 0.0, 0).fallback_reason == ""


# -- rated power per device (the hypervolume reference and infeasible trials' power) -------


def test_rated_power_of_a_cuda_device_is_its_enforced_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from autotune.profiling.power import rated_device_power_w

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: ("gpu", i),
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 350_000)  # milliwatts
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert rated_device_power_w("cuda:0") == pytest.approx(350.0)


def test_rated_power_defaults_and_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.profiling.power import (
        DEFAULT_ACCELERATOR_WATTS,
        rated_cpu_power_w,
        rated_device_power_w,
        watts_per_core,
    )

    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert rated_device_power_w("cuda:1") == DEFAULT_ACCELERATOR_WATTS["cuda"]
    assert rated_device_power_w("npu:0") == DEFAULT_ACCELERATOR_WATTS["npu"]
    assert rated_device_power_w("cpu") == rated_cpu_power_w() == \
        len(os.sched_getaffinity(0)) * watts_per_core()
