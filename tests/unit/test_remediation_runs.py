"""When runs start and what they leave behind: failed runs give back their cooldown (issue 10 #10), previews
are free (issue 12 #1), and the last-run gauges the alert rules read.

The engine answers with payloads recorded from a real dockerd (reads only; any write fails the test), or,
for "engine unreachable", fails every read. Nothing here deletes: previews only, or plans with nothing old
enough to delete.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from exporter.remediation.service import RemediationService
from tests.unit.webhook_support import (
    AUTH_ONLY_HEADERS,
    BEARER,
    AppFactory,
    NoEngine,
    RecordedEngine,
    alert,
    app_factory_for,
    body,
)

NOTHING_TO_DELETE = {"free-disk": {"type": "prune_dangling", "min_age": "3650d"}}


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


async def deliver(client: Any) -> dict[str, Any]:
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers=BEARER)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


# ------------------------------------------------------------------------ failed runs (issue 10 #10)


async def test_a_run_that_fails_gives_its_cooldown_back_so_the_redelivery_runs(app_factory):
    """The engine hangs/goes away after the webhook accepted the alert: the run fails, the alert must not be lost."""
    client, service, _ = await app_factory(NoEngine())
    service.poller.store.set_up(True)  # the last poll succeeded; the engine is gone by the time the run polls
    first = await deliver(client)
    assert first["alerts"][0]["outcome"] == "routed"
    await asyncio.gather(*service._tasks)
    assert service.history[0]["result"] == "failure"
    assert "free-disk" not in service.last_started

    service.poller.store.set_up(True)  # Alertmanager redelivers once the engine answers again
    again = await deliver(client)
    assert again["alerts"][0]["outcome"] == "routed"
    assert len(again["runs_started"]) == 1
    await asyncio.gather(*service._tasks)
    assert len(service.history) == 2


async def test_a_failed_run_restores_the_cooldown_of_the_run_before_it(app_factory):
    client, service, clock = await app_factory(RecordedEngine(), actions=NOTHING_TO_DELETE)
    await service.poller.poll_once()
    assert (await deliver(client))["alerts"][0]["outcome"] == "routed"
    await asyncio.gather(*service._tasks)
    assert service.history[0]["result"] == "success"
    succeeded_at = service.last_started["free-disk"]

    clock.now += 601  # the cooldown is over; this run fails
    service.engine = service.executor.engine = NoEngine()
    service.poller.engine = service.engine
    assert (await deliver(client))["alerts"][0]["outcome"] == "routed"
    await asyncio.gather(*service._tasks)
    assert service.history[0]["result"] == "failure"
    assert service.last_started["free-disk"] == succeeded_at


# ------------------------------------------------------------------------ previews are free (issue 12 #1)


async def test_a_preview_then_an_alert_starts_a_real_run(app_factory):
    client, service, _ = await app_factory(RecordedEngine(), actions=NOTHING_TO_DELETE)
    await service.poller.poll_once()
    resp = await client.post("/api/v1/actions/free-disk?dry_run=true", headers=AUTH_ONLY_HEADERS)
    assert resp.status == 200
    assert (await resp.json())["result"] == "dry_run"
    assert service.last_started == {}

    answer = await deliver(client)
    assert answer["alerts"][0]["outcome"] == "routed"
    assert [(r["action"], r["dry_run"]) for r in answer["runs_started"]] == [("free-disk", False)]
    await asyncio.gather(*service._tasks)
    assert [r["dry_run"] for r in service.history] == [False, True]


class HeldEngine(RecordedEngine):
    """Recorded reads, except that listing images waits while `hold` is set (a slow engine, on demand)."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def list_images(self) -> list[dict[str, Any]]:
        if self.hold:
            self.waiting.set()
            await self.release.wait()
        return await super().list_images()


async def test_a_preview_in_progress_blocks_a_second_preview_but_not_a_real_run(app_factory):
    engine = HeldEngine()
    client, service, _ = await app_factory(engine, actions=NOTHING_TO_DELETE)
    await service.poller.poll_once()
    service.poller.wake()  # a refresh is due: the preview polls afresh, and the engine holds that listing
    engine.hold = True
    preview = asyncio.create_task(client.post("/api/v1/actions/free-disk?dry_run=1", headers=AUTH_ONLY_HEADERS))
    await engine.waiting.wait()

    second = await client.post("/api/v1/actions/free-disk?dry_run=1", headers=AUTH_ONLY_HEADERS)
    assert second.status == 409
    assert "preview" in (await second.json())["error"]
    answer = await deliver(client)
    assert answer["alerts"][0]["outcome"] == "routed"
    assert [r["dry_run"] for r in answer["runs_started"]] == [False]

    engine.hold = False
    engine.release.set()
    assert (await preview).status == 200
    await asyncio.gather(*service._tasks)
    assert sorted(r["dry_run"] for r in service.history) == [False, True]


async def test_with_global_dry_run_alerts_never_start_a_cooldown(app_factory):
    client, service, _ = await app_factory(RecordedEngine(), actions=NOTHING_TO_DELETE, dry_run=True)
    await service.poller.poll_once()
    for _ in range(2):
        answer = await deliver(client)
        assert answer["alerts"][0]["outcome"] == "routed"
        assert [r["dry_run"] for r in answer["runs_started"]] == [True]
        await asyncio.gather(*service._tasks)
    assert service.last_started == {}
    assert [r["result"] for r in service.history] == ["dry_run", "dry_run"]


# ------------------------------------------------------------------------------ last-run gauges


def last_run(service: RemediationService, name: str, action: str) -> float | None:
    metric = {"candidates": service.metrics.last_candidates, "shortfall": service.metrics.last_shortfall}[name]
    samples = {s.labels["action"]: s.value for m in metric.collect() for s in m.samples}
    return samples.get(action)


async def preview(client: Any, action: str) -> dict[str, Any]:
    resp = await client.post(f"/api/v1/actions/{action}?dry_run=true", headers=AUTH_ONLY_HEADERS)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


async def test_last_run_candidates_and_shortfall(app_factory):
    actions = {
        "dangling": {"type": "prune_dangling", "min_age": "1h"},
        "far": {"type": "free_space", "min_age": "1h", "target_avail_ratio": 0.999999},
        "near": {"type": "free_space", "min_age": "1h", "target_avail_ratio": 0.000001},
    }
    client, service, _ = await app_factory(RecordedEngine(), actions=actions, routes=[])
    await service.poller.poll_once()
    assert last_run(service, "candidates", "dangling") is None  # no run yet: no series

    # the recorded bookworm engine lists exactly one untagged image, made in 2025
    await preview(client, "dangling")
    assert last_run(service, "candidates", "dangling") == 1
    assert last_run(service, "shortfall", "dangling") == 0

    # a target no deletion can reach: what is missing after what the preview would delete
    run = await preview(client, "far")
    plan, fs = run["plan"], run["plan"]["filesystem"]
    assert last_run(service, "candidates", "far") == len(plan["candidates"]) >= 1
    would_free = sum(c["size"] for c in plan["candidates"] if c["removes_image"])
    expected = math.ceil(0.999999 * fs["size"]) - fs["avail"] - would_free
    assert expected > 0
    assert last_run(service, "shortfall", "far") == expected

    # a goal met at plan time: nothing selected, nothing missing
    run = await preview(client, "near")
    assert run["goal_met"] is True
    assert last_run(service, "candidates", "near") == 0
    assert last_run(service, "shortfall", "near") == 0
