"""The :class:`Measurement` record: raw samples kept, statistics derived."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from autotune.profiling.stats import (
    NOISY_SPREAD,
    PERCENTILE_MIN_SAMPLES,
    VERY_NOISY_SPREAD,
    median_ci,
    percentile,
    spread,
)

#: Metrics only generate mode produces.
GENERATION_METRICS = ("ttft_p50_ms", "ttft_p95_ms", "tpot_p50_ms", "tpot_p95_ms",
                      "itl_p50_ms", "itl_p99_ms", "e2e_p50_ms", "prefill_tokens_per_s",
                      "decode_tokens_per_s")


@dataclass(frozen=True)
class Measurement:
    """One trial's measurement. Units are in the names; raw step times are kept.

    Latencies are per step: one optimizer step in train mode, one batch's forward pass in
    infer mode. ``throughput_sps`` is ``samples_per_step / median step time``: robust to the
    outliers of a noisy machine, and what the confidence interval is about.
    ``sustained_throughput_sps`` (samples / window) includes the slow steps; energy per
    sample is the window's energy over the window's samples.
    """

    step_times_s: tuple[float, ...]
    samples_per_step: int
    mode: str
    samples: int
    window_s: float
    warmup_s: float
    warmup_steps: int
    first_step_s: float
    setup_s: float
    import_s: float
    process_start_s: float
    energy_j: float | None
    energy_source: str
    energy_window_s: float
    energy_samples: int
    energy_model: str
    peak_memory_bytes: int
    memory_source: str
    accuracy: float | None
    threads: int
    stop_reason: str
    model: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    data_s: float = 0.0
    eval_s: float = 0.0
    #: why a better energy source was not used (or why there is no energy figure)
    energy_fallback_reason: str = ""
    #: performance-relevant environment variables of the worker (OMP/MKL threads...)
    environment: dict[str, str] = field(default_factory=dict)
    #: which worker ran it: ``pid``, ``trial`` (its n-th trial) and ``warm``
    worker: dict[str, Any] = field(default_factory=dict)
    #: foreign CPU load seen during the window (see :mod:`autotune.profiling.contention`)
    contention: dict[str, Any] = field(default_factory=dict)
    #: the warm-up's step times (never counted; kept to show where warm-up ended)
    warmup_step_times_s: tuple[float, ...] = ()
    #: generate mode: per measured step (one batch of requests), each generated token's
    #: time since the step began (token 1 ends the prefill: the time to first token)
    generations: tuple[tuple[float, ...], ...] = ()
    #: the worker's resident memory when the trial began (before the model was built)
    baseline_rss_bytes: int = 0
    #: a trial stopped early because its confidence box was dominated by the front
    #: (:mod:`autotune.profiling.screening`): ``reason``, ``dominated_by``, ``corner``;
    #: empty for a trial measured over its full window
    pruned: dict[str, Any] = field(default_factory=dict)
    #: a survivor of the screen whose confirmation was deferred (its full window would
    #: have been long): ``corner`` (its optimistic corner), ``steps``, ``deferred_s``;
    #: empty otherwise
    screened: dict[str, Any] = field(default_factory=dict)
    #: processes the trial ran on (``data_parallel``); with several, ``step_times_s`` are
    #: the synchronised steps (each the slowest replica's: a global batch is done when its
    #: last shard is) and ``samples_per_step`` the global batch, each sample counted once
    replicas: int = 1
    #: each replica's own step times over the same window, in rank order
    replica_step_times_s: tuple[tuple[float, ...], ...] = ()
    #: share of the step time with a gradient all-reduce in flight (mean of the
    #: replicas'); ``None`` with ``comm_fraction_reason`` where it was not measured
    comm_fraction: float | None = None
    comm_fraction_reason: str = ""

    @property
    def fidelity(self) -> str:
        """``screen`` (stopped after the screening part of the window: pruned, or its
        confirmation deferred) or ``confirmed`` (the full window)."""
        return "screen" if self.pruned or self.screened else "confirmed"

    def screen_estimate(self, metric: str) -> float | None:
        """What a screened trial tells the sampler for ``metric``: the measured value,
        or for a latency percentile the window has too few steps to report, the sample
        percentile of the steps it has (a rough estimate for the search only: it is never
        stored as the metric, and a screened trial is never a front point)."""
        value = self.metrics().get(metric)
        if value is not None or not metric.startswith("latency_p") or \
                not self.step_times_s:
            return None if value is None else float(value)
        q = int(metric[len("latency_p"):-len("_ms")])
        return float(np.percentile(np.asarray(self.step_times_s, dtype=float), q)) * 1e3

    @classmethod
    def from_worker(cls, raw: dict[str, Any], *, samples_per_step: int,
                    mode: str) -> Measurement:
        """Build from a worker's ``status: ok`` result."""
        energy = raw["energy"]
        device_peak = raw.get("device_peak_memory_bytes")
        return cls(
            step_times_s=tuple(raw["step_times_s"]),
            samples_per_step=samples_per_step,
            mode=mode,
            samples=int(raw.get("samples", samples_per_step * len(raw["step_times_s"]))),
            window_s=raw["window_s"],
            warmup_s=raw["warmup_s"],
            warmup_steps=len(raw["warmup_step_times_s"]),
            first_step_s=raw.get("first_step_s", 0.0),
            setup_s=raw["setup_s"],
            data_s=raw.get("data_s", 0.0),
            eval_s=raw.get("eval_s", 0.0),
            import_s=raw["import_s"],
            process_start_s=raw["process_start_s"],
            energy_j=energy["energy_j"],
            energy_source=energy["source"],
            energy_window_s=energy["window_s"],
            energy_samples=energy["samples"],
            energy_model=energy.get("model", ""),
            energy_fallback_reason=energy.get("fallback_reason", ""),
            peak_memory_bytes=int(device_peak if device_peak is not None
                                  else raw["peak_rss_bytes"]),
            memory_source="device_peak" if device_peak is not None else
            "process_peak_rss" if raw.get("peak_rss_scope", "trial") == "trial" else
            "process_lifetime_peak_rss",
            accuracy=raw.get("accuracy"),
            threads=raw["threads"],
            stop_reason=raw["stop_reason"],
            model=dict(raw.get("model", {})),
            versions=dict(raw.get("versions", {})),
            warnings=tuple(raw.get("warnings", ())),
            environment=dict(raw.get("environment", {})),
            worker=dict(raw.get("worker", {})),
            contention=dict(raw.get("contention") or {}),
            warmup_step_times_s=tuple(raw.get("warmup_step_times_s", ())),
            generations=tuple(tuple(g) for g in raw.get("generations", ())),
            baseline_rss_bytes=int(raw.get("baseline_rss_bytes") or 0),
            pruned=dict(raw.get("pruned") or {}),
            screened=dict(raw.get("screened") or {}),
            replicas=int(raw.get("replicas") or 1),
            replica_step_times_s=tuple(tuple(t) for t in raw.get("replica_step_times_s", ())),
            comm_fraction=raw.get("comm_fraction",
                                  0.0 if int(raw.get("replicas") or 1) == 1 else None),
            comm_fraction_reason=str(raw.get("comm_fraction_reason") or ""),
        )

    # -- derived ---------------------------------------------------------------------------

    @property
    def median_step_s(self) -> float:
        """Median step time."""
        return statistics.median(self.step_times_s)

    @property
    def throughput_sps(self) -> float:
        """Samples per second at the median step time."""
        return self.samples_per_step / self.median_step_s

    @property
    def throughput_ci_sps(self) -> tuple[float, float] | None:
        """95 % confidence interval of the throughput (from the median's interval)."""
        ci = median_ci(self.step_times_s)
        if ci is None:
            return None
        return self.samples_per_step / ci[1], self.samples_per_step / ci[0]

    def latency_ms(self, q: int) -> float | None:
        """The q-th percentile step time in ms, ``None`` with too few samples."""
        value = percentile(self.step_times_s, q)
        return None if value is None else value * 1000.0

    @property
    def spread(self) -> float:
        """IQR/median of the step times."""
        return spread(self.step_times_s)

    @property
    def noise_flag(self) -> str:
        """``ok``, ``noisy`` (spread >= 10 %) or ``very_noisy`` (>= 25 %)."""
        s = self.spread
        return "very_noisy" if s >= VERY_NOISY_SPREAD else "noisy" if s >= NOISY_SPREAD else "ok"

    @property
    def power_w(self) -> float | None:
        """Mean power over the energy window."""
        if self.energy_j is None or self.energy_window_s <= 0:
            return None
        return self.energy_j / self.energy_window_s

    @property
    def sustained_throughput_sps(self) -> float:
        """Samples processed in the window divided by its length (slow steps included)."""
        return self.samples / self.window_s if self.window_s > 0 else 0.0

    @property
    def energy_per_sample_j(self) -> float | None:
        """Energy of the window divided by the samples processed in it (slow steps
        included, unlike the median-based throughput)."""
        if self.energy_j is None or self.samples <= 0:
            return None
        return self.energy_j / self.samples

    @property
    def phases_s(self) -> dict[str, float]:
        """Where the trial's time went, per phase, in seconds (the measured window is the
        only part the metrics come from; a warm worker pays start and import once)."""
        return {
            "process_start": self.process_start_s,
            "framework_import": self.import_s,
            "data": self.data_s,
            "model_build": self.setup_s,
            "first_step_compile": self.first_step_s,
            "warmup": self.warmup_s,
            "measured": self.window_s,
            "evaluation": self.eval_s,
        }

    @property
    def contended(self) -> bool:
        """Whether another process used this trial's cores during the window."""
        return bool(self.contention.get("contended", False))

    @property
    def quality_name(self) -> str:
        """What the model's quality is called (built-ins: ``accuracy``)."""
        return str(self.model.get("quality_name", "accuracy"))

    @property
    def achieved_flops_per_s(self) -> float | None:
        """FLOPs per sample (counted on the real model) times the median throughput."""
        flops = self.model.get("flops_per_sample")
        return None if flops is None else float(flops) * self.throughput_sps

    @property
    def pct_of_peak(self) -> float | None:
        """Achieved FLOP/s as a percentage of the machine's measured GEMM peak for this
        trial's device, precision and threads (``model["peak"]``, see ``autotune peak``),
        times the replicas of a data-parallel trial."""
        achieved = self.achieved_flops_per_s
        peak = (self.model.get("peak") or {}).get("flops_per_s")
        if achieved is None or not peak:
            return None
        # the peak is one replica's (its device, its threads); replicas add theirs up
        return 100.0 * achieved / (float(peak) * self.replicas)

    @property
    def trial_memory_bytes(self) -> int | None:
        """What the trial itself added to memory: the device's peak, or on a CPU the
        worker's peak resident memory minus its resident memory when the trial began
        (``None`` where the peak covers the process's lifetime)."""
        if self.memory_source == "device_peak":
            return self.peak_memory_bytes
        if self.memory_source != "process_peak_rss" or not self.baseline_rss_bytes:
            return None
        return max(0, self.peak_memory_bytes - self.baseline_rss_bytes)

    # -- language models -------------------------------------------------------------------

    @property
    def tokens_per_s(self) -> float | None:
        """Train and infer modes: tokens per second at the median step time (the model's
        tokens per sample x samples per second); ``None`` for models without tokens."""
        tokens = self.model.get("tokens_per_sample")
        if self.mode == "generate" or not tokens:
            return None
        return float(tokens) * self.throughput_sps

    def _per_request(self, values: list[float]) -> list[float]:
        """One value per request: every request of a batch shares its batch's timings (a
        static batch), so the percentile gates count requests, as LLM benchmarks do."""
        return [v for v in values for _ in range(self.samples_per_step)]

    def _generation_ms(self, q: int, which: str) -> float | None:
        if not self.generations:
            return None
        n = len(self.generations[0])
        if which == "ttft":
            values = [g[0] for g in self.generations]
        elif which == "tpot":
            values = [(g[-1] - g[0]) / (n - 1) for g in self.generations]
        elif which == "e2e":
            values = [g[-1] for g in self.generations]
        else:  # itl: every gap between consecutive tokens
            values = [b - a for g in self.generations for a, b in itertools.pairwise(g)]
        value = percentile(self._per_request(values), q)
        return None if value is None else value * 1000.0

    @property
    def generated_tokens(self) -> int:
        """New tokens per sequence of generate mode (0 in other modes)."""
        return len(self.generations[0]) if self.generations else 0

    @property
    def prefill_tokens_per_s(self) -> float | None:
        """Prompt tokens of a batch over the median time to first token."""
        prompt = self.model.get("prompt_len")
        if not self.generations or not prompt:
            return None
        ttft = statistics.median(g[0] for g in self.generations)
        return self.samples_per_step * float(prompt) / ttft if ttft > 0 else None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens generated after the first, over the median decode time (end-to-end minus
        time to first token): ``batch_size / tpot_p50``."""
        if not self.generations:
            return None
        n = self.generated_tokens
        decode = statistics.median(g[-1] - g[0] for g in self.generations)
        return self.samples_per_step * (n - 1) / decode if decode > 0 else None

    @property
    def decode_tokens_ci(self) -> tuple[float, float] | None:
        """95 % confidence interval of ``decode_tokens_per_s`` (from the median decode
        time's interval over the measured batches)."""
        if not self.generations:
            return None
        ci = median_ci([g[-1] - g[0] for g in self.generations])
        if ci is None or ci[0] <= 0:
            return None
        tokens = self.samples_per_step * (self.generated_tokens - 1)
        return tokens / ci[1], tokens / ci[0]

    def metrics(self) -> dict[str, float | None]:
        """Every metric of :data:`autotune.objectives.METRICS`, by name.

        ``quality`` is the model's own quality whatever it is called; ``accuracy`` is set
        only for models whose quality is an accuracy (the built-ins)."""
        accuracy = self.accuracy if self.quality_name == "accuracy" else None
        return {
            "throughput_sps": self.throughput_sps,
            "latency_p50_ms": self.latency_ms(50),
            "latency_p90_ms": self.latency_ms(90),
            "latency_p95_ms": self.latency_ms(95),
            "latency_p99_ms": self.latency_ms(99),
            "peak_memory_mb": self.peak_memory_bytes / 2**20,
            "accuracy": accuracy,
            "quality": self.accuracy,
            "pct_of_peak": self.pct_of_peak,
            "power_w": self.power_w,
            "energy_per_sample_j": self.energy_per_sample_j,
            "perplexity": self.accuracy if self.quality_name == "perplexity" else None,
            "tokens_per_s": self.tokens_per_s,
            "ttft_p50_ms": self._generation_ms(50, "ttft"),
            "ttft_p95_ms": self._generation_ms(95, "ttft"),
            "tpot_p50_ms": self._generation_ms(50, "tpot"),
            "tpot_p95_ms": self._generation_ms(95, "tpot"),
            "itl_p50_ms": self._generation_ms(50, "itl"),
            "itl_p99_ms": self._generation_ms(99, "itl"),
            "e2e_p50_ms": self._generation_ms(50, "e2e"),
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "comm_fraction": self.comm_fraction,
        }

    def missing_reasons(self) -> dict[str, str]:
        """Why a metric is ``None``, per metric."""
        reasons = {}
        n = len(self.step_times_s)
        for q in (90, 95, 99):
            if self.latency_ms(q) is None:
                reasons[f"latency_p{q}_ms"] = (
                    f"{n} steps measured; p{q} needs {PERCENTILE_MIN_SAMPLES[q]}")
        if self.accuracy is None:
            why = ("the model's spec has no quality callable"
                   if self.model.get("has_quality") is False else
                   "training budget not reached within the trial budget")
            reasons["quality"] = why
            reasons["accuracy"] = why
        elif self.quality_name != "accuracy":
            reasons["accuracy"] = (f"the model's quality is {self.quality_name!r}, not an "
                                   "accuracy (see metric quality)")
        if self.model.get("flops_per_sample") is None:
            reasons["pct_of_peak"] = ("FLOPs not counted: "
                                      f"{self.model.get('flops_method') or 'no counter'}")
        elif self.pct_of_peak is None:
            reasons["pct_of_peak"] = ((self.model.get("peak") or {}).get("reason")
                                      or "no measured peak for this device and precision")
        if self.energy_j is None:
            reasons["power_w"] = reasons["energy_per_sample_j"] = (
                self.energy_fallback_reason or "no energy source")
        if self.quality_name != "perplexity":
            reasons["perplexity"] = f"the model's quality is {self.quality_name!r}"
        elif self.accuracy is None:
            reasons["perplexity"] = reasons.get("quality", "not measured")
        if self.tokens_per_s is None:
            reasons["tokens_per_s"] = ("generate mode: see decode_tokens_per_s and "
                                       "prefill_tokens_per_s" if self.mode == "generate"
                                       else "the model's samples are not token sequences")
        if self.comm_fraction is None:
            reasons["comm_fraction"] = self.comm_fraction_reason or "not measured"
        if self.mode != "generate":
            for name in GENERATION_METRICS:
                reasons[name] = f"generate mode only (this trial's mode is {self.mode})"
        else:
            requests = len(self.generations) * self.samples_per_step
            gaps = requests * max(0, self.generated_tokens - 1)
            for name, count in (("ttft_p95_ms", requests), ("tpot_p95_ms", requests),
                                ("itl_p99_ms", gaps)):
                q = int(name.split("_")[1][1:])
                if count < PERCENTILE_MIN_SAMPLES[q]:
                    unit = "requests" if name != "itl_p99_ms" else "token gaps"
                    reasons[name] = (f"{count} {unit} measured; p{q} needs "
                                     f"{PERCENTILE_MIN_SAMPLES[q]}")
        return reasons

    def summary(self) -> dict[str, Any]:
        """Metrics plus provenance, as stored in trial user attrs and printed by the CLI."""
        ci = self.throughput_ci_sps
        return {
            **self.metrics(),
            "throughput_ci_sps": list(ci) if ci else None,
            "decode_tokens_ci": list(self.decode_tokens_ci or ()) or None,
            "sustained_throughput_sps": self.sustained_throughput_sps,
            "steps_measured": len(self.step_times_s),
            "fidelity": self.fidelity,
            "latency_unit": ("per optimizer step" if self.mode == "train" else
                             "per batch of requests (prompt + every new token)"
                             if self.mode == "generate" else "per batch"),
            "spread": self.spread,
            "noise": self.noise_flag,
            "contended": self.contended,
            "foreign_cpu_fraction": self.contention.get("foreign_fraction"),
            "phases_s": self.phases_s,
            "worker": self.worker,
            "energy_source": self.energy_source,
            # a simulator's figures (autotune.simulation) are never measurements
            "simulated": bool(self.model.get("simulated")),
            "energy_model": self.energy_model,
            "energy_fallback_reason": self.energy_fallback_reason,
            "memory_source": self.memory_source,
            "threads": self.threads,
            "replicas": self.replicas,
            "data_parallel": self.model.get("data_parallel"),
            "memory_format": self.model.get("memory_format"),
            "stop_reason": self.stop_reason,
            # includes compilation in graph/xla modes; never part of the window
            "first_step_s": self.first_step_s,
            "param_count": self.model.get("param_count"),
            "flops_per_sample": self.model.get("flops_per_sample"),
            "flops_method": self.model.get("flops_method"),
            "achieved_flops_per_s": self.achieved_flops_per_s,
            "peak_flops_per_s": (self.model.get("peak") or {}).get("flops_per_s"),
            "weight_bytes": self.model.get("weight_bytes"),
            "sparsity": self.model.get("sparsity"),
            "compute_dtype": self.model.get("compute_dtype"),
            "quality_name": self.quality_name,
            "factory": self.model.get("factory"),
            "factory_hash": self.model.get("factory_hash"),
            "execution": self.model.get("execution"),
            "tokens_per_sample": self.model.get("tokens_per_sample"),
            "prompt_len": self.model.get("prompt_len"),
            "new_tokens": self.model.get("new_tokens"),
            "kv_cache": self.model.get("kv_cache"),
            "generations_measured": len(self.generations),
            "predicted_memory_bytes": self.model.get("predicted_memory_bytes"),
            "trial_memory_bytes": self.trial_memory_bytes,
            "missing": self.missing_reasons(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable (what the ``autotune_measurements`` table stores)."""
        return asdict(self)
