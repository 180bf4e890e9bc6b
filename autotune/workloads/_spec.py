"""The model-factory contract: :class:`ModelSpec`, what a workload factory returns.

A workload is a factory ``build(framework, **kwargs) -> ModelSpec``, imported and called
only inside the trial's worker process, after the backend has set up the runtime (threads,
device, precision policy, execution mode). The backend owns everything else: placement,
precision, the optimizer loop, pruning, quantisation, compilation and measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Loss names a :class:`ModelSpec` may give instead of a callable.
LOSSES = ("cross_entropy", "mse")
#: Samples in one "epoch" of a model without a data set of its own: the unit of train
#: mode's budget (``budget.train_epochs`` epochs, then the quality is measured).
DEFAULT_EPOCH_SAMPLES = 4096

MakeBatch = Callable[[int, np.random.Generator], tuple[Any, Any]]


@dataclass(frozen=True)
class ModelSpec:
    """A model and how to feed it, as a workload factory returns it.

    Attributes:
        model: a ``torch.nn.Module``, a ``keras.Model`` or a ``mindspore.nn.Cell``, of the
            framework the factory was called for.
        make_batch: ``(batch_size, rng) -> (inputs, targets)``, numpy arrays (``inputs`` a
            tuple for several inputs). Batches are generated before timing and handed to
            the model as contiguous tensors on the trial's device: ``model(*inputs)``.
        loss: ``"cross_entropy"`` (integer targets; outputs ``(N, C)`` or ``(N, T, C)``),
            ``"mse"`` or ``callable(outputs, targets) -> scalar`` in the framework's
            tensors. Needed in train mode only.
        forward: optional ``callable(model, inputs, targets) -> loss`` for models that
            compute their own loss; replaces ``model(*inputs)`` + ``loss`` in training.
        quality: optional ``callable(model) -> float``: the model's quality as it is now
            (after pruning, quantisation and training). Without it no quality is reported.
        quality_name: what the quality is called in results (built-ins: ``accuracy``).
        quality_direction: ``maximize`` or ``minimize``.
        epoch_samples: samples per training epoch (the train budget's unit); default
            :data:`DEFAULT_EPOCH_SAMPLES`.
        train_before_infer: in infer mode, first train the model with the fixed base
            recipe (cached), as the built-in models do; ``False`` measures the model as
            the factory returned it (for example with weights it loaded itself).
        prune_structured: optional ``callable(model, ratio) -> model`` that rebuilds the
            model with fewer channels/neurons (built-in models do it themselves on every
            framework; torch models without it go through torch-pruning).
        tokens_per_sample: tokens in one sample of a sequence model (a language model's
            sequence length): train and infer modes then report ``tokens_per_s``. Left
            ``None``, it is taken from a 2-D integer first input (token ids ``(N, T)``).
        make_prompts: optional ``(batch_size, prompt_len, rng) -> token ids (batch_size,
            prompt_len)`` for generate mode (the built-in ``gpt`` has it). Without it the
            prompts are ``make_batch``'s first input, which must then be ``prompt_len``
            tokens long.
        description: one line for humans.
    """

    model: Any
    make_batch: MakeBatch
    loss: str | Callable[[Any, Any], Any] = "cross_entropy"
    forward: Callable[[Any, Any, Any], Any] | None = None
    quality: Callable[[Any], float] | None = None
    quality_name: str = "quality"
    quality_direction: str = "maximize"
    epoch_samples: int | None = None
    train_before_infer: bool = False
    prune_structured: Callable[[Any, float], Any] | None = None
    tokens_per_sample: int | None = None
    make_prompts: Callable[[int, int, np.random.Generator], np.ndarray] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not callable(self.make_batch):
            raise TypeError(f"make_batch must be callable, got {type(self.make_batch).__name__}")
        if not (callable(self.loss) or self.loss in LOSSES):
            raise ValueError(f"loss must be one of {', '.join(LOSSES)} or a callable, "
                             f"got {self.loss!r}")
        for name in ("forward", "quality", "prune_structured", "make_prompts"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
        if self.quality_direction not in ("maximize", "minimize"):
            raise ValueError("quality_direction must be 'maximize' or 'minimize', "
                             f"got {self.quality_direction!r}")
        if not isinstance(self.quality_name, str) or not self.quality_name.isidentifier():
            raise ValueError(f"quality_name must be an identifier, got {self.quality_name!r}")
        if self.tokens_per_sample is not None and (
                not isinstance(self.tokens_per_sample, int) or self.tokens_per_sample < 1):
            raise ValueError("tokens_per_sample must be a positive int, got "
                             f"{self.tokens_per_sample!r}")
        if self.epoch_samples is not None and (
                not isinstance(self.epoch_samples, int) or self.epoch_samples < 1):
            raise ValueError(f"epoch_samples must be a positive int, got {self.epoch_samples!r}")

    @property
    def samples_per_epoch(self) -> int:
        """Samples in one training epoch."""
        return self.epoch_samples or DEFAULT_EPOCH_SAMPLES


def as_input_tuple(inputs: Any) -> tuple[np.ndarray, ...]:
    """``make_batch``'s inputs as a tuple of arrays (one input is a 1-tuple)."""
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def check_batch(inputs: Any, targets: Any, batch_size: int) -> str | None:
    """Why a batch from ``make_batch`` is unusable (``None`` when it is fine)."""
    xs = as_input_tuple(inputs)
    if not xs:
        return "make_batch returned no inputs"
    for i, x in enumerate(xs):
        if not isinstance(x, np.ndarray):
            return f"input {i} is a {type(x).__name__}, not a numpy array"
        if x.ndim == 0 or x.shape[0] != batch_size:
            return (f"input {i} has shape {x.shape}; its first (batch) dimension must be "
                    f"{batch_size}")
    if targets is not None:
        if not isinstance(targets, np.ndarray):
            return f"targets are a {type(targets).__name__}, not a numpy array"
        if targets.ndim == 0 or targets.shape[0] != batch_size:
            return (f"targets have shape {targets.shape}; their first (batch) dimension must "
                    f"be {batch_size}")
    return None


def batch_nbytes(inputs: Any, targets: Any) -> int:
    """Bytes of one batch (inputs and targets)."""
    total = sum(x.nbytes for x in as_input_tuple(inputs))
    return total + (targets.nbytes if isinstance(targets, np.ndarray) else 0)
