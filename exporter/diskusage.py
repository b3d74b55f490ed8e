"""Background `/system/df`: the expensive call, made rarely and one at a time.

It runs every `poll.disk_usage_interval`, and sooner after images change (but never more often than
`poll.disk_usage_min_interval`), so disk-usage and reclaimable figures follow deletions without letting an
event storm turn into a df storm. The data's age is exported as
`docker_exporter_disk_usage_timestamp_seconds`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from types import MappingProxyType

from exporter import apishapes
from exporter.config import PollConfig
from exporter.engine import Engine, EngineError, api_at_least
from exporter.poller import Poller
from exporter.selfmetrics import PollMetrics

log = logging.getLogger(__name__)


class DiskUsageRefresher:
    def __init__(self, engine: Engine, poller: Poller, config: PollConfig, metrics: PollMetrics) -> None:
        self.engine = engine
        self.poller = poller
        self.config = config
        self.metrics = metrics
        self._changed = asyncio.Event()
        self._last_attempt = 0.0

    def mark_changed(self) -> None:
        self._changed.set()

    async def run(self) -> None:
        await self.poller.ready.wait()  # the API version decides which df query is allowed
        while True:
            await self.refresh()
            try:
                await asyncio.wait_for(self._changed.wait(), self.config.disk_usage_interval)
            except TimeoutError:
                continue
            # Images changed: refresh once the minimum spacing has passed since the last call.
            wait = self.config.disk_usage_min_interval - (time.monotonic() - self._last_attempt)
            if wait > 0:
                await asyncio.sleep(wait)

    async def refresh(self) -> None:
        self._changed.clear()
        self._last_attempt = time.monotonic()
        info = self.poller.snapshot.engine if self.poller.snapshot else None
        types = ("image", "build-cache") if info and api_at_least(info.api_version, "1.42") else None
        start = time.monotonic()
        try:
            raw = await self.engine.disk_usage(types, verbose=bool(info and api_at_least(info.api_version, "1.52")))
        except EngineError as exc:
            self.metrics.errors.labels("disk_usage").inc()
            log.warning("/system/df failed: %s", exc)
            return
        finally:
            self.metrics.disk_usage_duration.set(time.monotonic() - start)
        usage = apishapes.parse_disk_usage(raw, time.time())
        if info is not None and info.podman:
            # Podman's /system/df answers LayersSize 0 and SharedSize 0: unknown, not zero
            usage = replace(usage, layers_size=None, reclaimable=None, shared_sizes=MappingProxyType({}))
        self.poller.set_disk_usage(usage)
