"""``autotune dashboard``: a small read-only web app over the dashboard figures.

Why the standard library (:mod:`wsgiref` with a threading mixin) and no web framework:
there is nothing to install beyond the ``dashboard`` extra the figures already need, the
pages are server-rendered plotly figures (no client-side app to build), and the app has
five routes. A WSGI callable is also trivial to test without a socket.

Routes (``GET``/``HEAD`` only; everything else is a 404 page, never a traceback):

* ``/``: every study (workload, mode, state, trials by state, front size, best values,
  last update);
* ``/study/<name>``: Pareto figure (axes from ``?x=&y=[&z=]``) and the front table, the
  recommendation, parallel coordinates, hypervolume history, importances, every trial;
* ``/study/<name>/trial/<n>``: one trial's config, metrics, failure and step times;
* ``/api/study/<name>/version``: JSON ``{"trials", "last", "finished"}``, polled every
  3 s by the pages to reload when the study changed;
* ``/assets/plotly.min.js``: plotly.js from the installed plotly package.

A study name is one path segment, quoted with ``safe=""`` (a ``/`` in it is ``%2F``), and
routing splits the *raw* request path (``REQUEST_URI``, which the server sets) before
unquoting each segment, so a study named ``a/trial/3`` never reads as trial 3 of ``a``.

Read-only: studies are opened with :func:`autotune.load_study` /
:func:`autotune.list_studies`, which only read (``check_readable``, never
``prepare_for_writing``); the tests hash the SQLite file before and after serving every page.
Text from the study is escaped with :func:`html.escape`; study names in URLs are quoted
with :func:`urllib.parse.quote`.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from autotune.dashboard.info import _fmt, esc, header_info

if TYPE_CHECKING:
    from autotune.study import Study

_logger = logging.getLogger("autotune.dashboard")

StartResponse = Callable[..., Any]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222 }
table { border-collapse: collapse; margin: .5em 0 1.5em }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left }
th { background: #f3f3f3 }
.note { color: #666 }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto }
nav { margin-bottom: 1em }
"""

#: Polls the version API every 3 s; reloads the page when the study changed.
_POLL_JS = """<script>(function () {
  var url = %s, seen = %s;
  function poll() {
    fetch(url, {cache: "no-store"}).then(function (r) { return r.json(); })
      .then(function (v) { if (JSON.stringify(v) !== seen) { location.reload(); } })
      .catch(function () {}).finally(function () { setTimeout(poll, 3000); });
  }
  setTimeout(poll, 3000);
})();</script>"""

_PLOTLY_URL = "/assets/plotly.min.js"


class HTTPError(Exception):
    """A page that answers with an error status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error"}


def _segment(name: str) -> str:
    """``name`` as one URL path segment."""
    quoted = quote(name, safe="")
    # A browser resolves "." and ".." segments away; quote() leaves dots alone.
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


def _study_url(name: str) -> str:
    return "/study/" + _segment(name)


def _segments(environ: dict[str, Any]) -> list[str] | None:
    """The request path's segments, each unquoted once; ``None`` for a path with a NUL.

    Splits the raw path (``REQUEST_URI``/``RAW_URI``) when the server provides it: after
    unquoting, a ``%2F`` inside a study name would be indistinguishable from a separator.
    Without it (a bare WSGI call), ``PATH_INFO`` is split as is.
    """
    raw = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if raw:
        parts = [unquote(p, errors="strict") for p in urlsplit(raw).path.split("/")[1:]]
    else:
        parts = (environ.get("PATH_INFO") or "/").split("/")[1:]
    # Names are looked up in the database, never on disk; only the asset route serves a
    # fixed in-memory file. NUL is refused anyway (no name has one).
    if any("\x00" in p for p in parts):
        return None
    return parts


def _page(title: str, body: Sequence[str], *, poll: tuple[str, str] | None = None) -> str:
    """A full HTML page; ``title`` is plain text, ``body`` already-escaped HTML."""
    script = _POLL_JS % (json.dumps(poll[0]), json.dumps(poll[1])) if poll else ""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style>",
        f'<script src="{_PLOTLY_URL}"></script></head><body>',
        '<nav><a href="/">all studies</a></nav>', *body, script, "</body></html>"])


def _table(columns: Sequence[str], rows: Iterable[Sequence[str]], table_id: str = "") -> str:
    """A table; ``columns`` are plain text, each row's cells already-escaped HTML."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{attr}><tr>{head}</tr>{body}</table>"


