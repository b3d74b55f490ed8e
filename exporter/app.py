"""The aiohttp application: routes, and the background tasks started and stopped with it.

One task per concern: the poller (cheap endpoints, every interval or when woken), the disk-usage refresher
(/system/df, rarely), the event follower, and — when enabled — the remediation service. All are created in
`cleanup_ctx`, so tests and `run_app` get the same start/stop behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from exporter.collector import SnapshotCollector
from exporter.config import Config
from exporter.diskusage import DiskUsageRefresher
from exporter.engine import Engine
from exporter.events import EventFollower
from exporter.history import ImageHistory
from exporter.poller import Poller
from exporter.remediation.service import RemediationService
from exporter.selfmetrics import PollMetrics
from exporter.web.landing import render_landing

log = logging.getLogger(__name__)


class Services:
    """Everything one running exporter owns; built without I/O so the app starts while the engine is down."""

    def __init__(self, config: Config, docker_host: str | None, engine: Engine | None = None) -> None:
        self.config = config
        self.docker_host = docker_host
        self.registry = CollectorRegistry(auto_describe=True)
        self.engine = engine or Engine(docker_host, config.docker.timeout, config.docker.disk_usage_timeout)
        self.history = ImageHistory(config.state.path)
        self.metrics = PollMetrics(self.registry)
        self.poller = Poller(self.engine, config, self.history, self.metrics)
        self.disk_usage = DiskUsageRefresher(self.engine, self.poller, config.poll, self.metrics)
        self.events = EventFollower(self.engine, self.poller, self.history, self.metrics)
        self.poller.on_change.append(self.disk_usage.mark_changed)
        self.registry.register(SnapshotCollector(self.poller, config.metrics))
        self.remediation = (
            RemediationService(config.remediation, self.engine, self.poller, self.registry)
            if config.remediation.enabled
            else None
        )

    async def run(self) -> AsyncIterator[None]:
        self.history.load()
        tasks = [
            asyncio.create_task(self.poller.run(), name="poller"),
            asyncio.create_task(self.disk_usage.run(), name="disk-usage"),
            asyncio.create_task(self.events.run(), name="events"),
        ]
        if self.remediation is not None:
            await self.remediation.start()
        try:
            yield
        finally:
            if self.remediation is not None:
                await self.remediation.stop()
            for task in tasks:
                task.cancel()
            self.engine.close_events()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.history.save()
            self.engine.close()


SERVICES = web.AppKey("services", Services)


def create_app(
    config: Config,
    *,
    docker_host: str | None,
    telemetry_path: str = "/metrics",
    engine: Engine | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> web.Application:
    """App factory: tests pass their own config and engine; `cli` passes the real ones.

    `headers` (from `--web.config.file`) go on every response, errors included.
    """
    services = Services(config, docker_host, engine)
    app = web.Application(client_max_size=config.remediation.max_body_bytes)
    app[SERVICES] = services
    if headers:

        async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
            response.headers.update(headers)

        app.on_response_prepare.append(add_headers)

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async for _step in services.run():
            yield

    app.cleanup_ctx.append(lifecycle)

    async def stop_runs(_app: web.Application) -> None:
        """On SIGTERM aiohttp waits for open requests (a manual run) before cleanup: stop runs first."""
        if services.remediation is not None:
            services.remediation.executor.stopping = True

    app.on_shutdown.append(stop_runs)
    metrics_handler = make_aiohttp_handler(services.registry)

    async def landing(_: web.Request) -> web.Response:
        page = render_landing(
            telemetry_path=telemetry_path,
            up=services.poller.up,
            snapshot=services.poller.snapshot,
            last_error=services.poller.last_error,
            remediation=services.remediation is not None,
            docker_host=docker_host or "default socket",
        )
        return web.Response(text=page, content_type="text/html")

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="Healthy.\n")

    async def ready(_: web.Request) -> web.Response:
        if services.poller.snapshot is None:
            return web.Response(status=503, text="Not ready: no snapshot of the engine yet.\n")
        return web.Response(text="Ready.\n")

    app.router.add_get("/", landing)
    app.router.add_get(telemetry_path, metrics_handler)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    if services.remediation is not None:
        app.router.add_routes(services.remediation.routes())
    return app
