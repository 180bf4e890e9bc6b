"""The ``autotune`` command: a thin layer over the Python API.

Every command takes ``--storage URL`` (default ``$AUTOTUNE_STORAGE`` or
``sqlite:///studies/autotune.db``) and ``--json`` for scripts. Errors print one line
(``autotune: error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: 128 + SIGPIPE: what a shell reports for a program whose reader closed the pipe.
EXIT_BROKEN_PIPE = 141

_EPILOG = """\
examples:
  autotune study create quick --space search_spaces/quickstart.yaml
  autotune study run quick --n-trials 12
  autotune study show quick            # the Pareto front as a table
  autotune study show quick --json     # the same, for scripts
  autotune study report quick          # every view in one HTML file (opens offline)
  autotune study list
  autotune study delete quick --yes
  autotune devices                     # backends, devices, install commands
  autotune measure --workload mlp --mode infer --batch-size 64 --threads 1 --json
  autotune measure --from-trial quick:7  # re-run a stored trial exactly, compare
  autotune recommend quick --where "latency_p95_ms<=20"  # what to ship, launch config
  autotune gate quick --config prod.yaml  # CI: exit 1 if the front beats it by > 5 %

storage: --storage URL on any command, else $AUTOTUNE_STORAGE, else
sqlite:///studies/autotune.db (relative to the working directory). Any SQLAlchemy URL
Optuna accepts works, e.g. postgresql+psycopg://user@host:5432/db for many machines.
"""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that point at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"autotune: error: {message} (see `{self.prog} --help`)\n")


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--storage", metavar="URL",
                        help="database URL (default: $AUTOTUNE_STORAGE or "
                             "sqlite:///studies/autotune.db)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    # SUPPRESS: a subcommand must not reset `autotune --debug study ...` to False.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks on errors")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text!r}")
    return value


def _duration(text: str) -> float:
    """Seconds, or a number with s/m/h: 90, 90s, 5m, 1.5h."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 90, 90s, 5m or 1h, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return value


#: ``autotune measure`` knob flags: (flag, type, help).
_MEASURE_KNOBS: tuple[tuple[str, type, str], ...] = (
    ("backend", str, "torch | tensorflow | mindspore"),
    ("device", str, "cpu | cuda:N | tpu:N | npu:N"),
    ("batch-size", int, "samples per step"),
    ("precision", str, "fp32 | bf16 | fp16 | int8"),
    ("learning-rate", float, "train mode only"),
    ("optimizer", str, "sgd | adam | adamw (train mode only)"),
    ("pruning-ratio", float, "fraction in [0, 1)"),
    ("pruning-structure", str, "unstructured | structured"),
    ("execution", str, "auto | eager | graph | xla"),
    ("threads", int, "intra-op threads (pinned)"),
)


