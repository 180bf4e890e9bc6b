"""Data parallelism as a search dimension (``data_parallel``, ``memory_format``).

The rules (splits, core groups, the agreed window, the merge of replica results, the
scaling view) are checked without a framework; then real trials: torch and TensorFlow
replicas on this CPU's cores, a replica killed mid-trial, and the memory-layout knob.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

import autotune
from autotune._data_parallel import (
    core_groups,
    precheck_reason,
    replica_devices,
    scaling_efficiency,
    split_reason,
)
from autotune._run import run_config
from autotune.cli import main
from autotune.config import Budget, TrialConfig
from autotune.exceptions import SpaceError, StudyError, UnsupportedConfigError
from autotune.launch._replicas import merge
from autotune.profiling.loop import _agreed_stop, run_profile
from autotune.profiling.measurement import Measurement
from autotune.profiling.meters_base import EnergyReading

MODELS = Path(__file__).parent / "models"
#: short windows, early stopping off: these tests read each trial's full measurement
FAST = {"trial_seconds": 40, "warmup_max_s": 0.5, "window_min_s": 0.2, "window_max_s": 0.6,
        "window_min_steps": 10, "train_epochs": 1, "early_stop": False}


def _config(**knobs: Any) -> TrialConfig:
    base: dict[str, Any] = {
        "workload": "digits_mlp", "mode": "train", "backend": "torch", "device": "cpu",
        "batch_size": 64, "precision": "fp32", "learning_rate": 3e-3, "optimizer": "adam",
        "pruning_ratio": 0.0, "threads": 1, "budget": Budget(**FAST), "execution": "eager"}
    base.update(knobs)
    return TrialConfig(**base)


def _space(**params: Any) -> dict[str, Any]:
    return {"workload": "digits_mlp", "mode": "train",
            "objectives": {"throughput_sps": "maximize"},
            "params": {"threads": [1], **params}, "budget": FAST}


# -- the rules ---------------------------------------------------------------------------


def test_a_global_batch_splits_evenly_or_is_refused_with_the_reason() -> None:
    assert split_reason(64, 1) is None and split_reason(64, 4) is None
    reason = split_reason(30, 4)
    assert reason is not None and "batch_size 30" in reason and "multiple of 4" in reason


def test_cpu_replicas_get_disjoint_core_groups_and_too_few_cores_are_refused() -> None:
    assert core_groups([0, 1, 2, 3], 2, 1) == [[0], [1]]
    assert core_groups([0, 1, 2, 3], 2, 2) == [[0, 1], [2, 3]]
    assert core_groups([4, 5, 6, 7], 2, None) == [[4, 5], [6, 7]]
    with pytest.raises(UnsupportedConfigError, match=r"data_parallel=2 with threads=2 needs "
                                                      r"2 x 2 cores.*may use 2 \(0,1\)"):
        core_groups([0, 1], 2, 2)


def test_accelerator_replicas_take_consecutive_devices() -> None:
    assert replica_devices("cuda:2", 3) == ["cuda:2", "cuda:3", "cuda:4"]
    assert replica_devices("cpu", 2) == ["cpu", "cpu"]


@pytest.mark.parametrize(("params", "key", "text"), [
    ({"data_parallel": [1, 4], "batch_size": [32, 30]}, "params.batch_size",
     "batch_size 30 does not split evenly over data_parallel=4"),
    ({"data_parallel": [2], "backend": ["tensorflow"], "device": ["tpu:0"]},
     "params.data_parallel", "TPUStrategy"),
    ({"data_parallel": [0]}, "params.data_parallel", "a positive integer"),
    ({"memory_format": ["nhwc"]}, "params.memory_format", "contiguous, channels_last"),
])
def test_bad_data_parallel_input_is_one_line_at_create_time(
        params: dict[str, Any], key: str, text: str) -> None:
    with pytest.raises(SpaceError) as info:
        autotune.parse_space(_space(**params))
    message = str(info.value)
    assert "\n" not in message and f"{key}: " in message and text in message


def test_generate_mode_refuses_data_parallel_at_create_time() -> None:
    space = {"workload": "gpt", "mode": "generate",
             "objectives": {"decode_tokens_per_s": "maximize"},
             "params": {"data_parallel": [1, 2]}}
    with pytest.raises(SpaceError, match=r"params.data_parallel: .*train and infer"):
        autotune.parse_space(space)


def test_more_replicas_than_this_machine_has_cores_is_refused_at_create(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autotune._jobs import available_cores

    too_many = len(available_cores()) + 1
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(_space(data_parallel=[1, too_many],
                                          batch_size=[16 * too_many])))
    url = f"sqlite:///{tmp_path}/s.db"
    with pytest.raises(StudyError, match=rf"params.data_parallel: data_parallel={too_many} "
                                         r"with threads=1 needs"):
        autotune.create_study("dp", path, storage=url)
    assert main(["study", "create", "dp", "--space", str(path), "--storage", url]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cores" in err and "Traceback" not in err
    assert not autotune.list_studies(storage=url)  # nothing was written


def test_jobs_may_not_share_out_the_devices_of_an_accelerator_replica_set() -> None:
    from autotune._data_parallel import check_jobs

    space = autotune.parse_space(_space(data_parallel=[1, 2], device=["cpu"]))
    assert check_jobs(space, ["cpu"], 2) is None  # CPU replicas split each job's cores
    problem = check_jobs(space, ["cuda:0", "cuda:1"], 2)
    assert problem is not None and "--jobs 2" in problem and "--jobs 1" in problem
    assert check_jobs(space, ["cuda:0", "cuda:1"], 1) is None


def test_prechecks_refuse_what_depends_on_the_sampled_values() -> None:
    assert precheck_reason(_config(data_parallel=1, batch_size=37)) is None
    from autotune._jobs import available_cores

    cores = len(available_cores())
    too_wide = precheck_reason(_config(data_parallel=2, threads=cores))
    assert too_wide is not None and "this machine has" in too_wide
    assert "does not split" in (precheck_reason(_config(data_parallel=2, batch_size=37)) or "")
    assert precheck_reason(_config(data_parallel=2, backend="mindspore")) is None
    assert "tpu" in (precheck_reason(_config(data_parallel=2, backend="tensorflow",
                                             device="tpu:0")) or "").lower()
    from autotune._run import precheck

    reason = precheck(_config(backend="tensorflow", memory_format="channels_last"))
    assert reason is not None and "already run channels-last" in reason


def test_default_scale_knobs_stay_out_of_a_configuration_shown() -> None:
    assert "data_parallel" not in _config().mode_knobs()
    assert "memory_format" not in _config().mode_knobs()
    assert _config(data_parallel=2).mode_knobs()["data_parallel"] == 2


# -- one window for every replica ----------------------------------------------------------


def test_a_hard_stop_of_any_replica_ends_the_window_a_met_interval_needs_all() -> None:
    assert _agreed_stop([None, "deadline"]) == "deadline"
    assert _agreed_stop(["ci_met", "window_max_s"]) == "window_max_s"
    assert _agreed_stop(["ci_met", None]) is None
    assert _agreed_stop(["ci_met", "ci_met"]) == "ci_met"


class _SteadyBackend:
    """A duck-typed backend of identical 1 ms steps on a virtual clock (``simulated``:
    the loop reads ``clock()``), so the window's decisions do not depend on the load of
    the machine running the test."""

    steps_per_epoch = 1000
    simulated = True

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def step(self) -> int:
        self.now += 0.001
        return 8

    def synchronize(self) -> None:
        pass

    def evaluate(self) -> None:
        return None

    def between_steps(self) -> None:
        pass


class _PeerThatNeedsLonger:
    """The other replica's votes: not done until the fifth agreement of the window (its
    40th step: replicas agree every 8 steps), so the window must run on past this
    replica's own verdict."""

    def __init__(self) -> None:
        self.window_rounds = 0
        self.warmed_up = False

    def all(self, vote: Any) -> list[Any]:
        if not self.warmed_up:  # warm-up: it agrees with whatever this replica says
            self.warmed_up = vote == "stable"
            return [vote, vote]
        if isinstance(vote, list):  # the re-measure vote: (contended, time left)
            return [vote, [False, True]]
        self.window_rounds += 1  # one round per CI_CHECK_EVERY (8) window steps
        peer = "ci_met" if self.window_rounds >= 5 else None
        return [vote, peer]


