"""Several trials at once on one machine (``study run --jobs N``), and what a worker may run.

Each job is a thread of the driver with a warm launcher of its own whose workers are pinned
to the job's own cores (:func:`core_slots`: disjoint, so no two trials share a core and
every measurement stays as honest as a lone trial's; contention is still watched and
flagged per trial) and, where the worker has accelerators, to its own accelerator
(:func:`assign_devices`). A trial whose ``threads`` exceed a job's cores is refused before
the run starts, not measured on shared cores.

Jobs ask and tell through the same Optuna study (TPE's constant liar keeps them from
proposing the same point), share one trial quota (:class:`Quota`) and write the front under
the study's lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.exceptions import StudyError

if TYPE_CHECKING:
    from autotune.space import SearchSpace
    from autotune.study import Study


def available_cores() -> list[int]:
    """The CPUs this process may run on (its affinity: a container's share)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity outside Linux
        return list(range(os.cpu_count() or 1))


def core_slots(jobs: int, cores: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """``jobs`` disjoint, equal sets of ``cores`` (default :func:`available_cores`); the
    cores that do not divide evenly stay unused rather than making one job faster."""
    cores = list(available_cores() if cores is None else cores)
    if jobs < 1:
        raise StudyError(f"--jobs must be a positive integer, got {jobs}")
    if jobs > len(cores):
        raise StudyError(f"--jobs {jobs} needs at least {jobs} cores (one per job, never "
                         f"shared); this process may use {len(cores)}: use --jobs "
                         f"{len(cores)} or fewer")
    per = len(cores) // jobs
    return [tuple(cores[i * per:(i + 1) * per]) for i in range(jobs)]


def check_threads_fit(space: SearchSpace, cores_per_job: int, jobs: int) -> None:
    """Refuse a space whose ``threads`` values exceed a job's cores (one line)."""
    spec = space.param("threads")
    if spec is None:
        return  # threads: every core the worker may use, i.e. the job's own
    values = [v for v in spec.values_for_check() if v is not None]  # or low and high
    too_many = [int(v) for v in values if int(v) > cores_per_job]
    if too_many:
        raise StudyError(
            f"params.threads: up to {max(too_many)} threads, but --jobs {jobs} gives each "
            f"job {cores_per_job} core(s) of its own; use threads <= {cores_per_job} in the "
            "space or fewer jobs (trials never share cores)")


def space_devices(space: SearchSpace) -> list[str]:
    """The devices the study's space searches (``cpu`` when it does not say)."""
    from autotune.config import KNOB_DEFAULTS

    spec = space.param("device")
    if spec is None or not spec.choices:
        return [str(KNOB_DEFAULTS["device"])]
    return [str(d) for d in spec.choices]


def worker_devices(space: SearchSpace, declared: Sequence[str] | None) -> list[str]:
    """The space's devices this worker may run (``declared``: ``--devices``; ``None``:
    all of them). Raises :class:`StudyError` naming both when none matches."""
    searched = space_devices(space)
    if declared is None:
        return searched
    declared = [d.strip() for d in declared if d.strip()]
    usable = [d for d in searched if d in declared]
    if not usable:
        raise StudyError(f"--devices {','.join(declared)}: none of them is searched by the "
                         f"study (its devices: {', '.join(searched)}); declare one of those")
    return usable


def assign_devices(devices: Sequence[str], jobs: int) -> list[list[str]]:
    """Each job's devices: every job may run CPU trials (on its own cores); each
    accelerator belongs to exactly one job (round robin), so no two trials share one."""
    accelerators = [d for d in devices if d != "cpu"]
    cpu = ["cpu"] if "cpu" in devices else []
    out: list[list[str]] = [list(cpu) for _ in range(jobs)]
    for i, device in enumerate(accelerators):
        out[i % jobs].append(device)
    empty = [i for i, d in enumerate(out) if not d]
    if empty:
        raise StudyError(f"--jobs {jobs}: the study's devices ({', '.join(devices)}) give "
                         f"job {empty[0] + 1} nothing to run (one accelerator per job, no "
                         f"cpu in the space); use --jobs {len(accelerators)} or fewer")
    return out


#: Filesystems on which SQLite's file locks are not to be trusted (SQLite's own FAQ: NFS and
#: SMB locking is broken or absent; several machines on one file corrupt it).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "ceph", "glusterfs",
    "fuse.glusterfs", "lustre", "gpfs", "beegfs", "afs", "fuse.s3fs", "fuse.gcsfuse"})


def filesystem_type(path: Path, mounts: Path = Path("/proc/mounts")) -> str | None:
    """The type of the filesystem holding ``path`` (the longest mount point above it),
    from ``/proc/mounts``; ``None`` where that cannot be read."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    target = path.resolve()
    best: tuple[int, str] | None = None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if target == point or point in target.parents:
            depth = len(point.parts)
            if best is None or depth > best[0]:
                best = (depth, fields[2])
    return best[1] if best else None


def check_storage_for_workers(study: Study, *, allow_sqlite: bool) -> None:
    """Refuse, in one line, a SQLite storage that workers on several machines would share:
    the study has trials measured on another host, or the file is on a network filesystem
    (``allow_sqlite``: the user says it is local and single-machine)."""
    import socket

    from autotune.storage._url import sqlite_path

    path = sqlite_path(study.storage.url)
    if path is None or allow_sqlite:
        return
    kind = filesystem_type(path if path.exists() else path.parent)
    if kind in NETWORK_FILESYSTEMS:
        raise StudyError(
            f"storage {study.storage.url!r} is a SQLite file on a {kind} network filesystem: "
            "workers on several machines would corrupt it (SQLite's locks do not hold "
            "there); use PostgreSQL (postgresql+psycopg://...), or pass "
            "--i-know-sqlite-is-local if only this machine uses it")
    here = socket.gethostname()
    hosts = sorted({row.hostname for row in study.storage.machine_rows(
        {m.machine_id for m in study.storage.measurements(study.id)})} - {here})
    if hosts:
        raise StudyError(
            f"storage {study.storage.url!r} is SQLite and study {study.name!r} has trials "
            f"from another machine ({', '.join(hosts[:3])}): SQLite over a shared or copied "
            "file loses data with workers on several machines; use PostgreSQL, or pass "
            "--i-know-sqlite-is-local if the file is local to this machine")


@dataclass
class Quota:
    """How many trials a run may still start, shared by its jobs (``None``: no limit)."""

    limit: int | None
    started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    #: set on Ctrl-C: a trial whose worker ended with the run is recorded ``interrupted``
    interrupted: threading.Event = field(default_factory=threading.Event)

    def claim(self) -> bool:
        """Take one trial of the quota; ``False`` when it is used up or the run stops."""
        with self._lock:
            if self.stop.is_set() or (self.limit is not None and self.started >= self.limit):
                return False
            self.started += 1
            return True


__all__ = ["NETWORK_FILESYSTEMS", "Quota", "assign_devices", "available_cores",
           "check_storage_for_workers", "check_threads_fit", "core_slots", "filesystem_type",
           "space_devices", "worker_devices"]
