"""The read-only web dashboard (``autotune dashboard``): the WSGI app called directly, one
real server on a free port, and a study running while the app reads the same SQLite file.

Studies run through :class:`tests.fakes.FakeLauncher` (synthetic outcomes).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote
from wsgiref.util import setup_testing_defaults

import pytest

pytest.importorskip("plotly")

import autotune
from autotune.dashboard.app import DashboardApp, make_dashboard_server
from tests.fakes import FakeLauncher

EVIL_NAME = "<script>alert(1)</script>"
PARAMS: dict[str, Any] = {
    "backend": ["torch", "tensorflow"],
    "batch_size": [16, 64, 256, 512],
    "threads": {"low": 1, "high": 4},
    "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
}
OBJECTIVES = {"throughput_sps": "maximize", "accuracy": "maximize",
              "energy_per_sample_j": "minimize"}


def _space(objectives: dict[str, str]) -> Any:
    return autotune.parse_space({
        "workload": "mlp", "mode": "train", "objectives": objectives,
        "params": PARAMS, "budget": {"trial_seconds": 20, "window_min_steps": 24}})


def _run(url: str, name: str, objectives: dict[str, str], n: int = 8,
         launcher: FakeLauncher | None = None) -> None:
    with autotune.create_study(name, _space(objectives), storage=url, seed=0) as study:
        study.optimize(n_trials=n, recheck_every=0,
                       launcher=launcher or FakeLauncher(fail=lambda c: c.batch_size > 300))


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashapp") / "studies.db"
    url = f"sqlite:///{path}"
    _run(url, "three", OBJECTIVES)
    _run(url, EVIL_NAME, {"throughput_sps": "maximize", "latency_p50_ms": "minimize"}, n=4)
    return path


@pytest.fixture(scope="module")
def app(db: Path) -> DashboardApp:
    return DashboardApp(f"sqlite:///{db}")


def get(app: DashboardApp, path: str, query: str = "", method: str = "GET"
        ) -> tuple[int, dict[str, str], str]:
    """Call the WSGI app with ``path`` as a browser sends it (study names quoted):
    (status code, headers, body text)."""
    environ: dict[str, Any] = {"PATH_INFO": unquote(path), "QUERY_STRING": query,
                               "REQUEST_URI": path + (f"?{query}" if query else ""),
                               "REQUEST_METHOD": method, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        seen["status"], seen["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return int(seen["status"].split()[0]), seen["headers"], body.decode()


def _trial_numbers(url: str, name: str) -> list[tuple[int, str]]:
    with autotune.load_study(name, storage=url) as study:
        return [(t.number, t.state) for t in study.trials()]


def _scatter3d(body: str) -> int:
    """How often the Pareto figure names a 3-D scatter (its template names it once)."""
    chunk = body[body.index('id="pareto"'):]
    return chunk[:chunk.index("<h2>")].count('"type":"scatter3d"')


def test_list_page_links_every_study(app: DashboardApp) -> None:
    code, headers, body = get(app, "/")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert 'href="/study/three"' in body
    assert f'href="/study/{quote(EVIL_NAME, safe="")}"' in body
    assert "mlp" in body and "train" in body
    assert "<th>state</th>" in body and "<td>idle</td>" in body
    assert "<th>last update</th>" in body
    assert re.search(r"<td>20[0-9]{2}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}</td>", body)


def test_study_page_has_figures_form_and_front(app: DashboardApp) -> None:
    code, _, body = get(app, "/study/three")
    assert code == 200
    assert 'id="pareto"' in body and 'id="parallel"' in body and 'id="hypervolume"' in body
    assert _scatter3d(body) > 1  # three objectives: a 3-D scatter by default (+ template)
    assert '<form class="axes"' in body and '<select name="x">' in body
    assert '<script src="/assets/plotly.min.js">' in body
    assert 'href="/study/three/trial/' in body
    assert "/api/study/three/version" in body  # the live-refresh poll
    assert "Recommendation" in body
    assert len(body) < 500_000  # plotly.js is referenced, not inlined
    assert 'id="workers"' in body and "trials/min over the last 10 minutes" in body
    assert 'id="machine-fronts"' not in body  # one kind of machine: one front


def test_study_page_axes_from_query(app: DashboardApp) -> None:
    code, _, body = get(app, "/study/three", "x=accuracy&y=throughput_sps")
    assert code == 200 and 'id="pareto"' in body
    assert _scatter3d(body) < _scatter3d(get(app, "/study/three")[2])  # 2-D now
    assert '<option value="accuracy" selected>' in body
    for bad in ("x=accuracy&y=nope", "x=accuracy&y=accuracy", "x=accuracy",
                "x=%3Cb%3E&y=accuracy"):
        code, _, body = get(app, "/study/three", bad)
        assert code == 400, bad
        assert "Traceback" not in body and "<b>" not in body


def test_trial_page_shows_metrics_and_failures(app: DashboardApp, db: Path) -> None:
    trials = _trial_numbers(f"sqlite:///{db}", "three")
    ok = next(n for n, s in trials if s == "ok")
    code, _, body = get(app, f"/study/three/trial/{ok}")
    assert code == 200 and "throughput_sps" in body and "batch_size" in body
    assert 'id="steps"' in body
    failed = [n for n, s in trials if s == "fail"]
    if failed:
        code, _, body = get(app, f"/study/three/trial/{failed[0]}")
        assert code == 200 and "Failure" in body


@pytest.mark.parametrize("path", [
    "/study/nope", "/study/nope/trial/0", "/study/three/trial/999", "/api/study/nope/version",
    "/../pyproject.toml", "/assets/../x", "/assets/other.js", "/assets/", "/study/",
    "/study/three/trial/x", "/favicon.ico", "/study/../assets/plotly.min.js"])
def test_unknown_paths_are_404_pages(app: DashboardApp, path: str) -> None:
    code, headers, body = get(app, path)
    assert code == 404, path
    assert headers["Content-Type"].startswith("text/html") and "Traceback" not in body


def test_a_slash_in_a_study_name_is_not_a_route(tmp_path: Path) -> None:
    """A study named ``x/trial/0`` is its own study, not trial 0 of ``x``."""
    url = f"sqlite:///{tmp_path / 'slash.db'}"
    _run(url, "x", OBJECTIVES, n=2)
    _run(url, "x/trial/0", {"throughput_sps": "maximize", "latency_p50_ms": "minimize"}, n=1)
    app = DashboardApp(url)
    code, _, body = get(app, "/study/x%2Ftrial%2F0")
    assert code == 200 and "<h1>study x/trial/0</h1>" in body
    code, _, body = get(app, "/study/x/trial/0")
    assert code == 200 and "<h1>trial 0 of study" in body and ">x</a>" in body
    assert 'href="/study/x%2Ftrial%2F0"' in get(app, "/")[2]
    assert get(app, "/api/study/x%2Ftrial%2F0/version")[0] == 200
    assert get(app, "/study/x%2Ftrial%2F0/trial/0")[0] == 200
    assert get(app, "/study/x%2Ftrial%2F0/trial/50")[0] == 404


def test_dot_and_backslash_names_have_working_links(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dots.db'}"
    objectives = {"throughput_sps": "maximize", "latency_p50_ms": "minimize"}
    for name in ("..", "a\\b"):
        _run(url, name, objectives, n=1, launcher=FakeLauncher())
    app = DashboardApp(url)
    listing = get(app, "/")[2]
    for name, segment in (("..", "%2E%2E"), ("a\\b", "a%5Cb")):
        assert f'href="/study/{segment}"' in listing
        code, _, body = get(app, f"/study/{segment}")
        assert code == 200 and f"<h1>study {name}</h1>" in body
        assert f"/api/study/{segment}/version" in body
        assert get(app, f"/study/{segment}/trial/0")[0] == 200


def test_last_update_is_utc_like_created_at(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna stamps trials in local time, autotune in UTC: the list must not mix them."""
    import time
    from datetime import datetime

    monkeypatch.setenv("TZ", "Asia/Tokyo")  # UTC+9, no daylight saving
    time.tzset()
    try:
        url = f"sqlite:///{tmp_path / 'tz.db'}"
        _run(url, "tz", OBJECTIVES, n=1, launcher=FakeLauncher())
        with autotune.load_study("tz", storage=url) as study:
            summary = study.summary()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    created = datetime.fromisoformat(summary["created_at"])
    updated = datetime.fromisoformat(summary["last_update"])
    assert 0 <= (updated - created).total_seconds() < 600


