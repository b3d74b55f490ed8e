"""The audit log: one JSON line per decision, flushed and fsync'd before the deletion it announces happens.

Why fsync: after a crash or power loss the log must still say what was deleted up to the last completed
step; a buffered log could lose exactly the lines an operator needs. Why group commits: with a few
deletions in flight, the lines that are ready together share one fsync (`GroupCommit`), and each writer
still waits until its own line is on disk, so no DELETE is sent before its intent is durable.
"""

from __future__ import annotations

import asyncio
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
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Append the lines in order and make them durable with one fsync; AuditError if that is not possible.

        On an error none of them counts as written (some may be on disk: an intent without its DELETE
        reads as "re-checked", which is true).
        """
        text = "".join(json.dumps(r, sort_keys=True, separators=(",", ":"), default=str) + "\n" for r in records)
        with self._lock:
            try:
                handle = self._open()
                handle.write(text)
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


class GroupCommit:
    """Async writes to an AuditLog from concurrent tasks: lines waiting together share one write and fsync.

    `write` returns only once its line is durable (or raises AuditError); the file work runs in a worker
    thread, so the event loop never waits for the disk.
    """

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0  # fsyncs done, for tests and benchmarks

    async def write(self, record: dict[str, Any]) -> None:
        await self.write_many([record])

    async def write_many(self, records: list[dict[str, Any]]) -> None:
        """Queue the lines (kept together, in order) and wait until they are on disk."""
        if not records:
            return
        await asyncio.shield(self.submit(records))  # a cancelled writer does not cancel the others' fsync

    def submit(self, records: list[dict[str, Any]]) -> asyncio.Future[None]:
        """Queue the lines without waiting: the future is done once they are on disk (or AuditError).

        Lines go to disk in the order they were queued, so when a later `write` returns, every line
        submitted before it is durable too (or that write failed with it).
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not records:
            future.set_result(None)
            return future
        self._pending.extend((r, future) for r in records)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return future

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            futures = list(dict.fromkeys(f for _, f in batch))
            try:
                await asyncio.to_thread(self.log.write_many, [r for r, _ in batch])
            except AuditError as exc:
                for f in futures:
                    if not f.done():
                        f.set_exception(AuditError(str(exc)))
            except BaseException as exc:  # cancelled or a bug: no writer may wait forever
                for f in futures + [f for _, f in self._pending]:
                    if not f.done():
                        f.set_exception(AuditError(f"audit write interrupted: {exc!r}"))
                self._pending = []
                raise
            else:
                self.flushes += 1
                for f in futures:
                    if not f.done():
                        f.set_result(None)
