"""The CLI's human-readable output, as a person reads it.

``study run``: a ``trial N:`` line per trial, the progress summary (front size and best
value per objective), the ``N trial(s) in`` line and the closing front table; ``--timeout``;
``devices`` install commands; study names and failure reasons printed as written (rich
markup and emoji codes are not interpreted); CPUs without native bf16/fp16; a study whose
space names a backend that is not installed on this machine.

Trials run through :class:`tests.fakes.FakeLauncher` (synthetic outcomes, no worker
processes): the warm launcher ``Study.optimize`` builds is replaced by a fake.
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from autotune import study as study_module
from autotune.cli import _fmt, main
from autotune.config import TrialConfig
from autotune.launch import WorkerOutcome
from tests.fakes import FakeLauncher, on_calls

SPACE: dict[str, Any] = {
    "workload": "digits_mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "energy_per_sample_j": "minimize"},
    "constraints": {"accuracy": ">= 0.5"},
    "params": {"batch_size": [16, 32, 64, 128], "threads": [1, 2],
               "learning_rate": {"low": 1e-4, "high": 0.1, "log": True}},
}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run ``autotune argv`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


Launchers = list[FakeLauncher]


@pytest.fixture
def fake_launchers(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Launchers]:
    """``use(**kwargs)``: every run builds ``FakeLauncher(**kwargs)`` instead of warm worker
    processes; returns the list the launchers built go to."""
    built: Launchers = []

    def use(cls: type[FakeLauncher] = FakeLauncher, **kwargs: Any) -> Launchers:
        def factory() -> FakeLauncher:
            launcher = cls(**kwargs)
            built.append(launcher)
            return launcher

        monkeypatch.setattr(study_module, "WarmLauncher", factory)
        return built

    return use


def make_study(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str = "out",
               space: dict[str, Any] | None = None, seed: int = 1) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space or SPACE, sort_keys=False), encoding="utf-8")
    url = f"sqlite:///{tmp_path}/out.db"
    code, _, err = run_cli(capsys, "study", "create", name, "--space", path, "--storage", url,
                           "--seed", str(seed))
    assert code == 0, err
    return url


def show_json(capsys: pytest.CaptureFixture[str], name: str, url: str) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "study", "show", name, "--all", "--json", "--storage", url)
    assert code == 0, err
    data: dict[str, Any] = json.loads(out)
    return data


def table_rows(text: str) -> list[list[str]]:
    """The body rows of rich tables in ``text``, as lists of stripped cells; a cell rich
    wrapped onto more lines (the row's first cell empty there) is joined back with spaces."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if rows and not cells[0] and len(cells) == len(rows[-1]):
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


# -- study run --------------------------------------------------------------------------------


def test_run_prints_trial_lines_progress_summary_and_front_table(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        fake_launchers: Callable[..., Launchers]) -> None:
    url = make_study(capsys, tmp_path)
    fake_launchers()
    code, out, err = run_cli(capsys, "study", "run", "out", "--n-trials", "4", "--storage", url)
    assert code == 0, err
    assert err == ""
    lines = out.splitlines()
    data = show_json(capsys, "out", url)

    # one line per trial, in order, with its measurement and its knobs
    trial_lines = [ln for ln in lines if re.match(r"trial \d+: ", ln)]
    assert [ln.split(":")[0] for ln in trial_lines] == [f"trial {n}" for n in range(4)]
    for ln, trial in zip(trial_lines, data["trials"], strict=True):
        assert f"{_fmt(trial['metrics']['throughput_sps'])} samples/s" in ln
        assert f"| batch_size={trial['params']['batch_size']} " in ln

    # the progress bar's last state: trials done, front size, best value per objective
    [bar] = [ln for ln in lines if ln.startswith("out 4/4 trials")]
    best = ", ".join(f"{o} {_fmt(v)}" for o, v in data["best"].items())
    assert f"front {data['front_size']} | {best}" in bar
    assert data["front_size"] >= 1

    [done] = [ln for ln in lines if " trial(s) in " in ln]
    assert re.fullmatch(r"4 trial\(s\) in \d+ s \(\d+\.\d s per trial\)", done)

    # the closing front table: title, objectives with their direction, one row per point
    title = f"Pareto front of 'out': {data['front_size']} configuration(s)"
    [header] = [ln for ln in lines if ln.startswith("┃")]
    assert "throughput_sps ↑" in header and "energy_per_sample_j ↓" in header
    assert "accuracy" in header  # the constrained metric is shown too
    rows = table_rows(out)
    assert sorted(int(r[0]) for r in rows) == sorted(p["trial"] for p in data["front"])
    assert all(r[5].endswith(" est") for r in rows)  # energy column, estimated
    assert "est: energy estimated from process CPU time" in out
    # and in this order
    assert out.index(trial_lines[-1]) < out.index(bar) < out.index(done) < out.index(title)


def test_no_est_legend_without_estimated_energy(capsys: pytest.CaptureFixture[str],
                                                tmp_path: Path,
                                                fake_launchers: Callable[..., Launchers]
                                                ) -> None:
    space = {**SPACE, "objectives": {"throughput_sps": "maximize", "accuracy": "maximize"}}
    url = make_study(capsys, tmp_path, space=space)
    fake_launchers(with_energy=False)
    code, out, err = run_cli(capsys, "study", "run", "out", "--n-trials", "3", "--storage", url)
    assert code == 0, err
    assert "Pareto front of 'out'" in out
    assert "est:" not in out and " est " not in out


def test_infeasible_and_failed_trials_say_why(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path,
                                              fake_launchers: Callable[..., Launchers]) -> None:
    url = make_study(capsys, tmp_path)
    fake_launchers(infeasible=on_calls(1), fail=on_calls(2), fail_kind="timeout")
    code, out, err = run_cli(capsys, "study", "run", "out", "--n-trials", "3", "--storage", url)
    assert code == 0, err
    assert re.search(r"^trial 1: infeasible \(oom\) out of memory: .* \| batch_size=", out,
                     re.MULTILINE)
    assert re.search(r"^trial 2: fail \(timeout\) killed after exceeding its 30 s budget "
                     r"\| batch_size=", out, re.MULTILINE)


def test_quiet_prints_no_trial_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     fake_launchers: Callable[..., Launchers]) -> None:
    url = make_study(capsys, tmp_path)
    fake_launchers()
    code, out, _ = run_cli(capsys, "study", "run", "out", "--n-trials", "2", "--quiet",
                           "--storage", url)
    assert code == 0
    assert not re.search(r"^trial \d+: ", out, re.MULTILINE)
    assert "out 2/2" not in out
    assert out.startswith("2 trial(s) in ")


