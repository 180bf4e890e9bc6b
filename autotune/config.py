"""The ground floor: the knob vocabulary, per-trial budgets and the frozen record of one trial.

Nothing here imports the rest of autotune: :mod:`autotune.space` (space files), the
launcher and the profiling loop all import their shared names from this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

# -- the knob vocabulary ----------------------------------------------------------------------

#: train: optimizer steps; infer: forward passes (a language model's prefill); generate: a
#: batch of prompts, exactly ``new_tokens`` new tokens each (language models)
Mode = Literal["train", "infer", "generate"]
MODES: tuple[Mode, ...] = ("train", "infer", "generate")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
OPTIMIZERS = ("sgd", "adam", "adamw")
PRUNING_STRUCTURES = ("unstructured", "structured")
#: auto: the mode an expert would pick for the backend (torch eager, TensorFlow tf.function,
#: MindSpore graph mode); xla: TensorFlow's tf.function(jit_compile=True).
EXECUTIONS = ("auto", "eager", "graph", "xla")
#: KV cache of generate mode: grown by concatenation, preallocated (fixed shapes, written in
#: place), or none (every new token recomputes the whole prefix).
KV_CACHES = ("dynamic", "static", "off")
#: auto: the model's own; math: matmul + masked softmax; sdpa: the framework's fused kernel
ATTENTIONS = ("auto", "math", "sdpa")
#: weight-only quantisation of a language model's linear layers (activations stay float)
WEIGHT_QUANTS = ("none", "int8", "int4")
#: activation recomputation in training: off, or per transformer block
CHECKPOINTINGS = ("off", "blocks")
#: memory layout of a convolutional model's activations and weights: NCHW (torch's
#: default, "contiguous") or NHWC ("channels_last"); other frameworks run the layout they
#: prefer and refuse the other with the reason
MEMORY_FORMATS = ("contiguous", "channels_last")
#: Knobs shown with a configuration only where they differ from their default (a space
#: that never mentions them keeps its recommendations and gate files as they were).
SCALE_KNOBS = frozenset({"data_parallel", "memory_format"})
#: Knobs that only mean something when the model is trained.
TRAIN_ONLY_KNOBS = frozenset({"learning_rate", "optimizer", "checkpointing"})
#: Knobs that only mean something when the model generates.
GENERATE_ONLY_KNOBS = frozenset({"prompt_len", "new_tokens", "kv_cache"})

#: The language-model knobs (shown for other models only where a space sets them).
LLM_KNOBS = frozenset({"prompt_len", "new_tokens", "kv_cache", "attention", "weight_quant",
                       "checkpointing"})

#: Knob name -> value used when a space does not mention the knob.
KNOB_DEFAULTS: Mapping[str, Any] = {
    "backend": "torch",
    "device": "cpu",
    "batch_size": 64,
    "precision": "fp32",
    "learning_rate": 1e-3,
    "optimizer": "adam",
    "pruning_ratio": 0.0,
    "threads": None,  # None: every core the worker may use
    "pruning_structure": "unstructured",
    "execution": "auto",
    "prompt_len": 32,
    "new_tokens": 32,
    "kv_cache": "dynamic",
    "attention": "auto",
    "weight_quant": "none",
    "checkpointing": "off",
    # replicas of one trial, each on its own device or core group (autotune._data_parallel);
    # batch_size stays the global batch, split evenly over them
    "data_parallel": 1,
    "memory_format": "contiguous",
}

# -- timing constants shared by the space check, the worker and the profiling loop ------------

#: Time a trial needs for model set-up on a warm worker (data cached, framework imported).
MIN_SETUP_S = 1.0
#: Warm-up lasts at least this long even when the first steps already look stable.
WARMUP_MIN_S = 0.05
#: Seconds the worker keeps for itself between the end of measuring and the hard kill.
SAFETY_MARGIN_S = 1.0


@dataclass(frozen=True)
class Budget:
    """Per-trial limits and measurement settings (``budget:`` in a space file).

    Attributes:
        trial_seconds: wall-clock limit of one trial's worker process; it is killed beyond.
        warmup_max_s: longest warm-up before measuring anyway (warm-up ends earlier once
            step times are stable); warm-up steps are never counted.
        warmup_min_s: shortest warm-up, even when the first steps already look stable.
        window_min_s: the measured window lasts at least this long...
        window_min_steps: ...and at least this many steps (more when a latency
            percentile is an objective or constraint: p95 needs 132)...
        window_max_s: ...and is extended until the estimate is precise enough (see
            ``target_ci``) or this long has passed (or the trial budget runs out).
        target_ci: the window stops once the 95 % confidence interval of the median step
            time (what throughput and latency are computed from) is within +-this share
            of it: 0.02 is +-2 %. The spread of single steps is not the stopping rule: on
            a shared CPU it stays at 10-20 % however long one measures, while the
            median's interval keeps narrowing.
        train_epochs: training budget in train mode: accuracy is measured after exactly
            this many epochs over the training split.
        memory_mb: optional cap on memory the trial may allocate beyond what the framework
            and model need; beyond it a trial is out of memory (like a device of that size).
        early_stop: stop a trial as soon as its measurement's 95 % confidence box is
            dominated by the study's front (recorded pruned, never on the front; see
            :mod:`autotune.profiling.screening`); ``false`` measures every trial in full.
        defer_confirmation: in infer mode, a trial that survives the screen but whose
            remaining steps (a p95 needs 132) would still take 0.3 s or more stops at
            the screen too (``screened``:
            figures for the sampler, never a front point); at the end of the run the
            screened configurations that could still be on the front are measured again
            in full. ``false`` confirms every survivor at once. Needs ``early_stop``.
    """

    trial_seconds: float = 30.0
    warmup_max_s: float = 3.0
    warmup_min_s: float = WARMUP_MIN_S
    window_min_s: float = 0.2
    window_min_steps: int = 20
    window_max_s: float = 4.0
    target_ci: float = 0.02
    train_epochs: int = 3
    memory_mb: int | None = None
    early_stop: bool = True
    defer_confirmation: bool = True


class SpaceLike(Protocol):
    """What :meth:`TrialConfig.from_params` reads of a space (an
    :class:`autotune.space.SearchSpace`), named here so this module does not import it."""

    @property
    def workload(self) -> str: ...

    @property
    def mode(self) -> str: ...

    @property
    def budget(self) -> Budget: ...

    def one_valued_params(self) -> dict[str, Any]: ...


# -- one trial --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs, resolved from the space and the sampled parameters.

    ``threads`` is ``None`` when the space does not pin it: the worker then uses every core
    it may run on and records the count it used.
    """

    workload: str
    mode: str
    backend: str
    device: str
    batch_size: int
    precision: str
    learning_rate: float
    optimizer: str
    pruning_ratio: float
    threads: int | None
    budget: Budget
    pruning_structure: str = "unstructured"
    execution: str = "auto"
    seed: int = 0
    #: the workload factory's keyword arguments
    workload_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: SHA-256 (16 hex digits) of the factory's file when the trial was launched (``None``
    #: for built-ins), stored with every measurement so a study cannot mix model versions
    factory_hash: str | None = None
    #: generate mode: prompt tokens per sequence and new tokens generated per sequence
    prompt_len: int = 32
    new_tokens: int = 32
    kv_cache: str = "dynamic"
    attention: str = "auto"
    weight_quant: str = "none"
    checkpointing: str = "off"
    #: replicas the trial runs on (``batch_size`` is split evenly over them)
    data_parallel: int = 1
    memory_format: str = "contiguous"
    #: set inside a replica of a data-parallel trial (:mod:`autotune.launch._replicas`):
    #: its rank, the replicas, its cores or device and the rendezvous ports. Never part
    #: of a stored configuration.
    replica: Mapping[str, Any] | None = None
    #: what the trial is screened against (:class:`autotune.profiling.screening.Screen`
    #: as a dict: the study's front when it was launched); ``None``: measured in full. Not
    #: part of the configuration: a stored configuration never carries it.
    screen: Mapping[str, Any] | None = None
    #: set on a memory probe (:mod:`autotune._memory_probe`): the batches it may try;
    #: the worker then only looks for the largest batch that fits and measures nothing.
    #: Never part of a stored configuration.
    memory_probe: Mapping[str, Any] | None = None

    @classmethod
    def from_params(cls, space: SpaceLike, params: dict[str, Any], *,
                    seed: int = 0) -> TrialConfig:
        """Combine the space's one-valued knobs, the sampled ``params`` and the defaults.
        A knob the space allows one value of wins over the default even when ``params``
        leave it out (a partial proposal of the feasibility pre-screen)."""
        knobs = dict(KNOB_DEFAULTS)
        knobs.update(space.one_valued_params())
        knobs.update(params)
        from autotune.workloads import WorkloadRef, factory_hash

        kwargs = dict(getattr(space, "workload_kwargs", {}) or {})
        return cls(workload=space.workload, mode=space.mode, budget=space.budget, seed=seed,
                   workload_kwargs=kwargs,
                   factory_hash=factory_hash(WorkloadRef(space.workload, kwargs)), **knobs)

    def knobs(self) -> dict[str, Any]:
        """The tunable knobs only (what a launch config needs)."""
        return {k: getattr(self, k) for k in KNOB_DEFAULTS}

    def mode_knobs(self) -> dict[str, Any]:
        """The knobs that mean something in this trial's mode (what a recommendation
        shows and a gate file holds): no training knobs outside train mode, no generation
        knobs outside generate mode, and the language-model knobs only in generate mode
        or where they are set."""
        out = {}
        for k, v in self.knobs().items():
            if k in TRAIN_ONLY_KNOBS and self.mode != "train":
                continue
            if k in GENERATE_ONLY_KNOBS and self.mode != "generate":
                continue
            if k in LLM_KNOBS and self.mode != "generate" and v == KNOB_DEFAULTS[k]:
                continue
            if k in SCALE_KNOBS and v == KNOB_DEFAULTS[k]:
                continue
            out[k] = v
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, sent to the worker process."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        # a configuration stored by an earlier version may carry retired budget keys
        # (target_spread): it is measured as a budget of this version would be
        known = {f.name for f in dataclasses.fields(Budget)}
        data["budget"] = Budget(**{k: v for k, v in data["budget"].items() if k in known})
        data["workload_kwargs"] = dict(data.get("workload_kwargs") or {})
        return cls(**data)
