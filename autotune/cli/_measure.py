"""``autotune measure``: one configuration measured as a trial, or a stored trial re-run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from autotune.cli._exitcodes import EXIT_USAGE
from autotune.cli._parser import _MEASURE_KNOBS
from autotune.cli._render import _fmt


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
