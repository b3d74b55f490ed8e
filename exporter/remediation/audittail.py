"""The audit log read back: its last records, newest first, for the landing page.

Beside the writer (audit.py) because both know the file's shape: one JSON object per line, appended. The
file grows forever, so only its end is read, in a worker thread and under a timeout: a slow disk must not
stall the event loop or the page.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from typing import Any

#: The landing page's audit tail: the last lines, read from at most this many bytes at the end of the file.
AUDIT_TAIL_LINES = 20
AUDIT_TAIL_MAX_BYTES = 256 * 1024
AUDIT_TAIL_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class AuditTail:
    """The newest audit records first; `problem` says why some or all could not be read (None: all fine).

    A line that is not a JSON object comes back as `{"unreadable": <its text>}` so the page can show it.
    """

    records: tuple[dict[str, Any], ...]
    problem: str | None = None


def read_audit_tail(path: str | os.PathLike[str], lines: int, max_bytes: int = AUDIT_TAIL_MAX_BYTES) -> AuditTail:
    """The last `lines` records of an audit log, reading only its last `max_bytes` (it grows forever).

    Blocking: call it in a worker thread. A missing file is no problem (no run has written yet); a
    cut-off first line (the read started mid-line) is dropped; corrupt lines are returned as unreadable.
    """
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            start = max(0, end - max_bytes)
            handle.seek(start)
            data = handle.read(end - start)
    except FileNotFoundError:
        return AuditTail(())
    except OSError as exc:
        return AuditTail((), f"cannot read audit log {path}: {exc.strerror or exc}")
    chunks = data.split(b"\n")
    if start > 0:
        chunks = chunks[1:]
    records: list[dict[str, Any]] = []
    unreadable = 0
    for raw in reversed(chunks):
        if len(records) >= lines:
            break
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            unreadable += 1
            record = {"unreadable": text}
        records.append(record)
    problem = f"{unreadable} unreadable line(s) in audit log {path}" if unreadable else None
    return AuditTail(tuple(records), problem)


async def recent_audit(path: str | os.PathLike[str], lines: int = AUDIT_TAIL_LINES) -> AuditTail:
    """The audit log's last lines, read in a worker thread (a slow disk must not stall the event loop)."""
    try:
        async with asyncio.timeout(AUDIT_TAIL_TIMEOUT_SECONDS):  # not wait_for: it can swallow a cancel
            return await asyncio.to_thread(read_audit_tail, path, lines)
    except TimeoutError:
        return AuditTail((), f"reading audit log {path} took over {AUDIT_TAIL_TIMEOUT_SECONDS:g}s")