def _figure(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    return str(pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                           config={"displaylogo": False}))


#: A trial still "running" this long past its budget was not killed by its driver: the
#: driver itself is gone (killed, machine lost), so the trial will never end.
_STALL_MARGIN_S = 120.0


def _state(summary: dict[str, Any], trial_seconds: float) -> str:
    """``running``, ``stalled`` (a running trial far past its budget: its driver died),
    ``idle`` or ``not started``."""
    if summary["trials"]["running"]:
        since = summary.get("running_since")
        if since is not None:
            age = (datetime.now(UTC).replace(tzinfo=None)
                   - datetime.fromisoformat(since)).total_seconds()
            if age > 2 * trial_seconds + _STALL_MARGIN_S:
                return "stalled (a trial has run far past its budget: its driver died?)"
        return "running"
    return "not started" if not any(summary["trials"].values()) else "idle"


def _version(study: Study) -> dict[str, Any]:
    trials = study.trials()
    return {"trials": len(trials),
            "last": max((t.number for t in trials), default=None),
            "finished": sum(t.state not in ("running", "waiting") for t in trials)}


class DashboardApp:
    """The WSGI application over one storage URL (``None``: the default storage)."""

    def __init__(self, storage: str | None = None) -> None:
        self.storage = storage
        self._plotly_js: bytes | None = None
        self._lock = threading.Lock()

    # -- WSGI --------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO") or "/"
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=False)
        try:
            if method not in ("GET", "HEAD"):
                raise HTTPError(405, f"method {method} not allowed: the dashboard is read-only")
            try:
                segments = _segments(environ)
            except UnicodeDecodeError:
                segments = None
            if segments is None:
                raise HTTPError(404, "no such page")
            status, ctype, body, extra = self._route(segments, query)
        except HTTPError as e:
            status, ctype, extra = e.status, "text/html; charset=utf-8", []
            body = _page(f"{e.status} {_REASONS.get(e.status, '')}", [
                f"<h1>{e.status} {esc(_REASONS.get(e.status, ''))}</h1>",
                f"<p>{esc(e.message)}</p>"]).encode()
        except Exception as e:  # a bug or a storage error: log it, show one line
            _logger.exception("dashboard: error serving %s", path)
            lines = str(e).strip().splitlines()
            status, ctype, extra = 500, "text/html; charset=utf-8", []
            body = _page("500 Internal Server Error", [
                "<h1>500 Internal Server Error</h1>",
                f"<p>{esc(type(e).__name__)}: {esc(lines[0] if lines else '')} (the traceback "
                "is in the server's log)</p>"]).encode()
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))),
                   ("X-Content-Type-Options", "nosniff"), *extra]
        start_response(f"{status} {_REASONS.get(status, '')}", headers)
        return [] if method == "HEAD" else [body]

    def _route(self, segments: list[str], query: dict[str, list[str]]
               ) -> tuple[int, str, bytes, list[tuple[str, str]]]:
        html_type = "text/html; charset=utf-8"
        match segments:
            case [""]:
                return 200, html_type, self.list_page().encode(), []
            case ["assets", "plotly.min.js"]:
                return 200, "application/javascript; charset=utf-8", self.plotly_js(), \
                    [("Cache-Control", "public, max-age=86400")]
            case ["api", "study", name, "version"] if name:
                study = self._load(name)
                try:
                    data = json.dumps(_version(study)).encode()
                finally:
                    study.close()
                return 200, "application/json", data, [("Cache-Control", "no-store")]
            case ["study", name, "trial", number] if name and number.isascii() \
                    and number.isdigit() and len(number) <= 9:
                return 200, html_type, self.trial_page(name, int(number)).encode(), []
            case ["study", name] if name:
                return 200, html_type, self.study_page(name, query).encode(), []
        raise HTTPError(404, "no such page")

    # -- helpers -----------------------------------------------------------------------------

    def plotly_js(self) -> bytes:
        """plotly.js of the installed plotly package (read once)."""
        with self._lock:
            if self._plotly_js is None:
                from plotly.offline import get_plotlyjs

                self._plotly_js = get_plotlyjs().encode()
            return self._plotly_js

    def _load(self, name: str) -> Study:
        import autotune
        from autotune.exceptions import StudyNotFoundError

        try:
            study = autotune.load_study(name, storage=self.storage)
        except StudyNotFoundError:
            raise HTTPError(404, f"no study named {name!r}") from None
        # One page reads the trials once: every figure, the front, the header and the
        # recommendation call study.trials(), and each call reloads every trial from the
        # database (11 loads per study page: 4.2 of 6.3 s on a 300-trial study). A page
        # is a snapshot anyway; the next poll or reload reads afresh.
        try:
            snapshot = study.trials()
        except BaseException:
            study.close()  # a page that fails must not leak the study's connections
            raise
        study.trials = functools.partial(list, snapshot)  # type: ignore[method-assign]
        return study

    # -- pages -------------------------------------------------------------------------------

    def list_page(self) -> str:
        """``/``: one row per study."""
        import autotune

        studies = autotune.list_studies(storage=self.storage)
        rows = []
        try:
            for study in studies:
                s = study.summary()
                counts = ", ".join(f"{k} {v}" for k, v in s["trials"].items() if v) or "none"
                best = ", ".join(f"{k} {_fmt(v)}" for k, v in s["best"].items()
                                 if v is not None) or "-"
                state = _state(s, study.space.budget.trial_seconds)
                rows.append([f'<a href="{esc(_study_url(study.name))}">{esc(study.name)}</a>',
                             esc(s["workload"]), esc(s["mode"]), esc(state), esc(counts),
                             esc(s["front_size"]), esc(best),
                             esc((s["last_update"] or "-").replace("T", " "))])
        finally:
            for study in studies:
                study.close()
        body = ["<h1>autotune studies</h1>",
                _table(["study", "workload", "mode", "state", "trials", "front size", "best",
                        "last update"], rows, "studies")
                if rows else '<p class="note">no studies in this storage yet</p>']
        return _page("autotune dashboard", body)

    def _axes(self, study: Study, query: dict[str, list[str]]) -> list[str] | None:
        picked = [query[k][-1] for k in ("x", "y", "z") if query.get(k) and query[k][-1]]
        if not picked:
            return None
        names = study.space.objective_names
        bad = [p for p in picked if p not in names]
        if bad or len(picked) < 2 or len(set(picked)) != len(picked):
            raise HTTPError(400, f"choose two or three different objectives of {names} for "
                                 f"the axes, got {picked}")
        return picked

    def _axis_form(self, study: Study, chosen: list[str] | None) -> str:
        names = study.space.objective_names
        default = chosen or names[:3]
        selects = []
        for i, key in enumerate(("x", "y", "z")):
            current = default[i] if i < len(default) else ""
            opts = [] if key != "z" else [f'<option value=""{"" if current else " selected"}>'
                                          "(none: 2-D)</option>"]
            opts += [f'<option value="{esc(n)}"{" selected" if n == current else ""}>'
                     f"{esc(n)}</option>" for n in names]
            selects.append(f'<label>{key} <select name="{key}">{"".join(opts)}</select></label>')
        return (f'<form class="axes" method="get" action="{esc(_study_url(study.name))}">'
                + " ".join(selects) + ' <button type="submit">plot</button></form>')

    def study_page(self, name: str, query: dict[str, list[str]]) -> str:
        """``/study/<name>``: every figure, the recommendation and the front table."""
        from autotune.dashboard import figures

        study = self._load(name)
        try:
            axes = self._axes(study, query)
            version = _version(study)
            header = header_info(study)
            body = [f"<h1>study {esc(study.name)}</h1>",
                    _table(["field", "value"], [[esc(k), esc(v)] for k, v in header.fields])]
            body.append("<h2>Pareto front</h2>")
            if len(study.space.objective_names) >= 2:
                body.append(self._axis_form(study, axes))
                body.append(_figure(figures.study_pareto_figure(study, axes), "pareto"))
            else:
                body.append('<p class="note">a single-objective study has no Pareto '
                            "scatter</p>")
            front = study.pareto_front()
            if front:
                cols = header.front_columns
                rows = [[f'<a href="{esc(_study_url(study.name))}/trial/{int(r["trial"])}">'
                         f'{esc(r["trial"])}</a>', *(esc(r.get(c, "")) for c in cols[1:])]
                        for r in header.front_rows]
                body.append(_table(cols, rows, "front"))
            else:
                body.append('<p class="note">no feasible trial yet</p>')
            body += self._fleet(study)
            body += self._scaling(study)
            body += ["<h2>Recommendation</h2>", self._recommendation(study)]
            body += ["<h2>Knobs against objectives</h2>",
                     _figure(figures.study_parallel_figure(study), "parallel"),
                     "<h2>Hypervolume history</h2>",
                     _figure(figures.study_hypervolume_figure(study), "hypervolume"),
                     "<h2>Parameter importance</h2>",
                     _figure(figures.study_importance_figure(study), "importance")]
            trials = [[f'<a href="{esc(_study_url(study.name))}/trial/{t.number}">'
                       f"{t.number}</a>", esc(t.state), esc(t.reason)]
                      for t in study.trials()]
            body += ["<h2>Trials</h2>", _table(["trial", "state", "reason"], trials, "trials")]
            return _page(f"autotune: {study.name}", body,
                         poll=self._poll(study.name, version))
        finally:
            study.close()

    @staticmethod
    def _scaling(study: Study) -> list[str]:
        """Throughput and energy per sample against replicas, and the scaling table,
        for a study that searches ``data_parallel`` (nothing otherwise)."""
        from autotune._data_parallel import scaling_points, searches_data_parallel
        from autotune.dashboard import figures

        if not searches_data_parallel(study):
            return []
        points = scaling_points(study)
        if not points:
            return ["<h2>Scaling over replicas</h2>",
                    '<p class="note">no measured trial yet</p>']
        rows = [[esc(p.trial), esc(p.replicas), esc(_fmt(p.threads)),
                 esc(_fmt(p.throughput_sps)), esc(_fmt(p.energy_per_sample_j)),
                 esc(_fmt(p.comm_fraction)), esc(_fmt(p.scaling_efficiency))]
                for p in sorted(points, key=lambda p: (p.key, p.replicas, p.trial))]
        return ["<h2>Scaling over replicas</h2>",
                _figure(figures.scaling_figure(points), "scaling"),
                _table(["trial", "replicas", "threads", "throughput_sps",
                        "energy_per_sample_j", "comm_fraction", "scaling_efficiency"],
                       rows, "scaling"),
                '<p class="note">scaling_efficiency = throughput / (replicas x the best '
                "single-replica throughput of the same configuration)</p>"]

    @staticmethod
    def _fleet(study: Study) -> list[str]:
        """The front of each machine kind (a mixed fleet) and the workers' table."""
        from autotune._fleet import fleet_status, fronts_by_machine_kind

        out = []
        kinds = fronts_by_machine_kind(study)
        if len(kinds) > 1:
            rows = [[esc(kind), ", ".join(
                f'<a href="{esc(_study_url(study.name))}/trial/{p.trial_number}">'
                f"{p.trial_number}</a>" for p in points)] for kind, points in kinds.items()]
            out += ["<h2>Front per machine kind</h2>",
                    _table(["machine", "front trials"], rows, "machine-fronts")]
        fleet = fleet_status(study)
        if fleet.workers:
            rows = [[esc(w.worker), esc(w.machine), str(w.finished), str(w.running),
                     esc(", ".join(f"{d} {n}" for d, n in w.devices.items())),
                     esc(f"{w.trials_per_min:g}"), esc(w.last_seen or "-"),
                     "silent" if w.silent else "running" if w.running else "idle"]
                    for w in fleet.workers]
            out += [f"<h2>Workers</h2><p>{esc(f'{fleet.trials_per_min:g}')} trials/min over "
                    "the last 10 minutes</p>",
                    _table(["worker", "machine", "finished", "running", "devices",
                            "trials/min", "last seen (UTC)", "state"], rows, "workers")]
        return out

    @staticmethod
    def _poll(name: str, version: dict[str, Any]) -> tuple[str, str]:
        return (f"/api/study/{_segment(name)}/version",
                json.dumps(version, separators=(",", ":")))

    @staticmethod
    def _recommendation(study: Study) -> str:
        from autotune._recommend import recommend
        from autotune.exceptions import AutotuneError

        try:
            rec = recommend(study)
        except AutotuneError as e:
            return f'<p class="note">no recommendation: {esc(e)}</p>'
        link = f'<a href="{esc(_study_url(study.name))}/trial/{rec.trial_number}">' \
               f"trial {rec.trial_number}</a>"
        rows = [[esc(k), esc(_fmt(v))] for k, v in rec.config.items()]
        warn = "".join(f'<p class="note">{esc(w)}</p>' for w in rec.warnings)
        return (f"<p>{link}: {esc(rec.objective)} ({esc(rec.direction)}) "
                f"{esc(_fmt(rec.value))}, among {rec.candidates} candidates</p>"
                + _table(["knob", "value"], rows) + warn)

    def trial_page(self, name: str, number: int) -> str:
        """``/study/<name>/trial/<n>``: config, metrics, failure and step times."""
        from autotune.dashboard import figures

        study = self._load(name)
        try:
            found = [t for t in study.trials() if t.number == number]
            if not found:
                raise HTTPError(404, f"study {name!r} has no trial {number}")
            trial = found[0]
            version = _version(study)
            link = f'<a href="{esc(_study_url(study.name))}">{esc(study.name)}</a>'
            body = [f"<h1>trial {number} of study {link}</h1>",
                    _table(["field", "value"], [
                        ["state", esc(trial.state)], ["feasible", esc(trial.feasible)],
                        ["failure kind", esc(trial.failure_kind or "-")],
                        ["wall time (s)", esc(_fmt(trial.wall_s))]]),
                    "<h2>Configuration</h2>",
                    _table(["knob", "value"],
                           [[esc(k), esc(_fmt(v))] for k, v in trial.params.items()]),
                    "<h2>Metrics</h2>",
                    _table(["metric", "value"],
                           [[esc(k), esc(_fmt(v) if not isinstance(v, list | dict)
                                         else json.dumps(v))]
                            for k, v in sorted(trial.metrics.items())])
                    if trial.metrics else '<p class="note">no metrics</p>']
            rows = [r for r in study.storage.measurements(study.id) if r.trial_number == number]
            tb = rows[-1].traceback if rows else ""
            if trial.reason or tb:
                body.append("<h2>Failure</h2>")
                if trial.reason:
                    body.append(f"<pre>{esc(trial.reason)}</pre>")
                if tb:
                    body.append(f"<h3>Traceback</h3><pre>{esc(tb)}</pre>")
            body.append("<h2>Step times</h2>")
            try:
                body.append(_figure(figures.study_step_times_figure(study, number), "steps"))
            except KeyError as e:
                body.append(f'<p class="note">{esc(e.args[0] if e.args else e)}</p>')
            return _page(f"autotune: {study.name} trial {number}", body,
                         poll=self._poll(study.name, version))
        finally:
            study.close()


# -- serving ---------------------------------------------------------------------------------

class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(WSGIRequestHandler):
    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = dict(super().get_environ())
        # wsgiref unquotes PATH_INFO; routing needs the raw path (see _segments).
        environ["REQUEST_URI"] = self.path
        return environ

    def log_message(self, format: str, *args: Any) -> None:
        _logger.info("%s %s", self.address_string(), format % args)


def make_dashboard_server(storage: str | None = None, host: str = "127.0.0.1",
                          port: int = 8080) -> WSGIServer:
    """A threaded HTTP server of :class:`DashboardApp` (port 0: any free port).
    Call ``serve_forever()``; ``shutdown()`` from another thread and ``server_close()``."""
    return make_server(host, port, DashboardApp(storage), server_class=_ThreadingServer,
                       handler_class=_Handler)
