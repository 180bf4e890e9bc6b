"""The ``autotune`` argument parser: every command, its options and argument types."""

from __future__ import annotations

import argparse
import math
from typing import Any, NoReturn

from autotune.cli._exitcodes import EXIT_USAGE

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
  autotune peak                        # this machine's measured GEMM peak (cached)
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


def _run_arguments(p: argparse.ArgumentParser) -> None:
    """What ``study run`` and ``worker`` share."""
    p.add_argument("name", help="study name")
    p.add_argument("--n-trials", type=_positive_int, metavar="N",
                   help="number of trials (this process's share; with --jobs, all jobs')")
    p.add_argument("--timeout", type=_duration, metavar="DURATION",
                   help="start no trial after this long (90, 90s, 5m, 1h)")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="run N trials at once, each on cores (and an accelerator) of its own: "
                        "the machine's cores are split evenly and no two trials share one; "
                        "a space whose threads exceed a job's cores is refused (default 1)")
    p.add_argument("--devices", type=_device_list, metavar="LIST",
                   help="the devices this process may use, e.g. cpu or cuda:0,cuda:1 (default: "
                        "every device of the study's space); the sampler proposes no other")
    p.add_argument("--space", metavar="FILE",
                   help="check that the study's stored space equals this file")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "random"),
                   help="override the study's sampler for this run")
    p.add_argument("--recheck-every", type=_non_negative_int, default=10, metavar="N",
                   help="re-measure up to two front configurations after every N trials "
                        "(and at least 30 s after the last re-check: drift takes minutes) "
                        "and flag those that drifted (0: never; default 10)")
    p.add_argument("--fresh-workers", action="store_true",
                   help="start a fresh worker process for every trial (slower: pays the "
                        "framework import each time; for comparing with warm workers)")
    p.add_argument("--wait", type=_duration, metavar="DURATION",
                   help="if the storage cannot be reached, keep trying this long (a database "
                        "that is still starting); default: fail at once with one line")
    p.add_argument("--quiet", action="store_true", help="no progress bar or trial lines")


def _float_at_least(text: str, low: float, *, strict: bool, wanted: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > low if strict else value >= low):  # NaN is neither
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    return _float_at_least(text, 0.0, strict=True, wanted="a positive number")


def _non_negative_float(text: str) -> float:
    return _float_at_least(text, 0.0, strict=False, wanted="a number >= 0")


def _resource(text: str) -> tuple[str, float]:
    name, eq, amount = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=AMOUNT, e.g. NPU=1; got {text!r}")
    return name.strip(), _positive_float(amount)


def _device_list(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",")]
    if not all(devices):
        raise argparse.ArgumentTypeError(f"expected devices separated by commas, e.g. "
                                         f"cpu,cuda:0; got {text!r}")
    return devices


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
    ("backend", str, "torch | tensorflow | mindspore | package.module:Class"),
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