def test_the_window_ends_only_when_every_replica_agrees() -> None:
    from autotune.profiling.power import NullMeter

    config = _config(mode="infer", budget=Budget(warmup_max_s=0.05, window_min_s=0.0,
                                                 window_min_steps=8, window_max_s=5.0,
                                                 target_ci=0.5))
    solo = run_profile(_SteadyBackend(), config, NullMeter(), 10.0)
    peer = _PeerThatNeedsLonger()
    agreed = run_profile(_SteadyBackend(), config, NullMeter(), 10.0, sync=peer)
    assert solo["stop_reason"] == agreed["stop_reason"] == "ci_met"
    assert len(solo["step_times_s"]) == 8  # its own interval was met at the first check
    assert len(agreed["step_times_s"]) == 40  # it waited for the other replica's


# -- merging the replicas' results ---------------------------------------------------------


def _replica_result(times: list[float], *, energy: float | None, source: str,
                    comm: list[float] | None, rss: int, rank: int) -> dict[str, Any]:
    return {"status": "ok", "step_times_s": times, "warmup_step_times_s": [0.01, 0.01],
            "samples": 32 * len(times), "window_s": sum(times) + 0.001 * rank,
            "warmup_s": 0.02, "first_step_s": 0.1, "eval_s": 0.0, "setup_s": 0.5,
            "data_s": 0.1, "import_s": 1.0, "process_start_s": 0.0, "threads": 1,
            "energy": dataclasses.asdict(EnergyReading(energy, source, sum(times), 3)),
            "peak_rss_bytes": rss, "baseline_rss_bytes": rss // 2, "peak_rss_scope": "trial",
            "device_peak_memory_bytes": None, "accuracy": 0.9, "stop_reason": "ci_met",
            "warnings": [f"w{rank}"], "model": {"param_count": 10}, "step_comm_s": comm,
            "contention": None}