def _trial_ref(text: str) -> tuple[str, int]:
    """``STUDY:NUMBER`` -> (study, number). The number follows the last colon, so a study
    name may contain colons."""
    name, colon, number = text.rpartition(":")
    if not colon or not name or not number.isascii() or not number.isdigit():
        raise argparse.ArgumentTypeError(
            f"expected STUDY:NUMBER (a study name, a colon, a trial number from 0), "
            f"e.g. quick:3; got {text!r}")
    return name, int(number)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    from autotune import __version__

    parser = _Parser(
        prog="autotune",
        description="Find where and how a deep-learning workload runs best: Optuna searches "
                    "device, framework, batch size, precision, optimizer, pruning and threads; "
                    "each trial is a short profiled run on the real backend in its own "
                    "process; studies and Pareto fronts are stored in SQL.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autotune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    study = commands.add_parser(
        "study", help="create, run, list, show and delete tuning studies",
        description="Manage tuning studies. A study stores its search space, every trial "
                    "(config, metrics with provenance, raw step times) and its Pareto front.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = study.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)

    p = commands.add_parser(
        "devices", help="list backends, whether they are installed, and their devices",
        description="Probe each backend in a process of its own and list the devices it "
                    "sees (CPU always; CUDA GPUs, TPUs, Ascend NPUs where present), with "
                    "memory and driver/runtime versions. A backend that is not installed is "
                    "listed with the command that installs it. `device: auto` in a space "
                    "file means every device listed here for the space's backends.")
    p.add_argument("--backend", action="append", choices=("torch", "tensorflow", "mindspore"),
                   help="probe only this backend (repeatable)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks on errors")

    p = commands.add_parser(
        "measure", help="measure one configuration exactly as a trial would",
        description="Measure one configuration (a real trial in a worker process) outside "
                    "any study: how you benchmark the configuration you run today. Knobs "
                    "not given take the same defaults as in a space file. With "
                    "--from-trial, re-run a stored trial with its exact configuration "
                    "(knobs, budget, seed) and compare: stored vs new metrics, and "
                    "warnings for what differs (machine, framework versions, threads, "
                    "OMP/MKL environment variables).",
        epilog="examples:\n"
               "  autotune measure --workload mlp --mode infer --batch-size 64 --threads 1\n"
               "  autotune measure --from-trial quick:7 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", help="mlp, digits_mlp or module:factory (required "
                                      "without --from-trial)")
    p.add_argument("--mode", choices=("train", "infer"),
                   help="required without --from-trial")
    for knob, kind, helptext in _MEASURE_KNOBS:
        p.add_argument(f"--{knob}", type=kind, help=helptext)
    p.add_argument("--trial-seconds", type=float, help="hard time limit (default 30)")
    p.add_argument("--from-trial", type=_trial_ref, metavar="STUDY:NUMBER",
                   help="re-run this stored trial exactly (no knob flags with it); trial "
                        "numbers as in `autotune study show STUDY --all`")
    p.add_argument("--storage", metavar="URL",
                   help="with --from-trial: database URL (default: $AUTOTUNE_STORAGE or "
                        "sqlite:///studies/autotune.db)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks on errors")

    p = sub.add_parser("create", help="create a study from a search-space file",
                       description="Create a study. The space file is validated completely "
                                   "before anything is written; the study stores it.")
    p.add_argument("name", help="study name")
    p.add_argument("--space", required=True, metavar="FILE",
                   help="search-space YAML file, e.g. search_spaces/quickstart.yaml")
    p.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "random"),
                   help="search algorithm (default: tpe, multivariate with constant liar, "
                        "suited to mixed categorical spaces)")
    p.add_argument("--seed", type=int, help="seed for the sampler and model initialisation")
    p.add_argument("--exist-ok", action="store_true",
                   help="succeed if the study exists with the same space")
    _common(p)

    p = sub.add_parser("run", help="run trials of a study and print its Pareto front",
                       description="Run trials: each samples a configuration, measures it in "
                                   "a worker process and records it. Workers stay warm "
                                   "between trials of one backend, device and thread count "
                                   "(framework import is paid once) and are replaced after "
                                   "any failed trial. Every --recheck-every trials, two "
                                   "front configurations are measured again to catch drift. "
                                   "Without --n-trials or --timeout, runs 10 trials.")
    p.add_argument("name", help="study name")
    p.add_argument("--n-trials", type=_positive_int, metavar="N", help="number of trials")
    p.add_argument("--timeout", type=_duration, metavar="DURATION",
                   help="start no trial after this long (90, 90s, 5m, 1h)")
    p.add_argument("--space", metavar="FILE",
                   help="check that the study's stored space equals this file")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "random"),
                   help="override the study's sampler for this run")
    p.add_argument("--recheck-every", type=_non_negative_int, default=10, metavar="N",
                   help="re-measure up to two front configurations after every N trials "
                        "and flag those that drifted (0: never; default 10)")
    p.add_argument("--fresh-workers", action="store_true",
                   help="start a fresh worker process for every trial (slower: pays the "
                        "framework import each time; for comparing with warm workers)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or trial lines")
    _common(p)

    p = sub.add_parser("list", help="list studies", description="List every study in the "
                                                                "storage with its progress.")
    _common(p)

    p = sub.add_parser("show", help="print a study's Pareto front",
                       description="Print the study's Pareto front (feasible trials no other "
                                   "feasible trial beats on every objective).")
    p.add_argument("name", help="study name")
    p.add_argument("--all", action="store_true", help="list every trial, not only the front")
    p.add_argument("--history", action="store_true",
                   help="also print the front's hypervolume after every completed trial "
                        "(with --json: a `history` list)")
    _common(p)

    p = sub.add_parser("delete", help="delete a study and its records",
                       description="Delete a study: its trials, measurements and front.")
    p.add_argument("name", help="study name")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    _common(p)
    _add_verify_parser(commands)
    _add_transfer_parsers(sub)
    _add_report_parser(sub)
    _add_recommend_gate_parsers(commands)
    _add_dashboard_parser(commands)
    return parser


# -- rendering -----------------------------------------------------------------------------

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