class _Bounded(FakeLauncher):
    """A fake that refuses to run forever: a run that ignored --timeout fails loudly."""

    def run(self, config: TrialConfig) -> WorkerOutcome:
        if len(self.calls) >= 15:
            raise AssertionError("--timeout did not stop the run")
        return super().run(config)


def test_timeout_stops_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                               fake_launchers: Callable[..., Launchers]) -> None:
    url = make_study(capsys, tmp_path)
    built = fake_launchers(_Bounded, sleep_s=0.5)
    start = time.monotonic()
    code, out, err = run_cli(capsys, "study", "run", "out", "--timeout", "2s",
                             "--storage", url)
    elapsed = time.monotonic() - start
    assert code == 0, err
    [launcher] = built
    n = len(launcher.calls)
    # trials start at about 0, 0.5, 1 and 1.5 s (after the run's set-up): none after 2 s
    assert 1 <= n <= 4
    # The deadline counts from optimize()'s start, which is after the first trial's start
    # minus set-up: every trial starts within 2 s of the first (CLI start-up not counted).
    assert launcher.call_times[-1] - launcher.call_times[0] < 2.0
    assert elapsed < 2.0 + 0.5 + 15.0  # ended: the trial at the deadline ran out, no other
    assert len(re.findall(r"^trial \d+: ", out, re.MULTILINE)) == n
    assert re.search(rf"^{n} trial\(s\) in ", out, re.MULTILINE)
    assert re.search(rf"^out {n} trials ", out, re.MULTILINE)  # no total without --n-trials


# -- text printed as written ------------------------------------------------------------------


