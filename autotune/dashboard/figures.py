"""plotly figures of the dashboard views: :mod:`autotune.dashboard.info` → ``go.Figure``.

Needs the ``dashboard`` extra (plotly). Each ``*_figure`` takes the info dataclass; the
``study`` helpers at the bottom chain both steps for callers that have a study.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from autotune._data_parallel import ScalingPoint
from autotune.dashboard.info import (
    HypervolumeInfo,
    ImportanceInfo,
    ParallelInfo,
    ParetoInfo,
    ScatterPoint,
    StepTimesInfo,
    esc,
    hypervolume_info,
    importance_info,
    parallel_info,
    pareto_info,
    step_times_info,
)

try:
    import plotly.graph_objects as go
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError("the dashboard needs plotly: pip install 'autotune[dashboard]'") from e

if TYPE_CHECKING:
    from autotune.study import Study

#: Colour per device (cycled), symbol per backend: the two facts a reader scans for first.
_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")
_SYMBOLS_2D = ("circle", "square", "diamond", "triangle-up", "star", "hexagon")
# Scatter3d supports only a few marker symbols.
_SYMBOLS_3D = ("circle", "square", "diamond", "cross", "circle-open", "square-open")
_INFEASIBLE_COLOR = "#7f7f7f"


def _styles(info: ParetoInfo, symbols: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    devices = sorted({p.device for p in info.points})
    backends = sorted({p.backend for p in info.points})
    return ({d: _COLORS[i % len(_COLORS)] for i, d in enumerate(devices)},
            {b: symbols[i % len(symbols)] for i, b in enumerate(backends)})


def _errors(points: Sequence[ScatterPoint], axis: int) -> dict[str, Any] | None:
    """Asymmetric error bars along ``axis``, or ``None`` when no point has one."""
    if not any(p.errors[axis] for p in points):
        return None
    minus = [(p.errors[axis] or (0.0, 0.0))[0] for p in points]
    plus = [(p.errors[axis] or (0.0, 0.0))[1] for p in points]
    return {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
            "thickness": 1, "width": 3}


def pareto_figure(info: ParetoInfo) -> go.Figure:
    """Scatter of the objectives (3-D for three): the front highlighted (joined by a line
    in 2-D), dominated points faded, infeasible trials as grey crosses.

    Traces are named ``front``, ``dominated`` and ``infeasible``; legend-only traces
    explain the device colours and backend symbols.
    """
    three_d = len(info.axes) == 3
    colors, symbols = _styles(info, _SYMBOLS_3D if three_d else _SYMBOLS_2D)
    fig = go.Figure()
    styles: dict[str, dict[str, Any]] = {
        "front": {"mode": "markers" if three_d else "lines+markers", "opacity": 1.0,
                  "line": {"color": "#444", "width": 1.5}},
        "dominated": {"mode": "markers", "opacity": 0.35},
        "infeasible": {"mode": "markers", "opacity": 0.8},
    }
    for group, style in styles.items():
        points = info.group(group)
        if not points:
            continue
        infeasible = group == "infeasible"
        marker: dict[str, Any] = {
            "color": [_INFEASIBLE_COLOR if infeasible else colors[p.device] for p in points],
            "symbol": ["x" for _ in points] if infeasible else
            [symbols[p.backend] for p in points],
            "size": 6 if three_d else 11 if group == "front" else 9,
            "line": {"width": 1, "color": "#222" if group == "front" else "#fff"},
        }
        kwargs: dict[str, Any] = {
            "name": group, "mode": style["mode"], "opacity": style["opacity"],
            "marker": marker, "hovertext": [p.hover for p in points], "hoverinfo": "text",
            "customdata": [p.trial_number for p in points],
            "x": [p.coords[0] for p in points], "y": [p.coords[1] for p in points],
        }
        for i, key in enumerate(("error_x", "error_y", "error_z")[:len(info.axes)]):
            bars = None if infeasible else _errors(points, i)
            if bars:
                kwargs[key] = bars
        if "line" in style:
            kwargs["line"] = style["line"]
        if three_d:
            fig.add_trace(go.Scatter3d(z=[p.coords[2] for p in points], **kwargs))
        else:
            fig.add_trace(go.Scatter(**kwargs))
    # Legend entries for the encodings (no data: x=[None] draws nothing).
    legend_trace = go.Scatter3d if three_d else go.Scatter
    extra = {"z": [None]} if three_d else {}
    for device, color in colors.items():
        fig.add_trace(legend_trace(x=[None], y=[None], mode="markers", name=f"device {device}",
                                   marker={"color": color, "symbol": "circle"},
                                   legendgroup="devices", showlegend=True, **extra))
    for backend, symbol in symbols.items():
        fig.add_trace(legend_trace(x=[None], y=[None], mode="markers",
                                   name=f"backend {backend}",
                                   marker={"color": "#888", "symbol": symbol},
                                   legendgroup="backends", showlegend=True, **extra))
    labels = [esc(a.label) for a in info.axes]
    if three_d:
        fig.update_layout(scene={"xaxis_title": labels[0], "yaxis_title": labels[1],
                                 "zaxis_title": labels[2]})
    else:
        fig.update_layout(xaxis_title=labels[0], yaxis_title=labels[1])
    fig.update_layout(title="Pareto front", legend={"itemsizing": "constant"},
                      hovermode="closest")
    return fig


def parallel_figure(info: ParallelInfo) -> go.Figure:
    """Parallel coordinates: one axis per searched knob and per objective."""
    dims = []
    for d in info.dimensions:
        dim: dict[str, Any] = {"label": esc(d.label), "values": d.values}
        if d.tickvals is not None:
            dim["tickvals"], dim["ticktext"] = d.tickvals, d.ticktext
        dims.append(dim)
    fig = go.Figure(go.Parcoords(
        dimensions=dims,
        line={"color": info.color, "colorscale": "Viridis", "showscale": True,
              "colorbar": {"title": {"text": esc(info.color_label)}}}))
    fig.update_layout(title="Knobs against objectives (measured trials)")
    return fig


def hypervolume_figure(info: HypervolumeInfo) -> go.Figure:
    """Hypervolume of the front after every completed trial."""
    hover = [f"after trial {n}: front of {size}" + (" (mixed energy sources)" if mixed else "")
             for n, size, mixed in zip(info.trial_numbers, info.front_sizes,
                                       info.mixed_energy, strict=True)]
    fig = go.Figure(go.Scatter(x=info.trial_numbers, y=info.hypervolumes,
                               mode="lines+markers", name="hypervolume", hovertext=hover,
                               line={"shape": "hv"}))
    fig.update_layout(title="Hypervolume history", xaxis_title="trial number",
                      yaxis_title="hypervolume")
    return fig


def _share(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def scaling_figure(points: Sequence[ScalingPoint]) -> go.Figure:
    """Throughput (left) and energy per sample (right) against replicas, one line per
    configuration (every knob but ``data_parallel`` and ``threads``), each point's scaling
    efficiency in its hover text."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("throughput (samples/s)",
                                                        "energy per sample (J)"))
    curves: dict[str, list[ScalingPoint]] = {}
    for p in points:
        curves.setdefault(p.key, []).append(p)
    for i, (key, curve) in enumerate(curves.items()):
        curve = sorted(curve, key=lambda p: (p.replicas, p.trial))
        knobs = json.loads(key)
        name = f"{knobs.get('backend')} bs{knobs.get('batch_size')} {knobs.get('precision')}"
        hover = [f"trial {p.trial}: {p.replicas} replica(s) x {p.threads} thread(s); "
                 f"scaling efficiency {_share(p.scaling_efficiency, '.2f')}; "
                 f"comm {_share(p.comm_fraction, '.0%')}" for p in curve]
        color = _COLORS[i % len(_COLORS)]
        for col, values in ((1, [p.throughput_sps for p in curve]),
                            (2, [p.energy_per_sample_j for p in curve])):
            fig.add_trace(go.Scatter(x=[p.replicas for p in curve], y=values,
                                     mode="lines+markers", name=esc(name), hovertext=hover,
                                     legendgroup=key, showlegend=col == 1,
                                     line={"color": color}), row=1, col=col)
    fig.update_xaxes(title_text="replicas (data_parallel)", dtick=1)
    fig.update_layout(title="Scaling over replicas")
    return fig


