"""PyTorch backend, used the way an expert would on each device.

* training: fused optimizer kernels (``fused=True``: 0.8 ms against 9.2 ms per Adam step
  for the default foreach path, research/frameworks_on_cpu.md), ``zero_grad(set_to_none)``,
  autocast for bf16/fp16 (with a gradient scaler for fp16);
* inference: ``torch.inference_mode``, weights converted to the trial's dtype (faster than
  autocast: 0.60 against 0.91 ms on AMX), int8 through dynamic quantisation of Linear layers;
* pruning: global magnitude (L1) pruning of the Linear weights. In inference the masks are
  made permanent, because mask hooks make inference slower (2.08 against 1.35 ms); in training
  the masks stay so that pruned weights remain zero.
"""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from typing import TYPE_CHECKING, Any

from autotune.backends._base import EVAL_CHUNK as _EVAL_CHUNK
from autotune.backends._base import RECIPE_BATCH as _RECIPE_BATCH
from autotune.backends._base import RECIPE_LR as _RECIPE_LR
from autotune.backends._base import RECIPE_OPTIMIZER as _RECIPE_OPTIMIZER
from autotune.backends._base import Backend, epoch_steps
from autotune.backends._pruning import apply_structured, dense_flops
from autotune.exceptions import (
    NonFiniteLossError,
    OutOfMemoryError,
    UnsupportedConfigError,
)

if TYPE_CHECKING:
    from autotune.config import TrialConfig
    from autotune.workloads import Dataset, Workload



def _is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower()