def test_list_tells_running_from_stalled(tmp_path: Path) -> None:
    """A trial left RUNNING by a driver that died is "stalled" once it is far past its
    budget (20 s here); a fresh one is "running"."""
    from datetime import datetime, timedelta

    import optuna

    url = f"sqlite:///{tmp_path / 'stall.db'}"
    _run(url, "fresh", OBJECTIVES, n=1, launcher=FakeLauncher())
    _run(url, "stale", OBJECTIVES, n=1, launcher=FakeLauncher())
    optuna.load_study(study_name="fresh", storage=url).ask()  # running now
    optuna.load_study(study_name="stale", storage=url).add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.RUNNING, params={}, distributions={}, values=None))
    with autotune.load_study("stale", storage=url) as study:  # started an hour ago
        trial_id = next(t._trial_id for t in study._optuna_study().trials
                        if t.state == optuna.trial.TrialState.RUNNING)
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE trials SET datetime_start = :t WHERE trial_id = :i"),
                     {"t": datetime.now() - timedelta(hours=1), "i": trial_id})
    engine.dispose()
    body = get(DashboardApp(url), "/")[2]
    rows = {m[0]: m[1] for m in re.findall(
        r'<a href="/study/(\w+)">\w+</a></td><td>[^<]*</td><td>[^<]*</td><td>([^<]*)</td>',
        body)}
    assert rows["fresh"] == "running"
    assert rows["stale"].startswith("stalled")


