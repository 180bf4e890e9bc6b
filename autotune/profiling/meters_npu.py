"""Huawei Ascend NPU energy from ``npu-smi`` power readings integrated over the window.

``npu-smi info -t power -i ID`` prints ``key : value`` lines. The power line's key depends
on the chip (npu-smi's sources print one of these)::

    NPU Real-time Power(W)         : 67.3      Ascend 910 / 910B / 310P
    Power Dissipation(W)           : 8.2       Ascend 310 / 310B cards
    Rated Power Dissipation(W)     : 8.0       some 310 firmware; same reading, older label

A value of ``NA`` is no sample. Each call starts a process that takes tens to hundreds of
milliseconds, so the sampling interval :data:`NPU_SMI_INTERVAL_S` is a lower bound. The
reading covers the whole NPU (card or chip), every process on it.

``npu:N`` is taken to be ``npu-smi -i N``, or the N-th entry of
``ASCEND_RT_VISIBLE_DEVICES`` when that is set; this holds on one-chip-per-card boards
(Atlas 800 910/910B), where the runtime's device id and npu-smi's NPU ID coincide.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from autotune.profiling.meters_base import EnergyReading, MeterUnavailableError, PowerMeter
from autotune.profiling.meters_sampling import PowerSampler, integrate

#: Target time between the starts of two ``npu-smi`` calls.
NPU_SMI_INTERVAL_S = 0.1
#: A call that takes longer than this is abandoned (counted as a failed read).
NPU_SMI_TIMEOUT_S = 5.0

_POWER_LINE = re.compile(
    r"^\s*(?:NPU Real-time Power|(?:Rated )?Power Dissipation)\s*\(W\)\s*:\s*(\S+)",
    re.MULTILINE)


def parse_npu_smi_power(text: str) -> float | None:
    """The first power reading (W) in ``npu-smi info -t power`` output; ``None`` if there
    is no power line or its value is not a number (``NA``)."""
    match = _POWER_LINE.search(text)
    if match is None:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def _npu_smi_id(device_index: int) -> int:
    """The npu-smi NPU ID of ``npu:device_index`` (see the module docstring)."""
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
    if not visible:
        return device_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if device_index >= len(entries) or not entries[device_index].isdigit():
        raise MeterUnavailableError(
            f"npu-smi: npu:{device_index} is not among ASCEND_RT_VISIBLE_DEVICES={visible!r}")
    return int(entries[device_index])


class NpuSmiMeter(PowerMeter):
    """Energy of ``npu:device_id`` from sampled ``npu-smi`` power readings.

    ``chip_id`` adds ``-c CHIP`` for multi-chip cards. Raises :class:`MeterUnavailableError`
    when the executable is missing, fails, or prints no power reading.
    """

    source = "npu-smi"

    def __init__(self, device_id: int, executable: str = "npu-smi", *,
                 chip_id: int | None = None, interval_s: float = NPU_SMI_INTERVAL_S,
                 timeout_s: float = NPU_SMI_TIMEOUT_S) -> None:
        path = shutil.which(executable)
        if path is None:
            raise MeterUnavailableError(f"npu-smi: {executable!r} not found on PATH")
        self.npu_id = _npu_smi_id(device_id)
        self.argv = [path, "info", "-t", "power", "-i", str(self.npu_id)]
        if chip_id is not None:
            self.argv += ["-c", str(chip_id)]
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        try:
            self.read_power_w()  # fail here, with the reason, rather than in every window
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            raise MeterUnavailableError(f"npu-smi: {e}") from e
        self.model = (f"npu-smi power of NPU {self.npu_id} sampled every "
                      f"{interval_s * 1000:g} ms or slower, trapezoid-integrated: whole NPU, "
                      f"all processes")
        self._sampler = PowerSampler(self.read_power_w, interval_s,
                                     first_sample_timeout_s=timeout_s)

    @classmethod
    def probe(cls, device_id: int, executable: str = "npu-smi") -> tuple[bool, str]:
        """Whether npu-smi can measure ``npu:device_id`` here, and how, or why not."""
        try:
            meter = cls(device_id, executable)
        except MeterUnavailableError as e:
            return False, str(e)
        return True, meter.model

    def read_power_w(self) -> float:
        """One power reading in watts (raises on a failed call or unparsable output)."""
        proc = subprocess.run(self.argv, capture_output=True, text=True,
                              timeout=self.timeout_s, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [""]
            raise ValueError(f"{' '.join(self.argv[1:])!r} exited with {proc.returncode}: "
                             f"{tail[0]}")
        watts = parse_npu_smi_power(proc.stdout)
        if watts is None:
            raise ValueError(f"no power reading in the output of {' '.join(self.argv[1:])!r}")
        return watts

    def begin(self) -> None:
        self._t0 = self._sampler.start()

    def end(self) -> EnergyReading:
        t1, samples, errors, last_error = self._sampler.stop()
        window = t1 - self._t0
        if not samples:
            return EnergyReading(None, self.source, window, 0, self.model,
                                 f"no npu-smi power sample in the window ({errors} failed "
                                 f"calls; {last_error or 'none finished'})")
        reason = f"{errors} npu-smi calls failed: {last_error}" if errors else ""
        return EnergyReading(integrate(samples, self._t0, t1), self.source, window,
                             len(samples), self.model, reason)
