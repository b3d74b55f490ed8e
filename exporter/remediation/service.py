"""Placeholder until the remediation service lands (being written now)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.config import RemediationConfig
from exporter.engine import Engine
from exporter.poller import Poller


class RemediationService:
    def __init__(self, config: RemediationConfig, engine: Engine, poller: Poller, registry: CollectorRegistry) -> None:
        self.config = config

    def routes(self) -> list[web.RouteDef]:
        return []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
