"""Background `/system/df`: the expensive call, made rarely and one at a time.

It runs every `poll.disk_usage_interval`, and sooner after images change (but never more often than
`poll.disk_usage_min_interval`), so disk-usage and reclaimable figures follow deletions without letting an
event storm turn into a df storm. The data's age is exported as
`docker_exporter_disk_usage_timestamp_seconds`. Remediation calls `refresh_now` when it needs shared sizes
the last poll could not give (API 1.41), so every /system/df goes through here and the poller.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from exporter.config import PollConfig
from exporter.core import offloop
from exporter.core.logs import kv
from exporter.core.snapshot import Snapshot
from exporter.engine import apishapes
from exporter.engine.errors import EngineError
from exporter.engine.seam import EngineSeam
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.poller import Poller

log = logging.getLogger("exporter.diskusage")  # the caller= name log pipelines filter on, not the file's place

RETRY_SECONDS = 5.0  # after a failed /system/df, wait at least this long (an engine that is down answers fast)


class DiskUsageRefresher:
    """Owns every `/system/df` call and hands each result to the poller to publish."""

    def __init__(
        self,
        engine: EngineSeam,
        poller: Poller,
        config: PollConfig,
        metrics: PollMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.poller = poller
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self._changed = asyncio.Event()
        self._last_attempt = 0.0

    def mark_changed(self) -> None:
        self._changed.set()

    def reconfigure(self, config: PollConfig) -> None:
        """A reloaded `poll` section. A new `disk_usage_interval` ends the wait armed with the old one (one
        refresh, spaced by `disk_usage_min_interval`), so a shorter interval does not wait out a longer one."""
        changed = config.disk_usage_interval != self.config.disk_usage_interval
        self.config = config
        if changed:
            self.mark_changed()

    async def run(self) -> None:
        await self.poller.store.ready.wait()  # parsing needs the engine's identity (Podman's sizes are unknown)
        while True:
            if await self.refresh_now() is None:
                # an outage, or another /system/df running (20.10 refuses a second one: two exporters or a
                # `docker system df` on one engine): retry soon rather than a whole interval later
                await asyncio.sleep(self.retry_delay())
                continue
            try:
                async with asyncio.timeout(self.config.disk_usage_interval):  # not wait_for: see Poller.run
                    await self._changed.wait()
            except TimeoutError:
                continue
            # Images changed: refresh once the minimum spacing has passed since the last call.
            wait = self.config.disk_usage_min_interval - (time.monotonic() - self._last_attempt)
            if wait > 0:
                await asyncio.sleep(wait)

    def retry_delay(self) -> float:
        """Seconds before retrying a failed call: the minimum spacing, at least RETRY_SECONDS, at most the interval."""
        return min(self.config.disk_usage_interval, max(self.config.disk_usage_min_interval, RETRY_SECONDS))

    async def refresh_now(self) -> Snapshot | None:
        """Read /system/df now and publish it; the poller's new snapshot, or None when the call failed.

        Calls never overlap: the engine facade runs them one at a time on its df lane.
        """
        self._changed.clear()
        self._last_attempt = time.monotonic()
        start = time.monotonic()
        try:
            with self.poller.disk_usage_call():
                raw = await self.engine.disk_usage()
        except EngineError as exc:
            self.metrics.errors.labels("disk_usage").inc()
            log.warning("/system/df failed", extra=kv(err=exc))
            return None
        finally:
            self.metrics.disk_usage_duration.set(time.monotonic() - start)
        snapshot = self.poller.store.snapshot
        try:
            # off the loop: its `Images` are a listing of every image, as long to parse as a poll's
            usage = await offloop.off_loop(
                apishapes.parse_disk_usage, raw, self.clock(), snapshot.engine if snapshot else None
            )
        except apishapes.MalformedAnswer as exc:  # the last good figures stay, their age shows
            self.metrics.errors.labels("disk_usage").inc()
            log.warning("/system/df answer malformed", extra=kv(field=exc.field, problem=exc.problem))
            return None
        last = snapshot.disk_usage if snapshot else None
        if last is not None and last.shared_sizes == usage.shared_sizes:
            # unchanged: the last mapping stays, and the new one (a number per image, decoded among the answer's
            # objects) goes with the answer instead of keeping its memory from going back to the system
            usage = replace(usage, shared_sizes=last.shared_sizes)
        # dropped before the publish: what the publish and its render keep would otherwise be placed among the
        # answer's objects (a listing of every image) and keep their freed memory from going back to the system
        del raw
        self.poller.set_disk_usage(usage)
        return self.poller.store.snapshot
