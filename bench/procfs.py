"""Process trees, CPU time and resident memory from /proc (Linux), without dependencies."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        if _stat_fields(pid) is None:
            continue
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU of these processes (a process that has exited counts 0)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICKS


def precise_cpu_seconds(pid: int) -> float:
    """The CPU time of one process in nanoseconds' resolution (/proc/<pid>/schedstat: time
    on a CPU, user and system together), where /proc/<pid>/stat counts clock ticks (10 ms).
    Falls back to ticks without schedstat; 0 if the process has gone."""
    try:
        return int((_PROC / str(pid) / "schedstat").read_text().split()[0]) / 1e9
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError, ValueError):
        return cpu_seconds([pid])


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, 0 if it has gone."""
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    return 0


class CpuMeter:
    """CPU seconds used by process trees between `start` and `stop`.

    Trees are listed again at each reading: a process started in between (a new
    PostgreSQL backend) counts all it used, one that exits in between is missed (the
    pools' backends live through every phase, so neither matters much here).
    """

    def __init__(self, roots: dict[str, int | None]) -> None:
        self.roots = roots
        self._start: dict[str, dict[int, float]] = {}

    def _read(self) -> dict[str, dict[int, float]]:
        readings: dict[str, dict[int, float]] = {}
        for name, root in self.roots.items():
            if root is None:
                continue
            readings[name] = {pid: cpu_seconds([pid]) for pid in process_tree(root)}
        return readings

    def start(self) -> None:
        self._start = self._read()

    def stop(self, seconds: float) -> dict[str, float | None]:
        """CPU used per tree since `start`, in cores (CPU seconds per wall second)."""
        end = self._read()
        used: dict[str, float | None] = {}
        for name, root in self.roots.items():
            if root is None or seconds <= 0:
                used[name] = None
                continue
            before = self._start.get(name, {})
            per_process = [cpu - before.get(pid, 0.0) for pid, cpu in end.get(name, {}).items()]
            used[name] = sum(per_process) / seconds
            # The busiest process of the tree: near `name`'s total, one worker did the work
            # (keep-alive connections that all landed on one worker, for instance).
            used[f"{name} busiest"] = max(per_process, default=0.0) / seconds
        return used
