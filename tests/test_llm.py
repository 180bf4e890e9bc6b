"""Large language models: the built-in gpt on three frameworks, generate mode and its
metrics, the LLM knobs, the memory model and latency SLOs."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

import autotune
from autotune._gate import gate
from autotune._recommend import SLO_PRESETS, recommend
from autotune._run import run_config, trial_config
from autotune.cli import main
from autotune.exceptions import RecommendError, SpaceError
from autotune.profiling.measurement import GENERATION_METRICS, Measurement
from autotune.space import parse_space, parse_space_text
from autotune.testing import FakeLauncher
from autotune.workloads._gpt import GPTConfig
from autotune.workloads._memory import predict_memory

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ("torch", "tensorflow", "mindspore")
#: fp32 logits of the same weights on two frameworks (different kernels, summation orders)
LOGIT_TOLERANCE = 1e-4
SHORT = {"trial_seconds": 120, "warmup_max_s": 1, "window_min_s": 0.5, "window_max_s": 1,
         "window_min_steps": 3}


# -- the model: equal on every framework, proven ----------------------------------------------


@pytest.fixture(scope="module")
def logits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    folder = tmp_path_factory.mktemp("gpt-logits")
    for framework in FRAMEWORKS:  # a process each: one framework per process, as workers
        path = folder / f"{framework}.npz"
        done = subprocess.run([sys.executable, str(ROOT / "tests/models/gpt_logits.py"),
                               framework, str(path)], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        with np.load(path) as f:
            out[framework] = {k: f[k] for k in f.files}
    return out


@pytest.mark.slow
def test_same_weights_give_the_same_logits_on_every_framework(
        logits: dict[str, dict[str, np.ndarray]]) -> None:
    from tests.models.gpt_logits import CONFIG

    reference = logits["torch"]["full"]
    assert reference.shape == (2, 24, 256)
    for framework, got in logits.items():
        assert int(got["params"]) == CONFIG.param_count(), framework
        np.testing.assert_allclose(got["full"], reference, atol=LOGIT_TOLERANCE, rtol=0)
        for kind in ("dynamic", "static"):  # the KV cache computes the same thing
            np.testing.assert_allclose(got[kind], got["full"], atol=LOGIT_TOLERANCE, rtol=0)


def test_parameter_count_and_flops_formula() -> None:
    config = GPTConfig()  # 2 layers, d 64, 4 heads, context 128, vocab 256
    d = 64
    assert config.param_count() == 256 * d + 128 * d + 2 * (12 * d * d + 13 * d) + 2 * d
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from autotune.workloads import _gpt_torch
    from autotune.workloads._gpt import init_weights

    model = _gpt_torch.build_gpt(config, init_weights(config, 0)).eval()
    assert sum(p.numel() for p in model.parameters()) == config.param_count()  # tied once
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros((2, 64), dtype=torch.int64))
    assert counter.get_total_flops() == 2 * 64 * config.flops_per_token(64)


#: TensorFlow's graph profiler also counts element-wise ops (softmax, layer norms, GELU,
#: the mask): 4.2 % above the matmul count of torch and MindSpore for the default gpt's
#: forward pass, measured
TF_FORWARD_FLOPS_TOLERANCE = 0.06


@pytest.mark.slow
def test_flops_per_token_agree_on_every_framework(framework_workers: Any) -> None:
    """Each framework's own counter on its own built gpt, in a worker of its own: torch's
    FlopCounterMode, MindSpore's flops_collection and TensorFlow's graph profiler."""
    from dataclasses import replace

    from autotune.backends import resolve_execution

    untrained = {"factory": f"{ROOT / 'tests/models/untrained.py'}:build",
                 "kwargs": {"name": "gpt"}}  # FLOPs do not depend on the weights
    space = parse_space({"workload": untrained, "mode": "infer",
                         "objectives": {"tokens_per_s": "maximize"},
                         "params": {"batch_size": 8, "threads": 1},
                         "budget": {**SHORT, "trial_seconds": 120}})
    per_token = {}
    for framework in FRAMEWORKS:
        config = trial_config(space, {"backend": framework}, seed=0)
        config = replace(config, execution=resolve_execution(framework, config.execution))
        outcome = framework_workers.run(config)
        assert outcome.status == "ok", (framework, outcome.reason)
        model = outcome.result["model"]
        assert model["param_count"] == GPTConfig().param_count(), framework
        per_token[framework] = model["flops_per_sample"] / 64  # 64-token sequences
    assert per_token["torch"] == per_token["mindspore"] == GPTConfig().flops_per_token(64)
    assert per_token["tensorflow"] == pytest.approx(per_token["torch"],
                                                    rel=TF_FORWARD_FLOPS_TOLERANCE)
    assert per_token["tensorflow"] >= per_token["torch"]  # it counts more ops, never fewer


def test_structured_pruning_keeps_the_same_heads_everywhere() -> None:
    from autotune.workloads._gpt import init_weights, prune_weights

    config = GPTConfig(layers=1, d_model=32, heads=4)
    pruned, weights = prune_weights(config, init_weights(config, 1), 0.5)
    assert pruned.n_heads == 2 and pruned.inner == 64
    assert weights["h0.qkv_w"].shape == (32, 3 * 2 * 8)
    assert weights["h0.proj_w"].shape == (16, 32)
    assert pruned.param_count() < config.param_count()


def test_corpus_is_held_out_by_file() -> None:
    from autotune.workloads import stdlib_corpus

    corpus = stdlib_corpus()
    assert corpus.files_held_out >= 5 and corpus.files_train > 5 * corpus.files_held_out
    window = corpus.windows("held_out", 4, 65)
    assert window.shape == (4, 65) and window.dtype == np.uint8
    # the held-out text is not a substring of the training text (different files)
    assert bytes(window[1]) not in bytes(corpus.train)


# -- generate mode's metrics, from known timestamps --------------------------------------------


def _measurement(generations: list[list[float]], batch: int) -> Measurement:
    space = parse_space({"workload": "gpt", "mode": "generate",
                         "objectives": {"decode_tokens_per_s": "maximize"},
                         "params": {"batch_size": batch, "new_tokens": len(generations[0]),
                                    "prompt_len": 16}})
    config = trial_config(space, {}, seed=0)
    raw = FakeLauncher().raw_result(config)
    raw["generations"] = generations
    raw["model"].update(prompt_len=16, new_tokens=len(generations[0]))
    return Measurement.from_worker(raw, samples_per_step=batch, mode="generate")


def test_generation_metrics_follow_their_definitions() -> None:
    # 4 tokens per request: TTFT 0.1 s, then 0.02 s per token
    gens = [[0.1, 0.12, 0.14, 0.16]] * 40
    m = _measurement(gens, batch=8).metrics()
    assert m["ttft_p50_ms"] == pytest.approx(100.0)
    assert m["tpot_p50_ms"] == pytest.approx(20.0)  # (e2e - ttft) / (new_tokens - 1)
    assert m["itl_p50_ms"] == pytest.approx(20.0)
    assert m["e2e_p50_ms"] == pytest.approx(160.0)
    assert m["prefill_tokens_per_s"] == pytest.approx(8 * 16 / 0.1)
    # batch_size / tpot: 8 sequences each producing a token every 20 ms
    assert m["decode_tokens_per_s"] == pytest.approx(8 / 0.020)
    assert m["tokens_per_s"] is None  # train and infer only
    assert _measurement(gens, batch=8).decode_tokens_ci == pytest.approx((400.0, 400.0))
    # 40 batches x 8 requests = 320 requests: p95 is gated by requests, p99 of ITL by gaps
    assert m["ttft_p95_ms"] == pytest.approx(100.0)
    assert m["itl_p99_ms"] == pytest.approx(20.0)


def test_percentiles_are_gated_by_the_requests_measured() -> None:
    m = _measurement([[0.1, 0.2, 0.3]] * 5, batch=2)  # 10 requests
    metrics, missing = m.metrics(), m.missing_reasons()
    assert metrics["ttft_p95_ms"] is None and metrics["tpot_p95_ms"] is None
    assert "10 requests measured; p95 needs 132" in missing["ttft_p95_ms"]
    assert metrics["ttft_p50_ms"] == pytest.approx(100.0)


def test_train_and_infer_report_no_generation_metrics() -> None:
    space = parse_space({"workload": "gpt", "mode": "infer",
                         "objectives": {"tokens_per_s": "maximize"}})
    config = trial_config(space, {}, seed=0)
    raw = FakeLauncher().raw_result(config)
    raw["model"]["tokens_per_sample"] = 64
    m = Measurement.from_worker(raw, samples_per_step=config.batch_size, mode="infer")
    assert m.metrics()["tokens_per_s"] == pytest.approx(64 * m.throughput_sps)
    assert all(m.metrics()[k] is None for k in GENERATION_METRICS)
    assert "generate mode only" in m.missing_reasons()["ttft_p50_ms"]


# -- the space: LLM knobs and their bad inputs -------------------------------------------------

_GEN = """
workload: {factory: gpt, kwargs: {context: 128}}
mode: generate
objectives: {decode_tokens_per_s: maximize}
"""


def test_yaml_off_means_off() -> None:
    space = parse_space_text(_GEN + "params: {kv_cache: [dynamic, off], new_tokens: 8}\n")
    assert space.param("kv_cache").choices == ("dynamic", "off")  # type: ignore[union-attr]
    train = parse_space_text("workload: gpt\nmode: train\nobjectives: {tokens_per_s: "
                             "maximize}\nparams: {checkpointing: off}\n")
    assert train.fixed_params()["checkpointing"] == "off"


@pytest.mark.parametrize(("text", "key", "words"), [
    (_GEN + "params: {new_tokens: 1}\n", "params.new_tokens", "an integer >= 2"),
    (_GEN + "params: {prompt_len: 100, new_tokens: [8, 64]}\n", "params.new_tokens",
     "100 + 64 = 164, beyond the model's context of 128"),
    (_GEN + "params: {kv_cache: [dynamic, paged]}\n", "params.kv_cache",
     "one of dynamic, static, off"),
    (_GEN + "params: {checkpointing: blocks}\n", "params.checkpointing", "training knob"),
    (_GEN + "constraints: {tokens_per_s: '>= 5'}\n", "constraints.tokens_per_s",
     "not produced in generate mode"),
    ("workload: gpt\nmode: train\nobjectives: {tokens_per_s: maximize}\n"
     "constraints: {ttft_p95_ms: '<= 500'}\n", "constraints.ttft_p95_ms",
     "not produced in train mode (only in generate mode)"),
    ("workload: gpt\nmode: infer\nobjectives: {tokens_per_s: maximize}\n"
     "params: {kv_cache: static}\n", "params.kv_cache", "generation knob"),
    ("workload: gpt\nmode: train\nobjectives: {tokens_per_s: maximize}\n"
     "params: {weight_quant: int8}\n", "params.weight_quant", "use mode infer or generate"),
    ("workload: {factory: gpt, kwargs: {seq_len: 512}}\nmode: train\nobjectives: "
     "{tokens_per_s: maximize}\n", "workload.kwargs.seq_len", "[1, context=128]"),
])
def test_bad_llm_input_is_one_line_naming_the_key(text: str, key: str, words: str) -> None:
    with pytest.raises(SpaceError) as e:
        parse_space_text(text, source="llm.yaml")
    message = str(e.value)
    assert message.startswith(f"llm.yaml: {key}:") and words in message, message
    assert "\n" not in message


def test_shipped_llm_spaces_parse() -> None:
    for name in ("llm_generate.yaml", "llm_train.yaml"):
        space = autotune.load_space(ROOT / "search_spaces" / name)
        assert space.workload == "gpt"


# -- the memory model ----------------------------------------------------------------------


def test_a_configuration_predicted_not_to_fit_is_infeasible_without_a_worker() -> None:
    space = parse_space({"workload": {"factory": "gpt", "kwargs": {"layers": 12,
                                                                   "d_model": 768,
                                                                   "heads": 12,
                                                                   "context": 1024}},
                         "mode": "generate", "objectives": {"decode_tokens_per_s": "maximize"},
                         "params": {"batch_size": 64, "prompt_len": 512, "new_tokens": 512},
                         "budget": {"memory_mb": 512}})
    launcher = FakeLauncher()
    result = run_config(trial_config(space, {}, seed=0), launcher)
    assert result.state == "infeasible" and result.failure_kind == "oom"
    assert result.reason.startswith("predicted: needs ") and "of 0.50 GiB" in result.reason
    assert "kv_cache" in result.reason and not result.launched and not launcher.calls


def test_the_memory_model_counts_what_changes() -> None:
    space = parse_space({"workload": {"factory": "gpt", "kwargs": {"d_model": 128}},
                         "mode": "generate", "objectives": {"decode_tokens_per_s": "maximize"}})
    base = trial_config(space, {}, seed=0)

    def total(**changes: object) -> int:
        prediction = predict_memory(dataclasses.replace(base, **changes))  # type: ignore[arg-type]
        assert prediction is not None
        return prediction.total_bytes

    parts = predict_memory(base).parts  # type: ignore[union-attr]
    # 2 x layers x batch x (prompt + new) x width x 4 bytes, twice for a concatenated cache
    assert parts["kv_cache"] == 2 * (2 * 2 * 64 * (32 + 32) * 128 * 4)
    assert total(kv_cache="static") < total()
    off = predict_memory(dataclasses.replace(base, kv_cache="off"))
    assert off is not None and "kv_cache" not in off.parts  # recomputed, not cached
    assert total(precision="bf16") < total() and total(weight_quant="int8") < total()
    assert total(batch_size=128) > total()
    train = dataclasses.replace(base, mode="train")
    assert predict_memory(dataclasses.replace(train, checkpointing="blocks")).total_bytes < \
        predict_memory(train).total_bytes  # type: ignore[union-attr]
    assert predict_memory(dataclasses.replace(base, workload="mlp")) is None


@pytest.mark.slow
def test_predicted_memory_is_within_a_stated_factor_of_the_measured() -> None:
    """On this CPU the measured figure (peak RSS over the trial's start) includes what the
    model leaves out (allocator slack, BLAS buffers, the batch pool): the prediction is
    a lower bound within 3x."""
    workload = {"factory": "gpt", "kwargs": {"layers": 4, "d_model": 256, "heads": 4,
                                             "context": 256, "seq_len": 128,
                                             "epoch_sequences": 128}}
    budget = {**SHORT, "train_epochs": 1, "trial_seconds": 240}
    ratios = {}
    for mode, knobs in (("train", {"batch_size": 16}),
                        ("generate", {"batch_size": 16, "prompt_len": 64, "new_tokens": 64,
                                      "kv_cache": "static"})):
        m = autotune.measure(workload, mode, backend="torch", threads=1, budget=budget,
                             **knobs)
        if m.model.get("base_model") == "trained":
            # this trial also trained its base model (batch 128): measure the
            # configuration itself on the cached one
            m = autotune.measure(workload, mode, backend="torch", threads=1, budget=budget,
                                 **knobs)
        s = m.summary()
        assert s["predicted_memory_bytes"] and s["trial_memory_bytes"], s
        ratios[mode] = s["trial_memory_bytes"] / s["predicted_memory_bytes"]
    assert all(1.0 <= r <= 3.0 for r in ratios.values()), ratios


# -- real generate studies -----------------------------------------------------------------


@pytest.mark.slow
def test_a_generate_study_completes_on_every_framework(tmp_path: Path,
                                                       framework_workers: Any) -> None:
    url = f"sqlite:///{tmp_path}/gen.db"
    space = parse_space({
        "workload": {"factory": "gpt", "kwargs": {"epoch_sequences": 512}},
        "mode": "generate",
        "objectives": {"decode_tokens_per_s": "maximize", "ttft_p50_ms": "minimize"},
        "params": {"backend": list(FRAMEWORKS), "batch_size": 32, "prompt_len": 16,
                   "new_tokens": 8, "threads": 1},
        "budget": {**SHORT, "trial_seconds": 150}})
    with autotune.create_study("gen", space, storage=url, seed=0) as study:
        ostudy = optuna.load_study(study_name="gen", storage=url)
        for backend in FRAMEWORKS:
            ostudy.enqueue_trial({"backend": backend})
        results = study.optimize(n_trials=3, launcher=framework_workers)
    assert all(r.state == "ok" for r in results), [(r.params, r.reason) for r in results]
    for r in results:
        m = r.metrics
        for name in GENERATION_METRICS:  # every metric, p95/p99 included (requests gate)
            assert m[name] is not None and m[name] > 0, (r.params, name)
        assert m["decode_tokens_per_s"] == pytest.approx(32 / (m["tpot_p50_ms"] / 1000))
        assert m["perplexity"] is not None and 1 < m["perplexity"] < 256
        assert m["param_count"] == GPTConfig().param_count()
    perplexities = [r.metrics["perplexity"] for r in results]
    # the same numpy initialisation, the same recipe and data on each framework
    assert max(perplexities) / min(perplexities) < 1.05, perplexities


@pytest.mark.slow
def test_slo_recommendation_meets_it_or_names_the_binding_slo(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], framework_workers: Any) -> None:
    url = f"sqlite:///{tmp_path}/slo.db"
    space = parse_space({
        "workload": "gpt", "mode": "generate",
        "objectives": {"decode_tokens_per_s": "maximize", "tpot_p95_ms": "minimize"},
        "params": {"backend": "torch", "batch_size": [1, 16], "kv_cache": ["dynamic", "off"],
                   "prompt_len": 16, "new_tokens": 16, "threads": 1},
        "budget": {**SHORT, "window_max_s": 2}})
    with autotune.create_study("slo", space, storage=url, seed=0) as study:
        ostudy = optuna.load_study(study_name="slo", storage=url)
        for bs in (1, 16):
            for kv in ("dynamic", "off"):
                ostudy.enqueue_trial({"batch_size": bs, "kv_cache": kv})
        study.optimize(n_trials=4, launcher=framework_workers)
        tpots = sorted(t.metrics["tpot_p95_ms"] for t in study.trials()
                       if t.state == "ok" and t.metrics["tpot_p95_ms"] is not None)
        assert len(tpots) >= 2, tpots
        bound = (tpots[0] + tpots[-1]) / 2  # some trials meet it, some do not
        rec = recommend(study, "maximize:decode_tokens_per_s",
                        constraints=[f"tpot_p95_ms<={bound}"])
        assert rec.metrics["tpot_p95_ms"] <= bound
        with pytest.raises(RecommendError) as e:
            recommend(study, "maximize:decode_tokens_per_s",
                      constraints=["tpot_p95_ms<=0.000001"])
        assert "tpot_p95_ms" in str(e.value)
        # the gate before launch: the file as a user writes it (a bare YAML `off`)
        ship = tmp_path / "ship.yaml"
        ship.write_text("workload: gpt\nmode: generate\nbackend: torch\nbatch_size: 16\n"
                        "kv_cache: off\nprompt_len: 16\nnew_tokens: 16\nthreads: 1\n")
        checked = gate(study, ship, constraints=["tpot_p95_ms<=0.000001"])
        assert checked.config["kv_cache"] == "off" and checked.verdict == "fail", checked
        assert [v.split(" (")[0] for v in checked.violations] == ["tpot_p95_ms <= 1e-06"]
        assert checked.metrics["tpot_p95_ms"] > 0 and checked.metrics["ttft_p95_ms"] > 0
    capsys.readouterr()
    code = main(["recommend", "slo", "--storage", url, "--maximize", "decode_tokens_per_s",
                 "--slo", "batch", "--json"])
    out = capsys.readouterr()
    if code == 0:
        got = json.loads(out.out)
        assert got["metrics"]["tpot_p95_ms"] <= 175 and got["metrics"]["ttft_p95_ms"] <= 6000
    else:
        assert "tpot_p95_ms" in out.err or "ttft_p95_ms" in out.err
    assert set(SLO_PRESETS) == {"interactive", "server", "batch"}


@pytest.mark.slow
def test_a_hugging_face_gpt2_is_tuned_in_generate_mode(tmp_path: Path,
                                                       framework_workers: Any) -> None:
    pytest.importorskip("transformers")
    url = f"sqlite:///{tmp_path}/hf.db"
    space = autotune.load_space(ROOT / "examples/models/hf_gpt2.yaml")
    data = space.to_dict()
    data["params"] = {"backend": "torch", "batch_size": 8, "kv_cache": ["dynamic", "static"],
                      "prompt_len": 16, "new_tokens": 8, "threads": 1}
    data["budget"] = {**SHORT, "trial_seconds": 120}
    space = parse_space(data)
    with autotune.create_study("hf", space, storage=url, seed=0) as study:
        ostudy = optuna.load_study(study_name="hf", storage=url)
        for kv in ("dynamic", "static"):
            ostudy.enqueue_trial({"kv_cache": kv})
        results = study.optimize(n_trials=2, launcher=framework_workers)
    assert all(r.state == "ok" for r in results), [(r.params, r.reason) for r in results]
    for r in results:
        assert r.metrics["decode_tokens_per_s"] > 0 and r.metrics["ttft_p50_ms"] > 0
        assert r.metrics["perplexity"] is not None and math.isfinite(r.metrics["perplexity"])
    # the model's own count: GPT-2 ties its head to the token embedding
    assert results[0].metrics["param_count"] == 256 * 64 + 128 * 64 + 2 * (
        12 * 64 * 64 + 13 * 64) + 2 * 64


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_a_hugging_face_gpt2_trains_and_infers(mode: str, framework_workers: Any) -> None:
    pytest.importorskip("transformers")
    m = autotune.measure({"factory": f"{ROOT / 'examples/models/hf_gpt2.py'}:build"}, mode,
                         backend="torch", threads=1, batch_size=8, launcher=framework_workers,
                         budget={**SHORT, "train_epochs": 1})
    metrics = m.metrics()
    assert metrics["tokens_per_s"] == pytest.approx(64 * m.throughput_sps)
    assert metrics["perplexity"] is not None and 1 < metrics["perplexity"] < 256
    # transformers' GPT-2 has the gpt's shape: the same FLOPs, its sdpa attention counted
    # on the eager path (FlopCounterMode does not see the CPU sdpa kernel)
    forward = 64 * GPTConfig().flops_per_token(64)
    assert m.model["flops_per_sample"] == (3 * forward if mode == "train" else forward)


@pytest.mark.slow
def test_structured_pruning_of_the_gpt_shows_its_cost_in_perplexity(
        framework_workers: Any) -> None:
    budget = {**SHORT, "trial_seconds": 90}
    kept = {}
    for ratio in (0.0, 0.5):
        m = autotune.measure({"factory": "gpt", "kwargs": {"epoch_sequences": 512}}, "infer",
                             backend="torch", threads=1, batch_size=8, budget=budget,
                             launcher=framework_workers, pruning_ratio=ratio,
                             pruning_structure="structured")
        kept[ratio] = (m.model["param_count"], m.metrics()["perplexity"])
    assert kept[0.5][0] < kept[0.0][0]  # heads and MLP channels removed
    assert kept[0.5][1] > kept[0.0][1]  # without fine-tuning, the text is harder to predict


@pytest.mark.slow
def test_activation_checkpointing_trains_the_gpt(framework_workers: Any) -> None:
    m = autotune.measure({"factory": "gpt", "kwargs": {"epoch_sequences": 128}}, "train",
                         backend="torch", threads=1, batch_size=16, checkpointing="blocks",
                         launcher=framework_workers,
                         budget={**SHORT, "train_epochs": 1})
    assert m.metrics()["tokens_per_s"] == pytest.approx(64 * m.throughput_sps)
    assert m.metrics()["perplexity"] is not None and m.metrics()["perplexity"] < 256


@pytest.mark.parametrize(("backend", "knobs", "words"), [
    ("tensorflow", {"weight_quant": "int8"}, "TFLite's dynamic-range int8"),
    ("tensorflow", {"attention": "sdpa"}, "no fused attention kernel on CPU"),
    ("tensorflow", {"execution": "xla", "kv_cache": "dynamic"}, "use kv_cache: static"),
    ("mindspore", {"execution": "graph"}, "generates in PyNative"),
    ("mindspore", {"weight_quant": "int8"}, "Golden Stick"),
    ("torch", {"weight_quant": "int4"}, "run on CUDA (tinygemm) only"),
    ("torch", {"weight_quant": "int8", "precision": "int8"}, "both quantise the weights"),
])
def test_llm_knobs_a_backend_cannot_run_are_refused_without_a_worker(
        backend: str, knobs: dict[str, str], words: str) -> None:
    space = parse_space({"workload": "gpt", "mode": "generate",
                         "objectives": {"decode_tokens_per_s": "maximize"},
                         "params": {"backend": backend, **knobs}})
    launcher = FakeLauncher()
    result = run_config(trial_config(space, {}, seed=0), launcher)
    assert result.state == "infeasible" and result.failure_kind == "unsupported"
    assert words in result.reason and not launcher.calls, result.reason
