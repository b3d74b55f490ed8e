"""What a real run leaves behind and what may change while it runs, on the in-memory engine.

- a run that deleted (or may have) keeps its cooldown even when it ends `failure`: only a run that changed
  nothing gives it back for Alertmanager's retry;
- a DELETE without an answer whose image is still there is `unknown`, and when a later snapshot (a poll or
  an applied engine event) shows the image gone, the audit gets its `deleted` line under the same run_id;
- a reload that adds a protection protects the images of the run in progress.

The whole service runs (webhook, poller, executor) with `FakeEngine` standing in for the engine: the failures
must come at one exact DELETE, which a real engine cannot be made to do on demand (the engine-backed
version of the unanswered DELETE is in tests/integration/test_remediation_midrun.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from exporter.engine.client import EngineError, EngineUnavailable
from exporter.remediation.gate import Refused
from exporter.remediation.service import RemediationService
from tests.harness.audit import read_audit
from tests.unit.fake_engine import FakeEngine
from tests.unit.webhook_support import BEARER, AppFactory, alert, app_factory_for, body, make_config

ACTIONS = {"clean": {"type": "prune_unused", "min_age": "0s", "max_deletions": 5}}
ROUTES = [{"matchers": ['alertname="DockerDiskPressure"'], "action": "clean", "cooldown": "10m"}]


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


def old_images(engine: FakeEngine, count: int) -> list[str]:
    return [engine.add(f"old{n}", (f"app:{n}",), arrived=float(n)) for n in range(count)]


async def deliver(client: Any) -> dict[str, Any]:
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers=BEARER)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


async def ready(service: RemediationService) -> None:
    """One delete at a time (the failures below come at one exact DELETE) and a first poll."""
    service.executor.in_flight = 1
    await service.poller.poll_once()
    assert service.poller.store.up


def deleted_count(service: RemediationService) -> float:
    return float(service.metrics.images_deleted.labels("clean")._value.get())


# ------------------------------------------------------------------------ the cooldown of a run that deleted


async def test_a_run_that_failed_after_deleting_keeps_its_cooldown(app_factory: AppFactory) -> None:
    """3 deleted, then the engine fails: the alert's redelivery must not delete up to 5 more at once."""
    engine = FakeEngine()
    old_images(engine, 8)
    client, service, _ = await app_factory(engine, actions=ACTIONS, routes=ROUTES)
    await ready(service)

    def fail_fourth(call: str, arg: str) -> None:
        if call == "remove_image" and sum(1 for c, _ in engine.calls if c == "remove_image") == 4:
            raise EngineError("500 Server Error: internal error")

    engine.before = fail_fourth
    assert (await deliver(client))["alerts"][0]["outcome"] == "routed"
    await asyncio.gather(*service._tasks)
    assert service.history[0]["result"] == "failure" and service.history[0]["images_deleted"] == 3
    assert len(engine.images) == 5

    again = await deliver(client)
    assert again["alerts"][0]["outcome"] == "cooldown" and again["runs_started"] == []
    await asyncio.gather(*service._tasks)
    assert len(engine.images) == 5 and len(service.history) == 1


async def test_a_failed_run_that_deleted_nothing_still_gives_its_cooldown_back(app_factory: AppFactory) -> None:
    engine = FakeEngine()
    old_images(engine, 2)
    client, service, _ = await app_factory(engine, actions=ACTIONS, routes=ROUTES)
    await ready(service)

    def fail_first(call: str, arg: str) -> None:
        if call == "remove_image" and engine.before is fail_first:
            engine.before = None
            raise EngineError("500 Server Error: internal error")

    engine.before = fail_first
    assert (await deliver(client))["alerts"][0]["outcome"] == "routed"
    await asyncio.gather(*service._tasks)
    assert service.history[0]["result"] == "failure" and service.history[0]["images_deleted"] == 0

    assert (await deliver(client))["alerts"][0]["outcome"] == "routed"
    await asyncio.gather(*service._tasks)
    assert service.history[0]["result"] == "success" and engine.images == {}


# ------------------------------------------------------------------------ a DELETE without an answer


def unanswered_first_delete(engine: FakeEngine) -> None:
    """The first DELETE gets no answer and has not reached the engine yet (it may do it later)."""

    def hold(call: str, arg: str) -> None:
        if call == "remove_image" and engine.before is hold:
            engine.before = None
            raise EngineUnavailable("DELETE /images/x: engine did not answer within 30s")

    engine.before = hold


