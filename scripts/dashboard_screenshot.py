"""Screenshot the dashboard's study page of a real study, for the README.

    .venv/bin/python scripts/dashboard_screenshot.py [--storage URL] [--study NAME]
        [--space FILE] [--n-trials N] [-o docs/dashboard-study.png]

Runs ``--n-trials`` real trials of ``--space`` into ``--study`` when the study has fewer
completed trials than that (a fresh temporary SQLite database by default), serves
``autotune dashboard`` on a free port, opens the study page in headless Chromium
(``scripts/install-test-browser.sh``), waits for the figures and saves the page as a PNG.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]


def _ensure_trials(storage: str, name: str, space: Path, n_trials: int) -> None:
    import autotune
    from autotune.exceptions import StudyNotFoundError

    try:  # a stored study keeps its own space; --space is only for a new one
        study = autotune.load_study(name, storage=storage)
    except StudyNotFoundError:
        study = autotune.create_study(name, space, storage=storage, seed=0)
    with study:
        done = sum(t.state in ("ok", "infeasible") for t in study.trials())
        if done < n_trials:
            print(f"running {n_trials - done} real trial(s) of {space.name} ...", flush=True)
            study.optimize(n_trials=n_trials - done)


def _screenshot(storage: str, name: str, out: Path, width: int, height: int) -> None:
    from autotune.dashboard.app import make_dashboard_server
    from autotune.testing.browser import headless_chromium, plot_drawn

    driver = headless_chromium(width, height)  # first: a missing browser leaves nothing
    server = make_dashboard_server(storage, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        driver.set_page_load_timeout(120)
        driver.get(f"http://127.0.0.1:{server.server_port}/study/{quote(name, safe='')}")
        for div in ("pareto", "parallel", "hypervolume", "importance"):
            plot_drawn(driver, div, timeout_s=60)
        # The page down to the end of the front table under the Pareto figure: the part a
        # reader of the README needs, captured beyond the window in one image.
        bottom = driver.execute_script(
            "var e = document.getElementById('front') || document.getElementById('pareto');"
            "return Math.ceil(e.getBoundingClientRect().bottom + window.scrollY + 16);")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": bottom, "scale": 1}})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
    finally:
        driver.quit()
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Parse the options, make sure the study has its trials, and save the screenshot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", help="storage URL (default: a new temporary SQLite file)")
    parser.add_argument("--study", default="quickstart", help="study name (default quickstart)")
    parser.add_argument("--space", type=Path, default=ROOT / "search_spaces/quickstart.yaml",
                        help="space file used when trials must be run")
    parser.add_argument("--n-trials", type=int, default=12,
                        help="completed trials the study should have (default 12)")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "docs/dashboard-study.png")
    parser.add_argument("--size", default="1280x1000", help="window WIDTHxHEIGHT in pixels")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    from autotune.exceptions import AutotuneError
    from autotune.testing.browser import browser_missing

    missing = browser_missing()
    if missing:  # before any trial is run
        print(f"dashboard_screenshot: error: {missing}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or f"sqlite:///{tmp}/screenshot.db"
        try:
            _ensure_trials(storage, args.study, args.space, args.n_trials)
            _screenshot(storage, args.study, args.output, width, height)
        except (AutotuneError, RuntimeError, TimeoutError) as e:
            print(f"dashboard_screenshot: error: {e}", file=sys.stderr)
            return 1
    print(f"saved {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