def test_a_merged_step_is_its_slowest_replica_and_every_sample_counts_once() -> None:
    a = _replica_result([0.010, 0.012, 0.011], energy=1.0, source="estimated",
                        comm=[0.004, 0.004, 0.004], rss=100, rank=0)
    b = _replica_result([0.011, 0.010, 0.013], energy=2.0, source="estimated",
                        comm=[0.002, 0.002, 0.002], rss=200, rank=1)
    merged = merge([a, b])
    assert merged["step_times_s"] == [0.011, 0.012, 0.013]
    assert merged["samples"] == 2 * 32 * 3 == 64 * 3  # each replica's share, once
    assert merged["replicas"] == 2
    assert merged["replica_step_times_s"] == [a["step_times_s"], b["step_times_s"]]
    assert merged["energy"]["energy_j"] == 3.0  # per-process estimates add up
    assert merged["peak_rss_bytes"] == 300 and merged["warnings"] == ["w0", "w1"]
    assert merged["comm_fraction"] == pytest.approx(
        (0.012 / 0.033 + 0.006 / 0.034) / 2)
    m = Measurement.from_worker(merged, samples_per_step=64, mode="train")
    assert m.throughput_sps == pytest.approx(64 / 0.012)  # global batch / median step
    assert m.sustained_throughput_sps == pytest.approx(64 * 3 / merged["window_s"])
    assert m.metrics()["comm_fraction"] == merged["comm_fraction"]
    assert m.summary()["replicas"] == 2


