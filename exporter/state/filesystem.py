"""The data-root filesystem's size and free space: what `df` shows for where the engine keeps images."""

from __future__ import annotations

import asyncio
import logging
import os

from exporter.core.logs import kv
from exporter.core.snapshot import EngineInfo, Filesystem
from exporter.engine.hints import engine_error_hint, filesystem_error
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.store import SnapshotStore

log = logging.getLogger("exporter.poller")  # the caller= name log pipelines filter on, not the file's place


def data_root_path(configured: str | None, engine: EngineInfo) -> str:
    """The path whose statvfs is the data-root filesystem: the configured one, else where the engine says."""
    return configured or engine.data_root or "/var/lib/docker"


def read_filesystem(path: str) -> Filesystem:
    """statvfs of the engine's data root: what `df` shows, in bytes (avail = space for non-root)."""
    st = os.statvfs(path)
    return Filesystem(path=path, size=st.f_blocks * st.f_frsize, avail=st.f_bavail * st.f_frsize)


class FilesystemReader:
    """Reads the data root's statvfs for each poll; a failure is counted, becomes the store's last error and
    is warned about once per distinct error (a missing mount fails every poll)."""

    def __init__(self, metrics: PollMetrics, store: SnapshotStore) -> None:
        self.metrics = metrics
        self.store = store
        self._logged_error: str | None = None

    async def read(self, path: str, configured: bool) -> Filesystem | None:
        """statvfs of `path` (`configured`: set by `filesystem.path`, not the engine's data root); None on error."""
        try:
            filesystem = await asyncio.to_thread(read_filesystem, path)
        except OSError as exc:
            self.metrics.errors.labels("filesystem").inc()
            error = filesystem_error(path, configured, exc)
            self.store.set_error(error)
            if str(exc) != self._logged_error:
                log.warning(
                    "cannot statvfs the data-root filesystem",
                    extra=kv(path=path, err=exc, hint=engine_error_hint(error)),
                )
                self._logged_error = str(exc)
            return None
        if self._logged_error is not None:
            log.info("statvfs works again", extra=kv(path=path))
        self._logged_error = None
        return filesystem
