"""The service's schedule loop on the persisted state (no engine needed: no run gets as far as the engine).

The rules themselves (`decide`, DST, the state section) are tested in test_schedule.py; here: the loop
records what it decided in `ImageHistory.schedules`, exports it, and a reload keeps that state honest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.remediation.service import RemediationService
from tests.unit.webhook_support import build_app, make_config

SCHEDULED = {"free-disk": {"type": "free_space", "target_avail_ratio": 0.3, "schedule": "1h"}}


async def until(condition: Callable[[], Any], what: str) -> None:
    """Yield to the loop until `condition()` holds (bounded, so a broken loop fails instead of hanging)."""
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def next_run_metric(service: RemediationService, action: str) -> float | None:
    (family,) = service.metrics.next_run.collect()
    samples = family.samples
    return next((s.value for s in samples if s.labels["action"] == action), None)


async def test_a_scheduled_run_that_finds_the_action_busy_is_skipped_and_counts_as_its_run(tmp_path: Path) -> None:
    _app, service, _clock = build_app(tmp_path, actions=SCHEDULED)
    overdue = time.time() - 2 * 3600
    service.schedules.record("free-disk", overdue)
    assert service.executor.try_begin("free-disk")  # a real run (alert, manual) holds the action
    await service.start()
    try:
        await until(lambda: service.schedules.last_run("free-disk") != overdue, "the skipped run recorded")
        last = service.schedules.last_run("free-disk")
        assert last is not None and last > overdue
        await until(lambda: service._next_run.get("free-disk") == last + 3600, "the next run timed from it")
        assert list(service.history) == []  # skipped: no run started
        assert next_run_metric(service, "free-disk") == last + 3600
        (status,) = service.action_status()
        assert status.schedule == "every 1h" and status.next_run == last + 3600 and status.last_scheduled_run == last
        described = service.describe()["actions"][0]
        assert described["schedule"] == "every 1h" and described["last_run"] == last
        assert described["next_run_time"].endswith("Z")
    finally:
        service.executor.end("free-disk")
        await service.stop()


async def test_a_new_schedule_waits_one_period_and_an_unscheduled_action_is_forgotten(tmp_path: Path) -> None:
    _app, service, _clock = build_app(tmp_path, actions=SCHEDULED)
    before = time.time()
    await service.start()
    try:
        await until(lambda: "free-disk" in service._next_run, "the schedule timed")
        since = service.schedules.counts_from("free-disk", 0.0)
        assert before <= since and service._next_run["free-disk"] == since + 3600  # not at startup
        assert service.schedules.last_run("free-disk") is None
        unscheduled = {"free-disk": {"type": "free_space", "target_avail_ratio": 0.3}}
        service.reconfigure(make_config(tmp_path, actions=unscheduled).remediation)
        assert "free-disk" not in service.schedules.actions
        assert next_run_metric(service, "free-disk") is None
        assert service.describe()["actions"][0]["next_run"] is None
    finally:
        await service.stop()