def test_a_package_counter_is_not_counted_once_per_replica() -> None:
    a = _replica_result([0.01] * 3, energy=5.0, source="rapl", comm=None, rss=1, rank=0)
    b = _replica_result([0.01] * 3, energy=5.1, source="rapl", comm=None, rss=1, rank=1)
    merged = merge([a, b])
    assert merged["energy"]["energy_j"] == 5.0
    assert merged["comm_fraction"] is None
    assert "does not expose" in merged["comm_fraction_reason"]
    m = Measurement.from_worker(merged, samples_per_step=64, mode="train")
    assert "does not expose" in m.missing_reasons()["comm_fraction"]


def test_scaling_efficiency_compares_with_the_best_single_replica_of_the_same_config(
        ) -> None:
    one = {"batch_size": 64, "data_parallel": 1, "threads": 2}
    one_slow = {"batch_size": 64, "data_parallel": 1, "threads": 1}
    two = {"batch_size": 64, "data_parallel": 2, "threads": 1}
    other = {"batch_size": 128, "data_parallel": 2, "threads": 1}
    assert scaling_efficiency([(one, 100.0), (one_slow, 60.0), (two, 150.0),
                               (other, 300.0)]) == [1.0, 0.6, 0.75, None]


# -- real trials ---------------------------------------------------------------------------


@pytest.mark.slow
def test_torch_study_over_one_and_two_replicas_counts_each_sample_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(_space(data_parallel=[1, 2], batch_size=[64])))
    url = f"sqlite:///{tmp_path}/s.db"
    assert main(["study", "create", "dp", "--space", str(path), "--storage", url]) == 0
    ostudy = optuna.load_study(study_name="dp", storage=url)
    for degree in (1, 2):  # both degrees, whatever the sampler would pick
        ostudy.enqueue_trial({"data_parallel": degree, "batch_size": 64, "threads": 1})
    capsys.readouterr()
    assert main(["study", "run", "dp", "--n-trials", "2", "--storage", url]) == 0
    with autotune.load_study("dp", storage=url) as study:
        trials = study.trials()
        assert [t.state for t in trials] == ["ok", "ok"], [t.reason for t in trials]
        raw = {json.loads(r.config_json)["data_parallel"]: json.loads(r.raw_json)
               for r in study.storage.measurements(study.id)}
    two = raw[2]
    assert two["replicas"] == 2 and len(two["replica_step_times_s"]) == 2
    steps = len(two["step_times_s"])
    # the synchronised window: both replicas ran the same steps; the global batch of 64
    # is 32 per replica, and the samples are counted once
    assert [len(t) for t in two["replica_step_times_s"]] == [steps, steps]
    assert two["samples"] == 64 * steps
    assert two["step_times_s"] == [max(a, b) for a, b in zip(*two["replica_step_times_s"],
                                                             strict=True)]
    m2 = Measurement(**two)
    assert m2.throughput_sps == pytest.approx(64 / statistics.median(two["step_times_s"]))
    assert 0 < two["comm_fraction"] < 1  # DDP's all-reduce over gloo, timed by its hook
    assert two["model"]["data_parallel"]["collective"] == "gloo"
    assert raw[1]["replicas"] == 1 and raw[1]["comm_fraction"] == 0.0
    assert 0.5 < two["accuracy"] <= 1.0  # the replicas trained one model together

    assert main(["study", "show", "dp", "--storage", url]) == 0
    text = capsys.readouterr().out
    assert "Scaling over replicas" in text and "scaling_efficiency" in text
    assert main(["study", "show", "dp", "--storage", url, "--json"]) == 0
    scaling = {p["replicas"]: p for p in json.loads(capsys.readouterr().out)["scaling"]}
    assert scaling[1]["scaling_efficiency"] == pytest.approx(1.0)
    expected = scaling[2]["throughput_sps"] / (2 * scaling[1]["throughput_sps"])
    assert scaling[2]["scaling_efficiency"] == pytest.approx(expected)
    assert 0 < scaling[2]["comm_fraction"] < 1

    pytest.importorskip("plotly")
    from autotune.dashboard.app import DashboardApp
    from tests.test_dashboard_app import get

    status, _, body = get(DashboardApp(url), "/study/dp")
    assert status == 200 and "Scaling over replicas" in body and 'id="scaling"' in body