def test_writes_are_refused(app: DashboardApp) -> None:
    assert get(app, "/", method="POST")[0] == 405


def test_plotly_asset(app: DashboardApp) -> None:
    code, headers, body = get(app, "/assets/plotly.min.js")
    assert code == 200 and headers["Content-Type"].startswith("application/javascript")
    assert "plotly" in body[:2000].lower() and len(body) > 1_000_000


def test_evil_study_name_is_escaped(app: DashboardApp) -> None:
    evil = quote(EVIL_NAME, safe="")
    for path, expected in (("/", 200), (f"/study/{evil}", 200), (f"/study/{evil}/trial/0", 200),
                           (f"/study/{evil}/trial/99", 404),
                           (f"/api/study/{evil}/version", 200)):
        code, _, body = get(app, path)
        assert code == expected, path
        assert "<script>alert(1)" not in body, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in get(app, f"/study/{evil}")[2]


def test_page_error_is_a_500_page(app: DashboardApp, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("kaboom <b>\nsecond line")

    monkeypatch.setattr(DashboardApp, "list_page", boom)
    code, _, body = get(app, "/")
    assert code == 500 and "kaboom &lt;b&gt;" in body
    assert "second line" not in body and "Traceback" not in body


def test_pages_never_write_the_database(app: DashboardApp, db: Path) -> None:
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    trials = _trial_numbers(f"sqlite:///{db}", "three")
    paths = ["/", "/study/three", "/api/study/three/version", "/study/nope",
             f"/study/{quote(EVIL_NAME, safe='')}",
             *(f"/study/three/trial/{n}" for n, _ in trials)]
    for path in paths:
        assert get(app, path)[0] in (200, 404)
    assert get(app, "/study/three", "x=accuracy&y=throughput_sps")[0] == 200
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_version_changes_after_a_trial(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    _run(url, "v", OBJECTIVES, n=2)
    app = DashboardApp(url)
    code, headers, body = get(app, "/api/study/v/version")
    assert code == 200 and headers["Content-Type"] == "application/json"
    first = json.loads(body)
    assert first == {"trials": 2, "last": 1, "finished": 2}
    with autotune.load_study("v", storage=url) as study:
        study.optimize(n_trials=1, launcher=FakeLauncher(), recheck_every=0)
    assert json.loads(get(app, "/api/study/v/version")[2]) == \
        {"trials": 3, "last": 2, "finished": 3}


def test_real_server_on_a_free_port(db: Path) -> None:
    server = make_dashboard_server(f"sqlite:///{db}", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200 and b'href="/study/three"' in r.read()
        # The name holds a "/" (in "</script>"): the server must route on the raw path.
        evil = quote(EVIL_NAME, safe="")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/study/{evil}", timeout=30) as r:
            assert r.status == 200 and b"&lt;script&gt;alert(1)&lt;/script&gt;" in r.read()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=30)
        assert e.value.code == 404
        e.value.close()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_study_runs_while_the_dashboard_reads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'live.db'}"
    with autotune.create_study("live", _space(OBJECTIVES), storage=url, seed=0):
        pass
    app = DashboardApp(url)
    stop = threading.Event()
    errors: list[str] = []
    served = [0]

    def hammer() -> None:
        while not stop.is_set():
            for path in ("/api/study/live/version", "/study/live"):
                code, _, body = get(app, path)
                served[0] += 1
                if code != 200:
                    errors.append(f"{path}: {code} {body[-300:]}")

    reader = threading.Thread(target=hammer)
    reader.start()
    try:
        with autotune.load_study("live", storage=url) as study:
            study.optimize(n_trials=5, launcher=FakeLauncher(sleep_s=0.05), recheck_every=0)
    finally:
        stop.set()
        reader.join(60)
    assert not errors, errors[:3]
    assert served[0] > 0
    states = _trial_numbers(url, "live")
    assert [n for n, _ in states] == list(range(5))
    assert all(s == "ok" for _, s in states)
    assert json.loads(get(app, "/api/study/live/version")[2])["trials"] == 5
