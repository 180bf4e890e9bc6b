"""Console output: the rich console, number formatting, tables and error lines."""

from __future__ import annotations

import errno
import os
import sys
from typing import Any


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 1e6:
            return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else \
                f"{value:,.1f}"
        return f"{value:.3g}"
    return str(value)


def _knob_columns(study: Any) -> list[str]:
    """Knobs that vary in the space (a one-choice list says nothing per row)."""
    varying = [p.name for p in study.space.params
               if p.kind in ("int", "float") or len(p.choices) > 1]
    return varying or ["batch_size"]


def _metric_columns(study: Any) -> list[str]:
    """Objectives first, then constrained metrics, then median latency and energy (p95
    needs 132 steps, which a short window often does not have)."""
    wanted = [*study.space.objective_names, *(c.metric for c in study.space.constraints),
              "latency_p50_ms", "energy_per_sample_j"]
    return list(dict.fromkeys(wanted))


#: Model facts and the roofline view shown beside the metrics: (column, summary key, scale).
_FACT_COLUMNS = (("params", "param_count", 1.0), ("GFLOP/s", "achieved_flops_per_s", 1e-9),
                 ("% peak", "pct_of_peak", 1.0))


def _facts(metrics: dict[str, Any]) -> list[str]:
    """The fact cells of one trial (``-`` where not measured)."""
    cells = []
    for _, key, scale in _FACT_COLUMNS:
        value = metrics.get(key)
        cells.append(_fmt(value * scale if isinstance(value, float) else value))
    return cells


def _print_front(console: Any, study: Any, front: list[Any]) -> None:
    from rich.table import Table

    knobs = _knob_columns(study)
    metrics = [m for m in _metric_columns(study) if m != "pct_of_peak"]
    simulated = any(p.metrics.get("energy_source") == "simulated" for p in front)
    table = Table(title=f"Pareto front of {study.name!r}: {len(front)} configuration(s)"
                        f"{' (SIMULATED, not measured)' if simulated else ''}",
                  title_justify="left")
    table.add_column("trial", justify="right")
    checked = any(p.stability != "unchecked" for p in front)
    if checked:
        table.add_column("recheck")
    for k in knobs:
        table.add_column(k)
    for m in metrics:
        arrow = {"maximize": " ↑", "minimize": " ↓"}.get(dict(study.space.objectives).get(m, ""),
                                                         "")
        table.add_column(m + arrow, justify="right")
    for column, _, _ in _FACT_COLUMNS:
        table.add_column(column, justify="right")
    for p in front:
        cells = [str(p.trial_number), *([p.stability] if checked else []),
                 *(_fmt(p.config.get(k)) for k in knobs)]
        for m in metrics:
            text = _fmt(p.metrics.get(m))
            if m in ("energy_per_sample_j", "power_w") and p.metrics.get("energy_source") == \
                    "estimated" and text != "-":
                text += " est"
            if m in ("energy_per_sample_j", "power_w") and p.metrics.get("energy_source") == \
                    "simulated" and text != "-":
                text += " sim"
            cells.append(text)
        table.add_row(*cells, *_facts(p.metrics))
    console.print(table)
    if any(p.metrics.get("energy_source") == "estimated" for p in front):
        console.print("est: energy estimated from process CPU time (no energy counter "
                      "on this machine), not measured", style="dim")
    if any(p.metrics.get("energy_source") == "simulated" for p in front):
        console.print("sim: simulated by autotune.simulation from the devices the space file "
                      "declares, not measured", style="yellow")
    sources = sorted({p.energy_source for p in front if p.energy_source})
    if len(sources) > 1 and any(m in ("power_w", "energy_per_sample_j")
                                for m in study.space.objective_names):
        console.print(f"energy comes from {len(sources)} sources "
                      f"({', '.join(sources)}): points are compared on energy only with "
                      "points of the same source", style="yellow")
    drifting = [str(p.trial_number) for p in front if p.stability == "drifting"]
    if drifting:
        console.print(f"drifting: trial(s) {', '.join(drifting)} measured "
                      "differently when re-checked; not picked as leaders", style="yellow")
    if any(p.metrics.get("pct_of_peak") is not None and
           p.metrics.get("energy_source") != "simulated" for p in front):
        console.print("% peak: achieved FLOP/s (FLOPs counted on the model x throughput) "
                      "over this machine's measured GEMM peak at the trial's precision and "
                      "threads (autotune peak)", style="dim")


