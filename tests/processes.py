"""What the kernel says of processes, for tests that check nothing outlives its driver."""

from __future__ import annotations

from pathlib import Path


def _stat_fields(entry: Path) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or
    ``None`` when the process is gone."""
    try:
        return (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    fields = _stat_fields(Path(f"/proc/{pid}"))
    return fields is not None and fields[0] != "Z"


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z``...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _matching(field: int, value: int) -> list[int]:
    """Live processes whose stat field ``field`` (1: parent, 2: process group) is
    ``value``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry)
            if fields is not None and int(fields[field]) == value and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def children(pid: int) -> list[int]:
    """Live child processes of ``pid``."""
    return _matching(1, pid)


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (a worker and whatever it started)."""
    return _matching(2, pgid)