def _backend_name(text: str) -> str:
    """A registered backend, or a third-party ``package.module:Class`` whose class imports
    and has (or gets) a spec."""
    from autotune.backends import BACKENDS, BackendLookupError, get_spec

    if text in BACKENDS:
        return text
    try:
        get_spec(text)
    except BackendLookupError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


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
    p.add_argument("--backend", action="append", type=_backend_name,
                   metavar="{torch,tensorflow,mindspore,package.module:Class}",
                   help="probe only this backend (repeatable): a registered one or a "
                        "third-party backend class")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show tracebacks on errors")

    p = commands.add_parser(
        "peak", help="measure this machine's GEMM peak per precision and thread count",
        description="Measure, once per machine fingerprint (cached), the device's GEMM "
                    "peak in FLOP/s per precision and thread count, and its copy "
                    "bandwidth: square matmuls in a fresh process pinned to that many "
                    "cores, the median of timed blocks. bf16/fp16 are measured only where "
                    "the CPU computes them natively. Every trial's pct_of_peak divides its "
                    "achieved FLOP/s (FLOPs counted on the model x throughput) by this "
                    "figure; a study measures a missing entry before its first trial.")
    p.add_argument("--device", default="cpu", metavar="DEVICE",
                   help="cpu (default) or cuda:N")
    p.add_argument("--precision", action="append", choices=("fp32", "bf16", "fp16", "int8"),
                   help="measure only this precision (repeatable; default: all)")
    p.add_argument("--threads", action="append", type=_positive_int, metavar="N",
                   help="thread count (repeatable; default: 1, 2, 4 ... up to the cores "
                        "this process may use)")
    p.add_argument("--refresh", action="store_true",
                   help="measure again even where a cached figure exists")
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
                                   "any failed trial. Every --recheck-every trials (30 s "
                                   "apart at least), two front configurations are measured "
                                   "again to catch drift. "
                                   "Without --n-trials or --timeout, runs 10 trials.")
    _run_arguments(p)
    p.add_argument("--ray", metavar="ADDRESS",
                   help="place the --jobs workers on a Ray cluster (ADDRESS, or auto: the "
                        "cluster this machine belongs to), each a real autotune worker on the "
                        "study's PostgreSQL storage (pip install 'autotune[ray]')")
    p.add_argument("--ray-cpus", type=_positive_float, metavar="N",
                   help="CPUs each Ray worker asks for (default: the space's largest threads)")
    p.add_argument("--ray-gpus", type=_non_negative_float, metavar="N",
                   help="GPUs each Ray worker asks for (default: 1 if the space searches CUDA "
                        "devices, else 0)")
    p.add_argument("--ray-resource", action="append", type=_resource, metavar="NAME=N",
                   help="a custom Ray resource each worker asks for, e.g. NPU=1 (repeatable)")
    _common(p)

    p = commands.add_parser(
        "worker", help="join a study from this machine: run its trials on this machine's "
                       "devices (many workers, many machines, one study)",
        description="Run trials of an existing study on this machine, beside any number of "
                    "other workers on this or other machines: they share the study's storage "
                    "(PostgreSQL for several machines), ask the same sampler, and write one "
                    "front under the study's lock. A worker declares its devices (--devices, "
                    "default: the space's), records its machine on every trial, sends "
                    "heartbeats while a trial runs, and reaps the trials of workers that "
                    "died (failed as worker_lost, their configuration run once more). Its "
                    "trial processes end with it, even on SIGKILL.",
        epilog="examples:\n"
               "  autotune worker big --storage postgresql+psycopg://tuner@db:5432/autotune "
               "--devices cuda:0,cuda:1 --jobs 2\n"
               "  autotune worker big --storage $AUTOTUNE_STORAGE --n-trials 20 --wait 2m\n"
               "Kubernetes Job and Slurm array examples: examples/cluster/.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _run_arguments(p)
    p.add_argument("--i-know-sqlite-is-local", action="store_true",
                   help="allow a SQLite storage although the study has trials from another "
                        "machine or the file is on a network filesystem (SQLite's locking "
                        "fails there and loses data)")
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
    p.add_argument("--workers", action="store_true",
                   help="also print the study's workers: trials per worker and per device, "
                        "trials/min, and workers gone silent (with --json: `fleet`)")
    p.add_argument("--live", action="store_true",
                   help="keep the workers and the front on screen, refreshed every "
                        "--interval seconds, until Ctrl-C")
    p.add_argument("--interval", type=_positive_float, default=2.0, metavar="S",
                   help="seconds between refreshes of --live (default 2)")
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
               "  autotune recommend quick --write-config prod.yaml  # for `autotune gate`\n"
               "  autotune recommend llm --maximize decode_tokens_per_s --slo interactive",
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
    from autotune._recommend import SLO_PRESETS

    p.add_argument("--slo", choices=sorted(SLO_PRESETS), metavar="PRESET",
                   help="a language-model latency target added to --where: " + "; ".join(
                       f"{s.name}: {' and '.join(s.conditions)} ({s.source})".replace(
                           "%", "%%") for s in SLO_PRESETS.values()))
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
