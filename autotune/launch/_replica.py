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


def main() -> int:
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
    if config_data["backend"] == "tensorflow" and config_data["mode"] == "train":
        # TensorFlow's cluster must be known when its runtime starts (before configure):
        # one worker per replica, each on its own port
        os.environ["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in replica["ports"]]},
            "task": {"type": "worker", "index": replica["rank"]}})
    deadline = float(rendezvous["deadline"])
    start_s = time.time() - float(rendezvous["launched"])

    def trial() -> dict[str, Any]:
        state = WorkerState(config_data["backend"], config_data.get("threads"))
        result = run_trial(config_data, state, deadline, sync=agreement)
        result.update(replica_start_s=start_s + state.import_s,
                      worker={"pid": os.getpid(), "rank": config_data["replica"]["rank"],
                              "cpus": sorted(os.sched_getaffinity(0)),
                              "device": config_data["device"]})
        return result

    result = _guarded(trial)
    agreement.send({"result": result})
    # 0 whatever the outcome: the result says it; any other exit is a lost replica
    return 0


if __name__ == "__main__":
    sys.exit(main())
