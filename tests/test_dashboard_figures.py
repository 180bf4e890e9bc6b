"""Dashboard figures and the static HTML report (``autotune study report``).

Studies run through :class:`tests.fakes.FakeLauncher` (synthetic outcomes, estimated
energy, step times); large batches come back out of memory.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("plotly")

import autotune
from autotune.cli import main
from autotune.config import TrialConfig
from autotune.dashboard import figures, info
from autotune.dashboard.report import render_report
from autotune.launch import WorkerOutcome
from autotune.study import Study
from tests.fakes import FakeLauncher

EVIL_NAME = "<script>alert(1)</script>"
EVIL_REASON = 'out of memory: <b>bold</b> & "quoted"'
PARAMS: dict[str, Any] = {
    "backend": ["torch", "tensorflow"],  # the fake runs any backend
    "batch_size": [16, 64, 256, 512],
    "threads": {"low": 1, "high": 4},
    "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
}


def _space(objectives: dict[str, str]) -> Any:
    return autotune.parse_space({
        "workload": "mlp", "mode": "train", "objectives": objectives,
        "constraints": {"accuracy": ">= 0.5"}, "params": PARAMS,
        "budget": {"trial_seconds": 20, "window_min_steps": 24}})


class _EvilReasonLauncher(FakeLauncher):
    """Out-of-memory trials whose reason holds HTML (a reason is user-visible text)."""

    def run(self, config: TrialConfig) -> WorkerOutcome:
        out = super().run(config)
        if out.status != "infeasible":
            return out
        return dataclasses.replace(out, reason=EVIL_REASON,
                                   result={**out.result, "reason": EVIL_REASON})


def _run(url: str, name: str, objectives: dict[str, str], launcher: FakeLauncher) -> None:
    with autotune.create_study(name, _space(objectives), storage=url, seed=0) as study:
        study.optimize(n_trials=12, launcher=launcher, recheck_every=0)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'studies.db'}"
    big = FakeLauncher(infeasible=lambda c: c.batch_size > 300)
    _run(url, "two", {"throughput_sps": "maximize", "energy_per_sample_j": "minimize"}, big)
    _run(url, "three", {"throughput_sps": "maximize", "latency_p50_ms": "minimize",
                        "energy_per_sample_j": "minimize"},
         FakeLauncher(infeasible=lambda c: c.batch_size > 300))
    _run(url, EVIL_NAME, {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
         _EvilReasonLauncher(infeasible=lambda c: c.batch_size > 300))
    return url


@pytest.fixture
def two(url: str) -> Study:
    return autotune.load_study("two", storage=url)


def _trace(fig: Any, name: str) -> Any:
    found = [t for t in fig.data if t.name == name]
    assert len(found) == 1, [t.name for t in fig.data]
    return found[0]


def test_pareto_front_trace_and_encodings(two: Study) -> None:
    fig = figures.study_pareto_figure(two)
    front = _trace(fig, "front")
    points = two.pareto_front()
    assert len(front.x) == len(points) >= 1
    assert sorted(front.customdata) == sorted(p.trial_number for p in points)
    assert list(front.x) == sorted(front.x)  # the line joins the front along x
    assert "lines" in front.mode
    # device colours and backend symbols: both backends ran, each has its symbol
    backends = {t.params["backend"] for t in two.trials() if t.state == "ok"}
    assert backends == {"torch", "tensorflow"}
    legend = {t.name: t.marker.symbol for t in fig.data if t.name.startswith("backend ")}
    assert set(legend) == {"backend torch", "backend tensorflow"}
    assert len(set(legend.values())) == 2
    assert any(t.name == "device cpu" for t in fig.data)
    dominated = _trace(fig, "dominated")
    assert dominated.opacity < front.opacity


def test_infeasible_trials_have_their_own_trace_with_reasons(two: Study) -> None:
    fig = figures.study_pareto_figure(two)
    bad = _trace(fig, "infeasible")
    oom = [t for t in two.trials() if t.state == "infeasible"]
    assert oom and len(bad.x) >= len(oom)
    assert set(bad.marker.symbol) == {"x"}
    assert sum("out of memory" in h for h in bad.hovertext) == len(oom)
    assert all("reason:" in h for h in bad.hovertext)


def test_throughput_error_bars_and_estimated_energy(two: Study) -> None:
    fig = figures.study_pareto_figure(two)
    front = _trace(fig, "front")
    assert front.error_x is not None and front.error_x.type == "data"  # x: throughput
    assert len(front.error_x.array) == len(front.x)
    assert all(v >= 0 for v in front.error_x.array)
    assert "(est)" in fig.layout.yaxis.title.text  # y: energy, estimated by the fake
    assert "(est)" in front.hovertext[0]
    # objectives are selectable: energy on x, throughput on y
    swapped = figures.study_pareto_figure(two, ["energy_per_sample_j", "throughput_sps"])
    assert "(est)" in swapped.layout.xaxis.title.text
    assert _trace(swapped, "front").error_y is not None
    with pytest.raises(ValueError, match="objectives"):
        info.pareto_info(two, ["throughput_sps", "accuracy"])


def test_three_objectives_give_a_3d_scatter(url: str) -> None:
    with autotune.load_study("three", storage=url) as study:
        fig = figures.study_pareto_figure(study)
        front = _trace(fig, "front")
        assert front.type == "scatter3d"
        assert len(front.z) == len(study.pareto_front())
        assert "(est)" in fig.layout.scene.zaxis.title.text


def test_parallel_coordinates_dimensions(two: Study) -> None:
    fig = figures.study_parallel_figure(two)
    dims = fig.data[0].dimensions
    assert len(dims) == len(PARAMS) + len(two.space.objectives)
    labels = [d.label for d in dims]
    assert labels[-2:] == ["throughput_sps", "energy_per_sample_j"]
    assert "log10(batch_size)" in labels and "log10(learning_rate)" in labels
    backend = dims[labels.index("backend")]
    assert list(backend.ticktext) == ["torch", "tensorflow"]
    assert set(backend.values) <= {0.0, 1.0}
    ok = [t for t in two.trials() if t.state == "ok"]
    assert all(len(d.values) == len(ok) for d in dims)


def test_hypervolume_history(two: Study) -> None:
    fig = figures.study_hypervolume_figure(two)
    assert len(fig.data[0].x) == len(two.front_history()) > 0


def test_step_times_figure_marks_warmup(two: Study) -> None:
    number = two.pareto_front()[0].trial_number
    fig = figures.study_step_times_figure(two, number)
    names = [t.name for t in fig.data]
    assert any(n.startswith("warm-up") for n in names) and "measured" in names
    warm = next(t for t in fig.data if t.name.startswith("warm-up"))
    assert max(warm.x) < 0 <= min(_trace(fig, "measured").x)
    assert any(t.type == "histogram" for t in fig.data)
    assert fig.layout.shapes  # the shaded warm-up region
    with pytest.raises(KeyError):
        info.step_times_info(two, 999)


def test_importances(two: Study) -> None:
    imp = info.importance_info(two)
    assert imp.importances and not imp.message
    assert set(imp.importances) <= set(PARAMS)
    assert figures.importance_figure(imp).data


def test_report_is_offline_and_escaped(url: str) -> None:
    with autotune.load_study(EVIL_NAME, storage=url) as study:
        assert any(t.reason == EVIL_REASON for t in study.trials())
        page = render_report(study)
    # plotly.js inline exactly once, nothing fetched from the network
    assert page.count("* plotly.js v") == 1
    without_js = _strip_plotly_bundle(page)
    assert not re.search(r"<script[^>]*\bsrc=", page)
    # (the bundle itself names a CDN only as the default for geo maps' topojson)
    assert "cdn.plot.ly" not in without_js and "https://" not in without_js
    # user-controlled text: escaped in the HTML, \u-escaped inside figure JSON
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert EVIL_NAME not in page and "alert(1)</script>" not in page
    assert "<b>bold</b>" not in without_js
    assert "&lt;b&gt;bold&lt;/b&gt;" in _figure_strings(without_js)
    # every </script> closes a <script> opened by the report (none inside JSON)
    assert without_js.count("</script>") == without_js.count("<script")


def _strip_plotly_bundle(page: str) -> str:
    """The page without the (minified, third-party) plotly.js bundle."""
    start = page.rindex("<script", 0, page.index("* plotly.js v"))
    end = page.index("</script>", start)
    return page[:start] + page[end + len("</script>"):]


def _figure_strings(page: str) -> str:
    """The decoded JSON of every ``Plotly.newPlot`` call (where hover text lives)."""
    decoded = []
    for match in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', page, re.S):
        decoded.append(json.dumps(json.loads(match.group(1)), ensure_ascii=False))
    assert decoded
    return "\n".join(decoded)


def test_cli_writes_report(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["study", "report", "two", "-o", str(out), "--storage", url]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "autotune study two" in text


def test_cli_default_output_name(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["study", "report", "two", "--storage", url]) == 0
    assert (tmp_path / "two-report.html").exists()
    assert capsys.readouterr().out.strip() == "two-report.html"


def test_cli_unknown_study_is_one_line(url: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "report", "nope", "-o", str(tmp_path / "x.html"),
                 "--storage", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("autotune: error:") and err.count("\n") == 1 and "nope" in err
    assert not (tmp_path / "x.html").exists()