def hide_backends(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make ``names`` look uninstalled, the way autotune checks (find_spec, no import)."""
    original = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in names else original(name, *a))


@pytest.mark.parametrize("backend", ["torch", "tensorflow", "mindspore"])
def test_devices_table_shows_the_exact_install_command(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       backend: str) -> None:
    hide_backends(monkeypatch, backend)
    code, out, err = run_cli(capsys, "devices", "--backend", backend)
    assert code == 0, err
    [row] = table_rows(out)
    assert row[:2] == [backend, "not installed"]
    assert f"install: pip install 'autotune[{backend}]'" in row


def test_devices_table_lists_probe_notes(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from autotune.devices import BackendDevices, Device

    def discover(backends: Any = None) -> list[BackendDevices]:
        return [BackendDevices("tensorflow", True, "", "2.21",
                               devices=(Device("cpu", "cpu"),),
                               notes=("TPU system did not initialise: [tpu] missing",))]

    monkeypatch.setattr("autotune.devices.discover", discover)
    code, out, err = run_cli(capsys, "devices")
    assert code == 0, err
    assert [r[:3] for r in table_rows(out)] == [["tensorflow", "2.21", "cpu"]]
    assert "note: tensorflow: TPU system did not initialise: [tpu] missing" in out.splitlines()


MARKUP = "[bold]x[/bold] :thumbs_up:"


class _MarkupReason(FakeLauncher):
    """Every other trial is infeasible with a reason full of rich markup."""

    def _infeasible(self) -> WorkerOutcome:
        return WorkerOutcome("infeasible", failure_kind="oom", wall_s=0.1,
                             reason=f"out of memory: {MARKUP} [red]red[/red]")


def test_names_and_reasons_are_printed_as_written(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path,
                                                  fake_launchers: Callable[..., Launchers]
                                                  ) -> None:
    url = make_study(capsys, tmp_path, name=MARKUP)
    fake_launchers(_MarkupReason, infeasible=on_calls(1, 3))
    code, out, err = run_cli(capsys, "study", "run", MARKUP, "--n-trials", "4",
                             "--storage", url)
    assert code == 0, err
    assert f"Pareto front of '{MARKUP}'" in out
    assert f"{MARKUP} 4/4 trials" in out  # the progress bar's description
    assert f"trial 1: infeasible (oom) out of memory: {MARKUP} [red]red[/red] |" in out

    code, out, err = run_cli(capsys, "study", "show", MARKUP, "--all", "--storage", url)
    assert code == 0, err
    assert out.startswith(f"study '{MARKUP}': ")
    assert f"Trials of '{MARKUP}'" in out and f"Pareto front of '{MARKUP}'" in out
    notes = [r[-1] for r in table_rows(out) if r[1] == "infeasible"]
    assert notes == [f"oom: out of memory: {MARKUP} [red]red[/red]"] * 2

    code, out, err = run_cli(capsys, "study", "list", "--storage", url)
    assert code == 0, err
    [row] = table_rows(out)
    assert row[0] == MARKUP
    assert "👍" not in out


# -- CPUs without native bf16 / fp16 ----------------------------------------------------------


@pytest.mark.parametrize(("precision", "flags", "native"), [
    ("bf16", {"avx2", "avx512f"}, False),
    ("fp16", {"avx2", "avx512f", "avx512_bf16"}, False),
    ("bf16", {"avx2", "avx512_bf16"}, True),
    ("fp16", {"avx2", "amx_fp16"}, True),
])
def test_half_precision_without_native_support_is_unsupported(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fake_launchers: Callable[..., Launchers], precision: str, flags: set[str],
        native: bool) -> None:
    # The seam: the CPU flags the kernel reports (/proc/cpuinfo), read by the capabilities.
    monkeypatch.setattr("autotune.backends._base.cpu_flags", lambda: frozenset(flags))
    space = {**SPACE, "params": {**SPACE["params"], "precision": precision}}
    url = make_study(capsys, tmp_path, space=space)
    built = fake_launchers()
    code, out, err = run_cli(capsys, "study", "run", "out", "--n-trials", "2",
                             "--storage", url)
    assert code == 0, err
    trials = show_json(capsys, "out", url)["trials"]
    if native:
        assert [t["state"] for t in trials] == ["ok", "ok"]
        assert [c.precision for c in built[0].calls] == [precision] * 2
        return
    needs = "AVX512-BF16 or AMX-BF16" if precision == "bf16" else "AVX512-FP16 or AMX-FP16"
    reason = f"torch on cpu: {precision} needs {needs}, which this CPU lacks"
    for t in trials:
        assert (t["state"], t["failure_kind"], t["reason"]) == \
            ("infeasible", "unsupported", reason)
        assert t["values"] is not None and not t["feasible"]  # complete, worst values
    assert built[0].calls == []  # decided without starting a worker
    assert f"trial 0: infeasible (unsupported) {reason} |" in out
    assert "no feasible trial yet" in out


# -- a backend of the space that is not installed here ----------------------------------------


def test_run_warns_once_and_records_trials_of_a_missing_backend_unsupported(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        fake_launchers: Callable[..., Launchers]) -> None:
    space = {**SPACE, "params": {**SPACE["params"], "backend": ["torch", "tensorflow"]}}
    url = make_study(capsys, tmp_path, space=space, seed=3)  # created where both are
    hide_backends(monkeypatch, "tensorflow")  # run where tensorflow is not
    built = fake_launchers()
    code, out, err = run_cli(capsys, "study", "run", "out", "--n-trials", "8", "--sampler",
                             "random", "--storage", url)
    assert code == 0, err
    assert err.splitlines() == [
        "autotune: warning: backend 'tensorflow' of study 'out' is not installed here: its "
        "configurations are not proposed here; install it with: "
        "pip install 'autotune[tensorflow]'"]
    trials = show_json(capsys, "out", url)["trials"]
    # the feasibility pre-screen knows it cannot run here: none is proposed (a worker
    # where it is installed explores it), and no worker was asked to run it
    assert len(trials) == 8 and {t["params"]["backend"] for t in trials} == {"torch"}
    assert all(t["state"] == "ok" for t in trials)
    assert {c.backend for c in built[0].calls} == {"torch"}
    assert "tensorflow" not in out
