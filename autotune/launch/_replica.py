"""One replica of a data-parallel trial (started by :mod:`autotune.launch._replicas`).

``python -m autotune.launch._replica`` with ``$AUTOTUNE_REPLICA`` set: it pins itself to
its own cores before any framework loads, connects to its coordinator, receives its
share of the trial and runs the trial's ordinary code path
(:func:`autotune.launch._worker.run_trial`) with a :class:`SocketAgreement`, so its
measured loop takes every decision together with the other replicas. Its result (or
failure) is its last message.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from autotune.launch._replicas import REPLICA_ENV


class SocketAgreement:
    """:class:`autotune.profiling.loop.Agreement` over the coordinator's socket: a vote
    goes out, every replica's votes come back (one loopback round trip, taken between
    steps, outside their clock reads)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(message) + "\n").encode())

    def receive(self) -> dict[str, Any]:
        line = self.reader.readline()
        if not line:
            raise ConnectionError("the coordinator closed the rendezvous")
        message: dict[str, Any] = json.loads(line)
        return message

    def all(self, vote: Any) -> list[Any]:
        self.send({"vote": vote})
        votes: list[Any] = self.receive()["votes"]
        return votes


def main() -> None:
    """Run this replica's share of the trial; the coordinator reads the result."""
    from autotune.launch._worker import WorkerState, _die_with_parent, _guarded, run_trial

    rendezvous = json.loads(os.environ[REPLICA_ENV])
    _die_with_parent()
    sock = socket.create_connection(("127.0.0.1", int(rendezvous["port"])))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    agreement = SocketAgreement(sock)
    agreement.send({"hello": int(rendezvous["rank"])})
    config_data = agreement.receive()["config"]
    replica = config_data["replica"]
    # its own cores, before the framework starts a thread: every pool inherits them
    os.sched_setaffinity(0, replica["cpus"])
    # what torchrun sets, so a user's factory can tell its replica (a shard, a log name)
    os.environ.update(RANK=str(replica["rank"]), LOCAL_RANK=str(replica["rank"]),
                      WORLD_SIZE=str(replica["world"]))
    env = framework_environment(config_data)
    os.environ.update(env)
    if "CUDA_VISIBLE_DEVICES" in env:
        config_data["device"] = "cuda:0"  # its one visible GPU
    deadline = float(rendezvous["deadline"])
    start_s = time.time() - float(rendezvous["launched"])

    def trial() -> dict[str, Any]:
        state = WorkerState(config_data["backend"], config_data.get("threads"))
        result = run_trial(config_data, state, deadline, sync=agreement)
        result.update(replica_start_s=start_s + state.import_s,
                      worker={"pid": os.getpid(), "rank": replica["rank"],
                              "cpus": sorted(os.sched_getaffinity(0)),
                              "device": replica["device"]})
        return result

    result = _guarded(trial)
    agreement.send({"result": result})
    sock.shutdown(socket.SHUT_RDWR)
    # 0 whatever the outcome: the result says it; any other exit is a lost replica. At
    # once: a framework's destructor crashing at interpreter exit must not turn a sent
    # result into a lost replica
    os._exit(0)


def framework_environment(config_data: dict[str, Any]) -> dict[str, str]:
    """What a replica's framework must find in its environment when it starts: a
    TensorFlow training replica's cluster (``TF_CONFIG``: one worker per replica, each on
    its own port), a TensorFlow replica on a GPU only its own GPU visible
    (``MultiWorkerMirroredStrategy`` mirrors over every GPU a worker sees), a MindSpore
    training replica its role in the dynamic cluster (``MS_ROLE`` and the scheduler)."""
    env: dict[str, str] = {}
    replica = config_data["replica"]
    if config_data["backend"] == "mindspore" and config_data["mode"] == "train":
        # a worker of MindSpore's dynamic cluster, whose scheduler listens on the first
        # port (scheduler_environment)
        return {"MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1",
                "MS_SCHED_PORT": str(replica["ports"][0]),
                "MS_WORKER_NUM": str(replica["world"])}
    if config_data["backend"] != "tensorflow":
        return env
    kind, _, index = str(config_data["device"]).partition(":")
    if kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = index or "0"
    if config_data["mode"] == "train":
        # TensorFlow's cluster must be known when its runtime starts (before configure):
        # one worker per replica, each on its own port
        env["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in replica["ports"]]},
            "task": {"type": "worker", "index": replica["rank"]}})
    return env


def scheduler_environment(config: Any, ports: list[int]) -> dict[str, str] | None:
    """The environment of the helper process a trial's cluster needs besides its
    replicas (MindSpore's dynamic-cluster scheduler, for a training trial), or ``None``."""
    if config.backend != "mindspore" or config.mode != "train":
        return None
    return {"MS_ROLE": "MS_SCHED", "MS_SCHED_HOST": "127.0.0.1",
            "MS_SCHED_PORT": str(ports[0]), "MS_WORKER_NUM": str(config.data_parallel)}


def run_scheduler() -> None:
    """MindSpore's scheduler: it networks the workers and runs no training code; it lives
    until the coordinator stops it (or dies with it)."""
    from autotune.launch._worker import _die_with_parent

    _die_with_parent()
    from mindspore.communication import init

    init()
    while True:
        time.sleep(60)


if __name__ == "__main__":
    if sys.argv[1:] == ["--scheduler"]:
        run_scheduler()
    main()