def step_times_figure(info: StepTimesInfo) -> go.Figure:
    """Step times of one trial (warm-up at negative step indices, then the measured
    window) beside a histogram of the measured latencies."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                        subplot_titles=("step times", "latency histogram"))
    n = info.warmup_steps
    if info.warmup_s:
        fig.add_trace(go.Scatter(x=list(range(-len(info.warmup_s), 0)),
                                 y=[s * 1e3 for s in info.warmup_s], mode="lines+markers",
                                 name="warm-up", marker={"color": "#ff7f0e"}), row=1, col=1)
    elif n and info.warmup_total_s:
        # Only the warm-up's step count and total time are stored: show its mean.
        mean = info.warmup_total_s / n * 1e3
        fig.add_trace(go.Scatter(x=list(range(-n, 0)), y=[mean] * n, mode="lines",
                                 name=f"warm-up (mean of {n} steps)",
                                 line={"color": "#ff7f0e", "dash": "dash"}), row=1, col=1)
    if n:
        fig.add_vrect(x0=-n - 0.5, x1=-0.5, fillcolor="#ff7f0e", opacity=0.12,
                      line_width=0, annotation_text="warm-up (not counted)",
                      annotation_position="top left", row=1, col=1)
    ms = [s * 1e3 for s in info.measured_s]
    fig.add_trace(go.Scatter(x=list(range(len(ms))), y=ms, mode="lines+markers",
                             name="measured", marker={"color": "#1f77b4"}), row=1, col=1)
    fig.add_trace(go.Histogram(x=ms, name="latency", marker={"color": "#1f77b4"},
                               showlegend=False), row=1, col=2)
    fig.update_xaxes(title_text="step", row=1, col=1)
    fig.update_yaxes(title_text=f"ms {info.unit}", row=1, col=1)
    fig.update_xaxes(title_text=f"ms {info.unit}", row=1, col=2)
    fig.update_yaxes(title_text="steps", row=1, col=2)
    title = f"Trial {info.trial_number}: step times"
    fig.update_layout(title=title + (f" ({esc(info.message)})" if info.message else ""))
    return fig


def importance_figure(info: ImportanceInfo) -> go.Figure:
    """Horizontal bars of parameter importances, or the reason there are none."""
    fig = go.Figure()
    if info.importances:
        names = list(info.importances)[::-1]  # most important on top
        fig.add_trace(go.Bar(x=[info.importances[n] for n in names],
                             y=[esc(n) for n in names], orientation="h"))
    else:
        fig.add_annotation(text=esc(info.message), showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
    fig.update_layout(title=f"Parameter importance for {esc(info.objective)} "
                            "(feasible trials)", xaxis_title="importance")
    return fig


# -- study -> figure ---------------------------------------------------------------------------

def study_pareto_figure(study: Study, objectives: Sequence[str] | None = None) -> go.Figure:
    """:func:`pareto_figure` of ``study`` (objectives: 2 or 3 names; default the first)."""
    return pareto_figure(pareto_info(study, objectives))


def study_parallel_figure(study: Study) -> go.Figure:
    """:func:`parallel_figure` of ``study``."""
    return parallel_figure(parallel_info(study))


def study_hypervolume_figure(study: Study) -> go.Figure:
    """:func:`hypervolume_figure` of ``study``."""
    return hypervolume_figure(hypervolume_info(study))


def study_step_times_figure(study: Study, trial_number: int) -> go.Figure:
    """:func:`step_times_figure` of one trial of ``study``."""
    return step_times_figure(step_times_info(study, trial_number))


def study_importance_figure(study: Study, objective: str | None = None) -> go.Figure:
    """:func:`importance_figure` of ``study`` for ``objective`` (default: the first)."""
    return importance_figure(importance_info(study, objective))