def _print_trials(console: Any, study: Any, trials: list[Any]) -> None:
    from rich.table import Table

    knobs = _knob_columns(study)
    table = Table(title=f"Trials of {study.name!r}", title_justify="left")
    for col in ("trial", "state", *knobs, *study.space.objective_names, "note"):
        table.add_column(col)
    for t in trials:
        note = f"{t.failure_kind}: {t.reason}" if t.failure_kind else \
            t.reason if t.state == "screened" else \
            f"confirms trial {t.confirms}" if t.confirms is not None and t.feasible else \
            ("" if t.feasible or t.state != "ok" else "violates a constraint")
        table.add_row(str(t.number), t.state, *(_fmt(t.params.get(k)) for k in knobs),
                      *(_fmt(t.metrics.get(o)) for o in study.space.objective_names),
                      note[:80])
    console.print(table)


def _print_scaling(console: Any, study: Any) -> None:
    """The scaling view of a study that searches ``data_parallel``: per measured trial,
    replicas, throughput, energy per sample, communication share and scaling efficiency
    (throughput / (replicas x the best single-replica throughput of the same
    configuration))."""
    from rich.table import Table

    from autotune._data_parallel import scaling_points

    points = sorted(scaling_points(study), key=lambda p: (p.key, p.replicas, p.trial))
    if not points:
        return
    table = Table(title="Scaling over replicas (data_parallel)", title_justify="left")
    for col in ("trial", "replicas", "threads", "throughput_sps", "energy_per_sample_j",
                "comm_fraction", "scaling_efficiency"):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(str(p.trial), str(p.replicas), _fmt(p.threads), _fmt(p.throughput_sps),
                      _fmt(p.energy_per_sample_j), _fmt(p.comm_fraction),
                      _fmt(p.scaling_efficiency))
    console.print(table)
    console.print("scaling_efficiency: throughput / (replicas x the best single-replica "
                  "throughput of the same configuration); - where the study has no "
                  "single-replica point of it", style="dim")


def _scaling_json(study: Any) -> list[dict[str, Any]]:
    import dataclasses

    from autotune._data_parallel import scaling_points

    return [dataclasses.asdict(p) for p in scaling_points(study)]


def _front_json(study: Any) -> dict[str, Any]:
    return {
        **study.summary(),
        "front": [{"trial": p.trial_number, "config": p.config, "values": p.values,
                   "metrics": p.metrics, "stability": p.stability,
                   "energy_source": p.energy_source} for p in study.pareto_front()],
    }


