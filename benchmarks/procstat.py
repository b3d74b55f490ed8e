"""What the kernel says about a process: resident memory and CPU time (all threads)."""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS of `pid` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (every thread), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the command: state(0) ppid(1) ... utime is field 14 of stat, i.e. index 11 here, stime 12
    return (int(fields[11]) + int(fields[12])) / _TICKS


def cpu_percent(pids: list[int], seconds: float) -> dict[int, float]:
    """Percent of one core each of `pids` used over the same `seconds` of wall time (idle CPU)."""
    before = {pid: cpu_seconds(pid) for pid in pids}
    start = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - start
    return {pid: round(100 * (cpu_seconds(pid) - before[pid]) / wall, 3) for pid in pids}
