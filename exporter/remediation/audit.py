"""The audit log: one JSON line per decision, flushed and fsync'd before the deletion it announces happens.

Why fsync: after a crash or power loss the log must still say what was deleted up to the last completed
step; a buffered log could lose exactly the lines an operator needs. Why group commits: with a few
deletions in flight, the lines that are ready together share one fsync (`GroupCommit`), and each writer
still waits until its own line is on disk, so no DELETE is sent before its intent is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import threading
from pathlib import Path
from typing import Any


class AuditError(Exception):
    """The audit log cannot be written; the executor then refuses to delete anything more."""


class AuditLog:
    """Append-only JSON lines at `path` (parents created); safe to call from worker threads.

    Log rotation: before every write the file open here is compared with the file at `path` (device and
    inode, as `logging.handlers.WatchedFileHandler` does); when they differ, or when `path` is gone, the file
    at `path` is opened (created if need be) and the lines go there. `reopen()` (SIGHUP) does it at once. What
    remains: a rename between that check and the write puts that one batch, complete and fsync'd, into the
    renamed file, which still holds it; the next batch goes to the new file. `copytruncate` needs nothing
    here: with O_APPEND every write lands at the end of the truncated file (a line written between
    logrotate's copy and its truncate is lost by logrotate itself: docs/remediation.md advises `create`).

    Partial lines: a batch is one `os.write` of whole lines, so a line is cut only when the disk fills up
    mid-write (ENOSPC). Each time the file is opened (at start, after a failed write, after a rotation) its
    last byte is read: if it is not a newline, the next batch starts with one, so a cut line stays alone on
    its line and the next record starts on its own.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file open as _fd
        self._cut = False  # the file open as _fd may end in the middle of a line

    def reopen(self) -> None:
        """Close the file and open the one at `path` now (SIGHUP): a rotated or deleted file is let go at once.

        Blocking (it waits for a write in progress): call it in a worker thread. AuditError if the path
        cannot be opened; the next write tries again.
        """
        try:
            with self._lock:
                self._close()
                self._open()
        except OSError as exc:
            raise AuditError(f"cannot open audit log {self.path}: {exc}") from exc

    def _open(self) -> int:
        """The file descriptor to write to: the file currently at `path`, opened if need be."""
        if self._fd is not None and self._identity == self._identity_at_path():
            return self._fd
        self._close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_RDWR, 0o640)
            readable = True
        except PermissionError:  # a write-only file: its last byte cannot be checked
            fd = os.open(self.path, flags | os.O_WRONLY, 0o640)
            readable = False
        try:
            info = os.fstat(fd)
            if readable:
                self._cut = info.st_size > 0 and os.pread(fd, 1, info.st_size - 1) != b"\n"
        except OSError:
            os.close(fd)
            raise
        self._fd, self._identity = fd, (info.st_dev, info.st_ino)
        return fd

    def _identity_at_path(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:  # rotated away and not created again yet: open creates it
            return None
        return info.st_dev, info.st_ino

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
        data = text.encode("utf-8")
        with self._lock:
            try:
                fd = self._open()
                if self._cut:
                    data = b"\n" + data
                self._cut = True  # until the whole batch is written
                view = memoryview(data)
                while view:  # one write unless the kernel takes less (a disk filling up), then it raises
                    written = os.write(fd, view)
                    if written == 0:
                        raise OSError(errno.ENOSPC, "the write took no bytes")
                    view = view[written:]
                self._cut = False
                os.fsync(fd)
            except OSError as exc:
                self._close()  # the next write opens the file again and checks how it ends
                raise AuditError(f"cannot write audit log {self.path}: {exc}") from exc

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
            self._identity = None

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