@pytest.mark.slow
def test_a_replica_killed_mid_trial_fails_the_trial_and_the_study_goes_on(
        tmp_path: Path) -> None:
    from autotune.launch import WarmLauncher

    factory = f"{MODELS / 'user_torch.py'}:dies_in_replica_one"
    config = _config(workload=factory, data_parallel=2, budget=Budget(
        **{**FAST, "trial_seconds": 20, "window_max_s": 5}))
    with WarmLauncher() as launcher:
        run = run_config(config, launcher)
    assert run.state == "fail" and run.failure_kind == "replica_lost"
    assert "replica 1 of 2" in run.reason and "SIGKILL" in run.reason
    assert run.wall_s < config.budget.trial_seconds

    space = _space(data_parallel=[2])
    space["workload"] = factory
    study = autotune.create_study("lost", autotune.parse_space(space),
                                  storage=f"sqlite:///{tmp_path}/s.db")
    results = study.optimize(n_trials=2)
    assert [(r.state, r.failure_kind) for r in results] == [("fail", "replica_lost")] * 2


@pytest.mark.slow
def test_tensorflow_study_over_one_and_two_replicas(tmp_path: Path,
                                                     framework_workers: Any) -> None:
    """The same study on TensorFlow: both degrees complete, the 2-replica trial trains one
    model with MultiWorkerMirroredStrategy, its samples count once, its comm_fraction is
    missing with the reason, and the scaling view has its efficiency."""
    pytest.importorskip("tensorflow")
    from autotune._data_parallel import scaling_points

    space = _space(data_parallel=[1, 2], batch_size=[64], backend=["tensorflow"],
                   execution=["graph"])
    study = autotune.create_study("tf", autotune.parse_space(space),
                                  storage=f"sqlite:///{tmp_path}/s.db")
    ostudy = optuna.load_study(study_name="tf", storage=f"sqlite:///{tmp_path}/s.db")
    for degree in (1, 2):
        ostudy.enqueue_trial({"data_parallel": degree, "batch_size": 64, "threads": 1,
                              "backend": "tensorflow", "execution": "graph"})
    results = study.optimize(n_trials=2, launcher=framework_workers)
    assert [r.state for r in results] == ["ok", "ok"], [r.reason for r in results]
    two = next(r for r in results if r.params["data_parallel"] == 2)
    assert two.metrics["replicas"] == 2
    assert two.metrics["data_parallel"]["how"] == "tf.distribute.MultiWorkerMirroredStrategy"
    assert two.metrics["comm_fraction"] is None
    assert "does not expose" in two.metrics["missing"]["comm_fraction"]
    assert two.metrics["accuracy"] > 0.5
    row = next(r for r in study.storage.measurements(study.id) if r.trial_number == two.number)
    raw = json.loads(row.raw_json)
    assert raw["samples"] == 64 * len(raw["step_times_s"])
    points = {p.replicas: p for p in scaling_points(study)}
    assert points[2].scaling_efficiency == pytest.approx(
        points[2].throughput_sps / (2 * points[1].throughput_sps))
    eager = run_config(_config(backend="tensorflow", execution="eager", data_parallel=2),
                       framework_workers)
    assert eager.state == "infeasible" and "tf.function graphs" in eager.reason


