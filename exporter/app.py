"""The aiohttp application: routes, and the background tasks started and stopped with it.

One task per concern: the poller (cheap endpoints, every interval or when woken), the disk-usage refresher
(/system/df, rarely), the event follower, and — when enabled — the remediation service. All are created in
`cleanup_ctx`, so tests and `run_app` get the same start/stop behaviour. A reload (SIGHUP, `/-/reload`) hands
the new config to `Services.reconfigure`; see exporter/web/reload.py for what it refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.core.logs import kv
from exporter.engine.client import Engine
from exporter.engine.firstreads import FirstReads
from exporter.engine.seam import EngineSeam
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.selfmetrics import PollMetrics, register_runtime_metrics
from exporter.remediation.audit import AuditError
from exporter.remediation.relay import Relay
from exporter.remediation.service import RemediationService
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from exporter.web.basicauth import BasicAuthGate, gate_middlewares
from exporter.web.exposition import MetricsEndpoint
from exporter.web.lifecycle import ReloadEndpoint, header_hook
from exporter.web.pages import Pages
from exporter.web.relay import RelayClient
from exporter.web.reload import Reloader, ReloadResult, ReloadSource
from exporter.web.remediation import RemediationEndpoints
from exporter.web.webconfig import WebConfig

log = logging.getLogger(__name__)


class Services:
    """Everything one running exporter owns; built without I/O so the app starts while the engine is down."""

    def __init__(
        self,
        config: Config,
        docker_host: str | None,
        engine: EngineSeam | None = None,
        first_reads: FirstReads | None = None,
    ) -> None:
        self.config = config
        self.docker_host = docker_host
        self.registry = CollectorRegistry(auto_describe=True)
        self.engine: EngineSeam = engine or Engine(
            docker_host,
            config.docker.timeout,
            config.docker.disk_usage_timeout,
            max_response_bytes=config.docker.max_response_bytes,
        )
        self.history = ImageHistory(config.state.path)
        self.metrics = PollMetrics(self.registry)
        register_runtime_metrics(self.registry)
        self.poller = Poller(self.engine, config, self.history, self.metrics, first_reads=first_reads)
        self.store = self.poller.store
        self.disk_usage = DiskUsageRefresher(self.engine, self.poller, config.poll, self.metrics)
        #: None for an engine without an event stream (the CRI): polls alone keep the snapshot current.
        self.events = (
            EventFollower(self.engine, self.poller, self.history, self.metrics, store=self.store)
            if self.engine.follows_events
            else None
        )
        self.store.subscribe_changes(self.disk_usage.mark_changed)
        self.collector = SnapshotCollector(self.store, config.metrics)
        self.registry.register(self.collector)
        remediation = config.remediation
        self.relay_client = (
            RelayClient(remediation.relay) if remediation.enabled and remediation.relay.enabled else None
        )
        self.remediation = (
            RemediationService(
                remediation,
                self.engine,
                self.poller,
                self.registry,
                disk_usage=self.disk_usage,
                relay=None if self.relay_client is None else Relay(remediation.relay, self.relay_client),
            )
            if remediation.enabled
            else None
        )
        if self.events is not None and self.remediation is not None:
            executor = self.remediation.executor
            self.events.deleting = lambda: executor.deleting

    def reconfigure(self, config: Config) -> None:
        """Apply a reloaded config (already checked by the Reloader to change no restart-only key)."""
        self.config = config
        self.poller.reconfigure(config)
        self.disk_usage.reconfigure(config.poll)
        self.collector.config = config.metrics
        if self.remediation is not None:
            self.remediation.reconfigure(config.remediation)

    async def run(self) -> AsyncIterator[None]:
        self.history.load()
        reads = self.poller.first_reads
        # the listing was taken before the event stream starts: replay from there on
        if reads is not None and self.events is not None:
            # without a state file, from the moment the listing was asked for: it shows everything before
            # (events from a second earlier were applied again, and on Podman those it cannot apply exactly
            # forced a second full poll); with one, from its time, never earlier: the file is what is known
            # up to then, and an older pull/tag replayed again would mark an image it proves present as new
            saved = self.history.saved_at
            self.events.resume_from = reads.started_at if saved is None else min(saved, reads.started_at)
        tasks = [
            asyncio.create_task(self.poller.run(), name="poller"),
            asyncio.create_task(self.disk_usage.run(), name="disk-usage"),
        ]
        if self.events is not None:
            tasks.append(asyncio.create_task(self.events.run(), name="events"))
        if self.relay_client is not None:
            await self.relay_client.start()
        if self.remediation is not None:
            await self.remediation.start()
        try:
            yield
        finally:
            if self.remediation is not None:
                await self.remediation.stop()
            if self.relay_client is not None:
                await self.relay_client.stop()
            for task in tasks:
                task.cancel()
            self.engine.close_events()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.history.save()
            self.engine.close()


def create_app(
    config: Config,
    *,
    docker_host: str | None,
    telemetry_path: str = "/metrics",
    engine: EngineSeam | None = None,
    web_config: WebConfig | None = None,
    reload: ReloadSource | None = None,
    basic_auth: BasicAuthGate | None = None,
    first_reads: FirstReads | None = None,
) -> web.Application:
    """App factory: tests pass their own config and engine; `cli` passes the real ones.

    `web_config` (from `--web.config.file`): its headers go on every response, errors included. `reload`
    names the files a reload re-reads: with it, SIGHUP reloads while the app runs, and `POST|PUT /-/reload`
    does when `enable_lifecycle` is set (403 otherwise, as in Prometheus). `basic_auth` (its users) guards
    every path but the remediation routes, which check their own credentials. `first_reads`: the first
    poll's engine reads, already started on `engine` (see `poller.FirstReads`).
    """
    services = Services(config, docker_host, engine, first_reads)
    endpoints = RemediationEndpoints(services.remediation) if services.remediation is not None else None
    app = web.Application(
        client_max_size=config.remediation.max_body_bytes,
        middlewares=gate_middlewares(basic_auth, endpoints.routes() if endpoints is not None else ()),
    )
    source = reload or ReloadSource(config_file=None)
    reloader = Reloader(
        source,
        config,
        web_config or WebConfig(),
        lambda new, _web: services.reconfigure(new),
        services.registry,
    )

    app.on_response_prepare.append(header_hook(lambda: reloader.web_config))  # a reload may change them

    async def sighup() -> ReloadResult:
        if services.remediation is not None:  # let go of a rotated or deleted audit log now, as daemons do
            try:
                await asyncio.to_thread(services.remediation.audit.reopen)
            except AuditError as exc:
                log.error("cannot reopen the audit log on SIGHUP", extra=kv(err=exc))
        return await reloader.reload("SIGHUP")

    def on_sighup() -> None:
        task = asyncio.create_task(sighup(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    reloads: set[asyncio.Task[ReloadResult]] = set()

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        async for _step in services.run():
            if reload is not None:  # from here on; without a handler SIGHUP ends the process (exit 129)
                loop.add_signal_handler(signal.SIGHUP, on_sighup)
            try:
                yield
            finally:  # before the services stop: no reload applies to stopped services
                if reload is not None:
                    loop.remove_signal_handler(signal.SIGHUP)
                for task in list(reloads):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    app.cleanup_ctx.append(lifecycle)

    async def stop_runs(_app: web.Application) -> None:
        """On SIGTERM aiohttp waits for open requests (a manual run) before cleanup: stop runs first.

        The first step of every shutdown, so it also says one is under way (`stopped` follows in cli)."""
        log.info("shutting down")
        if services.remediation is not None:
            services.remediation.stop_runs()

    app.on_shutdown.append(stop_runs)
    metrics_endpoint = MetricsEndpoint(services.registry, services.collector)
    services.store.subscribe(metrics_endpoint.prerender)
    metrics_handler = metrics_endpoint.serve

    pages = Pages(services.store, services.engine, services.remediation, telemetry_path)
    reload_endpoint = ReloadEndpoint(reloader.reload, reload is not None and reload.enable_lifecycle)
    app.router.add_get("/", pages.landing)
    app.router.add_get(telemetry_path, metrics_handler)
    app.router.add_get("/-/healthy", pages.healthy)
    app.router.add_get("/-/ready", pages.ready)
    app.router.add_post("/-/reload", reload_endpoint.handle)
    app.router.add_put("/-/reload", reload_endpoint.handle)
    if endpoints is not None:
        app.router.add_routes(endpoints.routes())
    return app
