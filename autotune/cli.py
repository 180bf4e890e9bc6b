"""The ``autotune`` command: a thin layer over the Python API.

Every command takes ``--storage URL`` (default ``$AUTOTUNE_STORAGE`` or
``sqlite:///studies/autotune.db``) and ``--json`` for scripts. Errors print one line
(``autotune: error: ...``) and exit non-zero; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
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

_EPILOG = """\
examples:
  autotune study create quick --space search_spaces/quickstart.yaml
  autotune study run quick --n-trials 12
  autotune study show quick            # the Pareto front as a table
  autotune study show quick --json     # the same, for scripts
  autotune study list
  autotune study delete quick --yes
  autotune devices                     # backends, devices, install commands
  autotune measure --workload mlp --mode infer --batch-size 64 --threads 1 --json
  autotune measure --from-trial quick:7  # re-run a stored trial exactly, compare

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
    _common(p)

    p = sub.add_parser("delete", help="delete a study and its records",
                       description="Delete a study: its trials, measurements and front.")
    p.add_argument("name", help="study name")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    _common(p)
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
    """Objectives first, then constrained metrics, then p95 latency and energy."""
    wanted = [*study.space.objective_names, *(c.metric for c in study.space.constraints),
              "latency_p95_ms", "energy_per_sample_j"]
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
        console.print("[dim]est: energy estimated from process CPU time (no energy counter "
                      "on this machine), not measured[/dim]")
    sources = sorted({p.energy_source for p in front if p.energy_source})
    if len(sources) > 1 and any(m in ("power_w", "energy_per_sample_j")
                                for m in study.space.objective_names):
        console.print(f"[yellow]energy comes from {len(sources)} sources "
                      f"({', '.join(sources)}): points are compared on energy only with "
                      "points of the same source[/yellow]")
    drifting = [str(p.trial_number) for p in front if p.stability == "drifting"]
    if drifting:
        console.print(f"[yellow]drifting: trial(s) {', '.join(drifting)} measured "
                      "differently when re-checked; not picked as leaders[/yellow]")


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

    study = autotune.load_study(args.name, storage=args.storage)
    if args.space:
        study.check_space(load_space(args.space))
    n_trials, timeout = args.n_trials, args.timeout
    if n_trials is None and timeout is None:
        n_trials = 10
    show_progress = not args.quiet and not args.json
    launcher = ProcessLauncher() if args.fresh_workers else None  # None: warm workers
    start = time.monotonic()
    results: list[Any] = []

    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
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


def _cmd_show(args: argparse.Namespace, console: Any) -> int:
    import autotune

    study = autotune.load_study(args.name, storage=args.storage)
    if args.json:
        out = _front_json(study)
        if args.all:
            out["trials"] = [vars(t) for t in study.trials()]
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``autotune`` console script. Returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "study" and args.action is None:
        parser.error("study needs an action: create, run, list, show or delete")
    from rich.console import Console

    # Logs and pipes get a wide console so tables and trial lines do not wrap mid-word.
    to_stderr = bool(getattr(args, "json", False))
    stream = sys.stderr if to_stderr else sys.stdout
    console = Console(stderr=to_stderr, highlight=False,
                      width=None if stream.isatty() else 160)
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
