"""Headless Chromium for the dashboard's browser tests and its README screenshot.

Uses the distribution's browser and driver (Debian's ``chromium`` and ``chromium-driver``,
installed by ``scripts/install-test-browser.sh``) through Selenium, never a browser a tool
downloads: machines without internet access must run these tests too. Selenium comes with
the ``dev`` extra.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

#: Where Debian puts them; ``$AUTOTUNE_CHROMIUM`` / ``$AUTOTUNE_CHROMEDRIVER`` override.
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
_DRIVER_NAMES = ("chromedriver",)

#: Installs the browser (the README's test command runs it).
INSTALL_HINT = "scripts/install-test-browser.sh (Debian: apt-get install chromium chromium-driver)"


def _which(env: str, names: tuple[str, ...]) -> str | None:
    if os.environ.get(env):  # an explicit path: that one or nothing
        return shutil.which(os.environ[env])
    return next((path for name in names if (path := shutil.which(name))), None)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (``None``: they can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    if _which("AUTOTUNE_CHROMIUM", _CHROMIUM_NAMES) is None:
        return f"no chromium on PATH: run {INSTALL_HINT}"
    if _which("AUTOTUNE_CHROMEDRIVER", _DRIVER_NAMES) is None:
        return f"no chromedriver on PATH: run {INSTALL_HINT}"
    return None


def headless_chromium(width: int = 1280, height: int = 1000) -> Any:
    """A Selenium ``webdriver.Chrome`` on the local headless Chromium (call ``quit()``).

    Raises:
        RuntimeError: the browser, its driver or selenium is missing (the message says how
            to install them).
    """
    missing = browser_missing()
    if missing:
        raise RuntimeError(missing)
    # Selenium Manager would try to download a driver when it cannot find one: never here.
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(_which("AUTOTUNE_CHROMIUM", _CHROMIUM_NAMES))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--disable-extensions", "--no-first-run",
                # WebGL in software, so plotly's 3-D scatter draws without a GPU
                "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    service = Service(executable_path=str(_which("AUTOTUNE_CHROMEDRIVER", _DRIVER_NAMES)))
    return webdriver.Chrome(options=options, service=service)


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0, what: str = "condition",
             interval_s: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; return it. An exception from
    ``condition`` counts as "not yet" (a page may be reloading) until the deadline.

    Raises:
        TimeoutError: not true within ``timeout_s`` (naming ``what`` and the last error).
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
        except Exception as e:  # e.g. a script run while the page navigates
            value, last_error = None, e
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {type(last_error).__name__}: {last_error})" \
                if last_error else ""
            raise TimeoutError(f"{what} not true within {timeout_s:g} s{detail}")
        time.sleep(interval_s)


#: JavaScript: has plotly drawn the figure in ``div#<id>``?
PLOT_DRAWN_JS = """
var gd = document.getElementById(arguments[0]);
return !!(gd && gd._fullLayout && gd._fullData && gd.querySelector('.main-svg'));
"""

#: JavaScript: ``[name, type, number of points]`` of every trace of ``div#<id>``.
TRACES_JS = """
var gd = document.getElementById(arguments[0]);
return gd.data.map(function (t) {
  return [t.name || '', t.type || 'scatter', (t.x || []).filter(function (v) {
    return v !== null; }).length];
});
"""


def plot_drawn(driver: Any, div_id: str, timeout_s: float = 20.0) -> None:
    """Wait until plotly has drawn the figure in ``div#div_id``."""
    wait_for(lambda: driver.execute_script(PLOT_DRAWN_JS, div_id), timeout_s,
             f"plotly figure #{div_id} drawn")


def traces(driver: Any, div_id: str) -> list[tuple[str, str, int]]:
    """``(name, type, points)`` of each trace of the drawn figure ``div#div_id``."""
    return [(str(n), str(k), int(c)) for n, k, c in driver.execute_script(TRACES_JS, div_id)]
