"""The dashboard driven as a person would: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, installed by ``scripts/install-test-browser.sh``, which the README's test
command runs) through Selenium, against a real ``autotune dashboard`` server on a free port.

Without the browser these tests skip, naming the install script; with
``AUTOTUNE_REQUIRE_BROWSER=1`` (set by ``.ci/run``) a missing browser fails them instead.
Studies run through :class:`tests.fakes.FakeLauncher`; screenshots go to ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

pytest.importorskip("plotly")

import optuna

import autotune
from autotune.dashboard.app import make_dashboard_server
from autotune.dashboard.report import write_report
from autotune.testing.browser import (
    browser_missing,
    headless_chromium,
    plot_drawn,
    traces,
    wait_for,
)
from tests.fakes import FakeLauncher

_MISSING = browser_missing()
if _MISSING:
    if os.environ.get("AUTOTUNE_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"browser tests required but cannot run: {_MISSING}")
    pytest.skip(_MISSING, allow_module_level=True)

from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

OBJECTIVES = {"throughput_sps": "maximize", "accuracy": "maximize",
              "energy_per_sample_j": "minimize"}
PARAMS: dict[str, Any] = {
    "backend": ["torch", "tensorflow"],
    "batch_size": [16, 64, 256, 512],
    "threads": {"low": 1, "high": 4},
    "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
}
#: Each payload sets ``window.__xss`` if the browser ever runs it.
PAYLOAD = ('<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
           '<svg onload="window.__xss=3">')
EVIL_NAME = "evil " + PAYLOAD
EVIL_REASON = "out of memory " + PAYLOAD


def _space(objectives: dict[str, str]) -> Any:
    return autotune.parse_space({
        "workload": "mlp", "mode": "train", "objectives": objectives, "params": PARAMS,
        "budget": {"trial_seconds": 20, "window_min_steps": 24}})


class _EvilFailures(FakeLauncher):
    """Synthetic outcomes whose failure texts carry HTML and scripts."""

    def run(self, config: Any) -> Any:
        import dataclasses

        out = super().run(config)
        if out.status == "ok":
            return out
        return dataclasses.replace(out, reason=EVIL_REASON, traceback=PAYLOAD,
                                   result={**out.result, "reason": EVIL_REASON})


def _inject_evil_trial(url: str, name: str) -> int:
    """A trial written with stock Optuna (as another tool could): HTML in a parameter
    name and value, a metric name and value, and the failure reason."""
    ostudy = optuna.load_study(study_name=name, storage=url)
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL,
        params={PAYLOAD: PAYLOAD},
        distributions={PAYLOAD: optuna.distributions.CategoricalDistribution([PAYLOAD])},
        user_attrs={"reason": EVIL_REASON, "failure_kind": "crash",
                    "metrics": {PAYLOAD: PAYLOAD, "throughput_sps": 1.0}})
    ostudy.add_trial(trial)
    return max(t.number for t in ostudy.get_trials(deepcopy=False))


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'studies.db'}"
    with autotune.create_study("three", _space(OBJECTIVES), storage=url, seed=0) as study:
        study.optimize(n_trials=10, recheck_every=0,
                       launcher=FakeLauncher(fail=lambda c: c.batch_size > 300))
    evil_space = _space({"throughput_sps": "maximize", "latency_p50_ms": "minimize"})
    with autotune.create_study(EVIL_NAME, evil_space, storage=url, seed=1) as study:
        study.optimize(n_trials=8, recheck_every=0, launcher=_EvilFailures(
            infeasible=lambda c: c.batch_size == 256, fail=lambda c: c.batch_size == 512))
    return url


@pytest.fixture(scope="module")
def server(storage: str) -> Iterator[str]:
    srv = make_dashboard_server(storage, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = headless_chromium()
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def _front(storage: str, name: str) -> list[int]:
    with autotune.load_study(name, storage=storage) as study:
        return sorted(p.trial_number for p in study.pareto_front())


def _drawn_points(driver: Any, div_id: str, trace: str) -> int:
    """SVG markers plotly drew for the 2-D trace named ``trace`` (not just its data)."""
    return int(driver.execute_script(
        "var gd = document.getElementById(arguments[0]), name = arguments[1];"
        "var i = gd.data.findIndex(function (t) { return t.name === name; });"
        "return i < 0 ? -1 : gd.querySelectorAll('.scatterlayer .trace')[i]"
        ".querySelectorAll('path.point').length;", div_id, trace))


def _no_script_ran(driver: Any) -> None:
    assert driver.execute_script("return window.__xss === undefined"), \
        f"an injected script ran on {driver.current_url}"
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018 - raises when no alert is open


def _shot(driver: Any, path: Path) -> None:
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, f"{path.name} looks blank"


def test_a_person_browses_list_study_axes_and_trial(
        browser: Any, server: str, storage: str, tmp_path: Path) -> None:
    browser.get(server + "/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "autotune studies"
    _shot(browser, tmp_path / "list.png")

    browser.find_element(By.LINK_TEXT, "three").click()
    wait_for(lambda: browser.current_url.endswith("/study/three"), what="study page open")
    plot_drawn(browser, "pareto", timeout_s=60)
    front = _front(storage, "three")
    assert front, "the fixture study should have a front"
    # Three objectives: a 3-D scatter by default, with every front point.
    drawn = {name: (kind, n) for name, kind, n in traces(browser, "pareto")}
    assert drawn["front"] == ("scatter3d", len(front))
    for div in ("parallel", "hypervolume", "importance"):
        plot_drawn(browser, div)
    _shot(browser, tmp_path / "study-3d.png")

    # Switch to a 2-D plot of accuracy against throughput with the axis form.
    Select(browser.find_element(By.NAME, "x")).select_by_value("accuracy")
    Select(browser.find_element(By.NAME, "y")).select_by_value("throughput_sps")
    Select(browser.find_element(By.NAME, "z")).select_by_value("")
    browser.find_element(By.CSS_SELECTOR, "form.axes button").click()
    wait_for(lambda: "x=accuracy" in browser.current_url, what="axes submitted")
    plot_drawn(browser, "pareto")
    drawn = {name: (kind, n) for name, kind, n in traces(browser, "pareto")}
    assert drawn["front"] == ("scatter", len(front))
    assert _drawn_points(browser, "pareto", "front") == len(front)  # markers really drawn
    titles = browser.execute_script(
        "var l = document.getElementById('pareto')._fullLayout;"
        "return [l.xaxis.title.text, l.yaxis.title.text];")
    assert "accuracy" in titles[0] and "throughput_sps" in titles[1]
    selected = Select(browser.find_element(By.NAME, "x")).first_selected_option
    assert selected.get_attribute("value") == "accuracy"
    _shot(browser, tmp_path / "study-2d.png")

    # Open the first front trial from the front table.
    first = front[0]
    rows = browser.find_elements(By.CSS_SELECTOR, "table#front tr")
    assert len(rows) == len(front) + 1  # the front table under the figure, with its header
    browser.find_element(By.CSS_SELECTOR, f'#front a[href="/study/three/trial/{first}"]').click()
    wait_for(lambda: browser.current_url.endswith(f"/trial/{first}"), what="trial page open")
    assert browser.find_element(By.TAG_NAME, "h1").text == f"trial {first} of study three"
    plot_drawn(browser, "steps")
    step_traces = {name for name, _, n in traces(browser, "steps") if n}
    assert {"measured", "latency"} <= step_traces
    assert "throughput_sps" in browser.find_element(By.TAG_NAME, "body").text
    _shot(browser, tmp_path / "trial.png")

    browser.find_element(By.LINK_TEXT, "three").click()  # back to the study
    wait_for(lambda: browser.current_url.endswith("/study/three"), what="back on the study")


def test_unknown_study_is_a_404_page(browser: Any, server: str) -> None:
    browser.get(server + "/study/" + quote("no such study", safe=""))
    assert browser.find_element(By.TAG_NAME, "h1").text == "404 Not Found"
    assert "no study named 'no such study'" in browser.find_element(By.TAG_NAME, "body").text


def test_html_in_names_params_and_errors_never_runs(
        browser: Any, server: str, storage: str, tmp_path: Path) -> None:
    injected = _inject_evil_trial(storage, EVIL_NAME)
    browser.get(server + "/")
    _no_script_ran(browser)
    link = browser.find_element(By.PARTIAL_LINK_TEXT, "evil ")
    assert link.text == EVIL_NAME  # shown as text, not parsed as markup
    link.click()
    wait_for(lambda: "/study/evil" in browser.current_url, what="evil study open")
    plot_drawn(browser, "pareto", timeout_s=60)
    assert browser.find_element(By.TAG_NAME, "h1").text == f"study {EVIL_NAME}"
    _no_script_ran(browser)
    # Hover labels hold the trial's texts too: hover every drawn point.
    browser.execute_script("""
        var gd = document.getElementById('pareto');
        gd.data.forEach(function (t, i) {
          (t.x || []).forEach(function (_, j) {
            Plotly.Fx.hover(gd, [{curveNumber: i, pointNumber: j}]); });
        });""")
    _no_script_ran(browser)
    _shot(browser, tmp_path / "evil-study.png")

    with autotune.load_study(EVIL_NAME, storage=storage) as study:
        failed = [t.number for t in study.trials() if t.reason == EVIL_REASON]
    assert failed, "the fixture should have failed trials with the evil reason"
    base = server + "/study/" + quote(EVIL_NAME, safe="")
    for number in (failed[0], injected):
        browser.get(f"{base}/trial/{number}")
        assert browser.find_element(By.TAG_NAME, "h1").text.startswith(f"trial {number} of")
        body = browser.find_element(By.TAG_NAME, "body").text
        assert EVIL_REASON in body  # the failure reason, as text
        _no_script_ran(browser)
    assert PAYLOAD in browser.find_element(By.TAG_NAME, "body").text  # param, metric
    _shot(browser, tmp_path / "evil-trial.png")


def test_pages_follow_a_running_study(browser: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    with autotune.create_study("live", _space(OBJECTIVES), storage=url, seed=0) as study:
        study.optimize(n_trials=3, recheck_every=0, launcher=FakeLauncher())
    srv = make_dashboard_server(url, "127.0.0.1", 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{srv.server_address[1]}/study/live")
        plot_drawn(browser, "pareto", timeout_s=60)
        browser.execute_script("window.__before_reload = true;")

        def trial_rows() -> int:
            return len(browser.find_elements(By.CSS_SELECTOR, "table#trials tr")) - 1

        assert trial_rows() == 3
        with autotune.load_study("live", storage=url) as study:
            study.optimize(n_trials=2, recheck_every=0, launcher=FakeLauncher())
        # No user action: the page polls, notices the new trials and reloads itself.
        wait_for(lambda: trial_rows() == 5, timeout_s=30, what="new trials shown")
        assert browser.execute_script("return window.__before_reload === undefined")
        plot_drawn(browser, "pareto", timeout_s=60)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def test_static_report_opens_offline(browser: Any, storage: str, tmp_path: Path) -> None:
    with autotune.load_study("three", storage=storage) as study:
        path = write_report(study, tmp_path / "report.html")
        front = sorted(p.trial_number for p in study.pareto_front())
    browser.get(path.as_uri())
    plot_drawn(browser, "fig0", timeout_s=60)
    drawn = {name: (kind, n) for name, kind, n in traces(browser, "fig0")}
    assert drawn["front"] == ("scatter3d", len(front))
    assert browser.find_element(By.TAG_NAME, "h1").text == "autotune study three"
    # Everything came from the file itself: no request left the page.
    remote = browser.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })"
        ".filter(function (n) { return !/^(file|data|blob):/.test(n); });")
    assert remote == []
    _shot(browser, tmp_path / "report.png")


ROOT = Path(__file__).resolve().parents[1]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_readme_screenshot_script(storage: str, tmp_path: Path) -> None:
    """``scripts/dashboard_screenshot.py`` (which made the README's picture) on a stored
    study: the page down to the front table, as a PNG."""
    out = tmp_path / "shot.png"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts/dashboard_screenshot.py"), "--storage", storage,
         "--study", "three", "--n-trials", "1", "-o", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    width, height = _png_size(out)
    assert width == 1280 and height > 600


@pytest.mark.slow
def test_newcomer_quickstart_then_dashboard(browser: Any, tmp_path: Path) -> None:
    """The README's path: real quickstart trials on the default storage, then
    ``autotune dashboard``; the printed address shows the study and its front."""
    cli = [sys.executable, "-m", "autotune"]
    space = str(ROOT / "search_spaces/quickstart.yaml")
    for args in (["study", "create", "quickstart", "--space", space],
                 ["study", "run", "quickstart", "--n-trials", "3"]):
        done = subprocess.run([*cli, *args], capture_output=True, text=True, timeout=300,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    storage = f"sqlite:///{tmp_path / 'studies' / 'autotune.db'}"
    front = _front(storage, "quickstart")
    with autotune.load_study("quickstart", storage=storage) as study:
        outcomes = [(t.state, t.failure_kind, t.reason[:200]) for t in study.trials()]
    assert front, f"three real quickstart trials should leave a front: {outcomes}"

    server = subprocess.Popen([*cli, "dashboard", "--port", "0"], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert server.stdout is not None
        # The address line, or give up after 60 s (a dashboard that never prints must not
        # hang the test run).
        ready, _, _ = select.select([server.stdout], [], [], 60)
        line = server.stdout.readline() if ready else ""
        address = re.search(r"http://127\.0\.0\.1:[0-9]+/", line)
        assert address, f"no address printed: {line!r}"
        browser.get(address.group(0))
        browser.find_element(By.LINK_TEXT, "quickstart").click()
        plot_drawn(browser, "pareto", timeout_s=60)
        drawn = {name: (kind, n) for name, kind, n in traces(browser, "pareto")}
        assert drawn["front"] == ("scatter", len(front))
        assert _drawn_points(browser, "pareto", "front") == len(front)
        _shot(browser, tmp_path / "quickstart.png")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
            raise
    assert server.returncode == 0 and "stopped" in err
