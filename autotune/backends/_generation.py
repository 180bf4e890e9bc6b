"""Generate mode of the framework backends: language models producing tokens.

:class:`GenerationMixin` holds what is the same on every framework: the LLM knobs applied
to a model (attention, activation checkpointing, weight-only quantisation), the prompts,
the KV cache chosen by ``kv_cache`` and the greedy generation loop that timestamps every
token. A framework supplies a few primitives (a compiled ``step`` through the cache, a
full recompute, host reads); the defaults serve models with autotune's decoding protocol
(``new_cache``, ``forward_cached``, ``set_attention``, ``set_checkpointing``, ``context``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.exceptions import ModelFactoryError, UnsupportedConfigError

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads._spec import ModelSpec

#: Prompt batches a generate trial cycles through.
PROMPT_POOL = 4


class GenerationMixin:
    """Generate mode for :class:`~autotune.backends._framework.FrameworkBackend`."""

    framework: str
    config: TrialConfig | None
    spec: ModelSpec | None
    model: Any
    factory_label: str
    _rng: np.random.Generator | None
    _pool: list[tuple[tuple[Any, ...], Any]]
    #: each token's time since the start of the last step's generation
    last_generation: list[float] | None
    _lm_step: Callable[..., Any] | None
    _lm_full: Callable[..., Any] | None
    _static_cache: Any

    def _make_batch(self, batch_size: int) -> tuple[tuple[np.ndarray, ...], Any]:
        raise NotImplementedError  # FrameworkBackend's

    def to_device(self, array: np.ndarray) -> Any:
        raise NotImplementedError  # a framework's primitive

    # -- primitives of generate mode (language models) -------------------------------------

    def apply_llm_knobs(self, config: TrialConfig) -> None:
        """Set the model's attention implementation (``config.attention``) and, in train
        mode, activation checkpointing (``config.checkpointing``); raise
        :class:`UnsupportedConfigError` with the reason where the model or framework
        cannot. The default handles models with autotune's decoding protocol
        (``set_attention``/``set_checkpointing``)."""
        if config.attention != "auto":
            setter = getattr(self.model, "set_attention", None)
            if setter is None:
                raise UnsupportedConfigError(
                    f"attention {config.attention!r}: the model has no set_attention(kind) "
                    "(autotune's decoding protocol, see the README); use attention: auto")
            if config.attention == "sdpa":
                reason = self.sdpa_unsupported_reason()
                if reason is not None:
                    raise UnsupportedConfigError(f"attention 'sdpa': {reason}")
            setter(config.attention)
        if config.mode == "train" and config.checkpointing != "off":
            setter = getattr(self.model, "set_checkpointing", None)
            if setter is None:
                raise UnsupportedConfigError(
                    "checkpointing 'blocks': the model has no set_checkpointing(on) hook "
                    "(autotune's decoding protocol, see the README)")
            setter(True)

    def apply_weight_quant(self, kind: str) -> None:
        """Weight-only quantisation (``int8``/``int4``) of the converted model's linear
        layers; raise :class:`UnsupportedConfigError` with the reason where the framework
        has none."""
        raise UnsupportedConfigError(f"weight_quant {kind!r}: {self.framework} has no "
                                     "weight-only quantisation here")

    def sdpa_unsupported_reason(self) -> str | None:
        """Why the framework has no fused attention kernel on this device (``None``: it
        has one)."""
        return f"{self.framework} has no fused attention kernel here"

    def build_lm_step(self, execution: str, kv_cache: str) -> Callable[..., Any]:
        """``step(idx, cache, pos) -> (next_ids, cache)``: the model on tokens ``idx``
        (B, t) at positions ``pos..`` through its cache, greedy next token ids (B,) on the
        device; compiled per ``execution``."""
        raise UnsupportedConfigError(f"generate mode is not implemented for {self.framework}")

    def build_lm_full(self, execution: str) -> Callable[..., Any]:
        """``full(idx) -> next_ids``: the whole sequence recomputed (``kv_cache: off``)."""
        raise UnsupportedConfigError(f"generate mode is not implemented for {self.framework}")

    def lm_new_cache(self, batch_size: int, max_len: int, kind: str) -> Any:
        """An empty KV cache of the model (autotune's decoding protocol: ``new_cache``)."""
        new_cache = getattr(self.model, "new_cache", None)
        if new_cache is None or not callable(getattr(self.model, "forward_cached", None)):
            raise UnsupportedConfigError(
                f"kv_cache {kind!r}: the model has no KV cache (implement new_cache and "
                "forward_cached, autotune's decoding protocol, see the README); use "
                "kv_cache: off")
        return new_cache(batch_size, max_len, kind)

    def lm_reset_cache(self, cache: Any) -> None:
        """Make a static cache ready for the next request (autotune's own caches need
        nothing: the mask hides what the last request wrote)."""

    def lm_host(self, ids: Any) -> np.ndarray:
        """Token ids on the host (this is the step's synchronisation: a server streams each
        token out as it is produced)."""
        return np.asarray(ids)

    def lm_column(self, ids: Any) -> Any:
        """Next-token ids (B,) as the next input (B, 1)."""
        return ids.reshape(-1, 1)

    def lm_concat(self, seq: Any, ids: Any) -> Any:
        """``seq`` (B, t) with ``ids`` (B,) appended: (B, t + 1)."""
        raise NotImplementedError

    def lm_position(self, pos: int) -> Any:
        """A position as the compiled step takes it (a tensor where a Python int would make
        a graph retrace per value)."""
        return pos

    def model_context(self) -> int | None:
        """The longest sequence the model takes (``context`` of autotune's protocol)."""
        value = getattr(self.model, "context", None)
        return int(value) if isinstance(value, int) else None


    # -- generate mode ---------------------------------------------------------------------

    def _prompts(self, config: TrialConfig) -> np.ndarray:
        """A batch of ``prompt_len``-token prompts (the spec's ``make_prompts``, else
        ``make_batch``'s first input, which must be that long)."""
        assert self.spec is not None and self._rng is not None
        bs, length = config.batch_size, config.prompt_len
        if self.spec.make_prompts is not None:
            try:
                prompts = self.spec.make_prompts(bs, length, self._rng)
            except Exception as e:
                raise ModelFactoryError(f"{self.factory_label}: make_prompts raised "
                                        f"{type(e).__name__}: {e}") from None
        else:
            prompts = self._make_batch(bs)[0][0]
        if not isinstance(prompts, np.ndarray) or prompts.ndim != 2 or \
                not np.issubdtype(prompts.dtype, np.integer):
            raise ModelFactoryError(
                f"{self.factory_label}: generate mode needs token ids (batch, prompt_len) as "
                f"integers, got {getattr(prompts, 'shape', type(prompts).__name__)}")
        if prompts.shape != (bs, length):
            raise ModelFactoryError(
                f"{self.factory_label}: prompt_len {length} does not match the prompts "
                f"make_batch returns ({prompts.shape[1]} tokens); set prompt_len: "
                f"{prompts.shape[1]}, or give the ModelSpec make_prompts")
        return prompts

    def _setup_generation(self, config: TrialConfig) -> dict[str, Any]:
        if config.new_tokens < 2:
            raise UnsupportedConfigError(f"new_tokens must be >= 2, got {config.new_tokens}")
        context = self.model_context()
        total = config.prompt_len + config.new_tokens
        if context is not None and total > context:
            raise UnsupportedConfigError(
                f"prompt_len + new_tokens = {total} exceeds the model's context of {context}")
        if config.kv_cache == "off":
            self._lm_full = self.build_lm_full(config.execution)
        else:
            if config.kv_cache == "static":
                # allocated once (before the step is built: a compiled step may capture
                # it), as a server does; every request overwrites the positions it uses
                # and the mask hides the rest
                self._static_cache = self.lm_new_cache(config.batch_size, total, "static")
            else:
                self.lm_new_cache(config.batch_size, total, "dynamic")  # the model has one
            self._lm_step = self.build_lm_step(config.execution, config.kv_cache)
        self._pool = [(self._prompt_tensor(config), None) for _ in range(PROMPT_POOL)]
        return {"prompt_len": config.prompt_len, "new_tokens": config.new_tokens,
                "kv_cache": config.kv_cache, "context": context}

    def _prompt_tensor(self, config: TrialConfig) -> tuple[Any, ...]:
        return (self.to_device(np.ascontiguousarray(self._prompts(config))),)

    def _generate(self, prompts: Any) -> list[float]:
        """Greedy generation of exactly ``new_tokens`` tokens per prompt (no end token:
        every trial does the same work); the time of each token since the start."""
        assert self.config is not None
        cfg = self.config
        n, length = cfg.new_tokens, cfg.prompt_len
        stamps: list[float] = []
        host = self.lm_host
        if cfg.kv_cache == "static":
            self.lm_reset_cache(self._static_cache)  # between requests, as a server does
        t0 = time.perf_counter()
        if cfg.kv_cache == "off":
            full = self._lm_full
            assert full is not None
            seq = prompts
            ids = full(seq)
            host(ids)
            stamps.append(time.perf_counter() - t0)
            for _ in range(n - 1):
                seq = self.lm_concat(seq, ids)
                ids = full(seq)
                host(ids)
                stamps.append(time.perf_counter() - t0)
            return stamps
        step = self._lm_step
        assert step is not None
        cache = (self._static_cache if cfg.kv_cache == "static" else
                 self.lm_new_cache(cfg.batch_size, length + n, "dynamic"))
        ids, cache = step(prompts, cache, self.lm_position(0))
        host(ids)
        stamps.append(time.perf_counter() - t0)
        for i in range(n - 1):
            ids, cache = step(self.lm_column(ids), cache, self.lm_position(length + i))
            host(ids)
            stamps.append(time.perf_counter() - t0)
        return stamps
