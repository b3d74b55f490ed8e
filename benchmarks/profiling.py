"""Where the exporter spends its time: py-spy sampling the running process (every thread) for a window.

py-spy is optional (`pip install py-spy`; not a project dependency): without it the report says so.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    """The py-spy next to this interpreter (a venv), else on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


#: Frames every stack has (thread and event-loop plumbing): left out of the inclusive ranking.
PLUMBING = ("(threading.py)", "(concurrent/futures/", "(asyncio/", "(runpy.py)", "(selectors.py)", "<module>")


def top_functions(raw: Path, limit: int = 12) -> dict[str, Any]:
    """Top functions by own (leaf) samples and by inclusive samples from py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(p in frame for p in PLUMBING):
                total[frame] += count

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": f, "percent": round(100 * n / samples, 1)} for f, n in counter.most_common(limit)]

    return {"samples": samples, "own": pct(own), "inclusive": pct(total)}


@contextlib.contextmanager
def sampled(pid: int, out: Path, rate: int = 200) -> Iterator[dict[str, Any]]:
    """Sample `pid` while the body runs; afterwards the yielded dict holds `top_functions` (or `skipped`)."""
    result: dict[str, Any] = {}
    binary = py_spy()
    if binary is None:
        result["skipped"] = "py-spy not installed (pip install py-spy)"
        yield result
        return
    proc = subprocess.Popen(
        # --gil: only the thread holding the GIL, i.e. where Python burns CPU (waits and idle workers drop out)
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--gil",
            "--format",
            "raw",
            "--nolineno",
            "-o",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)  # let py-spy attach before the measured work starts
    try:
        yield result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    if out.exists():
        result.update(top_functions(out))
    else:
        result["skipped"] = f"py-spy wrote nothing: {err.decode(errors='replace')[-300:]}"