def _print_front(console: Any, study: Any, front: list[Any]) -> None:
    from rich.table import Table

    knobs = _knob_columns(study)
    metrics = _metric_columns(study)
    table = Table(title=f"Pareto front of {study.name!r}: {len(front)} configuration(s)",
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
    for p in front:
        cells = [str(p.trial_number), *([p.stability] if checked else []),
                 *(_fmt(p.config.get(k)) for k in knobs)]
        for m in metrics:
            text = _fmt(p.metrics.get(m))
            if m in ("energy_per_sample_j", "power_w") and p.metrics.get("energy_source") == \
                    "estimated" and text != "-":
                text += " est"
            cells.append(text)
        table.add_row(*cells)
    console.print(table)
    if any(p.metrics.get("energy_source") == "estimated" for p in front):
        console.print("est: energy estimated from process CPU time (no energy counter "
                      "on this machine), not measured", style="dim")
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


def _print_trials(console: Any, study: Any, trials: list[Any]) -> None:
    from rich.table import Table

    knobs = _knob_columns(study)
    table = Table(title=f"Trials of {study.name!r}", title_justify="left")
    for col in ("trial", "state", *knobs, *study.space.objective_names, "note"):
        table.add_column(col)
    for t in trials:
        note = f"{t.failure_kind}: {t.reason}" if t.failure_kind else \
            ("" if t.feasible or t.state != "ok" else "violates a constraint")
        table.add_row(str(t.number), t.state, *(_fmt(t.params.get(k)) for k in knobs),
                      *(_fmt(t.metrics.get(o)) for o in study.space.objective_names),
                      note[:80])
    console.print(table)


def _front_json(study: Any) -> dict[str, Any]:
    return {
        **study.summary(),
        "front": [{"trial": p.trial_number, "config": p.config, "values": p.values,
                   "metrics": p.metrics, "stability": p.stability,
                   "energy_source": p.energy_source} for p in study.pareto_front()],
    }


def _trial_line(result: Any) -> str:
    params = " ".join(f"{k}={_fmt(v)}" for k, v in result.params.items())
    if result.state == "ok":
        m = result.metrics
        flag = "" if result.feasible else " (violates a constraint)"
        return (f"trial {result.number}: {_fmt(m.get('throughput_sps'))} samples/s, "
                f"p50 {_fmt(m.get('latency_p50_ms'))} ms, accuracy {_fmt(m.get('accuracy'))}"
                f"{flag} | {params}")
    return f"trial {result.number}: {result.state} ({result.failure_kind}) {result.reason} | " \
           f"{params}"


# -- commands ------------------------------------------------------------------------------

def _cmd_create(args: argparse.Namespace, console: Any) -> int:
    import autotune

    study = autotune.create_study(args.name, args.space, storage=args.storage,
                                  sampler=args.sampler, seed=args.seed, exist_ok=args.exist_ok)
    if args.json:
        print(json.dumps(study.summary(), indent=2))
    else:
        console.print(f"study {study.name!r} ready in {study.storage.url} "
                      f"({study.space.workload}, {study.space.mode}, "
                      f"{len(study.space.distributions())} knobs searched, "
                      f"objectives: {', '.join(study.space.objective_names)})")
    return 0


def _cmd_run(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune.launch import ProcessLauncher
    from autotune.space import load_space
    from autotune.study import missing_backends_warning

    study = autotune.load_study(args.name, storage=args.storage)
    if args.space:
        study.check_space(load_space(args.space))
    missing = study.check_backends()  # none installed here: an error before any trial
    if missing:
        print(f"autotune: warning: {missing_backends_warning(study.name, missing)}",
              file=sys.stderr)
    n_trials, timeout = args.n_trials, args.timeout
    if n_trials is None and timeout is None:
        n_trials = 10
    show_progress = not args.quiet and not args.json
    launcher = ProcessLauncher() if args.fresh_workers else None  # None: warm workers
    start = time.monotonic()
    results: list[Any] = []

    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        # markup=False: the study name and the best values are shown as written
        progress = Progress(TextColumn("{task.description}", style="bold", markup=False),
                            BarColumn(), TextColumn("{task.fields[status]}", markup=False),
                            TimeElapsedColumn(),
                            console=console, transient=False)
        total = float(n_trials) if n_trials is not None else float(timeout or 1)
        task = progress.add_task(f"{study.name}", total=total, status="starting")

        def on_trial(result: Any) -> None:
            results.append(result)
            progress.console.print(_trial_line(result), highlight=False, markup=False)
            summary = study.summary()
            best = [f"{name} {_fmt(value)}" for name, value in summary["best"].items()
                    if value is not None]
            status = f"front {summary['front_size']} | " + (
                ", ".join(best) if best else "no feasible yet")
            done = len(results) if n_trials is not None else \
                min(time.monotonic() - start, timeout or 0)
            progress.update(task, completed=done, status=status,
                            description=f"{study.name} {len(results)}"
                                        + (f"/{n_trials}" if n_trials else "") + " trials")

        with progress:
            study.optimize(n_trials=n_trials, timeout=timeout, callbacks=[on_trial],
                           launcher=launcher, recheck_every=args.recheck_every)
    else:
        results = study.optimize(n_trials=n_trials, timeout=timeout, launcher=launcher,
                                 recheck_every=args.recheck_every)
    if args.json:
        out = _front_json(study)
        out["run"] = {"trials": len(results), "seconds": round(time.monotonic() - start, 1)}
        print(json.dumps(out, indent=2, default=str))
        return 0
    elapsed = time.monotonic() - start
    console.print(f"{len(results)} trial(s) in {elapsed:.0f} s "
                  f"({elapsed / max(1, len(results)):.1f} s per trial)")
    front = study.pareto_front()
    if front:
        _print_front(console, study, front)
    else:
        console.print(f"no feasible trial yet; `autotune study show {study.name} --all` "
                      "says why each trial was infeasible")
    return 0


def _cmd_list(args: argparse.Namespace, console: Any) -> int:
    import autotune

    studies = autotune.list_studies(storage=args.storage)
    summaries = [s.summary() for s in studies]
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
        return 0
    if not summaries:
        console.print("no studies yet; create one with `autotune study create NAME --space "
                      "search_spaces/quickstart.yaml`")
        return 0
    from rich.table import Table

    table = Table(title="Studies", title_justify="left")
    for col in ("name", "workload", "mode", "ok", "infeasible", "fail", "front", "best",
                "created"):
        table.add_column(col)
    for s in summaries:
        best = ", ".join(f"{k} {_fmt(v)}" for k, v in s["best"].items())
        table.add_row(s["name"], s["workload"], s["mode"], str(s["trials"]["ok"]),
                      str(s["trials"]["infeasible"]), str(s["trials"]["fail"]),
                      str(s["front_size"]), best, s["created_at"])
    console.print(table)
    return 0


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


def _cmd_show(args: argparse.Namespace, console: Any) -> int:
    import autotune

    study = autotune.load_study(args.name, storage=args.storage)
    if args.json:
        out = _front_json(study)
        if args.all:
            out["trials"] = [vars(t) for t in study.trials()]
        if args.history:
            out["hypervolume"] = study.hypervolume()
            out["history"] = [
                {"trial": h.trial_number, "front": h.front, "hypervolume": h.hypervolume,
                 "reference": h.reference, "energy_sources": h.energy_sources,
                 "created_at": h.created_at.isoformat(timespec="seconds")}
                for h in study.front_history()]
        print(json.dumps(out, indent=2, default=str))
        return 0
    s = study.summary()
    console.print(f"study {s['name']!r}: workload {s['workload']} ({s['mode']}), "
                  f"sampler {s['sampler']}, trials ok {s['trials']['ok']} / infeasible "
                  f"{s['trials']['infeasible']} / failed {s['trials']['fail']}"
                  + (f"; constraints: {', '.join(s['constraints'])}" if s["constraints"] else ""),
                  highlight=False, markup=False)
    if args.all:
        _print_trials(console, study, study.trials())
    front = study.pareto_front()
    if front:
        _print_front(console, study, front)
        leads = "; ".join(f"{metric}: {lead['backend']} on {lead['device']} "
                          f"({_fmt(lead['value'])}, trial {lead['trial']})"
                          for metric, lead in s["leaders"].items())
        console.print(f"leads: {leads}", highlight=False, markup=False)
    else:
        console.print("no feasible trial yet: run `autotune study run "
                      f"{study.name}` (or see --all for why trials were infeasible)")
    if args.history:
        _print_history(console, study, study.front_history())
    return 0


def _cmd_delete(args: argparse.Namespace, console: Any) -> int:
    import autotune

    study = autotune.load_study(args.name, storage=args.storage)
    if not args.yes:
        if not sys.stdin.isatty():
            raise autotune.StudyError(f"refusing to delete {args.name!r} without --yes "
                                      "(standard input is not a terminal)")
        n = len(study.trials())
        answer = input(f"Delete study {args.name!r} and its {n} trial(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            console.print("not deleted")
            return EXIT_ERROR
    autotune.delete_study(args.name, storage=args.storage)
    if args.json:
        print(json.dumps({"deleted": args.name}))
    else:
        console.print(f"deleted study {args.name!r}")
    return 0


def _cmd_devices(args: argparse.Namespace, console: Any) -> int:
    from autotune.devices import discover

    reports = discover(args.backend)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
        return 0
    from rich.table import Table

    table = Table(title="Backends and devices", title_justify="left")
    for col in ("backend", "version", "device", "name", "memory MB", "driver", "detail"):
        table.add_column(col)
    for r in reports:
        if not r.installed:
            table.add_row(r.backend, "not installed", "-", f"install: {r.install_hint}",
                          "", "", "")
        elif r.error:
            table.add_row(r.backend, r.version or "?", "-", f"error: {r.error}", "", "", "")
        for d in r.devices:
            table.add_row(r.backend, r.version or "", d.id, d.name, _fmt(d.memory_mb),
                          d.driver or "-", d.detail)
    console.print(table)
    for r in reports:  # what a probe could not list, and why
        for note in getattr(r, "notes", ()):
            _say(console, f"note: {r.backend}: {note}")
    return 0


def _measure_usage_error(message: str) -> NoReturn:
    """A usage error of ``autotune measure``, worded and coded like argparse's own."""
    sys.stderr.write(f"autotune: error: {message} (see `autotune measure --help`)\n")
    raise SystemExit(EXIT_USAGE)


def _cmd_measure(args: argparse.Namespace, console: Any) -> int:
    import autotune

    names = [flag.replace("-", "_") for flag, _, _ in _MEASURE_KNOBS]
    knobs = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.from_trial is not None:
        # Overriding a knob would no longer re-run the stored trial: measure the changed
        # configuration with --workload/--mode and knob flags instead.
        given = [f"--{k.replace('_', '-')}" for k in ("workload", "mode", *names,
                                                      "trial_seconds")
                 if getattr(args, k) is not None]
        if given:
            _measure_usage_error(
                f"{', '.join(given)} cannot be combined with --from-trial, which re-runs "
                "the stored configuration as it was; to measure a changed configuration, "
                "give --workload, --mode and knob flags without --from-trial")
        return _measure_from_trial(args, console)
    missing = [f"--{k}" for k in ("workload", "mode") if getattr(args, k) is None]
    if missing:
        _measure_usage_error(f"the following arguments are required: {', '.join(missing)} "
                             "(or --from-trial STUDY:NUMBER)")
    if args.storage is not None:
        _measure_usage_error("--storage is only used with --from-trial STUDY:NUMBER")
    budget = {"trial_seconds": args.trial_seconds} if args.trial_seconds else None
    m = autotune.measure(args.workload, args.mode, budget=budget, **knobs)
    summary = m.summary()
    if args.json:
        print(json.dumps({"workload": args.workload, "mode": args.mode, "knobs": knobs,
                          "metrics": summary, "measurement": m.to_dict()}, indent=2))
        return 0
    _print_measurement(console, summary)
    return 0


_MEASURE_LINES = ("throughput_sps", "sustained_throughput_sps", "latency_p50_ms",
                  "latency_p95_ms", "latency_p99_ms", "peak_memory_mb", "accuracy", "power_w",
                  "energy_per_sample_j", "energy_source", "noise", "steps_measured",
                  "first_step_s", "param_count", "execution", "threads")


def _print_measurement(console: Any, summary: dict[str, Any]) -> None:
    for key in _MEASURE_LINES:
        console.print(f"{key:>26}  {_fmt(summary.get(key))}", highlight=False, markup=False)


def _measure_from_trial(args: argparse.Namespace, console: Any) -> int:
    import autotune

    study, number = args.from_trial
    result = autotune.measure_trial(study, number, storage=args.storage)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
        return 0

    def say(text: str) -> None:  # soft_wrap: a long line stays one line in a log or pipe
        console.print(text, highlight=False, markup=False, soft_wrap=True)

    config = result.config
    knobs = " ".join(f"{k}={_fmt(v)}" for k, v in config.knobs().items())
    say(f"re-ran trial {number} of {result.stored.study!r} (stored: "
        f"{result.stored.describe()}): {config.workload} {config.mode} | {knobs} "
        f"seed={config.seed}")
    for difference in result.differences:
        say(f"warning: {difference.message}")
    if not result.differences:
        say("same machine fingerprint, framework versions, threads and performance "
            "environment as when stored")
    say(f"{'metric':>26}  {'stored':>12}  {'now':>12}  ratio")
    for metric, row in result.comparison().items():
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        say(f"{metric:>26}  {_fmt(row['stored']):>12}  {_fmt(row['now']):>12}  {ratio}")
    throughput = result.comparison().get("throughput_sps", {})
    verdict = result.verdict
    if verdict.ratio is not None:
        say(f"throughput: {_fmt(throughput.get('now'))} samples/s now vs "
            f"{_fmt(throughput.get('stored'))} stored, ratio {verdict.ratio:.3f}: "
            f"{verdict.verdict} ({verdict.reason})")
    say("re-run measurement:")
    _print_measurement(console, result.measurement.summary())
    return 0


_COMMANDS = {"devices": _cmd_devices, "measure": _cmd_measure, "create": _cmd_create,
             "run": _cmd_run, "list": _cmd_list, "show": _cmd_show, "delete": _cmd_delete}


# -- verify (autotune._verify) -----------------------------------------------------------------

#: ``autotune verify`` exits with this when the ranking did not hold (changed or
#: inconclusive), so a CI job can refuse to ship an unconfirmed recommendation.
EXIT_NOT_HELD = 1


def _scale_factor(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}")
    return value


def _add_verify_parser(commands: Any) -> None:
    p = commands.add_parser(
        "verify", help="re-measure the front's top configurations longer and check the "
                       "ranking held",
        description="Confirm a study's recommendation: re-measure the top K configurations "
                    "of its Pareto front (ranked on --by, default the first objective) "
                    "each in a fresh worker process with a measured window --scale times "
                    "longer, and report the screened vs confirmed throughput, which points "
                    "moved beyond their confidence interval, the rank correlation (Kendall "
                    "tau, Spearman) and a verdict. The confirmations are stored as "
                    "rechecks, so they feed the front's stability flags.",
        epilog="verdict and exit code:\n"
               "  0  held: same leader, Kendall tau >= 0.6, no point moved (outside its "
               "confidence\n     interval and by more than 10 %)\n"
               "  1  changed (or inconclusive: the leader could not be re-measured), or an "
               "error\n"
               "  2  usage error\n"
               "examples:\n"
               "  autotune verify quick --top 3\n"
               "  autotune verify quick --top 5 --scale 5 --rounds 3 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="study name")
    p.add_argument("--top", type=_positive_int, default=3, metavar="K",
                   help="how many front configurations to re-measure (default 3; clipped "
                        "to the front's size)")
    p.add_argument("--scale", type=_scale_factor, default=3.0, metavar="X",
                   help="measured window this many times the screening trials' (default 3)")
    p.add_argument("--rounds", type=_positive_int, default=1, metavar="R",
                   help="re-measure each configuration R times, interleaved (A B C A B C), "
                        "and keep the median (default 1)")
    p.add_argument("--by", metavar="OBJECTIVE",
                   help="rank on this objective (default: the study's first)")
    _common(p)
    # `main` dispatches top-level commands without an action on args.action.
    p.set_defaults(action="verify")


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


_COMMANDS["verify"] = _cmd_verify


# -- study export / study import (autotune.transfer) ------------------------------------------


def _add_transfer_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "export", help="write a study to a file (JSON: everything; CSV: a table)",
        description="Export a study. JSON (the default) is lossless and is what `autotune "
                    "study import` reads: the stored space, every trial with its config, "
                    "params, values, constraints, metrics with provenance, raw step times, "
                    "state, failure kind and reason, the machines, the front, rechecks and "
                    "the front's history. CSV is one row per trial (state, failure, params, "
                    "objective values, headline metrics, machine) for spreadsheets; it "
                    "cannot be imported.",
        epilog="examples:\n"
               "  autotune study export quick > quick.json\n"
               "  autotune study export quick --format csv --output quick.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="study name")
    p.add_argument("--format", choices=("json", "csv"), default="json",
                   help="json (lossless, importable; default) or csv (one row per trial)")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write to FILE (whole or not at all) instead of standard output")
    _common(p, json_flag=False)

    p = sub.add_parser(
        "import", help="import a study from a JSON export into this storage",
        description="Import a study from a file written by `autotune study export` (JSON) "
                    "into --storage. The whole file is checked before anything is written, "
                    "and an existing study of the same name is never touched: import under "
                    "another name with --name. Trials keep their numbers; a trial that was "
                    "still running in the source is imported as failed (interrupted).",
        epilog="examples:\n"
               "  autotune study import quick.json --storage postgresql+psycopg://db/tune\n"
               "  autotune study import quick.json --name quick-laptop",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="FILE", help="a JSON export, or - for standard input")
    p.add_argument("--name", metavar="NEW",
                   help="import under this name (default: the exported study's name)")
    _common(p)


def _cmd_export(args: argparse.Namespace, console: Any) -> int:
    from autotune.transfer import export_study

    # Nothing is written to --output unless the whole export succeeded.
    text = export_study(args.name, storage=args.storage, format=args.format,
                        output=args.output)
    if args.output is None:
        sys.stdout.write(text)
    else:
        console.print(f"exported study {args.name!r} ({args.format}) to {args.output}",
                      highlight=False, markup=False)
    return 0


def _cmd_import(args: argparse.Namespace, console: Any) -> int:
    from pathlib import Path

    from autotune.transfer import import_study

    source = sys.stdin if args.file == "-" else Path(args.file)
    with import_study(source, storage=args.storage, name=args.name) as study:
        s = study.summary()
        if args.json:
            print(json.dumps({**s, "storage": study.storage.url}, indent=2, default=str))
            return 0
        t = s["trials"]
        console.print(f"imported study {s['name']!r} into {study.storage.url}: "
                      f"{sum(t.values())} trial(s) (ok {t['ok']}, infeasible "
                      f"{t['infeasible']}, failed {t['fail']}), front size {s['front_size']}",
                      highlight=False, markup=False)
    return 0


_COMMANDS["export"] = _cmd_export
_COMMANDS["import"] = _cmd_import


# -- study report (autotune.dashboard) ----------------------------------------------------------


def _add_report_parser(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="write a study's dashboard views to one HTML file",
        description="Write one self-contained HTML file: a header (workload, objectives, "
                    "constraints, trial counts, best values, hypervolume), the Pareto "
                    "front as a table and a scatter, knobs against objectives, the "
                    "hypervolume history, parameter importances and each front trial's "
                    "step times. plotly.js is embedded, so the file opens offline. Needs "
                    "the dashboard extra: pip install 'autotune[dashboard]'.",
        epilog="examples:\n"
               "  autotune study report quick            # writes quick-report.html\n"
               "  autotune study report quick -o /tmp/quick.html",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="study name")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write to FILE (default: NAME-report.html in this directory)")
    _common(p, json_flag=False)


def _cmd_report(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune.exceptions import AutotuneError

    with autotune.load_study(args.name, storage=args.storage) as study:
        try:
            from autotune.dashboard.report import write_report
        except ImportError as e:  # plotly is an extra: say how to get it, in one line
            raise AutotuneError(str(e)) from e
        # A study name may hold '/' or other characters a file name cannot.
        default = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.name)
        path = write_report(study, args.output or f"{default}-report.html")
    print(path)
    return 0


_COMMANDS["report"] = _cmd_report


# -- recommend / gate (autotune._recommend, autotune._gate) -----------------------------------

_GATE_EPILOG = """\
exit codes (for CI):
  0  pass: satisfies every constraint, and no front configuration beats it by more than
     the tolerance on every objective
  1  fail: violates a constraint, or a front configuration beats it by more than the
     tolerance on every objective (which one, and by how much, is printed); also any
     error autotune reports (unknown study, invalid config file): with --json a verdict
     is printed on stdout, an error only on stderr
  2  usage error
  3  could not measure the configuration (out of memory, unsupported, crash, timeout)
  4  inconclusive: it would fail only on timings measured while another process used its
     cores; measure again on a quiet machine

config file (YAML): workload and mode (the study's) and knobs named as in a space file;
knobs not given take the study's fixed values, then the space-file defaults:
  workload: digits_mlp
  mode: train
  backend: torch
  batch_size: 128
  precision: fp32
  optimizer: adamw
  learning_rate: 0.001
  threads: 2

examples:
  autotune gate quick --config prod.yaml
  autotune gate quick --config prod.yaml --tolerance 10% --where "latency_p95_ms<=20"
  autotune gate quick --config prod.yaml --metrics measured.json --json
"""


def _condition_arg(text: str) -> Any:
    """``--where`` value: ``metric<=value`` (argparse turns errors into usage errors)."""
    from autotune._recommend import parse_condition
    from autotune.exceptions import RecommendError

    try:
        return parse_condition(text)
    except RecommendError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _metric_arg(text: str) -> str:
    from autotune.objectives import METRICS

    if text not in METRICS:
        raise argparse.ArgumentTypeError(
            f"unknown metric {text!r}; allowed: {', '.join(METRICS)}")
    return text


def _prefer_arg(text: str) -> str:
    from autotune._recommend import parse_prefer
    from autotune.exceptions import RecommendError

    try:
        parse_prefer(text)
    except RecommendError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _tolerance_arg(text: str) -> float:
    from autotune._gate import parse_tolerance

    try:
        return parse_tolerance(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_recommend_gate_parsers(commands: Any) -> None:
    p = commands.add_parser(
        "recommend", help="the best configuration under constraints, with a launch config",
        description="Recommend the configuration to ship: the best feasible measured trial "
                    "(not only the front) on one metric under the study's constraints and "
                    "--where conditions, with its metrics and their confidence (throughput "
                    "95 %% CI, noise, contention, energy source, stability) and a launch "
                    "config spelled as its framework spells it (dtype, batch size, "
                    "optimizer class and arguments, threads, execution, quantisation, "
                    "pruning). Drifting trials are not recommended while a steady one "
                    "qualifies. When nothing qualifies, the error names the binding "
                    "condition and the nearest trials.",
        epilog="examples:\n"
               "  autotune recommend quick\n"
               "  autotune recommend quick --maximize throughput_sps "
               "--where \"latency_p95_ms<=20\" --where \"accuracy>=0.95\"\n"
               "  autotune recommend quick --minimize latency_p95_ms --prefer lower_memory "
               "--yaml\n"
               "  autotune recommend quick --write-config prod.yaml  # for `autotune gate`",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="study name")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--maximize", type=_metric_arg, metavar="METRIC",
                      help="metric to maximise (default: the study's first objective)")
    goal.add_argument("--minimize", type=_metric_arg, metavar="METRIC",
                      help="metric to minimise")
    p.add_argument("--where", type=_condition_arg, action="append", metavar="COND",
                   help="condition METRIC<=VALUE (>=, <=, >, <), on top of the study's "
                        "constraints (repeatable), e.g. \"latency_p95_ms<=20\"")
    p.add_argument("--prefer", type=_prefer_arg, metavar="RULE",
                   help="among trials within 2 %% of the best: lower_memory, fewer_threads, "
                        "smaller_batch, or a metric (minimize:METRIC / maximize:METRIC)")
    p.add_argument("--write-config", metavar="FILE",
                   help="also write the recommended configuration as a `autotune gate "
                        "--config` file")
    p.add_argument("--storage", metavar="URL",
                   help="database URL (default: $AUTOTUNE_STORAGE or "
                        "sqlite:///studies/autotune.db)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON for scripts")
    out.add_argument("--yaml", action="store_true", help="print YAML")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks on errors")
    p.set_defaults(action="recommend")  # `main` dispatches on args.action

    p = commands.add_parser(
        "gate", help="CI check: fail when the configuration to ship is beaten by the front",
        description="Measure the configuration about to ship (exactly as a trial of the "
                    "study: its budget and seed, in a fresh worker process), or read "
                    "metrics measured before (--metrics), and judge it against the study: "
                    "fail when it violates a constraint (the study's or --where) or when a "
                    "front configuration beats it by more than --tolerance on every "
                    "objective; the front configuration and its margin per objective are "
                    "printed.",
        epilog=_GATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="study name")
    p.add_argument("--config", required=True, metavar="FILE",
                   help="YAML: workload, mode and knob values of the configuration to ship")
    p.add_argument("--tolerance", type=_tolerance_arg, default=0.05, metavar="T",
                   help="how much better (on every objective) a front configuration must "
                        "be to fail the gate: 5%% or 0.05 (default 5%%)")
    p.add_argument("--where", type=_condition_arg, action="append", metavar="COND",
                   help="extra condition METRIC<=VALUE (repeatable)")
    p.add_argument("--metrics", metavar="FILE",
                   help="judge these metrics instead of measuring (`autotune measure "
                        "--json` output, or a JSON/YAML mapping of metric names to values)")
    _common(p)
    p.set_defaults(action="gate")


def _say(console: Any, text: str) -> None:
    # soft_wrap: a long line stays one line in a log or a pipe
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _cmd_recommend(args: argparse.Namespace, console: Any) -> int:
    import autotune
    from autotune._recommend import recommend

    objective = f"maximize:{args.maximize}" if args.maximize else \
        f"minimize:{args.minimize}" if args.minimize else None
    with autotune.load_study(args.name, storage=args.storage) as study:
        rec = recommend(study, objective, constraints=args.where or (), prefer=args.prefer)
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


_COMMANDS["recommend"] = _cmd_recommend
_COMMANDS["gate"] = _cmd_gate


# -- dashboard (autotune.dashboard.app) -----------------------------------------------------


def _add_dashboard_parser(commands: Any) -> None:
    p = commands.add_parser(
        "dashboard", help="serve a read-only web dashboard of the studies",
        description="Serve a read-only web dashboard of every study in the storage: the "
                    "study list, each study's Pareto front (pick the axes), knobs against "
                    "objectives, hypervolume history, importances, recommendation and "
                    "trials. Pages reload by themselves when a running study adds a "
                    "trial. Nothing is written to the storage. Serves until Ctrl-C. Needs "
                    "the dashboard extra: pip install 'autotune[dashboard]'.",
        epilog="examples:\n"
               "  autotune dashboard\n"
               "  autotune dashboard --storage sqlite:///studies.db --port 9000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any free)")
    _common(p, json_flag=False)
    p.set_defaults(action="dashboard")


def _cmd_dashboard(args: argparse.Namespace, console: Any) -> int:
    from autotune.exceptions import AutotuneError

    try:
        import plotly  # noqa: F401 (the dashboard extra)

        from autotune.dashboard.app import make_dashboard_server
    except ImportError as e:  # plotly is an extra: say how to get it, in one line
        raise AutotuneError(f"{e}; install it with: pip install 'autotune[dashboard]'") from e
    try:
        server = make_dashboard_server(args.storage, args.host, args.port)
    except OSError as e:
        raise AutotuneError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    import logging

    # A page that fails shows one line; its traceback goes to this terminal.
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.getLogger("autotune.dashboard").addHandler(handler)
    try:
        print(f"autotune dashboard: http://{args.host}:{server.server_port}/", flush=True)
        server.serve_forever()
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) is how a dashboard is meant to end
        print("autotune dashboard: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0


_COMMANDS["dashboard"] = _cmd_dashboard


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autotune`` console script. Returns the exit code.

    A reader that stops early (``autotune study show NAME --json | head``) ends the
    command quietly with :data:`EXIT_BROKEN_PIPE`, like a program killed by SIGPIPE.
    """
    try:
        code = _main(argv)
        # Flush here: a closed pipe must surface now, not as a message at interpreter exit.
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


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


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still
    buffered does not fail again (the Python docs' note on SIGPIPE)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no file descriptor (captured, replaced)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "study" and args.action is None:
        parser.error("study needs an action: create, run, list, show, delete, export, "
                     "import or report")
    # Logs and pipes get a wide console so tables and trial lines do not wrap mid-word.
    to_stderr = bool(getattr(args, "json", False))
    stream = sys.stderr if to_stderr else sys.stdout
    console = _make_console(stderr=to_stderr, width=None if stream.isatty() else 160)
    _quiet_libraries()
    from autotune.exceptions import AutotuneError

    action = args.command if args.command in ("devices", "measure") else args.action
    from autotune.space import one_line

    _terminate_as_interrupt()
    try:
        return _COMMANDS[action](args, console)
    except AutotuneError as e:
        if args.debug:
            raise
        print(f"autotune: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("autotune: interrupted; finished trials are stored", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader of stdout went away: no error to report
        raise
    except Exception as e:  # a bug or a library error: still one line unless --debug
        if args.debug:
            raise
        print(f"autotune: error: {type(e).__name__}: {one_line(str(e))} "
              "(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _terminate_as_interrupt() -> None:
    """SIGTERM/SIGHUP (a CI job cancelled, a closed terminal) unwind like Ctrl-C, so the
    running trial's worker is killed and the trial recorded, not orphaned."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _quiet_libraries() -> None:
    """Optuna logs every trial at INFO; autotune prints its own lines instead."""
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("autotune").addHandler(logging.NullHandler())
    if os.environ.get("AUTOTUNE_LOG"):
        logging.basicConfig(level=os.environ["AUTOTUNE_LOG"].upper())


if __name__ == "__main__":
    sys.exit(main())
