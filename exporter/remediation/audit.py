"""The audit log: one JSON line per decision, flushed and fsync'd before the next deletion happens.

Why fsync per line: after a crash or power loss the log must still say what was deleted up to the last
completed step; a buffered log could lose exactly the lines an operator needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import IO, Any


class AuditError(Exception):
    """The audit log cannot be written; the executor then refuses to delete anything more."""


class AuditLog:
    """Append-only JSON lines at `path` (parents created); safe to call from worker threads."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        return self._file

    def check(self) -> None:
        """Open the file now, so a misconfigured path is reported at startup rather than mid-run."""
        try:
            with self._lock:
                self._open()
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        """Append one line and make it durable; raise AuditError if that is not possible."""
        line = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            try:
                handle = self._open()
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                self._close()
                raise AuditError(f"cannot write audit log {self.path}: {exc}") from exc

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        with self._lock:
            self._close()
