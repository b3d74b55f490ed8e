"""The pages a person or a probe reads: the overview at `/`, `/-/healthy` and `/-/ready`.

The overview is rendered in a worker thread from immutable inputs: on a big host ranking repositories and
working out what min_age holds back per action takes long enough to delay scrapes on the loop.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from exporter.engine.seam import EngineSeam
from exporter.remediation.service import RemediationService
from exporter.state.store import SnapshotStore
from exporter.web.landing import render_landing

#: `/?refresh=N` bounds: a page that reloads every second would be a scrape loop of its own.
MIN_REFRESH_SECONDS = 5
MAX_REFRESH_SECONDS = 3600
REFRESH_RE = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() also admits "²", which int() refuses


class Pages:
    """The handlers, reading the snapshot store (and the remediation service, when enabled) per request."""

    def __init__(
        self, store: SnapshotStore, engine: EngineSeam, remediation: RemediationService | None, telemetry_path: str
    ) -> None:
        self.store = store
        self.engine = engine
        self.remediation = remediation
        self.telemetry_path = telemetry_path

    async def landing(self, request: web.Request) -> web.Response:
        """The overview page: the current snapshot, remediation status and the audit tail (read off the loop)."""
        refresh = request.query.get("refresh")
        refresh_seconds = None
        if refresh is not None:
            if not REFRESH_RE.fullmatch(refresh) or not MIN_REFRESH_SECONDS <= int(refresh) <= MAX_REFRESH_SECONDS:
                raise web.HTTPBadRequest(
                    text=f"refresh must be whole seconds from {MIN_REFRESH_SECONDS} to {MAX_REFRESH_SECONDS}, "
                    f"got {refresh!r}\n"
                )
            refresh_seconds = int(refresh)
        service = self.remediation
        store = self.store
        page = await asyncio.to_thread(
            render_landing,
            telemetry_path=self.telemetry_path,
            up=store.up,
            snapshot=store.snapshot,
            last_error=store.last_error,
            remediation=service is not None,
            docker_host=self.engine.where,
            actions=service.action_status() if service is not None else (),
            dry_run=service is not None and service.config.dry_run,
            audit=await service.recent_audit() if service is not None else None,
            refresh_seconds=refresh_seconds,
            events_live=store.events_live,
            remediation_config=service.config if service is not None else None,
        )
        return web.Response(text=page, content_type="text/html")

    async def healthy(self, _request: web.Request) -> web.Response:
        return web.Response(text="Healthy.\n")

    async def ready(self, _request: web.Request) -> web.Response:
        if self.store.snapshot is None:
            return web.Response(status=503, text="Not ready: no snapshot of the engine yet.\n")
        return web.Response(text="Ready.\n")
