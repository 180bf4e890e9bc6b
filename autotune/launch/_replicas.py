"""A data-parallel trial: N replica processes started, kept in step and merged here.

The worker that receives a trial with ``data_parallel: N > 1`` becomes its coordinator:

1. it plans the replicas (:mod:`autotune._data_parallel`): each gets its own device, or on
   a CPU its own disjoint group of ``threads`` cores, and ``batch_size / N`` of the
   global batch;
2. it opens a rendezvous socket on a free local port and starts N fresh processes
   (:mod:`autotune.launch._replica`), each of which imports its framework pinned to its
   own cores, joins the framework's process group (torch ``init_process_group`` on
   another free port, TensorFlow's ``TF_CONFIG`` cluster) and runs the trial's own code
   path, the measured loop included (:func:`autotune.profiling.loop.run_profile`);
3. while they run it answers their agreement rounds: every replica sends its vote on
   each decision of the loop (warm-up over? window over? measure again?) and gets every
   replica's back, so all end the warm-up and the window at the same step: the measured
   window is one synchronised window, and no replica waits alone in an all-reduce;
4. it watches them: a replica that exits without a result, or fails, ends the trial at
   once (the others are killed, never left hanging), recorded ``replica_lost`` (or the
   replica's own failure, e.g. out of memory); replicas still running at the trial's
   deadline are killed;
5. it merges their results (:func:`merge`): each synchronised step took as long as its
   slowest replica; samples are the sum of the replicas' (each counted once).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from autotune.config import SAFETY_MARGIN_S, TrialConfig

#: The environment variable a replica reads its rendezvous from (JSON: port, rank).
REPLICA_ENV = "AUTOTUNE_REPLICA"
#: How often the coordinator looks at its replicas' processes while waiting (seconds).
POLL_S = 0.05
#: How long a replica's failure waits for a peer's death to show (a collective's error in
#: one replica is often the symptom of another one's death).
LOST_GRACE_S = 0.5
#: Seconds a replica's loop ends before the trial's deadline: its teardown (process group,
#: framework caches, garbage collection) and its result's way to the coordinator.
REPLICA_TEARDOWN_S = 0.5


class ReplicaLost(Exception):
    """A replica ended without a result (killed, crashed hard): the whole trial ends.
    ``kind`` is the failure kind recorded: ``replica_lost``, or ``timeout`` for replicas
    still running at the trial's deadline."""

    def __init__(self, message: str, kind: str = "replica_lost") -> None:
        super().__init__(message)
        self.kind = kind


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (the kernel's choice)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def plan(config: TrialConfig, cores: Sequence[int]) -> list[dict[str, Any]]:
    """Each replica's rank, device and cores; raises ``UnsupportedConfigError`` when the
    trial cannot be split (uneven batch, too few cores or another mode)."""
    from autotune._data_parallel import core_groups, replica_devices, split_reason
    from autotune.exceptions import UnsupportedConfigError

    n = config.data_parallel
    if config.mode == "generate":
        raise UnsupportedConfigError("data_parallel > 1 is for train and infer mode")
    reason = split_reason(config.batch_size, n)
    if reason is not None:
        raise UnsupportedConfigError(reason)
    devices = replica_devices(config.device, n)
    if config.device == "cpu":
        groups = core_groups(cores, n, config.threads)
    else:  # accelerator replicas feed their device from a share of the host's cores
        groups = core_groups(cores, n, None) if len(cores) >= n else [list(cores)] * n
    return [{"rank": r, "world": n, "device": devices[r], "cpus": groups[r]}
            for r in range(n)]


def replica_config(config: TrialConfig, replica: dict[str, Any], ports: list[int],
                   deadline: float) -> TrialConfig:
    """What replica ``replica["rank"]`` runs: its share of the global batch, on its own
    device and threads, with the rendezvous of the framework's process group."""
    return dataclasses.replace(
        config, batch_size=config.batch_size // config.data_parallel,
        device=replica["device"],
        threads=config.threads or len(replica["cpus"]),
        screen=None, memory_probe=None,
        replica={**replica, "ports": ports, "deadline": deadline})


def run_replicated(config: TrialConfig, cores: Sequence[int],
                   deadline: float) -> dict[str, Any]:
    """Run ``config`` as ``config.data_parallel`` replicas and return the merged worker
    result (``status: ok``), or the first replica's failure."""
    replicas = plan(config, cores)
    n = len(replicas)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))  # bound first: the framework's ports cannot take it
    server.listen(n)
    # torch's rendezvous uses the first port; a TensorFlow cluster one per replica
    ports = free_ports(n)
    # the replicas' loops end early enough for their teardown and their result to reach
    # the coordinator before it gives up on them
    configs = [replica_config(config, r, ports, deadline - REPLICA_TEARDOWN_S)
               for r in replicas]
    started = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        helpers += _start_helpers(config, ports)
        for r in replicas:
            procs.append(_start(server.getsockname()[1], r["rank"],
                                deadline - REPLICA_TEARDOWN_S))
        results = _coordinate(server, procs, configs, deadline)
    except ReplicaLost as e:
        return {"status": "crash", "failure_kind": e.kind, "reason": str(e),
                "traceback": ""}
    finally:
        _stop([*procs, *helpers])
        server.close()
    failed = next((r for r in results if r.get("status") != "ok"), None)
    if failed is not None:
        return failed
    merged = merge(results)
    merged["replica_start_s"] = max(float(r.get("replica_start_s", 0.0)) for r in results)
    merged["replicas_wall_s"] = time.perf_counter() - started
    return merged