class TorchBackend(Backend):
    """PyTorch on CPU (and CUDA where present: same code, device-side sync and memory)."""

    name = "torch"

    def __init__(self, torch: Any = None) -> None:
        """``torch`` is the framework module; tests hand in a fake one (the vendor
        boundary: ``torch.cuda``, ``torch.device``) to drive the device paths of hardware
        this machine lacks."""
        if torch is None:
            import os

            from autotune._cache import cache_dir

            # torch.compile's kernels are cached across trials (cold compile of the MLP
            # train step: ~12 s; warm: 0.2-2 s, research/frameworks_on_cpu.md).
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
            import torch

            # Building the first optimizer imports torch._dynamo (about 2 s here). It is a
            # one-time framework cost, so it is paid here and recorded as import time, not
            # charged to the model build.
            import torch._dynamo

        self.torch = torch
        self.model: Any = None
        self.optimizer: Any = None
        self.scaler: Any = None
        self.device: Any = None
        self._cuda = False  # the trial runs on a CUDA device: sync and memory go there
        self.config: TrialConfig | None = None
        self._cursor = 0
        self._epoch = 0
        self._x_train: Any = None
        self._y_train: Any = None
        self._order_x: Any = None
        self._order_y: Any = None
        self._x_test: Any = None
        self._y_test: Any = None
        self._infer_batches: list[Any] = []
        self._compute_dtype: Any = None
        self.last_loss = math.nan
        self._forward: Any = None  # torch.compile'd model in graph mode

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self, config: TrialConfig, workload: Workload, data: Dataset) -> dict[str, Any]:
        torch = self.torch
        self.config = config
        self._select_device(config.device)
        torch.manual_seed(config.seed)
        try:
            return self._build(config, workload, data)
        except RuntimeError as e:
            if _is_oom(e):
                raise OutOfMemoryError(f"out of memory while building the model: {e}") from e
            raise

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

    def _build(self, config: TrialConfig, workload: Workload, data: Dataset) -> dict[str, Any]:
        torch = self.torch
        self._x_train = torch.from_numpy(data.x_train).to(self.device)
        self._y_train = torch.from_numpy(data.y_train).to(self.device)
        self._x_test = torch.from_numpy(data.x_test).to(self.device)
        self._y_test = torch.from_numpy(data.y_test).to(self.device)
        self.model = self._make_model(workload.layer_widths).to(self.device)
        info: dict[str, Any] = {}
        if config.mode == "train":
            self._compute_dtype = {"fp32": None, "bf16": torch.bfloat16,
                                   "fp16": torch.float16}.get(config.precision)
            if config.precision == "int8":
                raise UnsupportedConfigError("int8 training is not supported by torch")
            self._prune(config.pruning_ratio, config.pruning_structure, permanent=False)
            self.optimizer = self._make_optimizer(config.optimizer, config.learning_rate)
            if config.precision == "fp16":
                self.scaler = torch.amp.GradScaler(self.device.type)
            self._new_epoch()
        else:
            info["base_model"] = self._train_base_model(config, workload)
            self._prune(config.pruning_ratio, config.pruning_structure, permanent=True)
        # Measured on the fp32 layers, before int8 conversion replaces them.
        widths = self._widths()
        info.update(param_count=sum(p.numel() for p in self.model.parameters()),
                    flops_per_sample=dense_flops(widths, config.mode), widths=list(widths),
                    sparsity=self._sparsity(), execution=config.execution, runtime="torch")
        if config.mode == "infer":
            self._convert_for_inference(config.precision)
            self._make_infer_batches(config.batch_size)
        if config.execution == "graph":
            self._compile()
        return info

    def _widths(self) -> tuple[int, ...]:
        layers = self._linear_layers()
        return (layers[0].in_features, *(m.out_features for m in layers))

    def _compile(self) -> None:
        """torch.compile (inductor). Compilation happens on the first call, which the
        profiler times apart as the first step, outside warm-up and the window."""
        assert self.config is not None
        if self.config.mode == "infer":
            # freezing folds weights into the graph: 1.14 vs 1.39 ms for MLP inference
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True
        self._forward = self.torch.compile(self.model)

    def _make_model(self, widths: tuple[int, ...]) -> Any:
        nn = self.torch.nn
        layers: list[Any] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def _make_optimizer(self, name: str, lr: float) -> Any:
        optim = self.torch.optim
        params = self.model.parameters()
        if name == "sgd":
            return optim.SGD(params, lr=lr, momentum=0.9, fused=True)
        if name == "adam":
            return optim.Adam(params, lr=lr, fused=True)
        if name == "adamw":
            return optim.AdamW(params, lr=lr, fused=True)
        raise UnsupportedConfigError(f"unknown optimizer {name!r}")

    def _linear_layers(self) -> list[Any]:
        return [m for m in self.model.modules() if isinstance(m, self.torch.nn.Linear)]

    def _prune(self, ratio: float, structure: str, *, permanent: bool) -> None:
        if ratio <= 0:
            return
        if structure == "structured":
            self._prune_structured(ratio)
            return
        from torch.nn.utils import prune

        targets = [(m, "weight") for m in self._linear_layers()]
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=ratio)
        if permanent:
            for module, name in targets:
                prune.remove(module, name)  # type: ignore[no-untyped-call]

    def _prune_structured(self, ratio: float) -> None:
        """Rebuild the model with the neurons _pruning.structured_keep selects."""
        torch = self.torch
        layers = self._linear_layers()
        with torch.no_grad():
            weights = [m.weight.detach().cpu().numpy() for m in layers]
            biases = [m.bias.detach().cpu().numpy() for m in layers]
            new_w, new_b = apply_structured(weights, biases, ratio)
            widths = (new_w[0].shape[1], *(w.shape[0] for w in new_w))
            self.model = self._make_model(widths).to(self.device)
            for m, w, b in zip(self._linear_layers(), new_w, new_b, strict=True):
                m.weight.copy_(torch.from_numpy(w))
                m.bias.copy_(torch.from_numpy(b))
        if self.config is not None and self.config.mode == "infer":
            self.model.eval()

    def _sparsity(self) -> float:
        weights = [m.weight for m in self._linear_layers()]
        zeros = sum(int((w == 0).sum()) for w in weights)
        return float(zeros / sum(w.numel() for w in weights))

    def _train_base_model(self, config: TrialConfig, workload: Workload) -> str:
        """Train fp32 with a fixed recipe, so every inference trial measures the same model.

        The trained weights are cached per (workload, epochs, seed, torch version): they are
        the same for every trial of a study, and training them costs seconds. Returns
        ``"cached"`` or ``"trained"``.
        """
        from autotune._cache import cache_dir, write_atomically

        torch = self.torch
        key = (f"torch-{workload.name}-{'x'.join(map(str, workload.layer_widths))}"
               f"-e{config.budget.train_epochs}-s{config.seed}-{torch.__version__}")
        path = cache_dir() / f"{key}.pt"
        if path.exists():
            state = torch.load(path, map_location=self.device, weights_only=True)
            self.model.load_state_dict(state)
            self.model.eval()
            return "cached"
        self.optimizer = self._make_optimizer(_RECIPE_OPTIMIZER, _RECIPE_LR)
        generator = torch.Generator().manual_seed(config.seed)
        n = len(self._x_train)
        bs = _RECIPE_BATCH
        loss_fn = torch.nn.functional.cross_entropy
        for _ in range(config.budget.train_epochs):
            order = torch.randperm(n, generator=generator).to(self.device)
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                self.optimizer.zero_grad(set_to_none=True)
                loss_fn(self.model(self._x_train[idx]), self._y_train[idx]).backward()
                self.optimizer.step()
        self.optimizer = None
        self.model.eval()
        state = self.model.state_dict()
        write_atomically(path, lambda tmp: torch.save(state, tmp))
        return "trained"

    def _convert_for_inference(self, precision: str) -> None:
        torch = self.torch
        if precision == "bf16":
            self.model = self.model.to(torch.bfloat16)
            self._compute_dtype = torch.bfloat16
        elif precision == "fp16":
            self.model = self.model.to(torch.float16)
            self._compute_dtype = torch.float16
        elif precision == "int8":
            if self.device.type != "cpu":
                raise UnsupportedConfigError("torch dynamic int8 quantisation runs on CPU only")
            if "x86" in torch.backends.quantized.supported_engines:
                torch.backends.quantized.engine = "x86"
            with warnings.catch_warnings():
                # torch.ao.quantization warns that it moves to torchao; it still works and is
                # the int8 path that needs no compile step (measured: 0.57 vs 1.28 ms fp32).
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", UserWarning)
                self.model = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(self.model), {torch.nn.Linear}, dtype=torch.qint8)

    def _make_infer_batches(self, batch_size: int) -> None:
        """A few distinct input batches drawn from the held-out split (tiled if too small)."""
        x = self._x_test
        reps = math.ceil(batch_size * 4 / len(x))
        pool = x.repeat(reps, 1) if reps > 1 else x
        self._infer_batches = [
            self._as_compute(pool[i * batch_size:(i + 1) * batch_size].contiguous())
            for i in range(4)
        ]

    def _as_compute(self, x: Any) -> Any:
        if self.config is not None and self.config.mode == "infer" and self._compute_dtype:
            return x.to(self._compute_dtype)
        return x

    # -- stepping --------------------------------------------------------------------------

    def _new_epoch(self) -> None:
        """Shuffle once per epoch, called from between_steps (untimed), so a step only
        slices a contiguous view."""
        torch = self.torch
        assert self.config is not None
        generator = torch.Generator().manual_seed(self.config.seed + self._epoch)
        order = torch.randperm(len(self._x_train), generator=generator).to(self.device)
        bs = self.config.batch_size
        # Pad by wrapping around so every step slices a full batch: no copy inside a step.
        needed = self.steps_per_epoch * bs
        order = order.repeat(math.ceil(needed / len(order)))[:needed]
        self._order_x = self._x_train[order].contiguous()
        self._order_y = self._y_train[order].contiguous()
        self._cursor = 0
        self._epoch += 1

    def between_steps(self) -> None:
        assert self.config is not None
        if self.config.mode == "train" and self._cursor >= self.steps_per_epoch:
            self._new_epoch()

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the training split (last batch may wrap)."""
        assert self.config is not None
        return epoch_steps(len(self._x_train), self.config.batch_size)

    def step(self) -> int:
        assert self.config is not None
        try:
            if self.config.mode == "train":
                return self._train_step()
            return self._infer_step()
        except RuntimeError as e:
            if _is_oom(e):
                raise OutOfMemoryError(f"out of memory in a step: {e}") from e
            raise

    def _train_step(self) -> int:
        torch = self.torch
        assert self.config is not None
        bs = self.config.batch_size
        if self._cursor >= self.steps_per_epoch:  # only if between_steps was not called
            self._new_epoch()
        start = self._cursor * bs
        x = self._order_x[start:start + bs]
        y = self._order_y[start:start + bs]
        self._cursor += 1
        self.optimizer.zero_grad(set_to_none=True)
        forward = self._forward or self.model
        if self._compute_dtype is not None:
            with torch.autocast(self.device.type, dtype=self._compute_dtype):
                loss = torch.nn.functional.cross_entropy(forward(x), y)
        else:
            loss = torch.nn.functional.cross_entropy(forward(x), y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.last_loss = float(loss.detach())  # on CPU this is not an extra sync
        if not math.isfinite(self.last_loss):
            raise NonFiniteLossError(
                f"loss became {self.last_loss} at epoch {self._epoch} "
                f"(learning_rate={self.config.learning_rate}, optimizer={self.config.optimizer})"
            )
        return bs

    def _infer_step(self) -> int:
        torch = self.torch
        assert self.config is not None
        batch = self._infer_batches[self._cursor % len(self._infer_batches)]
        self._cursor += 1
        if self._forward is not None:
            with torch.no_grad():  # inductor's freezing needs no_grad, not inference_mode
                self._forward(batch)
        else:
            with torch.inference_mode():
                self.model(batch)
        return self.config.batch_size

    def compute_dtype(self) -> str:
        assert self.config is not None
        if self.config.mode == "infer" and self.config.precision == "int8":
            linear = [m for m in self.model.modules() if "quantized" in type(m).__module__]
            return "int8" if linear else "float32"
        if self._compute_dtype is not None:
            return str(self._compute_dtype).removeprefix("torch.")
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def dense_weights(self) -> list[Any]:
        layers = self._linear_layers()
        if layers:
            return [m.weight.detach().float().cpu().numpy() for m in layers]
        # int8: dynamically quantised layers keep an int8 weight with a scale
        return [m.weight().dequantize().numpy() for m in self.model.modules()
                if type(m).__name__ == "Linear" and callable(getattr(m, "weight", None))]

    def set_threads(self, n: int) -> int:
        self.torch.set_num_threads(n)
        return int(self.torch.get_num_threads())

    def synchronize(self) -> None:
        """CUDA kernels run asynchronously: wait for the trial's device. CPU ops have
        finished when they return."""
        if self._cuda:
            self.torch.cuda.synchronize(self.device)

    def evaluate(self) -> float:
        torch = self.torch
        was_training = self.model.training
        self.model.eval()
        correct = 0
        with torch.inference_mode():
            for start in range(0, len(self._x_test), _EVAL_CHUNK):
                x = self._x_test[start:start + _EVAL_CHUNK]
                if self.config is not None and self.config.mode == "train" and \
                        self._compute_dtype is not None:
                    with torch.autocast(self.device.type, dtype=self._compute_dtype):
                        logits = self.model(x)
                else:
                    logits = self.model(self._as_compute(x))
                correct += int((logits.argmax(dim=1) == self._y_test[start:start + _EVAL_CHUNK])
                               .sum())
        if was_training:
            self.model.train()
        return correct / len(self._x_test)

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
        return out

    def teardown(self) -> None:
        if getattr(self, "_forward", None) is not None:
            # A warm worker compiles a new model every graph trial; dynamo's recompile
            # limit (8) would silently fall back to eager after that, so its caches go
            # with the trial, and so does the process-wide freezing switch.
            import torch._inductor.config as inductor_config

            self.torch._dynamo.reset()
            inductor_config.freezing = False
        self.model = self.optimizer = self.scaler = self._forward = None
        self._compute_dtype = None
        self._epoch = self._cursor = 0
        self._infer_batches = []
        if self._cuda:
            # empty_cache acts on the current device, which is cuda:0 unless set
            with self.torch.cuda.device(self.device):
                self.torch.cuda.empty_cache()
