"""Shared by the webhook/actions unit tests: stand-in engines, a settable clock, and the app under test.

Two engines, both answering only what a test needs without a daemon: `NoEngine` fails every read as an
unreachable engine does; `RecordedEngine` answers reads with the payloads recorded from a real dockerd
(tests/fixtures/api/<engine>/). Both fail the test on any write: nothing here may delete.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from exporter.config import Config, parse_config
from exporter.engine.apishapes import normalize_id
from exporter.engine.client import Engine, EngineUnavailable
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.relay import Relay
from exporter.remediation.service import RemediationService
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from exporter.web.relay import RelayClient
from exporter.web.remediation import RemediationEndpoints
from tests.unit.recorded import RecordedEngine as Recorded

TOKEN = "s3cret-token"
JSON = {"Content-Type": "application/json"}
AUTH_ONLY_HEADERS = {"Authorization": f"Bearer {TOKEN}"}  # e.g. a manual run without a body
BEARER = {**AUTH_ONLY_HEADERS, **JSON}
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"


class NoEngine(Engine):
    """Reads fail like an unreachable engine; any write is a test failure."""

    def __init__(self) -> None:
        super().__init__("unix:///nonexistent/never.sock")

    async def _call(self, fn: Any, *, lane: str = "api") -> Any:
        raise EngineUnavailable("no engine in unit tests")

    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        raise AssertionError(f"unit test reached remove_image({ref})")

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        raise AssertionError(f"unit test reached tag_image({image_id}, {repository}:{tag})")

    async def prune_images(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("unit test reached prune_images")

    async def prune_builds(self, keep_storage: int | None, filters: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("unit test reached prune_builds")


class RecordedEngine(Recorded):
    """Reads answer with one engine's recorded payloads (bookworm: dockerd 20.10, API 1.41); writes fail."""

    def __init__(self, engine: str = "bookworm") -> None:
        super().__init__(engine)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, **remediation: Any) -> Config:
    base: dict[str, Any] = {
        "enabled": True,
        "auth": {"bearer_token": TOKEN, "basic_auth": {"username": "am", "password": "pw"}},
        "audit_log": str(tmp_path / "audit.jsonl"),
        "scope": ['host="node-1"'],
        "max_body_bytes": 4096,
        "actions": {"free-disk": {"type": "free_space", "target_avail_ratio": 0.3}},
        "routes": [{"matchers": ['alertname="DockerDiskPressure"'], "action": "free-disk", "cooldown": "10m"}],
    }
    base.update(remediation)
    return parse_config({"filesystem": {"path": str(tmp_path)}, "remediation": base})


Made = tuple[TestClient[Any, Any], RemediationService, Clock]
AppFactory = Callable[..., Awaitable[Made]]


def build_app(
    tmp_path: Path, engine: Engine | None = None, **remediation: Any
) -> tuple[web.Application, RemediationService, Clock]:
    """The remediation app as `create_app` wires it, with an injectable engine and clock."""
    config = make_config(tmp_path, **remediation)
    registry = CollectorRegistry()
    engine = engine or NoEngine()
    metrics = PollMetrics(registry)
    history = ImageHistory(None)
    if isinstance(engine, Recorded):  # as a saved state would: the recorded images were here before (not "arrived")
        history.observe((normalize_id(i["Id"]) for i in engine.images), 0.0)
    poller = Poller(engine, config, history, metrics)
    disk_usage = DiskUsageRefresher(engine, poller, config.poll, metrics)
    clock = Clock()
    relay_config = config.remediation.relay
    client = RelayClient(relay_config) if relay_config.enabled else None
    relay = Relay(relay_config, client) if client is not None else None
    service = RemediationService(
        config.remediation, engine, poller, registry, disk_usage=disk_usage, monotonic=clock, relay=relay
    )
    app = web.Application(client_max_size=config.remediation.max_body_bytes)
    app.router.add_routes(RemediationEndpoints(service).routes())

    async def lifecycle(_app: web.Application) -> Any:
        if client is not None:
            await client.start()
        await service.start()
        yield
        await service.stop()
        if client is not None:
            await client.stop()

    app.cleanup_ctx.append(lifecycle)
    return app, service, clock


def app_factory_for(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    """Serve `build_app` through pytest-aiohttp's test client."""

    async def factory(engine: Engine | None = None, **remediation: Any) -> Made:
        app, service, clock = build_app(tmp_path, engine, **remediation)
        return await aiohttp_client(app), service, clock

    return factory


def alert(status: str = "firing", **labels: str) -> dict[str, Any]:
    labels = {"alertname": "DockerDiskPressure", "host": "node-1", **labels}
    return {
        "status": status,
        "labels": labels,
        "annotations": {},
        "startsAt": "2024-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "fp-" + "-".join(f"{k}={v}" for k, v in sorted(labels.items())),
    }


def body(*alerts: dict[str, Any]) -> bytes:
    return json.dumps({"version": "4", "status": "firing", "receiver": "r", "alerts": list(alerts)}).encode()


def requests_total(service: RemediationService, code: int) -> float:
    return float(service.metrics.webhook_requests.labels(str(code))._value.get())


def alerts_total(service: RemediationService, status: str, outcome: str) -> float:
    return float(service.metrics.webhook_alerts.labels(status, outcome)._value.get())