def _start(port: int, rank: int, deadline: float) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env[REPLICA_ENV] = json.dumps({"port": port, "rank": rank, "deadline": deadline,
                                   "launched": time.time()})
    return subprocess.Popen([sys.executable, "-m", "autotune.launch._replica"], env=env,
                            stdin=subprocess.DEVNULL)


def _start_helpers(config: TrialConfig, ports: list[int]) -> list[subprocess.Popen[bytes]]:
    """The processes a framework's cluster needs besides the replicas (MindSpore's
    scheduler), stopped with them."""
    from autotune.launch._replica import scheduler_environment

    env = scheduler_environment(config, ports)
    if env is None:
        return []
    return [subprocess.Popen([sys.executable, "-m", "autotune.launch._replica",
                              "--scheduler"], env={**os.environ, **env},
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)]


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill the replicas still running and reap every one."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class _Conn:
    """One replica's line-oriented socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.rank: int | None = None

    def send(self, message: dict[str, Any]) -> None:
        """Send one message; a replica that died meanwhile is the process watch's to
        report (its connection is reset), not an error of the coordinator's."""
        with contextlib.suppress(OSError):
            self.sock.sendall((json.dumps(message) + "\n").encode())

    def read(self) -> list[dict[str, Any]] | None:
        """The complete messages received now; ``None`` when the replica closed it (or
        its death reset it)."""
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            return None
        if not data:
            return None
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line]


def _coordinate(server: socket.socket, procs: Sequence[subprocess.Popen[bytes]],
                configs: Sequence[TrialConfig], deadline: float) -> list[dict[str, Any]]:
    """Serve the replicas' hellos and agreement rounds until each sent its result (or one
    failed); raise :class:`ReplicaLost` for a replica that ended without one, or
    replicas still running at the deadline."""
    selector = selectors.DefaultSelector()
    conns: list[_Conn] = []
    try:
        return _serve(selector, conns, server, procs, configs, deadline)
    finally:
        for conn in conns:
            conn.sock.close()
        selector.close()


def _serve(selector: selectors.BaseSelector, conns: list[_Conn], server: socket.socket,
           procs: Sequence[subprocess.Popen[bytes]], configs: Sequence[TrialConfig],
           deadline: float) -> list[dict[str, Any]]:
    n = len(procs)
    selector.register(server, selectors.EVENT_READ)
    votes: dict[int, Any] = {}
    results: dict[int, dict[str, Any]] = {}
    #: replicas whose connection closed before their result came
    closed: set[int] = set()
    # the worker's deadline keeps SAFETY_MARGIN_S before the driver's kill: most of it
    # may go to the replicas' teardown, the rest is the merge's
    hard_stop = deadline + 0.75 * SAFETY_MARGIN_S
    while len(results) < n:
        for key, _ in selector.select(timeout=POLL_S):
            if key.fileobj is server:
                sock, _ = server.accept()
                conn = _Conn(sock)
                conns.append(conn)
                selector.register(sock, selectors.EVENT_READ, conn)
                continue
            conn = key.data
            messages = conn.read()
            if messages is None:
                selector.unregister(conn.sock)
                if conn.rank is not None and conn.rank not in results:
                    closed.add(conn.rank)
                continue  # the process watch below says how it ended
            for message in messages:
                if "hello" in message:
                    conn.rank = int(message["hello"])
                    conn.send({"config": configs[conn.rank].to_dict()})
                elif "vote" in message:
                    assert conn.rank is not None
                    votes[conn.rank] = message["vote"]
                    if len(votes) == n:
                        everyone = [votes[r] for r in range(n)]
                        votes.clear()
                        for c in conns:
                            c.send({"votes": everyone})
                elif "result" in message:
                    assert conn.rank is not None
                    result = message["result"]
                    results[conn.rank] = result
                    if result.get("status") != "ok":
                        # one replica's failure is the trial's: the others would only
                        # wait. A collective's error in a replica whose peer died is
                        # that death's symptom: the death is what is recorded.
                        _check_alive(procs, results, closed, configs, grace_s=LOST_GRACE_S)
                        reason = result.get("reason", "")
                        result["reason"] = f"replica {conn.rank} of {n}: {reason}"
                        return [result]
        _check_alive(procs, results, closed, configs)
        if time.perf_counter() > hard_stop:
            raise ReplicaLost(f"the {n} replicas were still running at the trial's "
                              "deadline; all were stopped", kind="timeout")
    return [results[r] for r in range(n)]


