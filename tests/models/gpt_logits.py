"""Run in a process of its own per framework: the built-in gpt with given numpy weights.

``python tests/models/gpt_logits.py FRAMEWORK OUT.npz`` writes the full-sequence logits of
fixed tokens, the same logits produced incrementally through the dynamic and the static KV
cache, and the framework's own parameter count.
"""

from __future__ import annotations

import sys

import numpy as np

from autotune.workloads._gpt import GPTConfig, init_weights

CONFIG = GPTConfig(layers=2, d_model=32, heads=4, context=64)
TOKENS = np.random.default_rng(7).integers(0, 256, size=(2, 24))
PROMPT = 10


def main(framework: str, out: str) -> None:
    weights = init_weights(CONFIG, seed=3)
    if framework == "torch":
        import torch

        from autotune.workloads import _gpt_torch as m

        model = m.build_gpt(CONFIG, weights).eval()
        params = sum(p.numel() for p in model.parameters())

        def tensor(x: np.ndarray) -> object:
            return torch.from_numpy(x.astype(np.int64))

        def numpy(t: object) -> np.ndarray:
            return t.detach().numpy()  # type: ignore[attr-defined,no-any-return]

        grad = torch.no_grad()
    elif framework == "tensorflow":
        import contextlib

        import tensorflow as tf

        from autotune.workloads import _gpt_tensorflow as m

        model = m.build_gpt(CONFIG, weights)
        params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)

        def tensor(x: np.ndarray) -> object:
            return tf.constant(x.astype(np.int32))

        def numpy(t: object) -> np.ndarray:
            return np.asarray(t)

        grad = contextlib.nullcontext()
    else:
        import contextlib

        import mindspore as ms

        ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")
        one = ms.Tensor(np.ones(1, np.float32))
        # MindSpore's one-time NumPy C-API init fails once on NumPy 2 (see the backend)
        with contextlib.suppress(SystemError):
            (one * one).asnumpy()
        from autotune.workloads import _gpt_mindspore as m

        model = m.build_gpt(CONFIG, weights)
        model.set_train(False)
        params = sum(int(np.prod(p.shape)) for p in model.trainable_params())

        def tensor(x: np.ndarray) -> object:
            return ms.Tensor(x.astype(np.int32))

        def numpy(t: object) -> np.ndarray:
            return t.asnumpy()  # type: ignore[attr-defined,no-any-return]

        grad = contextlib.nullcontext()
    with grad:
        full = numpy(model(tensor(TOKENS)))
        incremental = {}
        for kind in ("dynamic", "static"):
            cache = model.new_cache(len(TOKENS), TOKENS.shape[1], kind)
            logits, cache = model.forward_cached(tensor(TOKENS[:, :PROMPT]), cache, 0)
            parts = [numpy(logits)]
            for t in range(PROMPT, TOKENS.shape[1]):
                logits, cache = model.forward_cached(tensor(TOKENS[:, t:t + 1]), cache, t)
                parts.append(numpy(logits))
            incremental[kind] = np.concatenate(parts, axis=1)
    np.savez(out, full=full, dynamic=incremental["dynamic"], static=incremental["static"],
             params=np.array(params))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