@pytest.mark.parametrize("seen_by", ["poll", "event"])
async def test_an_unanswered_delete_the_engine_finishes_later_gets_its_deleted_line(
    app_factory: AppFactory, tmp_path: Path, seen_by: str
) -> None:
    engine = FakeEngine()
    first, second = old_images(engine, 2)
    client, service, _ = await app_factory(engine, actions=ACTIONS, routes=ROUTES)
    await ready(service)
    unanswered_first_delete(engine)
    assert (await deliver(client))["alerts"][0]["outcome"] == "routed"
    await asyncio.gather(*service._tasks)
    run = service.history[0]
    assert run["result"] == "failure" and run["images_deleted"] == 0 and run["counts"] == {"unknown": 1}
    (line,) = [r for r in read_audit(tmp_path / "audit.jsonl") if r["event"] == "image"]
    assert line["result"] == "unknown" and line["skip_reason"] is None and line["image_id"] == first
    assert "still there" in line["detail"]
    assert (await deliver(client))["alerts"][0]["outcome"] == "cooldown"  # it may have deleted: no refund

    del engine.images[first]  # the engine finishes the DELETE
    if seen_by == "poll":
        await service.poller.poll_once()
    else:
        assert await service.poller.apply_image_events([([first], [])], deleted=[first])
    await asyncio.gather(*service._confirming)
    audit = read_audit(tmp_path / "audit.jsonl")
    confirmed = [r for r in audit if r["event"] == "image" and r["result"] == "deleted"]
    assert [(r["image_id"], r["run_id"], r["confirmed_by"]) for r in confirmed] == [(first, run["run_id"], seen_by)]
    assert audit[-1] == confirmed[0]  # after the run's end: the audit is append-only
    # the confirming line is the one a restore reads: it carries what the unknown line knew
    assert line["tags"] == ["app:0"]
    assert [confirmed[0][k] for k in ("tags", "repo_digests", "created")] == [
        line[k] for k in ("tags", "repo_digests", "created")
    ]
    assert deleted_count(service) == 1
    assert service.history[0]["images_deleted"] == 1 and service.history[0]["confirmed_later"] == 1
    assert second in engine.images

    await service.poller.poll_once()  # confirmed once only
    assert deleted_count(service) == 1


async def test_an_unanswered_delete_whose_image_stays_stays_unknown(app_factory: AppFactory, tmp_path: Path) -> None:
    engine = FakeEngine()
    first, _ = old_images(engine, 2)
    client, service, clock = await app_factory(engine, actions=ACTIONS, routes=ROUTES)
    await ready(service)
    unanswered_first_delete(engine)
    await deliver(client)
    await asyncio.gather(*service._tasks)
    assert first in service._unconfirmed
    await service.poller.poll_once()
    assert first in service._unconfirmed  # still there: still watched

    clock.now += 601  # the watch ends; someone deleting it afterwards is not our DELETE
    await service.poller.poll_once()
    del engine.images[first]
    await service.poller.poll_once()
    assert service._unconfirmed == {} and service._confirming == set()
    results = [r["result"] for r in read_audit(tmp_path / "audit.jsonl") if r["event"] == "image"]
    assert results == ["unknown"] and deleted_count(service) == 0


# ------------------------------------------------------------------------ protections that grow mid-run


async def test_a_reload_that_adds_a_protection_protects_the_images_of_the_run_in_progress(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    engine = FakeEngine()
    first, *rest = old_images(engine, 3)
    _, service, _ = await app_factory(engine, actions=ACTIONS, routes=ROUTES)
    await ready(service)
    protected = make_config(tmp_path, actions=ACTIONS, routes=ROUTES, protect={"references": ["app:*"]})

    def reload_at_first_delete(call: str, arg: str) -> None:
        if call == "remove_image":
            engine.before = None
            service.reconfigure(protected.remediation)

    engine.before = reload_at_first_delete
    run = await service.run_manual("clean", False)
    assert not isinstance(run, Refused)
    results = {o.image_id: (o.result, o.skip_reason) for o in run.outcomes}
    assert results[first] == ("deleted", None)
    assert {results[i] for i in rest} == {("skipped", "protected_reference")}
    assert all(i in engine.images for i in rest) and len(engine.removals) == 1
    detail = next(o.detail for o in run.outcomes if o.image_id == rest[0])
    assert "protect.references 'app:*'" in detail


@pytest.mark.parametrize("failure", ["engine error", "no answer, done", "no answer, not done"])
@pytest.mark.parametrize("fail_at", [1, 2, 4, 5, 6])
async def test_redeliveries_within_one_cooldown_never_delete_more_than_max_deletions(
    app_factory: AppFactory, failure: str, fail_at: int
) -> None:
    """Every way a run can fail part-way, at every point: the alert redelivered again and again (no time
    passes) deletes at most `max_deletions` in all, and a run that failed before deleting lets one retry run."""
    engine = FakeEngine()
    old_images(engine, 12)
    client, service, _ = await app_factory(engine, actions=ACTIONS, routes=ROUTES)
    await ready(service)

    def fail_once(call: str, arg: str) -> None:
        if call != "remove_image" or sum(1 for c, _ in engine.calls if c == "remove_image") != fail_at:
            return
        engine.before = None
        if failure == "engine error":
            raise EngineError("500 Server Error: internal error")
        if failure == "no answer, not done":
            raise EngineUnavailable("DELETE: engine did not answer within 30s")
        engine.timeout_on_delete = lambda ref: ref == arg  # the engine deletes it; the answer is lost

    engine.before = fail_once
    for _ in range(4):
        await deliver(client)
        await asyncio.gather(*service._tasks)
    assert len(engine.removals) <= 5
    may_have_deleted = fail_at > 1 or failure != "engine error"
    assert len(service.history) == (1 if may_have_deleted else 2)
