"""Review findings: storage edge cases and signals never end in a traceback or an orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

import autotune
from autotune.cli import main

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_storage_is_refused(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "list", "--storage", url]) != 0
    assert "in-memory" in _one_line_error(capsys)


def test_study_deleted_with_optuna_tools_does_not_break_the_storage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    autotune.create_study("gone", QUICKSTART, storage=url).close()
    autotune.create_study("kept", QUICKSTART, storage=url).close()
    optuna.delete_study(study_name="gone", storage=url)  # behind autotune's back
    assert main(["study", "list", "--storage", url, "--json"]) == 0
    assert '"kept"' in capsys.readouterr().out
    assert main(["study", "show", "gone", "--storage", url]) != 0
    assert "no study named 'gone'" in _one_line_error(capsys)
    # the name is usable again
    assert main(["study", "create", "gone", "--space", str(QUICKSTART), "--storage", url]) == 0


def test_unexpected_library_error_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise optuna.exceptions.StorageInternalError("database went away")

    monkeypatch.setattr(autotune.study, "list_studies", boom)
    monkeypatch.setattr(autotune, "list_studies", boom)
    assert main(["study", "list", "--storage", f"sqlite:///{tmp_path}/x.db"]) != 0
    line = _one_line_error(capsys)
    assert "StorageInternalError" in line and "--debug" in line


@pytest.mark.slow
def test_sigterm_to_the_driver_leaves_no_orphan_and_records_the_trial(tmp_path: Path) -> None:
    space = tmp_path / "hang.yaml"
    space.write_text(yaml.safe_dump({
        "workload": "autotune.testing.workloads:hanging", "mode": "train",
        "objectives": {"throughput_sps": "maximize"}, "params": {"threads": 1},
        "budget": {"trial_seconds": 60}}))
    url = f"sqlite:///{tmp_path}/t.db"
    assert main(["study", "create", "hang", "--space", str(space), "--storage", url]) == 0
    driver = subprocess.Popen([sys.executable, "-m", "autotune", "study", "run", "hang",
                               "--n-trials", "1", "--storage", url, "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline and not psutil.Process(driver.pid).children():
        time.sleep(0.2)
    workers = psutil.Process(driver.pid).children(recursive=True)
    assert workers, "the driver never started a worker"
    time.sleep(2)
    driver.send_signal(signal.SIGTERM)
    _, err = driver.communicate(timeout=30)
    assert driver.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned workers: {alive}"
    [trial] = optuna.load_study(study_name="hang", storage=url).trials
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["failure_kind"] == "interrupted"
    assert os.path.exists(f"{tmp_path}/t.db")


@pytest.mark.parametrize("argv", [["study", "show", "bp", "--json"], ["study", "show", "bp"],
                                  ["study", "list"]],
                         ids=["show-json", "show-table", "list-table"])
def test_reader_that_closes_the_pipe_early_gets_no_error(tmp_path: Path,
                                                         argv: list[str]) -> None:
    """`autotune study show NAME --json | head -c 10`: the reader is gone before autotune
    writes. Like a program killed by SIGPIPE: exit 141, nothing on stderr."""
    url = f"sqlite:///{tmp_path}/bp.db"
    autotune.create_study("bp", QUICKSTART, storage=url).close()
    proc = subprocess.Popen([sys.executable, "-m", "autotune", *argv, "--storage", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even started autotune: deterministic
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 141, err
    assert err == ""


def test_broken_pipe_in_process_is_quiet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Even with --debug (which shows tracebacks for errors): a closed pipe is no error."""
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

        def isatty(self) -> bool:
            return False

    url = f"sqlite:///{tmp_path}/bp.db"
    autotune.create_study("bp", QUICKSTART, storage=url).close()
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["--debug", "study", "show", "bp", "--json", "--storage", url]) == 141
    assert capsys.readouterr().err == ""
