"""`autotune recommend` / autotune.recommend: the best measured configuration under
constraints, its confidence, and a launch config spelled per framework.

The studies are built from enqueued configurations measured by :class:`tests.fakes.
FakeLauncher`, so every trial's metrics are known in advance (see ``TRIALS``) and the tests
run in seconds. The synthetic step time is ``1 ms + batch * 40 us / threads**0.8`` and the
accuracy 0.95 at a learning rate of 1e-3, 0.15 lower per decade away.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import autotune
from autotune._recommend import launch_config, parse_condition, recommend
from autotune.cli import main
from autotune.exceptions import RecommendError
from autotune.storage._models import RecheckRow
from tests.fakes import FakeLauncher, on_calls

SPACE: dict[str, Any] = {
    "workload": "mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "accuracy": "maximize"},
    "constraints": {"accuracy": ">= 0.7"},
    "params": {
        "batch_size": [8, 16, 32, 64, 128],
        "threads": [1, 2],
        "learning_rate": {"low": 1e-4, "high": 1e-1, "log": True},
        "optimizer": ["sgd", "adam", "adamw"],
    },
    "budget": {"trial_seconds": 20},
}
#: The main study's trials, in order. Accuracy 0.95 for lr 1e-3, so trial 0 (the fastest)
#: dominates 1 and 2 and is the whole front.
TRIALS: list[dict[str, Any]] = [
    # 0: front; ~32,500 samples/s, p95 ~4 ms
    {"batch_size": 128, "threads": 2, "learning_rate": 1e-3, "optimizer": "adam"},
    # 1: ~25,900 samples/s, p95 ~2.5 ms
    {"batch_size": 64, "threads": 2, "learning_rate": 1e-3, "optimizer": "sgd"},
    # 2: ~6,000 samples/s, p95 ~1.4 ms, one thread, least memory
    {"batch_size": 8, "threads": 1, "learning_rate": 1e-3, "optimizer": "adamw"},
    # 3: ~20,900 samples/s, accuracy 0.8
    {"batch_size": 128, "threads": 1, "learning_rate": 1e-2, "optimizer": "adamw"},
    # 4: accuracy 0.65: violates the study's accuracy >= 0.7
    {"batch_size": 32, "threads": 2, "learning_rate": 1e-1, "optimizer": "sgd"},
    # 5: out of memory (infeasible, no metrics)
    {"batch_size": 16, "threads": 1, "learning_rate": 1e-3, "optimizer": "adam"},
]
OOM_CALL = 5
#: 140 measured steps: enough for p95 latency (132).
STEPS = 140


def fake_launcher(**kwargs: Any) -> FakeLauncher:
    """The launcher every study and gate measurement here uses."""
    return FakeLauncher(steps=STEPS, **kwargs)


def run_enqueued(study: autotune.Study, trials: list[dict[str, Any]],
                 launcher: FakeLauncher) -> None:
    """Run exactly ``trials`` (enqueued, so the sampler does not choose)."""
    ostudy = study._optuna_study()
    for params in trials:
        ostudy.enqueue_trial(params)
    study.optimize(n_trials=len(trials), launcher=launcher, recheck_every=0)


INFER_SPACE: dict[str, Any] = {
    "workload": "mlp",
    "mode": "infer",
    "objectives": {"throughput_sps": "maximize", "latency_p50_ms": "minimize"},
    "params": {"precision": ["fp32", "int8"], "batch_size": [32, 64], "threads": [1]},
    "budget": {"trial_seconds": 20},
}


def build_studies(url: str) -> None:
    """'main' (TRIALS), 'serve' (one int8 inference trial), 'empty' (no trial) and 'oom'
    (one infeasible trial)."""
    with autotune.create_study("main", autotune.parse_space(SPACE), storage=url, seed=3,
                               sampler="random") as study:
        run_enqueued(study, TRIALS, fake_launcher(infeasible=on_calls(OOM_CALL)))
    with autotune.create_study("serve", autotune.parse_space(INFER_SPACE), storage=url,
                               sampler="random") as study:
        run_enqueued(study, [{"precision": "int8", "batch_size": 64, "threads": 1}],
                     fake_launcher())
    with autotune.create_study("empty", autotune.parse_space(SPACE), storage=url):
        pass
    with autotune.create_study("oom", autotune.parse_space(SPACE), storage=url,
                               sampler="random") as study:
        run_enqueued(study, [TRIALS[0]], fake_launcher(infeasible=lambda c: True))


@dataclass
class Stored:
    db: Path
    url: str


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Stored:
    db = tmp_path_factory.mktemp("recommend") / "studies.db"
    url = f"sqlite:///{db}"
    build_studies(url)
    return Stored(db, url)


@pytest.fixture
def db(stored: Stored, tmp_path: Path) -> Iterator[str]:
    """A private copy of the module's database, checked unchanged afterwards
    (recommending only reads)."""
    path = tmp_path / "copy.db"
    shutil.copyfile(stored.db, path)
    before = _dump(path)
    yield f"sqlite:///{path}"
    assert _dump(path) == before, "recommend modified the database"


def _dump(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return "\n".join(conn.iterdump())


def _main(db: str) -> autotune.Study:
    return autotune.load_study("main", storage=db)


# -- the study as built -----------------------------------------------------------------------


def test_study_as_built(stored: Stored) -> None:
    with autotune.load_study("main", storage=stored.url) as study:
        trials = study.trials()
        assert [t.params for t in trials] == TRIALS
        assert [t.state for t in trials] == ["ok"] * 5 + ["infeasible"]
        assert [t.feasible for t in trials] == [True] * 4 + [False] * 2
        assert [p.trial_number for p in study.pareto_front()] == [0]
        p95 = [t.metrics["latency_p95_ms"] for t in trials[:3]]
        assert p95[0] > 3.5 and p95[1] < 3.0 and p95[2] < 1.6


# -- choosing ---------------------------------------------------------------------------------


def test_default_is_the_best_on_the_first_objective(db: str) -> None:
    with _main(db) as study:
        rec = recommend(study)
    assert rec.trial_number == 0
    assert (rec.objective, rec.direction) == ("throughput_sps", "maximize")
    assert rec.value == pytest.approx(rec.metrics["throughput_sps"])
    assert rec.constraints == ("accuracy >= 0.7",)
    assert rec.candidates == 4  # trial 4 violates accuracy, trial 5 ran out of memory
    assert rec.config == {"backend": "torch", "device": "cpu", "batch_size": 128,
                          "precision": "fp32", "learning_rate": 1e-3, "optimizer": "adam",
                          "pruning_ratio": 0.0, "threads": 2,
                          "pruning_structure": "unstructured", "execution": "eager"}
    c = rec.confidence
    low, high = c["throughput_ci_sps"]
    assert low <= rec.value <= high
    assert c["noise"] == "ok" and c["contended"] is False
    assert c["energy_source"] == "estimated" and c["stability"] == "unchecked"
    assert c["steps_measured"] == STEPS and c["threads"] == 2
    assert rec.warnings == ()


def test_constraint_excluding_the_front_picks_a_trial_behind_it(db: str) -> None:
    with _main(db) as study:
        rec = recommend(study, "throughput_sps", constraints=["latency_p95_ms<=3"])
    assert rec.trial_number == 1  # not on the front (trial 0 dominates it)
    assert rec.metrics["latency_p95_ms"] <= 3
    assert rec.constraints == ("accuracy >= 0.7", "latency_p95_ms <= 3")


@pytest.mark.parametrize(("objective", "expected"), [
    ("minimize:latency_p50_ms", 2),
    ("latency_p50_ms", 2),  # a metric's natural direction
    (("peak_memory_mb", "minimize"), 2),
    ("maximize:accuracy", 0),  # exact tie at 0.95: the earlier trial
    ("minimize:throughput_sps", 2),
])
def test_objectives(db: str, objective: Any, expected: int) -> None:
    with _main(db) as study:
        assert recommend(study, objective).trial_number == expected


@pytest.mark.parametrize(("prefer", "expected"), [
    ("fewer_threads", 2), ("lower_memory", 2), ("smaller_batch", 2),
    ("throughput_sps", 0), ("minimize:latency_p95_ms", 2),
])
def test_prefer_breaks_ties(db: str, prefer: str, expected: int) -> None:
    """Trials 0, 1 and 2 all reach accuracy 0.95: the rule picks among them."""
    with _main(db) as study:
        rec = recommend(study, "maximize:accuracy", prefer=prefer)
    assert rec.ties == (0, 1, 2)
    assert rec.trial_number == expected and rec.prefer == prefer


def test_prefer_only_among_ties(db: str) -> None:
    """Trial 2 has the fewest threads but is far from the best throughput: not a tie."""
    with _main(db) as study:
        rec = recommend(study, prefer="fewer_threads")
    assert rec.ties == (0,) and rec.trial_number == 0


@pytest.fixture
def writable(stored: Stored, tmp_path: Path) -> str:
    """A private copy the test may modify."""
    path = tmp_path / "writable.db"
    shutil.copyfile(stored.db, path)
    return f"sqlite:///{path}"


def test_drifting_trial_is_skipped(writable: str) -> None:
    with autotune.load_study("main", storage=writable) as study:
        study.storage.add_recheck(RecheckRow(
            study_id=study.id, trial_number=0, after_trials=6, state="ok",
            verdict="drifting", ratio=0.5, metrics_json="{}", reason="test"))
        rec = recommend(study)
        assert rec.trial_number == 1 and rec.excluded_drifting == (0,)
        assert rec.warnings == ()
        only = recommend(study, constraints=["throughput_sps>=30000"])
    # Only when every qualifying trial drifts is a drifting one named, with a warning.
    assert only.trial_number == 0 and only.confidence["stability"] == "drifting"
    assert only.excluded_drifting == ()
    assert any("drifting" in w for w in only.warnings)


# -- nothing feasible -------------------------------------------------------------------------


def test_no_feasible_names_the_binding_constraint_and_nearest(db: str) -> None:
    with _main(db) as study, pytest.raises(RecommendError) as info:
        recommend(study, constraints=["latency_p95_ms<=1", "throughput_sps>=30000"])
    e = info.value
    message = str(e)
    assert "\n" not in message
    # Only latency keeps trial 0 out (it satisfies throughput and accuracy): it binds.
    assert e.binding == "latency_p95_ms <= 1"
    assert "binding: latency_p95_ms <= 1" in message
    assert message.startswith("no trial of study 'main' satisfies accuracy >= 0.7, "
                              "latency_p95_ms <= 1, throughput_sps >= 30000 (5 measured")
    numbers = [n for n, _ in e.nearest]
    assert numbers[0] == 0
    assert "nearest: trial 0 (latency_p95_ms " in message
    assert e.nearest[0][1] == pytest.approx(
        study.trials()[0].metrics["latency_p95_ms"])


def test_no_feasible_with_one_condition(db: str) -> None:
    with _main(db) as study, pytest.raises(RecommendError) as info:
        recommend(study, constraints=["latency_p95_ms<1"])
    e = info.value
    assert e.binding == "latency_p95_ms < 1"
    # the lowest latency first: trial 2 (batch 8)
    assert e.nearest[0][0] == 2
    assert "excludes 5" in str(e)


def test_condition_on_a_metric_no_trial_measured(db: str) -> None:
    """p99 needs 662 steps; the trials measured 140."""
    with _main(db) as study, pytest.raises(RecommendError) as info:
        recommend(study, constraints=["latency_p99_ms<=100"])
    assert str(info.value).startswith(
        "no trial of study 'main' measured latency_p99_ms, so latency_p99_ms <= 100 cannot "
        "be checked (a latency percentile is reported only from enough measured steps")
    assert info.value.binding == "latency_p99_ms <= 100"


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "needles"), [
    ({"objective": "speed"}, ("unknown metric 'speed'", "allowed: throughput_sps")),
    ({"objective": "fastest:throughput_sps"}, ("unknown direction 'fastest'",)),
    ({"constraints": ["latency<=20"]}, ("unknown metric 'latency'", "latency_p95_ms")),
    ({"constraints": ["latency_p95_ms=20"]}, ("does not parse", "METRIC<=VALUE")),
    ({"constraints": ["latency_p95_ms<=fast"]}, ("'fast' is not a number", "METRIC<=VALUE")),
    ({"constraints": [""]}, ("does not parse",)),
    ({"prefer": "cheapest"}, ("unknown preference 'cheapest'", "lower_memory")),
])
def test_bad_input(db: str, kwargs: dict[str, Any], needles: tuple[str, ...]) -> None:
    with _main(db) as study, pytest.raises(RecommendError) as info:
        recommend(study, **kwargs)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(("name", "needle"), [
    ("empty", "study 'empty' has no measured trial yet; run it with "
              "`autotune study run empty`"),
    ("oom", "study 'oom' has no measured trial yet (1 trial(s): 1 infeasible)"),
])
def test_study_without_a_measured_trial(db: str, name: str, needle: str) -> None:
    with autotune.load_study(name, storage=db) as study, \
            pytest.raises(RecommendError) as info:
        recommend(study)
    assert needle in str(info.value)


def test_parse_condition_forms() -> None:
    c = parse_condition(" latency_p95_ms <= 2.5e1 ")
    assert (c.metric, c.op, c.bound) == ("latency_p95_ms", "<=", 25.0)
    assert parse_condition("accuracy>0.9").op == ">"
    assert parse_condition(c) is c


# -- launch configurations --------------------------------------------------------------------


def _knobs(**overrides: Any) -> dict[str, Any]:
    from autotune.space import KNOB_DEFAULTS

    return {**KNOB_DEFAULTS, "execution": "eager", "threads": 2, **overrides}


def test_launch_torch_train_bf16_compiled() -> None:
    launch = launch_config(_knobs(precision="bf16", optimizer="adamw", learning_rate=0.002,
                                  batch_size=128, execution="graph"), mode="train")
    assert launch["framework"] == "torch" and launch["batch_size"] == 128
    assert launch["dtype"] == "torch.bfloat16"
    assert launch["autocast"] == {"device_type": "cpu", "dtype": "torch.bfloat16"}
    assert launch["grad_scaler"] is None
    assert launch["optimizer"] == {"class": "torch.optim.AdamW",
                                   "kwargs": {"lr": 0.002, "fused": True}}
    assert launch["threads"]["torch.set_num_threads"] == 2
    assert launch["threads"]["OMP_NUM_THREADS"] == "2"
    assert launch["execution"] == "torch.compile"
    assert launch["pruning"] is None


def test_launch_torch_fp16_train_has_a_grad_scaler_and_sgd_momentum() -> None:
    launch = launch_config(_knobs(precision="fp16", optimizer="sgd"), mode="train")
    assert launch["grad_scaler"] == "torch.amp.GradScaler('cpu')"
    assert launch["optimizer"]["kwargs"] == {"lr": 1e-3, "momentum": 0.9, "fused": True}


def test_launch_torch_infer_int8_pruned() -> None:
    launch = launch_config(_knobs(precision="int8", pruning_ratio=0.3), mode="infer")
    assert launch["dtype"] == "torch.qint8"
    assert launch["quantization"] == ("torch.ao.quantization.quantize_dynamic(model, "
                                      "{torch.nn.Linear}, dtype=torch.qint8)")
    assert launch["optimizer"] is None and "zero_grad" not in launch
    assert launch["inference"] == "torch.inference_mode()"
    assert launch["execution"] == "eager"
    assert launch["pruning"]["structure"] == "unstructured"
    assert "torch.nn.utils.prune.L1Unstructured" in launch["pruning"]["call"]
    assert "prune.remove" in launch["pruning"]["call"]


def test_launch_torch_infer_bf16_converts_weights() -> None:
    launch = launch_config(_knobs(precision="bf16"), mode="infer")
    assert launch["convert"] == "model.to(torch.bfloat16)" and launch["autocast"] is None


def test_launch_tensorflow_train_bf16_xla() -> None:
    launch = launch_config(_knobs(backend="tensorflow", precision="bf16", optimizer="adamw",
                                  learning_rate=0.01, execution="xla", threads=4),
                           mode="train")
    assert launch["dtype_policy"] == "mixed_bfloat16"
    assert launch["set_policy"] == \
        "tf.keras.mixed_precision.set_global_policy('mixed_bfloat16')"
    assert launch["execution"] == "tf.function(jit_compile=True)"
    assert launch["optimizer"] == {
        "class": "tf.keras.optimizers.AdamW",
        "kwargs": {"learning_rate": 0.01, "epsilon": 1e-8, "weight_decay": 0.01}}
    threads = launch["threads"]
    assert threads["tf.config.threading.set_intra_op_parallelism_threads"] == 4
    assert threads["tf.config.threading.set_inter_op_parallelism_threads"] == 1
    assert launch["device"] == "/CPU:0"


def test_launch_tensorflow_fp16_wraps_the_optimizer_and_graph_is_tf_function() -> None:
    launch = launch_config(_knobs(backend="tensorflow", precision="fp16",
                                  execution="graph", device="cuda:1"), mode="train")
    assert launch["optimizer"]["wrapper"] == "tf.keras.optimizers.LossScaleOptimizer"
    assert launch["dtype_policy"] == "mixed_float16"
    assert launch["execution"] == "tf.function" and launch["device"] == "/GPU:1"


def test_launch_tensorflow_infer_int8_is_tflite() -> None:
    launch = launch_config(_knobs(backend="tensorflow", precision="int8",
                                  execution="graph"), mode="infer")
    assert launch["execution"] == "tflite" and launch["optimizer"] is None
    q = launch["quantization"]
    assert q["converter"] == "tf.lite.TFLiteConverter.from_keras_model(model)"
    assert q["optimizations"] == ["tf.lite.Optimize.DEFAULT"] and q["num_threads"] == 2


def test_launch_tensorflow_infer_bf16_builds_layers_in_bf16() -> None:
    launch = launch_config(_knobs(backend="tensorflow", precision="bf16"), mode="infer")
    assert launch["dtype_policy"] == "bfloat16" and launch["execution"] == "eager"


def test_launch_mindspore_train_fp16_graph_adamw() -> None:
    launch = launch_config(_knobs(backend="mindspore", precision="fp16", optimizer="adamw",
                                  execution="graph", learning_rate=0.005,
                                  pruning_ratio=0.5, pruning_structure="structured"),
                           mode="train")
    assert launch["context"] == "mindspore.set_context(mode=mindspore.GRAPH_MODE)"
    assert launch["execution"] == "GRAPH_MODE + mindspore.jit(train_step)"
    assert launch["amp"]["call"] == \
        "mindspore.amp.auto_mixed_precision(net, 'O2', dtype=mindspore.float16)"
    assert launch["amp"]["loss_scaler"].startswith("mindspore.amp.DynamicLossScaler")
    # The backend's AdamW is nn.Adam plus torch's decoupled decay (not AdamWeightDecay).
    assert launch["optimizer"]["class"] == "mindspore.nn.Adam"
    assert launch["optimizer"]["kwargs"] == {"learning_rate": 0.005}
    assert launch["optimizer"]["decoupled_weight_decay"]["weight_decay"] == 0.01
    assert launch["threads"]["mindspore.device_context.cpu.op_tuning.threads_num"] == 2
    assert launch["device"] == "mindspore.set_device('CPU')"
    assert launch["pruning"]["structure"] == "structured"
    assert "apply_structured" in launch["pruning"]["call"]


def test_launch_mindspore_infer_eager() -> None:
    launch = launch_config(_knobs(backend="mindspore", device="npu:1"), mode="infer")
    assert launch["context"] == "mindspore.set_context(mode=mindspore.PYNATIVE_MODE)"
    assert launch["amp"] is None and launch["optimizer"] is None
    assert launch["dtype"] == "mindspore.float32"
    assert launch["device"] == "mindspore.set_device('Ascend', 1)"


def test_recommended_int8_inference(db: str) -> None:
    with autotune.load_study("serve", storage=db) as study:
        rec = recommend(study)
    assert "optimizer" not in rec.config and "learning_rate" not in rec.config
    launch = rec.launch_config()
    assert launch["mode"] == "infer" and launch["dtype"] == "torch.qint8"
    assert launch["optimizer"] is None and launch["batch_size"] == 64
    assert launch["threads"]["torch.set_num_threads"] == 1
    assert rec.gate_config() == {"workload": "mlp", "mode": "infer", **rec.config}


def test_unpinned_threads_spell_the_count_the_worker_used(db: str) -> None:
    with _main(db) as study:
        rec = recommend(study)
    unpinned = dataclasses.replace(rec, config={**rec.config, "threads": None},
                                   confidence={**rec.confidence, "threads": 7})
    threads = unpinned.launch_config()["threads"]
    assert threads["torch.set_num_threads"] == 7 and threads["OMP_NUM_THREADS"] == "7"


# -- the CLI ----------------------------------------------------------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors and --help
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str, expected: int, *needles: str) -> str:
    assert code == expected, (code, err)
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("autotune: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def test_cli_json_parses_back(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = _cli(capsys, "recommend", "main", "--maximize", "throughput_sps",
                          "--where", "latency_p95_ms<=3", "--where", "accuracy>=0.9",
                          "--storage", db, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["trial"] == 1 and data["study"] == "main"
    assert data["objective"]["metric"] == "throughput_sps"
    assert data["constraints"] == ["accuracy >= 0.7", "latency_p95_ms <= 3",
                                   "accuracy >= 0.9"]
    assert data["config"]["batch_size"] == 64
    assert data["launch"]["optimizer"]["class"] == "torch.optim.SGD"
    assert len(data["confidence"]["throughput_ci_sps"]) == 2


def test_cli_yaml_parses_back(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = _cli(capsys, "recommend", "main", "--minimize", "latency_p50_ms",
                          "--storage", db, "--yaml")
    assert code == 0, err
    data = yaml.safe_load(out)
    assert data["trial"] == 2
    assert data["objective"]["direction"] == "minimize"
    assert data["launch"]["threads"]["OMP_NUM_THREADS"] == "1"
    code, out_json, _ = _cli(capsys, "recommend", "main", "--minimize", "latency_p50_ms",
                             "--storage", db, "--json")
    assert data == json.loads(out_json)


def test_cli_human_output(capsys: pytest.CaptureFixture[str], db: str) -> None:
    code, out, err = _cli(capsys, "recommend", "main", "--storage", db)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("recommended for 'main' (mlp, train): trial 0, "
                               "throughput_sps ")
    assert "under accuracy >= 0.7" in lines[0]
    assert lines[1].startswith("config: backend=torch device=cpu batch_size=128")
    assert any("throughput_sps" in line and "95 % CI" in line for line in lines)
    assert any(line.startswith("confidence: noise ok") for line in lines)
    assert "launch config (torch):" in lines
    assert "    class: torch.optim.Adam" in lines


def test_cli_write_config_feeds_gate(capsys: pytest.CaptureFixture[str], db: str,
                                     tmp_path: Path) -> None:
    target = tmp_path / "prod.yaml"
    code, _, err = _cli(capsys, "recommend", "main", "--storage", db, "--write-config",
                        str(target))
    assert code == 0, err
    written = yaml.safe_load(target.read_text())
    assert written["workload"] == "mlp" and written["batch_size"] == 128
    from autotune._gate import load_gate_config

    with _main(db) as study:
        assert load_gate_config(target, study)["batch_size"] == 128


@pytest.mark.parametrize(("argv", "code", "needles"), [
    (["--where", "latency<=3"], 2, ("argument --where", "unknown metric 'latency'")),
    (["--where", "latency_p95_ms=3"], 2, ("does not parse", "METRIC<=VALUE")),
    (["--maximize", "speed"], 2, ("argument --maximize", "unknown metric 'speed'")),
    (["--maximize", "accuracy", "--minimize", "latency_p50_ms"], 2, ("not allowed with",)),
    (["--json", "--yaml"], 2, ("not allowed with",)),
    (["--prefer", "cheap"], 2, ("unknown preference",)),
    (["--where", "latency_p95_ms<=0.001"], 1, ("binding: latency_p95_ms <= 0.001",
                                              "nearest: trial 2")),
])
def test_cli_errors(capsys: pytest.CaptureFixture[str], db: str, argv: list[str], code: int,
                    needles: tuple[str, ...]) -> None:
    got, _, err = _cli(capsys, "recommend", "main", "--storage", db, *argv)
    _one_line_error(got, err, code, *needles)


@pytest.mark.parametrize(("name", "needle"), [
    ("nope", "no study named 'nope'"), ("empty", "has no measured trial yet")])
def test_cli_study_errors(capsys: pytest.CaptureFixture[str], db: str, name: str,
                          needle: str) -> None:
    code, out, err = _cli(capsys, "recommend", name, "--storage", db, "--json")
    _one_line_error(code, err, 1, needle)
    assert out == ""


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "recommend", "--help")
    assert code == 0
    for option in ("--maximize", "--minimize", "--where", "--prefer", "--write-config",
                   "--storage", "--json", "--yaml", "--debug"):
        assert option in out
