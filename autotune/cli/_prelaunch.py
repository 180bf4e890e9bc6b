"""Before shipping: ``autotune verify``, ``autotune recommend`` and ``autotune gate``."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from autotune.cli._exitcodes import EXIT_NOT_HELD
from autotune.cli._render import _fmt, _knob_columns, _say


def _cmd_verify(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune._verify import VerifyRun, verify

    study = autotune.load_study(args.name, storage=args.storage)

    def on_run(run: VerifyRun) -> None:
        head = f"trial {run.trial_number}, round {run.round}/{args.rounds}: "
        if run.state == "ok":
            text = f"{_fmt(run.throughput_sps)} samples/s, {run.noise or '-'}" + \
                (", contended" if run.contended else "")
        else:
            text = f"{run.state} ({run.failure_kind}): {run.reason}"
        console.print(head + text, highlight=False, markup=False, soft_wrap=True)

    report = verify(study, args.top, scale=args.scale, rounds=args.rounds, by=args.by,
                    on_run=on_run)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_verify(console, study, report)
    return 0 if report.held else EXIT_NOT_HELD


def _print_verify(console: Any, study: Any, report: Any) -> None:
    from rich.table import Table

    def with_ci(value: float | None, ci: Any) -> str:
        if value is None:
            return "-"
        return _fmt(value) + (f" ({_fmt(ci[0])}-{_fmt(ci[1])})" if ci else "")

    knobs = _knob_columns(study)
    ranked_on_throughput = report.metric == "throughput_sps"
    table = Table(title=f"verify {report.study!r}: top {report.top} on {report.metric} "
                        f"({report.direction}), {report.scale:g}x window, "
                        f"{report.rounds} round(s)", title_justify="left")
    for col in ("rank", "trial", *knobs):
        table.add_column(col, justify="right" if col in ("rank", "trial") else "left")
    if not ranked_on_throughput:
        table.add_column(f"{report.metric} screened→confirmed", justify="right")
    for col in ("screened samples/s (95% CI)", "confirmed samples/s (CI)", "ratio", "moved",
                "flags"):
        table.add_column(col, justify="right" if col != "flags" else "left")
    for p in report.points:
        rank = f"{p.original_rank}→{p.confirmed_rank if p.confirmed_rank else '-'}"
        flags = [f for f in (p.noise if p.noise not in (None, "ok") else None,
                             "contended" if p.contended else None,
                             "failed" if not p.confirmed else None) if f]
        cells = [rank, str(p.trial_number), *(_fmt(p.config.get(k)) for k in knobs)]
        if not ranked_on_throughput:
            cells.append(f"{_fmt(p.original_value)}→{_fmt(p.confirmed_value)}")
        cells += [with_ci(p.original_throughput_sps, p.original_ci_sps),
                  with_ci(p.confirmed_throughput_sps, p.confirmed_ci_sps),
                  "-" if p.ratio is None else f"{p.ratio:.3f}",
                  "yes" if p.moved else ("-" if p.ratio is None else "no"),
                  ", ".join(flags)]
        table.add_row(*cells)
    console.print(table)

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    from autotune._verify import MIN_KENDALL_TAU

    if report.kendall_tau is None:
        say(f"rank correlation: undefined ({report.correlation_note})")
    else:
        rho = "-" if report.spearman_rho is None else f"{report.spearman_rho:.2f}"
        say(f"rank correlation: Kendall tau {report.kendall_tau:.2f}, Spearman rho {rho} "
            f"(held needs tau >= {MIN_KENDALL_TAU:g})")
    say(f"screened order {' > '.join(map(str, report.original_ranking))}; confirmed "
        f"order {' > '.join(map(str, report.confirmed_ranking)) or '-'}")
    for note in report.notes:
        say(f"note: {note}")
    if report.held:
        say(f"verdict: held: trial {report.original_ranking[0]} is confirmed first on "
            f"{report.metric}")
    else:
        say(f"verdict: {report.verdict}: " + "; ".join(report.reasons))


def _cmd_recommend(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune._recommend import recommend

    objective = f"maximize:{args.maximize}" if args.maximize else \
        f"minimize:{args.minimize}" if args.minimize else None
    conditions = list(args.where or ())
    if getattr(args, "slo", None):
        from autotune._recommend import SLO_PRESETS

        conditions.extend(SLO_PRESETS[args.slo].conditions)
    with autotune.load_study(args.name, storage=args.storage) as study:
        rec = recommend(study, objective, constraints=conditions, prefer=args.prefer)
    if args.write_config:
        from pathlib import Path

        import yaml

        try:
            Path(args.write_config).write_text(
                yaml.safe_dump(rec.gate_config(), sort_keys=False), encoding="utf-8")
        except OSError as e:
            raise autotune.AutotuneError(
                f"{args.write_config}: cannot write the config file ({e})") from None
    # JSON first: tuples become lists, anything unusual a string, for YAML as well.
    data = json.loads(json.dumps(rec.to_dict(), default=str))
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.yaml:
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
        return 0
    _print_recommendation(console, rec, data)
    if args.write_config:
        _say(console, f"wrote the configuration to {args.write_config} "
                      f"(check it with `autotune gate {args.name} --config "
                      f"{args.write_config}`)")
    return 0


def _print_recommendation(console: Any, rec: Any, data: dict[str, Any]) -> None:
    import yaml

    from autotune.objectives import METRICS

    def say(text: str) -> None:
        _say(console, text)

    under = f" under {', '.join(rec.constraints)}" if rec.constraints else ""
    say(f"recommended for {rec.study!r} ({rec.workload}, {rec.mode}): trial "
        f"{rec.trial_number}, {rec.objective} {_fmt(rec.value)} ({rec.direction}){under}; "
        f"best of {rec.candidates} qualifying trial(s)"
        + (f", chosen by {rec.prefer} among trials {', '.join(map(str, rec.ties))}"
           if rec.prefer else ""))
    say("config: " + " ".join(f"{k}={_fmt(v)}" for k, v in rec.config.items()))
    c = rec.confidence
    for metric, value in rec.metrics.items():
        if value is None:
            continue
        note = ""
        if metric == "throughput_sps" and c.get("throughput_ci_sps"):
            low, high = c["throughput_ci_sps"]
            note = f"95 % CI {_fmt(low)} - {_fmt(high)}"
        elif metric in ("power_w", "energy_per_sample_j") and \
                c.get("energy_source") == "estimated":
            note = "estimated from CPU time, not measured"
        say(f"{metric:>22}  {_fmt(value):>12} {METRICS[metric].unit:<10} {note}".rstrip())
    contention = "contended (another process used its cores)" if c.get("contended") \
        else "not contended"
    say(f"confidence: noise {c.get('noise') or '-'} (spread {_fmt(c.get('spread'))}), "
        f"{contention}, energy {c.get('energy_source') or '-'}, stability "
        f"{c.get('stability')}, {_fmt(c.get('steps_measured'))} steps measured, "
        f"{_fmt(c.get('threads'))} thread(s)")
    if c.get("param_count") is not None:
        achieved = c.get("achieved_flops_per_s")
        peak = rec.metrics.get("pct_of_peak")
        say(f"model: {_fmt(c['param_count'])} parameters, "
            f"{_fmt(c.get('flops_per_sample'))} FLOPs per sample"
            + (f", {_fmt(achieved / 1e9)} GFLOP/s achieved" if achieved else "")
            + (f" = {_fmt(peak)} % of this machine's measured peak" if peak else ""))
    if rec.excluded_drifting:
        say(f"not recommended (drifting): trial(s) "
            f"{', '.join(map(str, rec.excluded_drifting))}")
    say(f"launch config ({data['launch'].get('framework')}):")
    for line in yaml.safe_dump(data["launch"], sort_keys=False).splitlines():
        say(f"  {line}")
    for warning in rec.warnings:
        say(f"warning: {warning}")


def _cmd_gate(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune._gate import gate, load_metrics_file

    measured = load_metrics_file(args.metrics) if args.metrics else None
    with autotune.load_study(args.name, storage=args.storage) as study:
        result = gate(study, args.config, tolerance=args.tolerance,
                      constraints=args.where or (), measured=measured)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return result.exit_code
    def say(text: str) -> None:
        _say(console, text)

    how = f"read from {args.metrics}" if args.metrics else "measured"
    say(f"gate {result.study!r} ({result.workload}, {result.mode}): {args.config} {how} | "
        + " ".join(f"{k}={_fmt(v)}" for k, v in result.config.items()))
    shown = list(dict.fromkeys([*result.objectives,
                                *(c.split(" ")[0] for c in result.constraints)]))
    if result.metrics:
        ci = result.metrics.get("throughput_ci_sps")
        parts = []
        for m in shown:
            text = f"{m} {_fmt(result.metrics.get(m))}"
            if m == "throughput_sps" and ci:
                text += f" (95 % CI {_fmt(ci[0])} - {_fmt(ci[1])})"
            parts.append(text)
        say("metrics: " + ", ".join(parts) + f"; noise {result.metrics.get('noise', '-')}"
            + (", contended" if result.contended else ""))
    for violation in result.violations:
        say(f"violates {violation}")
    for beat in result.beaten_by:
        cells = []
        for o, margin in beat.margins.items():
            pct = "+inf" if math.isinf(margin) else f"{margin * 100:+.1f}"
            cells.append(f"{o} {_fmt(beat.values[o])} vs {_fmt(result.values[o])} ({pct} %)")
        say(f"beaten by trial {beat.trial_number} ("
            + " ".join(f"{k}={_fmt(v)}" for k, v in beat.config.items()) + "): "
            + ", ".join(cells))
    for note in result.notes:
        say(f"note: {note}")
    say(f"{result.summary_line()} (exit {result.exit_code})")
    return result.exit_code