def _check_alive(procs: Sequence[subprocess.Popen[bytes]], results: dict[int, Any],
                 closed: set[int], configs: Sequence[TrialConfig],
                 grace_s: float = 0.0) -> None:
    """Raise :class:`ReplicaLost` for a replica that ended without sending its result:
    killed or crashed (an exit code other than 0; a replica that exits 0 has sent its
    result, which may still be on its way), or closed its connection without one.
    Waits up to ``grace_s`` for one to be seen ending."""
    n = len(procs)
    until = time.perf_counter() + grace_s
    while True:
        for rank, p in enumerate(procs):
            code = p.poll()
            if rank not in results and (code not in (None, 0) or
                                        (code == 0 and rank in closed)):
                cpus = ",".join(map(str, (configs[rank].replica or {}).get("cpus", [])))
                raise ReplicaLost(f"replica {rank} of {n} ({configs[rank].device}, cpus "
                                  f"{cpus}) {_exit_text(code)} before the trial ended; "
                                  "the other replicas were stopped")
        if time.perf_counter() >= until:
            return
        time.sleep(POLL_S / 5)


# -- merging ----------------------------------------------------------------------------


def _slowest(series: Sequence[Sequence[float]]) -> list[float]:
    """Per step, the slowest replica's time (steps are aligned by the agreement rounds)."""
    if not series:
        return []
    length = min(len(s) for s in series)
    return [max(s[i] for s in series) for i in range(length)]


def _merge_energy(readings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One reading for the window: a package-wide counter (RAPL) already covers every
    replica on the package, so rank 0's is taken; per-device counters and per-process
    estimates are summed."""
    first = dict(readings[0])
    if first.get("source") == "rapl" or len(readings) == 1:
        return first
    values = [r.get("energy_j") for r in readings]
    first["energy_j"] = None if any(v is None for v in values) else \
        float(sum(v for v in values if v is not None))
    first["window_s"] = max(float(r.get("window_s", 0.0)) for r in readings)
    first["samples"] = sum(int(r.get("samples", 0)) for r in readings)
    if first["energy_j"] is not None:
        first["model"] = f"{first.get('model', '')} (summed over {len(readings)} replicas)"
    return first


def _comm_fraction(results: Sequence[dict[str, Any]]) -> tuple[float | None, str]:
    """The replicas' mean share of step time with an all-reduce in flight."""
    shares = []
    for r in results:
        comm, times = r.get("step_comm_s") or [], r.get("step_times_s") or []
        if not comm or len(comm) != len(times) or sum(times) <= 0:
            how = (r.get("model") or {}).get("data_parallel") or {}
            reason = how.get("comm_reason") or (
                "the framework does not expose the time of its all-reduce")
            return None, reason
        shares.append(sum(comm) / sum(times))
    return sum(shares) / len(shares), ""


def merge(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One worker result from the replicas' (all ``status: ok``), in rank order."""
    first = results[0]
    out = dict(first)
    out["step_times_s"] = _slowest([r["step_times_s"] for r in results])
    out["warmup_step_times_s"] = _slowest([r["warmup_step_times_s"] for r in results])
    out["samples"] = sum(int(r["samples"]) for r in results)
    for key in ("window_s", "warmup_s", "first_step_s", "eval_s", "setup_s", "data_s"):
        out[key] = max(float(r.get(key, 0.0)) for r in results)
    out["energy"] = _merge_energy([r["energy"] for r in results])
    contended = [r for r in results if (r.get("contention") or {}).get("contended")]
    if contended:
        out["contention"] = contended[0]["contention"]
    out["warnings"] = list(dict.fromkeys(w for r in results for w in r.get("warnings", [])))
    out["remeasured"] = max(int(r.get("remeasured", 0)) for r in results)
    # host memory: every CPU replica's resident memory is the trial's; a device's peak is
    # per device, and the largest is what each device must hold
    out["peak_rss_bytes"] = sum(int(r.get("peak_rss_bytes") or 0) for r in results)
    out["baseline_rss_bytes"] = sum(int(r.get("baseline_rss_bytes") or 0) for r in results)
    device_peaks = [r.get("device_peak_memory_bytes") for r in results]
    out["device_peak_memory_bytes"] = None if any(p is None for p in device_peaks) else \
        max(int(p) for p in device_peaks if p is not None)
    out["replicas"] = len(results)
    out["replica_step_times_s"] = [list(r["step_times_s"]) for r in results]
    out["comm_fraction"], out["comm_fraction_reason"] = _comm_fraction(results)
    out["replica_workers"] = [r.get("worker", {}) for r in results]
    out.pop("step_comm_s", None)
    return out
