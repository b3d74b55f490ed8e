"""`docker_up` covers every path to the engine, not only the SDK client's that polls.

Image inspects (LastTagTime) and the delete lane go over the lean unix-socket client. When that path fails
while the SDK's works, the exporter must not look healthy: every image would stay "LastTagTime pending",
hence too young to delete, and runs would end "success" with nothing deleted. A real engine cannot fail one
client and not the other on demand (both open the same socket), so here the SDK reads answer from the
bookworm recording and the lean client talks to a socket file: first one nothing listens on, then a small
server answering with the recorded payloads (the lean client's own tests' server).
"""

from __future__ import annotations

import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import docker
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.engine.client import Engine, Lane
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.unit.recorded import RecordedEngine
from tests.unit.test_engine_lean import ClosingServer

T = TypeVar("T")


class LeanOverSocket(RecordedEngine):
    """Recorded SDK reads; image inspects over the real lean client to `socket_path`."""

    def __init__(self, socket_path: Path) -> None:
        super().__init__("bookworm")
        self._socket_path = str(socket_path)
        self.timeout = 10

    async def _call(self, fn: Callable[[docker.APIClient], T], *, lane: str = "api") -> T:
        # only the lean client's version lookup comes here: it reads the negotiated version off a client
        return fn(cast(docker.APIClient, types.SimpleNamespace(api_version=self.api)))

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        self.calls.append("inspect_image")
        return await Engine.inspect_image(self, ref, lane=lane)


def errors(registry: CollectorRegistry, stage: str) -> float:
    return registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": stage}) or 0.0


async def test_a_failing_lean_path_is_not_up_until_it_answers_again(tmp_path: Path) -> None:
    socket_path = tmp_path / "engine.sock"
    engine = LeanOverSocket(socket_path)  # nothing listens there yet
    registry = CollectorRegistry()
    config = parse_config({"filesystem": {"path": str(tmp_path)}})
    poller = Poller(engine, config, ImageHistory(None), PollMetrics(registry))
    try:
        await poller.poll_once()  # the SDK's reads work, the inspects behind the publish do not
        assert poller.store.snapshot is not None and poller.store.snapshot.pending_inspects > 0
        assert poller.store.up is False
        assert (
            poller.store.last_error is not None and "FileNotFoundError" in poller.store.last_error
        )  # says what failed
        assert errors(registry, "images") >= 1

        failed = errors(registry, "images")
        await poller.poll_once()  # the next poll asks the lean path again: still failing, still down
        assert poller.store.up is False
        assert errors(registry, "images") > failed

        server = ClosingServer(socket_path)
        server.start()
        try:
            await poller.poll_once()  # the lean path answers again: up, and the inspects are done
            assert poller.store.up is True
            assert poller.store.snapshot is not None and poller.store.snapshot.pending_inspects == 0
            assert any(target.endswith("/version") for _, _, target in server.requests)
        finally:
            server.stop()
    finally:
        engine.close()
