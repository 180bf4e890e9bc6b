"""A user's own model on each framework, tuned by a real study: the example factories in
``examples/models/`` (a torch CNN, a Keras functional CNN, a MindSpore Cell) run complete
trials over batch size, precision, threads, execution mode and pruning, and every trial
records the model's own parameter count, its FLOPs per sample and its % of machine peak.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

import autotune
from autotune.backends._base import cpu_capabilities

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parent.parent / "examples" / "models"
BUDGET = {"trial_seconds": 25, "warmup_max_s": 0.5, "window_min_s": 0.3, "window_max_s": 0.6,
          "window_min_steps": 5, "train_epochs": 1,
          # each enqueued configuration is the subject: measured in full, never pruned
          "early_stop": False}
#: a 16-bit precision this CPU runs natively, else fp32 (never assumed: /proc/cpuinfo)
NATIVE = cpu_capabilities().precisions


def _half(preferred: str) -> str:
    return preferred if preferred in NATIVE else "fp32"


def _study(tmp_path: Path, name: str, yaml_name: str) -> autotune.Study:
    """The example's space, with a short budget so the test stays quick."""
    import yaml

    for f in EXAMPLES.glob("*.py"):
        shutil.copy(f, tmp_path / f.name)
    data = yaml.safe_load((EXAMPLES / yaml_name).read_text())
    data["budget"] = BUDGET
    data["constraints"] = {}
    data["params"]["batch_size"] = [32, 64, 128]
    data["params"]["precision"] = ["fp32", "bf16", "fp16"]
    space_file = tmp_path / yaml_name
    space_file.write_text(yaml.safe_dump(data))
    return autotune.create_study(name, autotune.load_space(space_file),
                                 storage=f"sqlite:///{tmp_path}/u.db", sampler="random",
                                 seed=0)


def _run(study: autotune.Study, configs: list[dict[str, Any]],
         workers: Any) -> list[autotune.TrialResult]:
    ostudy = optuna.load_study(study_name=study.name, storage=study.storage.optuna)
    for params in configs:
        ostudy.enqueue_trial(params)
    return study.optimize(n_trials=len(configs), recheck_every=0, launcher=workers)


def _own_count(framework: str, factory_file: Path, **kwargs: Any) -> int:
    """The model's own parameter count, as its framework reports it."""
    sys.path.insert(0, str(factory_file.parent))
    try:
        from autotune.workloads import WorkloadRef, load_model_spec

        model = load_model_spec(WorkloadRef(f"{factory_file}:build", kwargs), framework).model
    finally:
        sys.path.remove(str(factory_file.parent))
    if framework == "torch":
        return int(sum(p.numel() for p in model.parameters()))
    if framework == "tensorflow":
        return int(model.count_params())
    return int(sum(p.size for p in model.trainable_params()))


def _check(results: list[autotune.TrialResult], own: int, structured: set[int] = frozenset()
           ) -> None:
    for i, r in enumerate(results):
        assert r.state == "ok", (r.params, r.failure_kind, r.reason)
        m = r.metrics
        if i in structured:
            assert m["param_count"] < own
        else:
            assert m["param_count"] == own, (r.params, m["param_count"], own)
        assert m["flops_per_sample"] and m["flops_per_sample"] > 0, m.get("flops_method")
        assert m["pct_of_peak"] is not None and 0 < m["pct_of_peak"] < 150, (
            m["pct_of_peak"], m["missing"].get("pct_of_peak"))
        assert m["peak_flops_per_s"] > 0
        assert m["achieved_flops_per_s"] == pytest.approx(
            m["flops_per_sample"] * m["throughput_sps"])
        assert m["accuracy"] is not None and 0 <= m["accuracy"] <= 1
        assert (m["factory_hash"] and m["factory"].endswith(":build(width=16)")) or \
            m["factory"].endswith(":build(width=128)")


def test_a_users_torch_cnn(tmp_path: Path, framework_workers: Any) -> None:
    pytest.importorskip("torch_pruning")
    study = _study(tmp_path, "torch_cnn", "torch_cnn.yaml")
    results = _run(study, [
        {"batch_size": 32, "precision": "fp32", "threads": 1, "execution": "eager",
         "pruning_ratio": 0.0, "pruning_structure": "unstructured"},
        {"batch_size": 128, "precision": _half("bf16"), "threads": 2, "execution": "graph",
         "pruning_ratio": 0.25, "pruning_structure": "unstructured"},
        {"batch_size": 64, "precision": "fp32", "threads": 2, "execution": "eager",
         "pruning_ratio": 0.5, "pruning_structure": "structured"},
    ], framework_workers)
    own = _own_count("torch", tmp_path / "torch_cnn.py", width=16)
    _check(results, own, structured={2})
    assert results[2].metrics["flops_per_sample"] < results[0].metrics["flops_per_sample"]
    # every measurement names the factory file's hash: a study cannot mix model versions
    rows = study.storage.measurements(study._row.id)
    assert len({json.loads(r.config_json)["factory_hash"] for r in rows}) == 1


def test_a_users_keras_model(tmp_path: Path, framework_workers: Any) -> None:
    pytest.importorskip("tensorflow")
    study = _study(tmp_path, "keras_model", "keras_model.yaml")
    results = _run(study, [
        {"batch_size": 32, "precision": "fp32", "threads": 1, "execution": "graph",
         "pruning_ratio": 0.0},
        {"batch_size": 128, "precision": _half("bf16"), "threads": 2, "execution": "xla",
         "pruning_ratio": 0.25},
    ], framework_workers)
    _check(results, _own_count("tensorflow", tmp_path / "keras_model.py", width=16))


def test_a_users_mindspore_cell(tmp_path: Path, framework_workers: Any) -> None:
    pytest.importorskip("mindspore")
    study = _study(tmp_path, "ms_cell", "mindspore_cell.yaml")
    results = _run(study, [
        {"batch_size": 32, "precision": "fp32", "threads": 1, "execution": "graph",
         "pruning_ratio": 0.0},
        {"batch_size": 128, "precision": _half("fp16"), "threads": 2, "execution": "eager",
         "pruning_ratio": 0.25},
    ], framework_workers)
    _check(results, _own_count("mindspore", tmp_path / "mindspore_cell.py", width=128))


def test_a_changed_factory_file_stops_the_study(tmp_path: Path, framework_workers: Any) -> None:
    study = _study(tmp_path, "torch_cnn", "torch_cnn.yaml")
    _run(study, [{"batch_size": 32, "precision": "fp32", "threads": 1, "execution": "eager",
                  "pruning_ratio": 0.0, "pruning_structure": "unstructured"}],
         framework_workers)
    factory = tmp_path / "torch_cnn.py"
    factory.write_text(factory.read_text() + "\n# edited\n")
    with pytest.raises(autotune.StudyError, match="changed since trial 0"):
        autotune.load_study("torch_cnn", storage=f"sqlite:///{tmp_path}/u.db").optimize(1)
