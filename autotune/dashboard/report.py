"""One self-contained HTML file with every dashboard view of a study.

plotly.js is embedded once, inline (no CDN), so the file opens offline. Text that comes
from the study (name, workload, reasons, knob values) is escaped with
:func:`html.escape`; figure data is embedded by plotly as JSON in which ``<``, ``>`` and
``/`` are ``\\u`` escapes, so a string cannot close the ``<script>`` it sits in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.dashboard import figures
from autotune.dashboard.info import esc, header_info

if TYPE_CHECKING:
    from autotune.study import Study

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222 }
table { border-collapse: collapse; margin: .5em 0 1.5em }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left }
th { background: #f3f3f3 }
.header th { width: 10em }
.note { color: #666 }
"""


def _table(columns: list[str], rows: list[dict[str, str]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(r.get(c, ''))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def render_report(study: Study) -> str:
    """The report of ``study`` as one HTML document (plotly.js inline, once)."""
    import plotly.io as pio

    header = header_info(study)
    figs: list[tuple[str, Any]] = []
    notes: list[str] = []
    try:
        figs.append(("Pareto front", figures.study_pareto_figure(study)))
    except ValueError as e:  # a single-objective study has no front scatter
        notes.append(str(e))
    figs += [("Knobs against objectives", figures.study_parallel_figure(study)),
             ("Hypervolume history", figures.study_hypervolume_figure(study)),
             ("Parameter importance", figures.study_importance_figure(study))]
    front = study.pareto_front()
    for point in front:
        try:
            figs.append((f"Front trial {point.trial_number}",
                         figures.study_step_times_figure(study, point.trial_number)))
        except KeyError as e:  # a front trial imported without its measurement row
            notes.append(str(e))
    parts = []
    for i, (title, fig) in enumerate(figs):
        # The first figure carries plotly.js inline; the rest reuse it (no CDN: offline).
        div = pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0),
                          div_id=f"fig{i}", config={"displaylogo": False})
        parts.append(f"<h2>{esc(title)}</h2>\n{div}")
    field_rows = [{"field": k, "value": v} for k, v in header.fields]
    name = esc(study.name)
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>autotune report: {name}</title><style>{_STYLE}</style></head><body>",
        f"<h1>autotune study {name}</h1>",
        _table(["field", "value"], field_rows, "header"),
        "<h2>Front configurations</h2>",
        _table(header.front_columns, header.front_rows) if header.front_rows else
        '<p class="note">no feasible trial yet</p>',
        *(f'<p class="note">{esc(n)}</p>' for n in notes),
        *parts,
        "</body></html>",
    ])


def write_report(study: Study, path: str | Path) -> Path:
    """Write :func:`render_report` to ``path`` (whole or not at all) and return it."""
    target = Path(path)
    text = render_report(study)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)  # a reader never sees half a report
    return target
