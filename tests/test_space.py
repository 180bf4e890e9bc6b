"""Search-space files: every bad input is a SpaceError naming the file, key path and what is
allowed; good files give the right Optuna distributions and a stable fingerprint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from autotune.exceptions import AutotuneError, SpaceError
from autotune.objectives import METRICS
from autotune.space import (
    OPTIMIZERS,
    PRECISIONS,
    Budget,
    SearchSpace,
    load_space,
    parse_space,
    parse_space_text,
)

SPACES_DIR = Path(__file__).resolve().parents[1] / "search_spaces"
SHIPPED = sorted(SPACES_DIR.glob("*.yaml"))
SOURCE = "my_space.yaml"

#: A valid train-mode space touching every kind of knob; bad cases are small edits of it.
BASE: dict[str, Any] = {
    "description": "a test space",
    "workload": "mlp",
    "mode": "train",
    "objectives": {"throughput_sps": "maximize", "accuracy": "maximize"},
    "constraints": {"accuracy": ">= 0.5"},
    "params": {
        "backend": ["torch"],
        "device": ["cpu"],
        "batch_size": {"low": 8, "high": 256, "log": True},
        "precision": ["fp32", "bf16"],
        "optimizer": ["sgd", "adam"],
        "learning_rate": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
        "pruning_ratio": {"low": 0.0, "high": 0.5, "step": 0.1},
        "threads": [1, 2],
    },
    "budget": {"trial_seconds": 20, "warmup_max_s": 2, "window_min_s": 1, "window_max_s": 2,
               "train_epochs": 1},
}

_DELETE = object()


def edited(*edits: tuple[str, Any]) -> dict[str, Any]:
    """A deep copy of BASE with ``("a.b.c", value)`` edits applied (``_DELETE`` removes)."""
    data = copy.deepcopy(BASE)
    for path, value in edits:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return data


def as_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)


def space_error(data: dict[str, Any] | str, source: str = SOURCE) -> str:
    """The SpaceError message for ``data`` (a mapping or YAML text) given as YAML text."""
    text = data if isinstance(data, str) else as_yaml(data)
    with pytest.raises(SpaceError) as info:
        parse_space_text(text, source=source)
    message = str(info.value)
    assert "\n" not in message, f"error message is not one line: {message!r}"
    assert message.startswith(f"{source}: "), message
    return message


def test_base_is_valid() -> None:
    space = parse_space(BASE, source=SOURCE)
    assert isinstance(space, SearchSpace)
    assert space.objective_names == ["throughput_sps", "accuracy"]
    assert space.directions == ["maximize", "maximize"]


def test_space_error_is_an_autotune_and_value_error() -> None:
    assert issubclass(SpaceError, AutotuneError)
    assert issubclass(SpaceError, ValueError)


# -- bad inputs --------------------------------------------------------------------------------

# (id, edits, substrings the message must contain: key path first, then what is wrong/allowed)
BAD_CASES: list[tuple[str, tuple[tuple[str, Any], ...], tuple[str, ...]]] = [
    # top level
    ("unknown-top-level-key", (("colour", "blue"),),
     ("colour", "unknown key", "allowed: workload, mode, objectives")),
    ("missing-workload", (("workload", _DELETE),), ("workload", "is required")),
    ("missing-mode", (("mode", _DELETE),), ("mode", "is required")),
    ("missing-objectives", (("objectives", _DELETE),), ("objectives", "is required")),
    ("unknown-workload", (("workload", "resnet9000"),),
     ("workload", "'resnet9000'", "mlp", "package.module:function")),
    ("workload-not-text", (("workload", 3),), ("workload", "3")),
    ("unknown-mode", (("mode", "serve"),), ("mode", "'serve'", "train, infer")),
    ("description-not-text", (("description", ["a"]),), ("description", "must be text")),
    # params: unknown knob and per-knob value checks
    ("unknown-knob", (("params.colour", ["red"]),),
     ("params.colour", "unknown parameter", "batch_size")),
    ("params-not-mapping", (("params", ["batch_size"]),), ("params", "mapping")),
    ("low-above-high", (("params.batch_size", {"low": 64, "high": 8}),),
     ("params.batch_size", "low (64) must be <= high (8)")),
    ("float-low-above-high", (("params.learning_rate", {"low": 0.1, "high": 0.01}),),
     ("params.learning_rate", "low (0.1) must be <= high (0.01)")),
    ("batch-size-zero-in-list", (("params.batch_size", [0, 8]),),
     ("params.batch_size", "got 0", "a positive integer")),
    ("batch-size-negative-in-list", (("params.batch_size", [16, -8]),),
     ("params.batch_size", "got -8", "a positive integer")),
    ("batch-size-range-low-zero", (("params.batch_size", {"low": 0, "high": 8}),),
     ("params.batch_size", "got 0", "a positive integer")),
    ("batch-size-log-range-low-zero", (("params.batch_size", {"low": 0, "high": 8, "log": True}),),
     ("params.batch_size.low", "> 0 on a log scale")),
    ("batch-size-fixed-zero", (("params.batch_size", 0),),
     ("params.batch_size", "got 0", "a positive integer")),
    ("batch-size-float", (("params.batch_size", [8.5]),),
     ("params.batch_size", "got 8.5", "a positive integer")),
    ("batch-size-bool", (("params.batch_size", [True]),),
     ("params.batch_size", "got True", "a positive integer")),
    ("unknown-backend", (("params.backend", ["torch", "caffe"]),),
     ("params.backend", "'caffe'", "one of", "torch")),
    ("unknown-device", (("params.device", ["gpu"]),),
     ("params.device", "'gpu'", "cpu, cuda:N")),
    ("unknown-precision", (("params.precision", ["fp32", "fp8"]),),
     ("params.precision", "'fp8'", ", ".join(PRECISIONS))),
    ("unknown-optimizer", (("params.optimizer", ["lbfgs"]),),
     ("params.optimizer", "'lbfgs'", ", ".join(OPTIMIZERS))),
    ("learning-rate-zero", (("params.learning_rate", {"low": 0, "high": 0.1}),),
     ("params.learning_rate", "got 0", "a positive number")),
    ("learning-rate-not-a-number", (("params.learning_rate", {"low": "1e-3", "high": 0.1}),),
     ("params.learning_rate.low", "must be a number", "'1e-3'")),
    ("pruning-ratio-one", (("params.pruning_ratio", 1.0),),
     ("params.pruning_ratio", "got 1.0", "[0, 1)")),
    ("threads-zero", (("params.threads", [0, 1]),),
     ("params.threads", "got 0", "a positive integer")),
    # params: shape of a knob's value
    ("empty-choices", (("params.precision", []),), ("params.precision", "empty list")),
    ("duplicate-choices", (("params.precision", ["fp32", "fp32"]),),
     ("params.precision", "duplicate choices")),
    ("unknown-range-key", (("params.batch_size", {"low": 8, "high": 64, "stride": 2}),),
     ("params.batch_size.stride", "unknown range key", "low, high, log, step")),
    ("range-without-high", (("params.batch_size", {"low": 8}),),
     ("params.batch_size", "both low and high")),
    ("range-log-not-bool", (("params.batch_size", {"low": 8, "high": 64, "log": "yes"}),),
     ("params.batch_size.log", "true or false")),
    ("range-step-negative", (("params.batch_size", {"low": 8, "high": 64, "step": -8}),),
     ("params.batch_size.step", "positive number")),
    ("range-log-and-step", (("params.batch_size", {"low": 8, "high": 64, "log": True,
                                                   "step": 8}),),
     ("params.batch_size", "log and step")),
    # train-only knobs in infer mode
    ("optimizer-in-infer-mode", (("mode", "infer"), ("params.learning_rate", _DELETE)),
     ("params.optimizer", "training knob", "mode: train")),
    ("learning-rate-in-infer-mode", (("mode", "infer"), ("params.optimizer", _DELETE)),
     ("params.learning_rate", "training knob", "mode: train")),
    # objectives
    ("unknown-metric", (("objectives", {"speed": "maximize"}),),
     ("objectives.speed", "unknown metric", "throughput_sps", "accuracy")),
    ("unknown-direction", (("objectives", {"accuracy": "up"}),),
     ("objectives.accuracy", "'up'", "maximize, minimize")),
    ("objectives-not-mapping", (("objectives", ["accuracy"]),),
     ("objectives", "1 to 4", "maximize|minimize")),
    # constraints
    ("constraint-does-not-parse", (("constraints", {"accuracy": "about 0.9"}),),
     ("constraints.accuracy", "'about 0.9'", "does not parse", ">=", "e.g.")),
    ("constraint-bare-number", (("constraints", {"accuracy": 0.9}),),
     ("constraints.accuracy", "does not parse")),
    ("constraint-unknown-metric", (("constraints", {"speed": ">= 1"}),),
     ("constraints.speed", "unknown metric", "accuracy")),
    ("constraints-not-mapping", (("constraints", [">= 0.9"]),), ("constraints", "must map")),
    # budget
    ("unknown-budget-key", (("budget.trials", 5),),
     ("budget.trials", "unknown key", "trial_seconds", "train_epochs")),
    ("budget-not-mapping", (("budget", [1]),), ("budget", "must be a mapping")),
    ("trial-seconds-zero", (("budget.trial_seconds", 0),),
     ("budget.trial_seconds", "a positive number", "got 0")),
    ("trial-seconds-negative", (("budget.trial_seconds", -10),),
     ("budget.trial_seconds", "a positive number", "got -10")),
    ("train-epochs-zero", (("budget.train_epochs", 0),),
     ("budget.train_epochs", "a positive integer", "got 0")),
    ("window-min-steps-float", (("budget.window_min_steps", 2.5),),
     ("budget.window_min_steps", "a positive integer", "got 2.5")),
    ("memory-mb-negative", (("budget.memory_mb", -1),),
     ("budget.memory_mb", "a positive integer")),
    ("trial-seconds-bool", (("budget.trial_seconds", True),),
     ("budget.trial_seconds", "a positive number")),
    ("trial-seconds-too-small", (("budget.trial_seconds", 3.5),),
     ("budget", "trial_seconds must exceed warmup_max_s + window_max_s", "got 3.5 <= 2 + 2")),
    ("trial-seconds-equal-to-warmup-plus-window", (("budget.trial_seconds", 4.0),),
     ("budget", "trial_seconds must exceed")),
    ("window-min-above-max", (("budget.window_min_s", 3),),
     ("budget", "window_min_s (3) must be <= window_max_s (2)")),
]


@pytest.mark.parametrize(("edits", "needles"), [pytest.param(e, n, id=i) for i, e, n in BAD_CASES])
def test_bad_space_names_file_key_and_allowed(edits: tuple[tuple[str, Any], ...],
                                              needles: tuple[str, ...]) -> None:
    message = space_error(edited(*edits))
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    # The key path comes right after the file name.
    assert message.startswith(f"{SOURCE}: {needles[0]}"), message


@pytest.mark.parametrize(("edits", "needles"), [pytest.param(e, n, id=i) for i, e, n in BAD_CASES
                                                if i in ("unknown-knob", "low-above-high",
                                                         "unknown-metric")])
def test_parse_space_mapping_gives_same_errors(edits: tuple[tuple[str, Any], ...],
                                               needles: tuple[str, ...]) -> None:
    with pytest.raises(SpaceError) as info:
        parse_space(edited(*edits), source="a mapping")
    assert str(info.value).startswith(f"a mapping: {needles[0]}")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        pytest.param("workload: [unclosed\n", ("malformed YAML", "line 2", "expected"),
                     id="unclosed-list"),
        pytest.param("workload: mlp\n  mode: : train\n", ("malformed YAML", "line 2"),
                     id="bad-indent"),
        pytest.param("workload: mlp\nmode:\n\t- train\n", ("malformed YAML", "line 3"),
                     id="tab"),
        pytest.param("- workload\n- mode\n", ("must be a YAML mapping", "list"), id="list"),
        pytest.param("just text\n", ("must be a YAML mapping", "str"), id="scalar"),
        pytest.param("", ("the space file is empty",), id="empty"),
    ],
)
def test_malformed_yaml(text: str, needles: tuple[str, ...]) -> None:
    message = space_error(text)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_yaml_is_safe_loaded() -> None:
    message = space_error("workload: !!python/object/apply:os.system ['true']\n")
    assert "malformed YAML" in message


def test_default_source_is_named() -> None:
    with pytest.raises(SpaceError, match=r"^<space>: colour: unknown key"):
        parse_space_text(as_yaml(edited(("colour", 1))))


@pytest.mark.parametrize("n", range(6))
def test_one_to_four_objectives(n: int) -> None:
    metrics = list(METRICS)[:n]
    data = edited(("objectives", {m: METRICS[m].better for m in metrics}),
                  ("constraints", {}))
    if 1 <= n <= 4:
        space = parse_space(data, source=SOURCE)
        assert space.objective_names == metrics
        assert space.directions == [METRICS[m].better for m in metrics]
    else:
        message = space_error(data)
        assert message.startswith(f"{SOURCE}: objectives: must map 1 to 4 metric names")


# -- load_space: the file is named ---------------------------------------------------------


def test_load_space_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(as_yaml(edited(("params.batch_size", {"low": 64, "high": 8}))),
                    encoding="utf-8")
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value) == f"{path}: params.batch_size: low (64) must be <= high (8)"


def test_load_space_malformed_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("workload: mlp\nmode: [train\n", encoding="utf-8")
    with pytest.raises(SpaceError, match=r"broken\.yaml: malformed YAML at line \d+"):
        load_space(str(path))


def test_load_space_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value) == f"{path}: space file not found"


def test_load_space_directory(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match="cannot read space file"):
        load_space(tmp_path)


def test_load_space_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: cannot read space file")
    assert "\n" not in str(info.value)


# -- valid spaces ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_spaces_load(path: Path) -> None:
    space = load_space(path)
    assert space.workload
    assert space.mode in ("train", "infer", "generate")
    assert 1 <= len(space.objectives) <= 4
    assert space.distributions()
    # The canonical form (what a study stores) parses back to the same space.
    again = parse_space(space.to_dict(), source="stored")
    assert again.fingerprint() == space.fingerprint()
    assert again == space


def test_shipped_spaces_exist() -> None:
    assert {p.name for p in SHIPPED} >= {"quickstart.yaml", "cpu_training.yaml",
                                         "cpu_inference.yaml"}


def test_device_auto_is_kept_for_create_to_resolve() -> None:
    data = {**BASE, "params": {**BASE["params"], "device": "auto"}}
    space = parse_space(data, source=SOURCE)
    assert space.fixed_params()["device"] == "auto"
    assert "device" not in space.distributions()


def test_quickstart_distributions() -> None:
    space = load_space(SPACES_DIR / "quickstart.yaml")
    dists = space.distributions()
    assert dists["batch_size"] == IntDistribution(16, 256, log=True)
    assert isinstance(dists["learning_rate"], FloatDistribution)
    assert dists["learning_rate"].log
    assert (dists["learning_rate"].low, dists["learning_rate"].high) == (1e-3, 1e-1)
    assert "precision" not in dists  # fp32 only: bf16 needs native support (README)
    assert dists["optimizer"] == CategoricalDistribution(["sgd", "adam", "adamw"])
    assert isinstance(dists["threads"], CategoricalDistribution)
    assert space.fixed_params() == {}


def test_distribution_types() -> None:
    space = parse_space(BASE, source=SOURCE)
    dists = space.distributions()
    assert set(dists) == set(BASE["params"])
    batch = dists["batch_size"]
    assert type(batch) is IntDistribution
    assert (batch.low, batch.high, batch.log) == (8, 256, True)
    lr = dists["learning_rate"]
    assert type(lr) is FloatDistribution
    assert lr.log
    pruning = dists["pruning_ratio"]
    assert type(pruning) is FloatDistribution
    assert (pruning.low, pruning.high, pruning.step, pruning.log) == (0.0, 0.5, 0.1, False)
    for name in ("backend", "device", "precision", "optimizer", "threads"):
        assert type(dists[name]) is CategoricalDistribution, name
    assert dists["threads"].choices == (1, 2)


def test_int_range_with_step_and_float_bounds() -> None:
    space = parse_space(edited(("params.batch_size", {"low": 8, "high": 64, "step": 8}),
                               ("params.threads", {"low": 1, "high": 4})), source=SOURCE)
    dists = space.distributions()
    assert dists["batch_size"] == IntDistribution(8, 64, step=8)
    assert dists["threads"] == IntDistribution(1, 4)
    assert space.param("threads").kind == "int"


def test_fixed_params_are_not_searched() -> None:
    space = parse_space(edited(("params.device", "cpu"), ("params.batch_size", 32),
                               ("params.optimizer", "adam")), source=SOURCE)
    assert space.fixed_params() == {"device": "cpu", "batch_size": 32, "optimizer": "adam"}
    dists = space.distributions()
    assert not {"device", "batch_size", "optimizer"} & set(dists)
    assert "precision" in dists
    assert space.param("batch_size").kind == "fixed"


def test_a_knob_with_one_value_wins_over_the_default_in_a_partial_configuration() -> None:
    """Listed with one value (``[adam]``, a range low == high) a knob is searched, yet a
    configuration built from parameters that leave it out (the pre-screen's) has it."""
    from autotune.config import KNOB_DEFAULTS, TrialConfig

    space = parse_space(edited(("params.device", "cpu"), ("params.optimizer", ["sgd"]),
                               ("params.threads", {"low": 2, "high": 2})), source=SOURCE)
    assert KNOB_DEFAULTS["optimizer"] != "sgd" and KNOB_DEFAULTS["threads"] != 2
    assert {"optimizer", "threads"} <= set(space.distributions())  # still searched
    fixed = space.fixed_params()  # what is stored as a trial's fixed_knobs: unchanged
    assert fixed["device"] == "cpu" and not {"optimizer", "threads"} & set(fixed)
    # the base space lists its backend as [torch]: one value too
    assert space.one_valued_params() == {**fixed, "backend": "torch", "optimizer": "sgd",
                                         "threads": 2}
    config = TrialConfig.from_params(space, {"batch_size": 64})
    assert (config.device, config.optimizer, config.threads) == ("cpu", "sgd", 2)
    assert space.param("no_such_knob") is None


def test_unmentioned_knobs_stay_unset() -> None:
    space = parse_space(edited(("params", {"batch_size": [8, 16]})), source=SOURCE)
    assert set(space.distributions()) == {"batch_size"}
    assert space.param("precision") is None


def test_infer_mode_without_train_knobs() -> None:
    space = parse_space(edited(("mode", "infer"), ("params.optimizer", _DELETE),
                               ("params.learning_rate", _DELETE)), source=SOURCE)
    assert space.mode == "infer"
    assert "optimizer" not in space.distributions()


@pytest.mark.parametrize("workload", ["mlp", "digits_mlp",
                                      # a factory ``package.module:function``: the module's
                                      # file defines the function at top level (parsed,
                                      # not imported)
                                      "autotune.workloads._builtin:mlp"])
def test_workloads_accepted(workload: str) -> None:
    """Built-in names and a factory in an importable module are kept as written."""
    assert parse_space(edited(("workload", workload)), source=SOURCE).workload == workload


@pytest.mark.parametrize("device", ["cpu", "cuda:0", "npu:3", "tpu:1"])
def test_device_names_accepted(device: str) -> None:
    assert parse_space(edited(("params.device", [device])), source=SOURCE).param("device")


def test_constraints_parsed() -> None:
    space = parse_space(edited(("constraints", {"accuracy": ">=0.9",
                                                "peak_memory_mb": " < 4096 "})), source=SOURCE)
    assert [str(c) for c in space.constraints] == ["accuracy >= 0.9", "peak_memory_mb < 4096"]


def test_budget_defaults_and_values() -> None:
    assert parse_space(edited(("budget", _DELETE)), source=SOURCE).budget == Budget()
    budget = parse_space(BASE, source=SOURCE).budget
    assert (budget.trial_seconds, budget.warmup_max_s, budget.window_max_s,
            budget.train_epochs) == (20, 2, 2, 1)
    assert budget.memory_mb is None
    with_cap = parse_space(edited(("budget.memory_mb", 512)), source=SOURCE)
    assert with_cap.budget.memory_mb == 512


def test_the_retired_target_spread_is_refused_in_a_file_and_dropped_from_a_stored_space(
) -> None:
    from autotune.config import TrialConfig

    with pytest.raises(SpaceError, match=r"my_space.yaml: budget.target_spread: no longer "
                                         r"used: .* use target_ci \(default 0.02"):
        parse_space(edited(("budget.target_spread", 0.1)), source=SOURCE)
    stored = parse_space(edited(("budget.target_spread", 0.1)), source=SOURCE,
                         check_files=False)  # a study made by an earlier version
    assert stored.budget == parse_space(BASE, source=SOURCE).budget
    config = TrialConfig.from_params(stored, {}).to_dict()
    config["budget"]["target_spread"] = 0.1  # a measurement row of that version
    assert TrialConfig.from_dict(config).budget.target_ci == 0.02


# -- fingerprint ---------------------------------------------------------------------------


QUICKSTART_TEXT = (SPACES_DIR / "quickstart.yaml").read_text(encoding="utf-8")


def test_fingerprint_ignores_comments_description_and_key_order() -> None:
    base = parse_space_text(QUICKSTART_TEXT, source="a")
    lines = [line for line in QUICKSTART_TEXT.splitlines() if not line.startswith("#")]
    lines = ["# a different comment", *lines]
    reworded = "\n".join(
        "description: something else entirely" if line.startswith("description:") else line
        for line in lines)
    other = parse_space_text(reworded, source="b")
    assert other.description != base.description
    assert other.fingerprint() == base.fingerprint()
    data = yaml.safe_load(QUICKSTART_TEXT)
    reordered = dict(reversed(list(data.items())))
    assert parse_space(reordered).fingerprint() == base.fingerprint()


@pytest.mark.parametrize(
    "edits",
    [
        pytest.param((("params.batch_size", {"low": 16, "high": 256, "log": True}),), id="low"),
        pytest.param((("params.batch_size", {"low": 8, "high": 128, "log": True}),), id="high"),
        pytest.param((("params.batch_size", {"low": 8, "high": 256}),), id="log"),
        pytest.param((("params.precision", ["fp32"]),), id="choices"),
        pytest.param((("params.precision", "fp32"),), id="fixed"),
        pytest.param((("constraints.accuracy", ">= 0.6"),), id="constraint"),
        pytest.param((("objectives.accuracy", "minimize"),), id="direction"),
        pytest.param((("budget.trial_seconds", 30),), id="budget"),
        pytest.param((("workload", "digits_mlp"),), id="workload"),
    ],
)
def test_fingerprint_changes_with_what_is_searched(edits: tuple[tuple[str, Any], ...]) -> None:
    base = parse_space(BASE).fingerprint()
    assert parse_space(edited(*edits)).fingerprint() != base


def test_fingerprint_is_stable_hex() -> None:
    first = parse_space(BASE).fingerprint()
    assert first == parse_space(copy.deepcopy(BASE)).fingerprint()
    assert len(first) == 64
    int(first, 16)


# -- regressions: user-controlled keys and values -------------------------------------


@pytest.mark.parametrize("choice", [["torch"], {"name": "torch"}], ids=["list", "mapping"])
def test_unhashable_backend_choice_is_a_space_error(choice: Any) -> None:
    message = space_error(edited(("params.backend", [choice])))
    assert message.startswith(f"{SOURCE}: params.backend: got ")


@pytest.mark.parametrize("edits", [
    pytest.param((("bad\nkey", 1),), id="top-level"),
    pytest.param((("params", {"batch\nsize": [8]}),), id="param"),
    pytest.param((("objectives", {"acc\nuracy": "maximize"}),), id="objective"),
])
def test_key_with_newline_gives_one_line(edits: tuple[tuple[str, Any], ...]) -> None:
    space_error(edited(*edits))


# -- review findings: sections, duplicates, integer knobs -------------------------------------


@pytest.mark.parametrize(("text", "needle"), [
    ("workload: mlp\nworkload: digits_mlp\nmode: train\nobjectives: {accuracy: maximize}\n",
     "duplicate key 'workload'"),
    ("workload: mlp\nmode: train\nobjectives: {accuracy: maximize, accuracy: minimize}\n",
     "duplicate key 'accuracy'"),
    ("workload: mlp\nmode: train\nobjectives: {accuracy: maximize}\nparams: 0\n",
     "params: must be a mapping"),
    ("workload: mlp\nmode: train\nobjectives: {accuracy: maximize}\nbudget: ''\n",
     "budget: must be a mapping"),
    ("workload: mlp\nmode: train\nobjectives: {accuracy: maximize}\nconstraints: []\n",
     "constraints: must map"),
    ("workload: mlp\nmode: train\nobjectives: {accuracy: maximize}\n"
     "params: {batch_size: {low: 16, high: 64, step: 0.5}}\n", "params.batch_size: low, high"),
    ("workload: mlp\nmode: train\nobjectives: {accuracy: maximize}\n"
     "params: {threads: {low: 1.0, high: 2.5}}\n", "params.threads: low, high"),
])
def test_review_findings_are_space_errors(text: str, needle: str) -> None:
    message = space_error(text)
    assert needle in message, message
    assert "\n" not in message


def test_empty_sections_mean_none() -> None:
    space = parse_space_text("workload: mlp\nmode: train\nobjectives: {accuracy: maximize}\n"
                             "params:\nconstraints:\nbudget:\n", source=SOURCE)
    assert space.params == () and space.constraints == ()


def test_trial_budget_too_short_to_measure_names_the_minimum(tmp_path: Path) -> None:
    import autotune
    from autotune.space import check_measurable, minimum_trial_seconds

    budget = {"trial_seconds": 2, "warmup_max_s": 0.2, "window_min_s": 0.3,
              "window_max_s": 0.5}
    data = {"workload": "mlp", "mode": "train", "objectives": {"throughput_sps": "maximize"},
            "budget": budget}
    # parsing accepts it: a study stored with such a budget stays readable
    space = parse_space(data)
    needed = minimum_trial_seconds(space.budget)
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpaceError) as info:
        autotune.create_study("short", path, storage=f"sqlite:///{tmp_path / 's.db'}")
    message = str(info.value)
    assert message.startswith(f"{path}: budget.trial_seconds: 2 s is too short")
    assert f"at least {needed:g} s" in message and "\n" not in message
    assert not (tmp_path / "s.db").exists() or autotune.list_studies(
        storage=f"sqlite:///{tmp_path / 's.db'}") == []  # nothing written
    # exactly the minimum is accepted
    check_measurable(parse_space({**data, "budget": {**budget, "trial_seconds": needed}}).budget)


def test_warmup_min_s_is_a_budget_setting_checked_against_warmup_max_s() -> None:
    space = parse_space(edited(("budget.warmup_min_s", 0.05)))
    assert space.budget.warmup_min_s == 0.05
    with pytest.raises(SpaceError, match=r"warmup_min_s \(3\) must be <= warmup_max_s \(2\)"):
        parse_space(edited(("budget.warmup_min_s", 3)))
    with pytest.raises(SpaceError, match=r"budget\.warmup_min_s: must be a positive number"):
        parse_space(edited(("budget.warmup_min_s", 0)))


def test_a_warm_up_cap_under_the_default_floor_lowers_the_floor() -> None:
    """Spaces written before warmup_min_s with warmup_max_s under 0.1 s stay valid."""
    budget = parse_space(edited(("budget.warmup_max_s", 0.02))).budget
    assert budget.warmup_min_s == budget.warmup_max_s == 0.02
