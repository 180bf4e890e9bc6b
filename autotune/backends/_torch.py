"""PyTorch backend: the runtime for any ``torch.nn.Module``, used as an expert would.

* training: fused optimizer kernels (``fused=True``: 0.8 ms against 9.2 ms per Adam step
  for the default foreach path, research/frameworks_on_cpu.md), ``zero_grad(set_to_none)``,
  autocast for bf16/fp16 (with a gradient scaler for fp16);
* inference: ``torch.inference_mode``, weights converted to the trial's dtype (faster than
  autocast: 0.60 against 0.91 ms on AMX), int8 through dynamic quantisation of Linear layers
  (refused, with the reason, for a model whose convolutions it would leave in fp32);
* execution ``graph``: ``torch.compile`` (inductor; weights frozen into the graph in
  inference); compilation happens in the first step, timed apart;
* pruning: global magnitude pruning of every weight matrix and conv kernel (the masks are
  re-applied after every optimizer step in training, so pruned weights stay zero, and tied
  weights stay tied); structured pruning through torch-pruning's dependency graph, which
  removes channels of convs, batch norms and linear layers consistently (real speed-ups),
  or the model's own ``prune_structured`` hook;
* facts: parameters as ``model.parameters()`` counts them (a shared tensor once), FLOPs from
  ``torch.utils.flop_counter.FlopCounterMode`` on the real model (kept across workers for a
  model of torch, transformers or autotune classes only: :mod:`._flop_cache`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autotune.backends import _spec_torch
from autotune.backends._flop_cache import FLOP_KNOBS, cached_count, flop_key, store_count
from autotune.backends._framework import FrameworkBackend
from autotune.exceptions import OutOfMemoryError, TrialError, UnsupportedConfigError

if TYPE_CHECKING:
    from autotune.config import TrialConfig

_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
#: torch's own words for a kernel missing for a dtype or a device
_UNSUPPORTED_TEXT = ("not implemented for", "no kernel image", "is not supported")


class TorchBackend(FrameworkBackend):
    """PyTorch on CPU (and CUDA where present: same code, device-side sync and memory)."""

    name = "torch"
    framework = "torch"
    backend_spec = _spec_torch.SPEC
    weights_suffix = ".pt"

    def __init__(self, torch: Any = None) -> None:
        """``torch`` is the framework module; tests hand in a fake one (the vendor
        boundary: ``torch.cuda``, ``torch.device``) to drive the device paths of hardware
        this machine lacks."""
        super().__init__()
        if torch is None:
            import os

            from autotune._cache import cache_dir

            # torch.compile's kernels are cached across trials (cold compile of the MLP
            # train step: ~12 s; warm: 0.2-2 s, research/frameworks_on_cpu.md).
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            import torch

            # Not imported here: torch._dynamo (1.1-2 s) comes with the first optimizer or
            # torch.compile, so a worker serving inference trials of a model that needs no
            # training never pays it; a training worker pays it once, in its first trial's
            # set-up (never in a measured window)

        self.torch = torch
        self.device: Any = None
        self._cuda = False  # the trial runs on a CUDA device: sync and memory go there
        self.scaler: Any = None
        #: autocast dtype of a bf16/fp16 training trial
        self._autocast: Any = None
        #: dtype floating inputs are fed in (the inference precision)
        self._input_dtype: Any = None
        self._compiled = False
        self._mask_hook: Any = None
        #: a training replica's DistributedDataParallel wrapper (the train step runs it)
        self._ddp: Any = None
        #: (start, end) of each gradient all-reduce of the current step
        self._comm: list[tuple[float, float]] = []
        self._channels_last = False
        #: whether this replica's all-reduces are timed (gloo: yes; NCCL: no)
        self._comm_timed = False

    # -- runtime ---------------------------------------------------------------------------

    def configure(self, config: TrialConfig) -> None:
        torch = self.torch
        self.config = config
        self._select_device(config.device)
        torch.manual_seed(config.seed)
        self._autocast = (getattr(torch, _DTYPES[config.precision])
                          if config.mode == "train" and config.precision in _DTYPES else None)
        self._input_dtype = torch.float32
        self._channels_last = config.memory_format == "channels_last"
        replica = config.replica
        if replica is not None and config.mode == "train" and \
                not torch.distributed.is_initialized():
            self._join_process_group(replica)

    def _join_process_group(self, replica: Mapping[str, Any]) -> None:
        """This replica's place in the trial's process group: gloo on CPU, NCCL on CUDA
        (torch's own choices), rendezvous on the coordinator's free local port."""
        import datetime
        import time

        torch = self.torch
        if self._cuda:
            torch.cuda.set_device(self.device)
        deadline = float(replica.get("deadline") or 0) or time.perf_counter() + 60
        torch.distributed.init_process_group(
            "nccl" if self._cuda else "gloo",
            init_method=f"tcp://127.0.0.1:{replica['ports'][0]}",
            rank=int(replica["rank"]), world_size=int(replica["world"]),
            timeout=datetime.timedelta(seconds=max(5.0, deadline - time.perf_counter())))

    def _select_device(self, device: str) -> None:
        """Place the trial on ``device`` (``cpu`` or ``cuda:N``); a CUDA device's peak
        memory statistics start afresh here, so the peak read after the trial is its own."""
        from autotune.backends import unsupported_device_reason

        torch = self.torch
        kind, _, index = device.partition(":")
        if kind == "cpu":
            self.device, self._cuda = torch.device("cpu"), False
            return
        reason = unsupported_device_reason(self.name, device)
        if reason is not None:
            raise UnsupportedConfigError(f"{device}: {reason}")
        if not torch.cuda.is_available():
            raise UnsupportedConfigError(f"{device}: torch sees no CUDA device")
        n, count = int(index or 0), int(torch.cuda.device_count())
        if n >= count:
            seen = ", ".join(f"cuda:{i}" for i in range(count))
            raise UnsupportedConfigError(
                f"{device}: torch sees {count} CUDA device(s): {seen}")
        self.device, self._cuda = torch.device("cuda", n), True
        # A warm worker runs many trials: each trial's peak is its own.
        torch.cuda.reset_peak_memory_stats(self.device)

    def set_threads(self, n: int) -> int:
        self.torch.set_num_threads(n)
        return int(self.torch.get_num_threads())

    def model_type_error(self, model: Any) -> str | None:
        if isinstance(model, self.torch.nn.Module):
            return None
        return (f"returned a {type(model).__module__}.{type(model).__name__} as the model; "
                "the torch backend needs a torch.nn.Module")

    def place_model(self, model: Any) -> Any:
        model = model.to(self.device).train()
        if self._channels_last:
            convs = [m for m in model.modules() if isinstance(m, self.torch.nn.Conv2d)]
            if not convs:
                raise UnsupportedConfigError(
                    "memory_format 'channels_last': the model has no 2-D convolution, so "
                    "none of its tensors has a channels-last layout (use contiguous)")
            model = model.to(memory_format=self.torch.channels_last)
        return model

    def to_device(self, array: np.ndarray) -> Any:
        tensor = self.torch.from_numpy(array).to(self.device)
        if tensor.is_floating_point() and tensor.dtype != self._input_dtype:
            tensor = tensor.to(self._input_dtype)
        if self._channels_last and tensor.dim() == 4:
            # NHWC in memory: the layout oneDNN's and cuDNN's fastest conv kernels read
            return tensor.contiguous(memory_format=self.torch.channels_last)
        return tensor.contiguous()

    def classify_error(self, error: BaseException) -> type[TrialError] | None:
        text = str(error)
        if isinstance(error, RuntimeError) and (
                "can't allocate memory" in text or "out of memory" in text.lower()):
            return OutOfMemoryError
        if isinstance(error, (RuntimeError, NotImplementedError)) and any(
                t in text for t in _UNSUPPORTED_TEXT):
            return UnsupportedConfigError
        return None

    # -- model facts -----------------------------------------------------------------------

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def _weights(self) -> list[Any]:
        """Every parameter of 2+ dimensions (weight matrices, conv kernels, embeddings),
        each shared tensor once, in registration order."""
        return [p for p in self.model.parameters() if p.dim() >= 2]

    def weight_arrays(self) -> list[np.ndarray]:
        return [p.detach().float().cpu().numpy() for p in self._weights()]

    def count_flops(self, inputs: tuple[Any, ...], targets: Any,
                    mode: str) -> tuple[int | None, str]:
        from torch.utils.flop_counter import FlopCounterMode

        method = ("torch.utils.flop_counter.FlopCounterMode on the model "
                  f"({'forward + backward' if mode == 'train' else 'forward'}; matmul, conv "
                  "and attention FLOPs, 2 per multiply-add)")
        # a model of known code counted before (by any worker) is not counted again: the
        # first count in a process imports torch._dynamo (1.2 s)
        knobs = {} if self.config is None else {
            k: getattr(self.config, k) for k in FLOP_KNOBS}
        key = flop_key(self.model, inputs, mode, knobs)
        if key is not None and (stored := cached_count(key)) is not None:
            return stored
        counter = FlopCounterMode(display=False)
        # FlopCounterMode does not count the CPU kernel of scaled_dot_product_attention; the
        # math path does the same arithmetic, so the count is taken on it
        with self._math_attention():
            self._count(counter, inputs, targets, mode)
        flops = int(counter.get_total_flops())
        if key is not None:
            store_count(key, flops, method)
        return flops, method

    @contextlib.contextmanager
    def _math_attention(self) -> Iterator[None]:
        """The model on its math attention path for the block, restored after: autotune's
        decoding protocol (``set_attention``) or transformers' attention implementation."""
        if self._is_hf():
            current = getattr(self.model.config, "_attn_implementation", None)
            if current in (None, "eager"):
                yield
                return
            self.model.set_attn_implementation("eager")
            try:
                yield
            finally:
                self.model.set_attn_implementation(current)
            return
        set_attention = getattr(self.model, "set_attention", None)
        if set_attention is None or self.config is None or self.config.attention != "sdpa":
            yield
            return
        set_attention("math")
        try:
            yield
        finally:
            set_attention("sdpa")

    def _count(self, counter: Any, inputs: tuple[Any, ...], targets: Any, mode: str) -> None:
        torch = self.torch
        if mode == "train":
            with counter:
                loss = self._loss(self.model, inputs, targets)
                self._check_loss_is_scalar(loss)
                loss.backward()
            self.model.zero_grad(set_to_none=True)
        else:
            was_training = self.model.training
            self.model.eval()
            with counter, torch.no_grad():
                self.model(*inputs)
            self.model.train(was_training)

    def weight_bytes(self) -> int | None:
        total = 0
        for module in self.model.modules():
            packed = getattr(module, "_packed_params", None)
            if packed is not None and callable(getattr(module, "weight", None)):
                weight = module.weight()  # dynamically quantised Linear: int8 + a scale
                total += weight.numel() * weight.element_size()
                bias = module.bias()
                total += 0 if bias is None else bias.numel() * bias.element_size()
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            total += _tensor_bytes(tensor)
        return total

    def compute_dtype(self) -> str:
        assert self.config is not None
        if self.config.mode != "train" and self.config.precision == "int8":
            quantized = [m for m in self.model.modules() if "quantized" in type(m).__module__]
            return "int8" if quantized else "float32"
        if self._autocast is not None:
            return str(self._autocast).removeprefix("torch.")
        if self.config.weight_quant != "none" and self.config.mode != "train":
            # weight-only: int8/int4 weights, the matmuls in the activations' dtype
            return f"{self.config.weight_quant} weights, {self._input_dtype}".replace(
                "torch.", "")
        floating = [p for p in self.model.parameters() if p.is_floating_point()]
        return str(floating[0].dtype).removeprefix("torch.") if floating else "float32"

    # -- pruning ---------------------------------------------------------------------------

    def apply_weight_masks(self, masks: Sequence[np.ndarray], *, permanent: bool) -> None:
        torch = self.torch
        weights = self._weights()
        kept = [torch.from_numpy(m).to(self.device) for m in masks]
        with torch.no_grad():
            for w, m in zip(weights, kept, strict=True):
                w.mul_(m.to(w.dtype))
        self._masks = list(zip(weights, kept, strict=True))

    def _reapply_masks(self, *_: Any) -> None:
        """Optimizer post-step hook: pruned weights stay zero while training."""
        with self.torch.no_grad():
            for w, m in self._masks:
                w.mul_(m.to(w.dtype))

    def prune_structured_default(self, ratio: float) -> None:
        """Channel pruning with torch-pruning's dependency graph (L1 magnitude)."""
        try:
            import torch_pruning as tp
        except ImportError:
            raise UnsupportedConfigError(
                "structured pruning of a torch model needs torch-pruning: "
                "pip install 'autotune[pruning]'") from None
        output_layer = self._output_layer()
        try:
            pruner = tp.pruner.MagnitudePruner(
                self.model, self.example_inputs if len(self.example_inputs) > 1
                else self.example_inputs[0],
                importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                ignored_layers=[output_layer] if output_layer is not None else [])
            pruner.step()
        except Exception as e:  # torch-pruning could not trace or group this model
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise UnsupportedConfigError(
                f"structured pruning: torch-pruning cannot prune this model: "
                f"{type(e).__name__}: {first}") from None
        self.model = self.model.to(self.device)

    def _output_layer(self) -> Any:
        """The layer whose output is the model's output (its width is the model's
        contract, e.g. the classes, so torch-pruning must leave it alone)."""
        torch = self.torch
        produced: dict[int, Any] = {}
        hooks = [m.register_forward_hook(
            lambda mod, _in, out: produced.__setitem__(id(out), mod))
            for m in self.model.modules() if not list(m.children())]
        try:
            with torch.no_grad():
                out = self.model(*self.example_inputs)
        finally:
            for h in hooks:
                h.remove()
        out = _logits(out)
        if id(out) in produced:
            return produced[id(out)]
        leaves = [m for m in self.model.modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d))]
        return leaves[-1] if leaves else None

    # -- training --------------------------------------------------------------------------

    def make_optimizer(self, name: str, learning_rate: float) -> Any:
        optim = self.torch.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        # fused kernels exist for CPU and CUDA tensors of floating types
        if name == "sgd":
            opt = optim.SGD(params, lr=learning_rate, momentum=0.9, fused=True)
        elif name == "adam":
            opt = optim.Adam(params, lr=learning_rate, fused=True)
        elif name == "adamw":
            opt = optim.AdamW(params, lr=learning_rate, fused=True)
        else:
            raise UnsupportedConfigError(f"unknown optimizer {name!r}")
        if getattr(self, "_masks", None):
            self._mask_hook = opt.register_step_post_hook(self._reapply_masks)
        return opt

    def _loss(self, module: Any, inputs: tuple[Any, ...], targets: Any) -> Any:
        """The spec's loss of one batch (``forward`` when the model computes its own)."""
        assert self.spec is not None
        spec = self.spec
        if spec.forward is not None:
            return spec.forward(module, self.pack_inputs(inputs), targets)
        out = _logits(module(*inputs))
        functional = self.torch.nn.functional
        if callable(spec.loss):
            return spec.loss(out, targets)
        if spec.loss == "mse":
            return functional.mse_loss(out.float(), targets.to(out.device).float())
        return functional.cross_entropy(out.reshape(-1, out.shape[-1]).float(),
                                        targets.reshape(-1))

    def wrap_data_parallel(self, config: TrialConfig) -> dict[str, Any]:
        """``DistributedDataParallel`` over the process group joined in :meth:`configure`,
        with a communication hook that does what DDP's default does (average each
        gradient bucket with an all-reduce) and times it, so the share of a step spent
        with an all-reduce in flight is measured, not guessed."""
        torch = self.torch
        dist = torch.distributed
        world = dist.get_world_size()
        self._ddp = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self._cuda else None)
        info = {"replicas": world, "how": "torch.nn.parallel.DistributedDataParallel",
                "collective": dist.get_backend()}
        if self._cuda:
            # NCCL's futures complete when the all-reduce is queued on the GPU, not when
            # it has run: a host clock around them would time the queueing
            return {**info, "comm_reason": "NCCL all-reduces run asynchronously on the "
                                           "GPU; their time is not taken from the host"}
        intervals = self._comm

        # unannotated: DDP checks that an annotated ``bucket`` is dist.GradBucket itself
        def timed_allreduce(state, bucket):  # type: ignore[no-untyped-def]
            import time

            start = time.perf_counter()
            buffer = bucket.buffer().div_(world)
            future = dist.all_reduce(buffer, async_op=True).get_future()

            def done(fut: Any) -> Any:
                intervals.append((start, time.perf_counter()))
                return fut.value()[0]

            return future.then(done)

        self._ddp.register_comm_hook(None, timed_allreduce)
        self._comm_timed = True
        return {**info, "comm_hook": "timed all-reduce (mean)"}

    def last_step_comm_s(self) -> float | None:
        """The union of the last step's all-reduce intervals (buckets may overlap each
        other and the backward pass); 0 for an inference replica (no collective)."""
        if self._ddp is None:
            return super().last_step_comm_s()
        if not self._comm_timed:
            return None
        total, end = 0.0, float("-inf")
        for start, stop in sorted(self._comm):
            if stop > end:
                total += stop - max(start, end)
                end = stop
        return total

    def build_train_step(self, precision: str, execution: str) -> Callable[..., Any]:
        torch = self.torch
        module = self._ddp if self._ddp is not None else self.model
        if execution == "graph":
            module = torch.compile(module)
            self._compiled = True
        autocast = (_DTYPES.get(precision) if precision in _DTYPES else None)
        dtype = getattr(torch, autocast) if autocast else None
        self.scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        optimizer = self.optimizer
        scaler = self.scaler
        device_type = self.device.type

        comm = self._comm

        def step(inputs: tuple[Any, ...], targets: Any) -> Any:
            comm.clear()  # this step's all-reduces only
            optimizer.zero_grad(set_to_none=True)
            if dtype is not None:
                with torch.autocast(device_type, dtype=dtype):
                    loss = self._loss(module, inputs, targets)
            else:
                loss = self._loss(module, inputs, targets)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            return loss.detach()

        return step

    def to_float(self, loss: Any) -> float:
        return float(loss)  # on CPU this is not an extra sync

    # -- inference -------------------------------------------------------------------------

    def convert_for_inference(self, precision: str) -> str:
        torch = self.torch
        self.model.eval()
        if precision in _DTYPES:
            dtype = getattr(torch, _DTYPES[precision])
            self.model = self.model.to(dtype)
            self._input_dtype = dtype
        elif precision == "int8":
            if self.device.type != "cpu":
                raise UnsupportedConfigError("torch dynamic int8 quantisation runs on CPU only")
            nn = torch.nn
            linear = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            convs = [type(m).__name__ for m in self.model.modules()
                     if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
            if not linear:
                raise UnsupportedConfigError(
                    "torch int8: dynamic quantisation covers Linear layers and this model "
                    "has none")
            if convs:
                raise UnsupportedConfigError(
                    f"torch int8: dynamic quantisation covers Linear layers only; this "
                    f"model's {len(convs)} {convs[0]} layer(s) would stay fp32 (static "
                    "quantisation with calibration is not implemented)")
            if "x86" in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = "x86"
            with warnings.catch_warnings():
                # torch.ao.quantization warns that it moves to torchao; it still works and is
                # the int8 path that needs no compile step (measured: 0.57 vs 1.28 ms fp32).
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                self.model = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(self.model), {nn.Linear}, dtype=torch.qint8)
        return "torch"

    def apply_weight_quant(self, kind: str) -> None:
        """torchao weight-only quantisation of every ``nn.Linear`` (activations stay in the
        trial's float precision): int8 per channel on any device; int4 (groups of 32,
        tinygemm's packed bf16 layout) on CUDA only, as torchao 0.18 ships it."""
        try:
            from torchao.quantization import (
                Int4WeightOnlyConfig,
                Int8WeightOnlyConfig,
                quantize_,
            )
        except ImportError:
            raise UnsupportedConfigError(f"weight_quant {kind!r} on torch needs torchao: "
                                         "pip install 'autotune[llm]'") from None
        nn = self.torch.nn
        # a head tied to the token embedding stays float: quantising it would untie it
        tied = {id(m.weight) for m in self.model.modules() if isinstance(m, nn.Embedding)}

        def quantisable(module: Any, _name: str = "") -> bool:
            return isinstance(module, nn.Linear) and id(module.weight) not in tied

        if not any(quantisable(m) for m in self.model.modules()):
            raise UnsupportedConfigError(
                f"weight_quant {kind!r}: the model has no nn.Linear layers to quantise besides "
                "a head tied to its embedding (transformers' GPT-2 uses Conv1D layers)")
        if kind == "int8":
            config: Any = Int8WeightOnlyConfig()
        else:
            if self.device.type != "cuda":
                raise UnsupportedConfigError(_spec_torch.INT4_CPU_REASON)
            if self.config is not None and self.config.precision != "bf16":
                raise UnsupportedConfigError(
                    "weight_quant 'int4': torchao's tinygemm int4 layout needs bf16 "
                    "activations (precision: bf16)")
            config = Int4WeightOnlyConfig(group_size=32,
                                          int4_packing_format="tile_packed_to_4d")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_(self.model, config, filter_fn=quantisable)

    def build_infer_step(self, execution: str) -> Callable[..., Any]:
        torch = self.torch
        if execution == "graph":
            # freezing folds weights into the graph: 1.14 vs 1.39 ms for MLP inference
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
            compiled = torch.compile(self.model)
            self._compiled = True

            def graph_step(inputs: tuple[Any, ...]) -> Any:
                with torch.no_grad():  # inductor's freezing needs no_grad, not inference_mode
                    return compiled(*inputs)

            return graph_step
        model = self.model

        def eager_step(inputs: tuple[Any, ...]) -> Any:
            with torch.inference_mode():
                return model(*inputs)

        return eager_step

    # -- generate mode ---------------------------------------------------------------------

    def sdpa_unsupported_reason(self) -> str | None:
        return None  # torch.nn.functional.scaled_dot_product_attention, CPU and CUDA

    def _compile_generation(self, fn: Callable[..., Any], execution: str) -> Callable[..., Any]:
        if execution != "graph":
            return fn
        self._compiled = True
        # a growing cache or sequence changes shapes every token: compiled with dynamic
        # shapes (a static cache keeps them fixed, so one graph serves every token)
        dynamic = None if self.config is not None and self.config.kv_cache == "static" \
            else True
        return self.torch.compile(fn, dynamic=dynamic)  # type: ignore[no-any-return]

    # A Hugging Face causal LM generates through its own cache (``cache=``, transformers'
    # DynamicCache / StaticCache); any other model through autotune's decoding protocol.

    def _is_hf(self) -> bool:
        return _is_hugging_face(self.model)

    def apply_llm_knobs(self, config: TrialConfig) -> None:
        if not self._is_hf():
            super().apply_llm_knobs(config)
            return
        if config.attention != "auto":
            # transformers' names: "eager" is the math path, "sdpa" torch's fused kernel
            self.model.set_attn_implementation(
                "eager" if config.attention == "math" else "sdpa")
        if config.mode == "train" and config.checkpointing == "blocks":
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})

    def model_context(self) -> int | None:
        if self._is_hf():
            value = getattr(self.model.config, "max_position_embeddings", None)
            return int(value) if isinstance(value, int) else None
        return super().model_context()

    def lm_new_cache(self, batch_size: int, max_len: int, kind: str) -> Any:
        if not self._is_hf():
            return super().lm_new_cache(batch_size, max_len, kind)
        import transformers

        if kind == "static":
            return transformers.StaticCache(config=self.model.config, max_cache_len=max_len)
        return transformers.DynamicCache(config=self.model.config)

    def lm_reset_cache(self, cache: Any) -> None:
        if self._is_hf():
            with self.torch.inference_mode():  # its buffers were made in inference mode
                cache.reset()  # transformers' StaticCache counts the positions it wrote

    def build_lm_step(self, execution: str, kv_cache: str) -> Callable[..., Any]:
        torch = self.torch
        model = self.model
        device = self.device

        if self._is_hf():
            def step(idx: Any, cache: Any, pos: int) -> tuple[Any, Any]:
                positions = torch.arange(pos, pos + idx.shape[1], device=device)
                out = model(input_ids=idx, cache=cache, use_cache=True,
                            cache_position=positions)
                return out.logits[:, -1].argmax(dim=-1), out.cache
        else:
            def step(idx: Any, cache: Any, pos: int) -> tuple[Any, Any]:
                logits, cache = model.forward_cached(idx, cache, pos)
                return _logits(logits)[:, -1].argmax(dim=-1), cache

        compiled = self._compile_generation(step, execution)

        def run(idx: Any, cache: Any, pos: int) -> tuple[Any, Any]:
            with torch.inference_mode():
                return compiled(idx, cache, pos)  # type: ignore[no-any-return]

        return run

    def build_lm_full(self, execution: str) -> Callable[..., Any]:
        torch = self.torch
        model = self.model

        def full(idx: Any) -> Any:
            return _logits(model(idx))[:, -1].argmax(dim=-1)

        compiled = self._compile_generation(full, execution)

        def run(idx: Any) -> Any:
            with torch.inference_mode():
                return compiled(idx)

        return run

    def lm_host(self, ids: Any) -> np.ndarray:
        return np.asarray(ids.cpu().numpy())

    def lm_concat(self, seq: Any, ids: Any) -> Any:
        return self.torch.cat([seq, ids.reshape(-1, 1).to(seq.dtype)], dim=1)

    @contextlib.contextmanager
    def _quality(self) -> Iterator[None]:
        torch = self.torch
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                if self._autocast is not None:
                    with torch.autocast(self.device.type, dtype=self._autocast):
                        yield
                else:
                    yield
        finally:
            self.model.train(was_training)

    def quality_context(self) -> contextlib.AbstractContextManager[Any]:
        return self._quality()

    # -- the base-model cache --------------------------------------------------------------

    def save_weights(self, path: Path) -> None:
        self.torch.save(self.model.state_dict(), path)

    def load_weights(self, path: Path) -> None:
        state = self.torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state)

    # -- device ----------------------------------------------------------------------------

    def synchronize(self) -> None:
        """CUDA kernels run asynchronously: wait for the trial's device. CPU ops have
        finished when they return."""
        if self._cuda:
            self.torch.cuda.synchronize(self.device)

    def peak_memory_bytes(self) -> int | None:
        if self._cuda:
            return int(self.torch.cuda.max_memory_allocated(self.device))
        return None

    def versions(self) -> dict[str, str]:
        torch = self.torch
        out = {"torch": torch.__version__,
               "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
               "mkldnn": str(torch.backends.mkldnn.is_available())}
        if self.config is not None and self.config.precision == "int8":
            out["quantized_engine"] = str(torch.backends.quantized.engine)
        try:
            import torch_pruning

            out["torch_pruning"] = str(torch_pruning.__version__)
        except ImportError:
            pass
        return out

    def teardown(self) -> None:
        if self._compiled:
            # A warm worker compiles a new model every graph trial; dynamo's recompile
            # limit (8) would silently fall back to eager after that, so its caches go
            # with the trial, and so does the process-wide freezing switch.
            import torch._inductor.config as inductor_config

            self.torch._dynamo.reset()
            inductor_config.freezing = False
            self._compiled = False
        if self._mask_hook is not None:
            self._mask_hook.remove()
            self._mask_hook = None
        self._masks = []
        self.scaler = self._autocast = None
        self._ddp = None
        self._comm_timed = False
        self._comm.clear()
        if self.config is not None and self.config.replica is not None and \
                self.torch.distributed.is_initialized():
            self.torch.distributed.destroy_process_group()
        super().teardown()
        if self._cuda:
            # empty_cache acts on the current device, which is cuda:0 unless set
            with self.torch.cuda.device(self.device):
                self.torch.cuda.empty_cache()


def _is_hugging_face(model: Any) -> bool:
    """Whether ``model`` is a transformers model (checked without importing transformers
    unless the model's class comes from it)."""
    return any(c.__module__.startswith("transformers.") for c in type(model).__mro__)


def _tensor_bytes(tensor: Any) -> int:
    """Bytes a tensor stores: a torchao quantised tensor (a tensor subclass) is the sum of
    its inner tensors (int8/int4 data and scales), not its logical float shape."""
    data = getattr(tensor, "data", tensor)
    flatten = getattr(data, "__tensor_flatten__", None)
    if flatten is not None:
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(data, name)) for name in names)
    return int(tensor.numel() * tensor.element_size())


def _logits(out: Any) -> Any:
    """The tensor a model's output holds its predictions in (``.logits`` of a Hugging Face
    output, the first element of a tuple)."""
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out