@pytest.mark.slow
def test_mindspore_replicas_train_in_its_data_parallel_mode(framework_workers: Any) -> None:
    """MindSpore's dynamic cluster on this CPU: the coordinator starts its scheduler, each
    replica joins it as a worker and averages its gradients with DistributedGradReducer."""
    pytest.importorskip("mindspore")
    config = _config(backend="mindspore", execution="graph", data_parallel=2,
                     budget=Budget(**{**FAST, "trial_seconds": 60, "window_max_s": 0.3}))
    run = run_config(config, framework_workers)
    assert run.ok, run.reason
    m = run.measurement
    assert m is not None and m.replicas == 2
    assert m.samples == 64 * len(m.step_times_s)
    assert "DATA_PARALLEL" in m.model["data_parallel"]["how"]
    assert m.comm_fraction is None and "does not expose" in m.missing_reasons()["comm_fraction"]
    eager = run_config(dataclasses.replace(config, execution="eager"), framework_workers)
    assert eager.state == "infeasible" and "graph mode only" in eager.reason


@pytest.mark.slow
def test_channels_last_runs_a_conv_model_and_is_refused_for_one_without(
        framework_workers: Any) -> None:
    cnn = _config(workload="cnn", mode="infer", memory_format="channels_last")
    run = run_config(cnn, framework_workers)
    assert run.ok, run.reason
    assert run.measurement is not None
    assert run.measurement.model["memory_format"] == "channels_last"
    mlp = run_config(dataclasses.replace(cnn, workload="digits_mlp"), framework_workers)
    assert mlp.state == "infeasible" and "no 2-D convolution" in mlp.reason


def test_a_recommended_data_parallel_config_is_spelled_in_the_framework() -> None:
    from autotune.backends import get_spec

    knobs = {"batch_size": 128, "data_parallel": 2, "device": "cpu", "optimizer": "adam",
             "learning_rate": 1e-3, "precision": "fp32", "pruning_ratio": 0.0,
             "memory_format": "channels_last"}
    torch = get_spec("torch").launch_config(knobs, mode="train")
    assert torch["data_parallel"]["per_replica_batch"] == 64
    assert torch["data_parallel"]["process_group"] == "gloo"
    assert "DistributedDataParallel" in torch["data_parallel"]["train"]
    assert "channels_last" in torch["memory_format"]
    tf = get_spec("tensorflow").launch_config({**knobs, "execution": "graph"}, mode="infer")
    assert tf["data_parallel"]["train"] is None and "independent" in tf["data_parallel"]["infer"]
    one = get_spec("torch").launch_config({**knobs, "data_parallel": 1,
                                           "memory_format": "contiguous"}, mode="train")
    assert "data_parallel" not in one and "memory_format" not in one


def test_a_connection_reset_by_a_dying_replica_reads_as_closed() -> None:
    """A replica killed between its vote and the reply resets its connection: the
    coordinator reads that as closed (its process watch then names the replica), it does
    not crash on ConnectionResetError."""
    import socket
    import struct

    from autotune.launch._replicas import _Conn

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    conn = _Conn(server.accept()[0])
    conn.send({"votes": [None, None]})  # unread by the client: its close resets
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    assert conn.read() is None
    conn.send({"votes": [None]})  # to a reset connection: no error either
    conn.sock.close()
    server.close()


def test_a_tensorflow_replica_sees_its_cluster_and_only_its_own_gpu() -> None:
    from autotune.launch._replica import framework_environment

    replica = {"rank": 1, "world": 2, "ports": [4001, 4002]}
    env = framework_environment({"backend": "tensorflow", "device": "cuda:3",
                                 "mode": "train", "replica": replica})
    assert env["CUDA_VISIBLE_DEVICES"] == "3"
    cluster = json.loads(env["TF_CONFIG"])
    assert cluster == {"cluster": {"worker": ["127.0.0.1:4001", "127.0.0.1:4002"]},
                       "task": {"type": "worker", "index": 1}}
    assert framework_environment({"backend": "tensorflow", "device": "cpu", "mode": "infer",
                                  "replica": replica}) == {}  # independent replicas
    assert framework_environment({"backend": "torch", "device": "cuda:1", "mode": "train",
                                  "replica": replica}) == {}  # torch places cuda:K itself