def _trial_line(result: Any) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in result.params.items())
    if getattr(result, "start_up", False):  # why the first trials look as they do
        params += " (start-up: each arm once)"
    if result.state == "ok":
        m = result.metrics
        flag = "" if result.feasible else " (violates a constraint)"
        name = m.get("quality_name") or "accuracy"
        quality = m.get("accuracy") if name == "accuracy" else m.get("quality")
        peak = m.get("pct_of_peak")
        roofline = f", {peak:.0f} % of peak" if isinstance(peak, float) else ""
        if m.get("energy_source") == "simulated":  # never read as a measurement
            flag += " (simulated)"
        if m.get("decode_tokens_per_s") is not None:  # generate mode: what LLM users read
            return (f"trial {result.number}: {_fmt(m.get('decode_tokens_per_s'))} tokens/s "
                    f"decode, TTFT p50 {_fmt(m.get('ttft_p50_ms'))} ms, TPOT p50 "
                    f"{_fmt(m.get('tpot_p50_ms'))} ms, {name} {_fmt(quality)}{flag} | "
                    f"{params}")
        if result.confirms is not None:
            flag += f" (confirms trial {result.confirms})"
        return (f"trial {result.number}: {_fmt(m.get('throughput_sps'))} samples/s, "
                f"p50 {_fmt(m.get('latency_p50_ms'))} ms, {name} {_fmt(quality)}{roofline}"
                f"{flag} | {params}")
    if result.state == "screened":
        m = result.metrics
        return (f"trial {result.number}: screened after {m.get('steps_measured')} steps, "
                f"{_fmt(m.get('throughput_sps'))} samples/s (screen figure); measured in "
                f"full at the end of the run if it could still be on the front | {params}")
    if result.state == "pruned":
        m = result.metrics
        return (f"trial {result.number}: pruned after {m.get('steps_measured')} steps, "
                f"{result.reason} | {params}")
    return f"trial {result.number}: {result.state} ({result.failure_kind}) {result.reason} | " \
           f"{params}"


def _print_history(console: Any, study: Any, history: list[Any]) -> None:
    """The front's hypervolume after each completed trial (``study show --history``)."""
    from rich.table import Table

    if not history:
        console.print("no front history: no trial has completed since autotune started "
                      "keeping it (schema version 2)")
        return
    mixed = any(len(h.energy_sources) > 1 for h in history)
    table = Table(title=f"Front history of {study.name!r}", title_justify="left")
    for col in ("after trial", "front size", "hypervolume", "gain", "front",
                *(["energy sources"] if mixed else [])):
        table.add_column(col, justify="right" if col != "front" else "left")
    previous: float | None = None
    for h in history:
        gain = "-"
        if h.hypervolume is not None and previous is not None and previous > 0:
            gain = f"{(h.hypervolume / previous - 1) * 100:+.1f}%" \
                if h.hypervolume != previous else ""
        front = ", ".join(map(str, h.front[:12])) + (" ..." if len(h.front) > 12 else "")
        # six digits: a latency gain barely moves a volume measured from the trial budget
        volume = "-" if h.hypervolume is None else f"{h.hypervolume:.6g}"
        table.add_row(str(h.trial_number), str(len(h.front)), volume, gain,
                      front, *([", ".join(h.energy_sources)] if mixed else []))
        previous = h.hypervolume
    console.print(table)
    reference = ", ".join(f"{k} {_fmt(v)}" for k, v in history[-1].reference.items())
    console.print(f"reference point: {reference} (each objective's physical worst case: "
                  "throughput and accuracy 0, latency the trial budget, power the rated "
                  "power, memory the machine's)", highlight=False, markup=False)
    if any(h.reference != history[-1].reference for h in history):
        console.print("the reference point changed between runs (another machine or "
                      "rated power): hypervolumes from different references are not "
                      "comparable", style="yellow")
    if mixed:
        console.print("the front mixes energy sources: its hypervolume combines "
                      "energy figures that are not comparable", style="yellow")


def _say(console: Any, text: str) -> None:
    # soft_wrap: a long line stays one line in a log or a pipe
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _make_console(*, stderr: bool, width: int | None) -> Any:
    """A rich console that prints text as written and lets a closed pipe reach :func:`main`.

    markup=False, emoji=False: study names, failure reasons, install commands
    (``pip install 'autotune[mindspore]'``) and other text from users or libraries must not
    be read as ``[style]`` tags or ``:emoji:`` codes; styled lines pass ``style=``.
    """
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's own handler exits with status 1; main() ends every command the same way
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console(stderr=stderr, width=width, highlight=False, markup=False, emoji=False)


def _print_error(message: str) -> None:
    """The one line an error is reported as: ``autotune: error: MESSAGE`` on stderr."""
    print(f"autotune: error: {message}", file=sys.stderr)
