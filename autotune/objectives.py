"""Metric names, their units and directions, constraints and worst-case values.

Every metric a trial can report is listed in :data:`METRICS`. Objectives and constraints in
a search-space file may only name these metrics. Units are part of the names (SI or ms/MB),
as in Zeus and optimum-benchmark.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

Direction = Literal["maximize", "minimize"]
DIRECTIONS: tuple[Direction, ...] = ("maximize", "minimize")
#: Metrics whose figure depends on how energy was read (a counter or an estimate from CPU
#: time): points are compared on them only within one source.
ENERGY_METRICS = ("power_w", "energy_per_sample_j")


@dataclass(frozen=True)
class MetricInfo:
    """What a metric means, its unit and the direction that is better."""

    name: str
    unit: str
    better: Direction
    description: str


METRICS: Mapping[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo(
            "throughput_sps", "samples/s", "maximize",
            "median samples per second over the measured window",
        ),
        MetricInfo(
            "latency_p50_ms", "ms", "minimize",
            "median time of one step (train: optimizer step; infer: one batch)",
        ),
        MetricInfo("latency_p90_ms", "ms", "minimize", "90th percentile step time"),
        MetricInfo("latency_p95_ms", "ms", "minimize", "95th percentile step time"),
        MetricInfo("latency_p99_ms", "ms", "minimize", "99th percentile step time"),
        MetricInfo("peak_memory_mb", "MB", "minimize", "peak resident memory of the worker"),
        MetricInfo("accuracy", "fraction", "maximize",
                   "held-out top-1 accuracy (models whose quality is an accuracy)"),
        MetricInfo("quality", "model-defined", "maximize",
                   "the model's own quality (its spec's quality callable; its direction is "
                   "the spec's quality_direction)"),
        MetricInfo("pct_of_peak", "%", "maximize",
                   "achieved FLOP/s as a percentage of the machine's measured GEMM peak for "
                   "the trial's device, precision and threads"),
        MetricInfo("power_w", "W", "minimize", "mean power over the measured window"),
        MetricInfo(
            "energy_per_sample_j", "J", "minimize", "energy per sample over the measured window"
        ),
        MetricInfo("comm_fraction", "fraction", "minimize",
                   "data parallel: share of the window's step time during which a gradient "
                   "all-reduce was in flight (0 for one replica)"),
        # -- language models (README: "Tune an LLM" defines each exactly) --
        MetricInfo("perplexity", "", "minimize",
                   "held-out perplexity of a language model (exp of the mean cross-entropy)"),
        MetricInfo("tokens_per_s", "tokens/s", "maximize",
                   "train and infer: tokens per second at the median step time"),
        MetricInfo("ttft_p50_ms", "ms", "minimize", "generate: median time to first token"),
        MetricInfo("ttft_p95_ms", "ms", "minimize",
                   "generate: 95th percentile time to first token"),
        MetricInfo("tpot_p50_ms", "ms", "minimize",
                   "generate: median time per output token, per request (e2e - TTFT) / "
                   "(new_tokens - 1)"),
        MetricInfo("tpot_p95_ms", "ms", "minimize",
                   "generate: 95th percentile time per output token"),
        MetricInfo("itl_p50_ms", "ms", "minimize",
                   "generate: median inter-token latency over all gaps"),
        MetricInfo("itl_p99_ms", "ms", "minimize",
                   "generate: 99th percentile inter-token latency over all gaps"),
        MetricInfo("e2e_p50_ms", "ms", "minimize",
                   "generate: median end-to-end time of a request"),
        MetricInfo("prefill_tokens_per_s", "tokens/s", "maximize",
                   "generate: prompt tokens of a batch / median time to first token"),
        MetricInfo("decode_tokens_per_s", "tokens/s", "maximize",
                   "generate: tokens after the first / median decode time (= batch_size / "
                   "tpot_p50)"),
    )
}

#: Metrics each mode produces (an objective or constraint outside its mode's set is refused
#: when the space is read: it could never be met).
_GENERATE_ONLY = frozenset({"ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms",
                            "itl_p50_ms", "itl_p99_ms", "e2e_p50_ms", "prefill_tokens_per_s",
                            "decode_tokens_per_s"})
MODE_METRICS: Mapping[str, frozenset[str]] = {
    "train": frozenset(METRICS) - _GENERATE_ONLY,
    "infer": frozenset(METRICS) - _GENERATE_ONLY,
    "generate": frozenset(METRICS) - {"tokens_per_s"},
}

_COMPARATORS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_CONSTRAINT_RE = re.compile(r"^\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Constraint:
    """A bound on one metric, e.g. ``accuracy >= 0.9``.

    ``violation(value)`` follows Optuna's convention: a value <= 0 is feasible. It is
    relative to the bound (``|bound|``, or 1 for a zero bound), because samplers add the
    violations of all constraints: megabytes must not drown accuracy fractions.
    """

    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, metric: str, text: object) -> Constraint:
        """Parse ``">= 0.9"``; raise ``ValueError`` with what is allowed when it does not parse."""
        match = _CONSTRAINT_RE.match(str(text)) if isinstance(text, str | int | float) else None
        if match is None:
            raise ValueError(
                f"constraint {text!r} does not parse; write an operator (>=, <=, >, <) "
                "and a number, e.g. \">= 0.9\""
            )
        return cls(metric, match.group(1), float(match.group(2)))

    def violation(self, value: float | None) -> float:
        """How far ``value`` is from satisfying the bound (<= 0 means satisfied)."""
        if value is None or math.isnan(value):
            return math.inf
        gap = self.bound - value if self.op in (">=", ">") else value - self.bound
        # A strict bound met with equality is violated by the smallest representable amount.
        if gap == 0 and self.op in (">", "<"):
            return math.ulp(1.0)
        return gap

    def is_satisfied(self, value: float | None) -> bool:
        """Whether ``value`` satisfies the bound."""
        return value is not None and _COMPARATORS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


#: The worst value of a model quality that is minimised (a loss, a perplexity): finite, so
#: hypervolume and TPE stay defined.
WORST_MINIMIZED_QUALITY = 1e6


def worst_value(metric: str, *, trial_seconds: float, rated_power_w: float,
                memory_total_mb: float, direction: str | None = None) -> float:
    """A physically meaningful worst case for ``metric``, used for infeasible trials.

    Samplers learn from complete trials only, so a failed configuration is recorded with
    these values and a violated constraint rather than as FAIL (DESIGN.md section 5).
    The bounds are finite on purpose: hypervolume and TPE's ranking stay well-defined.
    """
    if (metric == "quality" and direction == "minimize") or metric == "perplexity":
        return WORST_MINIMIZED_QUALITY
    if METRICS[metric].unit == "ms":
        # No step that completed inside the budget can have taken longer than the budget.
        return trial_seconds * 1000.0
    if metric in ("tokens_per_s", "prefill_tokens_per_s", "decode_tokens_per_s"):
        return 0.0
    worst = {
        "throughput_sps": 0.0,
        "accuracy": 0.0,
        "quality": 0.0,
        "pct_of_peak": 0.0,
        # No step that completed inside the budget can have taken longer than the budget.
        "latency_p50_ms": trial_seconds * 1000.0,
        "latency_p90_ms": trial_seconds * 1000.0,
        "latency_p95_ms": trial_seconds * 1000.0,
        "latency_p99_ms": trial_seconds * 1000.0,
        "peak_memory_mb": memory_total_mb,
        "power_w": rated_power_w,
        # The whole budget at rated power spent on a single sample.
        "energy_per_sample_j": rated_power_w * trial_seconds,
        "comm_fraction": 1.0,
    }
    return worst[metric]
