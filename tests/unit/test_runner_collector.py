"""A dry run holds the cyclic collector from its plan until a moment after it ends (its answer is sent and
its plan and outcomes freed meanwhile), and never beyond: back-to-back dry runs let it resume in between,
and stopping the service releases what is still held."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.core import offloop
from exporter.remediation import runner
from tests.unit.webhook_support import TOKEN, AppFactory, RecordedEngine, app_factory_for

ACTIONS = {"free-disk": {"type": "prune_unused", "min_age": "0s"}}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


@pytest.fixture(autouse=True)
def collecting() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


async def test_a_dry_run_holds_the_collector_until_a_moment_after_it_ends(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "TRIM_DELAY_SECONDS", 3600.0)  # the moment never comes within the test
    client, service, _ = await app_factory(RecordedEngine(), actions=ACTIONS)
    await service.poller.poll_once()
    resp = await client.post("/api/v1/actions/free-disk?dry_run=true", headers=AUTH)
    assert resp.status == 200 and (await resp.json())["result"] == "dry_run"
    assert offloop.collector_holds() == 1 and not gc.isenabled()  # answered, the hold still pending
    resp = await client.post("/api/v1/actions/free-disk?dry_run=true", headers=AUTH)
    assert resp.status == 200
    assert offloop.collector_holds() == 1  # the first run's hold went when the second began: no chain
    await service.runner.stop()
    assert offloop.collector_holds() == 0 and gc.isenabled()


async def test_the_hold_ends_by_itself_after_the_delay(
    app_factory: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "TRIM_DELAY_SECONDS", 0.05)
    client, service, _ = await app_factory(RecordedEngine(), actions=ACTIONS)
    await service.poller.poll_once()
    resp = await client.post("/api/v1/actions/free-disk?dry_run=true", headers=AUTH)
    assert resp.status == 200
    for _ in range(100):
        if offloop.collector_holds() == 0:
            break
        await asyncio.sleep(0.02)
    assert offloop.collector_holds() == 0 and gc.isenabled()
