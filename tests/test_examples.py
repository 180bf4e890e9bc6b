"""The examples run end to end (real trials on this CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pre_launch_check_refuses_the_poor_configuration(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pre_launch_check.py"), "6"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for step in ("1. study", "2. recommend", "3. verify the top 3", "4. gate"):
        assert step in out
    assert "launch config:" in out and "torch.set_num_threads" in out
    assert any(f"ranking {v}" in out for v in ("held", "changed", "inconclusive")) or \
        "could not re-measure" in out
    assert "FAIL" in out and "refused, as a launch pipeline needs" in out
