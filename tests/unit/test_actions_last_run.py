"""GET /api/v1/actions: `last_run` is the last run of any trigger, `last_scheduled_run` the last scheduled one;
each action's `select`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.webhook_support import BEARER, AppFactory, RecordedEngine, alert, app_factory_for, body

NOTHING_TO_DELETE = {
    "by-hand": {"type": "prune_dangling", "min_age": "3650d"},
    "nightly": {"type": "prune_dangling", "min_age": "3650d", "schedule": "24h"},
}


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


async def test_a_manual_or_alert_run_is_the_last_run_and_the_last_scheduled_run_stays_apart(app_factory):
    routes = [{"matchers": ['alertname="DockerDiskPressure"'], "action": "nightly"}]
    client, service, _ = await app_factory(RecordedEngine(), actions=NOTHING_TO_DELETE, routes=routes)
    await service.poller.poll_once()
    scheduled_at = 1_000_000.0
    service.schedules.record("nightly", scheduled_at)

    before = {a["name"]: a for a in (await (await client.get("/api/v1/actions", headers=BEARER)).json())["actions"]}
    assert before["by-hand"]["last_run"] is None and before["by-hand"]["last_run_trigger"] is None
    assert before["nightly"]["last_run"] == scheduled_at and before["nightly"]["last_run_trigger"] == "schedule"

    assert (await client.post("/api/v1/actions/by-hand?dry_run=false", headers=BEARER)).status == 200
    assert (await client.post("/webhook/alertmanager", data=body(alert()), headers=BEARER)).status == 200
    await service.stop()  # waits for the alert's background run
    runs = {run["action"]: run for run in service.history}

    after = {a["name"]: a for a in (await (await client.get("/api/v1/actions", headers=BEARER)).json())["actions"]}
    by_hand, nightly = after["by-hand"], after["nightly"]
    assert by_hand["last_run"] == runs["by-hand"]["started_at"] and by_hand["last_run_trigger"] == "manual"
    assert by_hand["last_run_time"].endswith("Z") and by_hand["last_scheduled_run"] is None
    assert nightly["last_run"] == runs["nightly"]["started_at"] and nightly["last_run_trigger"] == "alert"
    assert nightly["last_scheduled_run"] == scheduled_at and nightly["last_scheduled_run_time"].endswith("Z")


async def test_the_actions_list_shows_each_actions_select(app_factory):
    actions = {
        "ci": {"type": "prune_unused", "select": {"references": ["ci/*"], "labels": ["team=ci"]}},
        "all": {"type": "prune_unused"},
        "cache": {"type": "build_cache"},
    }
    client, _service, _ = await app_factory(actions=actions, routes=[])
    listed = (await (await client.get("/api/v1/actions", headers=BEARER)).json())["actions"]
    selects = {a["name"]: a["select"] for a in listed}
    assert selects == {"ci": {"references": ["ci/*"], "labels": ["team=ci"]}, "all": None, "cache": None}
