"""What a manual run answers, and what it plans on (issue 14, planning at 10k images).

- `?limit=` cuts every list of the answer, never the totals (candidates, bytes, counts cover the whole run);
  a limit that is not a plain whole number in range is a 400 naming it, and nothing runs;
- a run plans on the live snapshot when the poller is not behind, and that plan is the one a fresh listing
  gives; when a refresh is due or the event stream is not live, the run polls afresh first; a dry run does not
  ask for a re-list afterwards;
- the event loop keeps answering while a plan is computed and while an answer is encoded (shown by order:
  the plan or the encoding is held in its worker thread while another request is answered).

The engine answers with payloads recorded from a real dockerd, plus copies of one recorded unused image
under new IDs and tags where a test needs more candidates than the recording has; nothing here deletes.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.engine.apishapes import normalize_id
from exporter.remediation import runner as service_module
from exporter.remediation import runs as runs_module
from exporter.remediation.planner import Plan, make_plan
from exporter.state.events import EventFollower
from tests.unit.webhook_support import AUTH_ONLY_HEADERS, AppFactory, RecordedEngine, app_factory_for

UNUSED = {"free-disk": {"type": "prune_unused", "min_age": "0s", "max_deletions": 100_000}}
EXTRA_IMAGES = 150  # more than the default limit (100)


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


def with_copies(engine: RecordedEngine, count: int) -> RecordedEngine:
    """`count` more images: copies of a recorded tagged image no container uses, each with its own ID and tag."""
    used = {normalize_id(c["ImageID"]) for c in engine.containers}
    template = next(i for i in engine.images if normalize_id(i["Id"]) not in used and i.get("RepoTags"))
    for k in range(count):
        image = copy.deepcopy(template)
        image["Id"] = f"sha256:{k + 1:064x}"
        image["RepoTags"] = [f"copies/app:v{k}"]
        image["RepoDigests"] = []
        image["Size"] = 1000 + k  # distinct sizes, so a byte total that missed an image would show
        engine.images.append(image)
    return engine


async def polled(app_factory: AppFactory, engine: RecordedEngine) -> tuple[Any, Any]:
    """The app with its first poll done (no poller task runs in these tests)."""
    client, service, _ = await app_factory(engine, actions=UNUSED)
    await service.poller.poll_once()
    return client, service


async def dry_run(client: Any, action: str, query: str = "") -> dict[str, Any]:
    resp = await client.post(f"/api/v1/actions/{action}?dry_run=true{query}", headers=AUTH_ONLY_HEADERS)
    assert resp.status == 200, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


# ------------------------------------------------------------------------------------------- ?limit=


async def test_limit_cuts_every_list_but_the_totals_count_the_whole_run(app_factory):
    client, _service = await polled(app_factory, with_copies(RecordedEngine(), EXTRA_IMAGES))
    full = await dry_run(client, "free-disk", "&limit=100000")
    cut = await dry_run(client, "free-disk", "&limit=7")

    assert full["truncated"] is False
    would = len(full["would_delete"])
    assert would == full["candidates"] == len(full["plan"]["candidates"]) > EXTRA_IMAGES
    assert full["would_delete_bytes"] == sum(o["size"] for o in full["would_delete"])

    assert cut["truncated"] is True and cut["limit"] == 7
    for listed in (cut["would_delete"], cut["outcomes"], cut["plan"]["candidates"]):
        assert len(listed) == 7
    assert [o["id"] for o in cut["would_delete"]] == [o["id"] for o in full["would_delete"][:7]]  # the first 7
    assert cut["totals"] == full["totals"]
    assert cut["totals"]["would_delete"] == cut["totals"]["candidates"] == would
    assert cut["totals"]["outcomes"] == len(full["outcomes"])
    assert cut["plan"]["totals"]["candidates"] == would
    for key in ("candidates", "estimated_bytes", "would_delete_bytes", "counts", "skipped_by_reason"):
        assert cut[key] == full[key], key


async def test_without_limit_an_answer_lists_the_default_number(app_factory):
    client, _service = await polled(app_factory, with_copies(RecordedEngine(), EXTRA_IMAGES))
    answer = await dry_run(client, "free-disk")
    assert answer["limit"] == runs_module.ANSWER_LIST_LIMIT == 100
    assert len(answer["would_delete"]) == 100 < answer["totals"]["would_delete"]
    assert answer["truncated"] is True


async def test_limit_zero_answers_the_totals_only(app_factory):
    client, _service = await polled(app_factory, with_copies(RecordedEngine(), 3))
    answer = await dry_run(client, "free-disk", "&limit=0")
    assert answer["would_delete"] == answer["outcomes"] == answer["plan"]["candidates"] == []
    assert answer["totals"]["would_delete"] == answer["candidates"] > 3
    assert answer["truncated"] is True


@pytest.mark.parametrize(
    "query",
    [
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=",
        "limit=100001",
        "limit=0x10",
        "limit=+5",
        "limit=%205",
        "limit=%E2%91%A0",
        "limit=1&limit=2",
    ],
)
async def test_an_unclear_limit_is_refused_naming_it_and_nothing_runs(app_factory, query):
    engine = RecordedEngine()
    client, service, _ = await app_factory(engine, actions=UNUSED)
    resp = await client.post(f"/api/v1/actions/free-disk?dry_run=true&{query}", headers=AUTH_ONLY_HEADERS)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "limit" in error and "nothing was run" in error
    assert list(service.history) == []
    assert engine.calls == []  # not even planned


async def test_the_webhook_answer_stays_a_summary_and_takes_no_limit(app_factory):
    client, _service = await polled(app_factory, RecordedEngine())
    resp = await client.post("/webhook/alertmanager?limit=5", headers=AUTH_ONLY_HEADERS)
    assert resp.status == 400
    assert "'limit'" in (await resp.json())["error"]


# ------------------------------------------------------------------------------------ what a run plans on


def same_plan(a: Plan, b: Plan) -> None:
    """Equal decisions: the same candidates in the same order, the same skips (reasons name ages, which move)."""
    assert [(c.image_id, c.references, c.size, c.removes_image) for c in a.candidates] == [
        (c.image_id, c.references, c.size, c.removes_image) for c in b.candidates
    ]
    assert [(s.image_id, s.reason) for s in a.skipped] == [(s.image_id, s.reason) for s in b.skipped]


async def test_a_current_snapshot_is_planned_without_a_relisting_and_as_a_fresh_listing_would(app_factory):
    engine = with_copies(RecordedEngine(), 5)
    client, service, _ = await app_factory(engine, actions=UNUSED)
    await service.poller.poll_once()
    assert service.poller.behind is False
    engine.calls.clear()

    live = await dry_run(client, "free-disk", "&limit=100000")
    assert "list_images" not in engine.calls
    assert service.poller.behind is False  # a dry run changed nothing: no re-list asked for afterwards

    service.poller.wake()  # a refresh is due (e.g. a change no event could apply): the next run lists afresh
    fresh = await dry_run(client, "free-disk", "&limit=100000")
    assert "list_images" in engine.calls
    assert [(c["id"], c["references"]) for c in live["plan"]["candidates"]] == [
        (c["id"], c["references"]) for c in fresh["plan"]["candidates"]
    ]
    assert live["plan"]["skipped"] == fresh["plan"]["skipped"]


async def test_while_the_event_stream_is_not_live_a_run_plans_on_a_fresh_poll(app_factory, caplog):
    """An /events outage alone (the rest of the API answering): the snapshot gets no changes between polls, so
    a plan on it could miss new images, new tags and freed images for up to a poll interval."""
    engine = with_copies(RecordedEngine(), 5)
    client, service, _ = await app_factory(engine, actions=UNUSED)
    poller = service.poller
    await poller.poll_once()
    EventFollower(engine, poller, poller.history, poller.metrics)  # attached; its stream never connected
    engine.calls.clear()

    caplog.set_level(logging.INFO, logger=service_module.__name__)
    await dry_run(client, "free-disk")
    assert "list_images" in engine.calls
    planned = [r for r in caplog.records if r.getMessage() == "remediation run planned"]
    assert [getattr(r, "log_fields", {}).get("snapshot") for r in planned] == ["fresh poll"]

    poller.store.stream_live(
        True
    )  # what `follower.run` says once connected and replayed (tests/unit/test_events_live.py)
    engine.calls.clear()
    await dry_run(client, "free-disk")
    assert "list_images" not in engine.calls


async def test_an_event_applied_to_the_snapshot_plans_as_the_next_listing_does(app_factory):
    engine = with_copies(RecordedEngine(), 5)
    _client, service, _ = await app_factory(engine, actions=UNUSED)
    poller = service.poller
    await poller.poll_once()
    action = service.config.actions["free-disk"]
    protect = service.config.protect

    gone = "sha256:" + f"{3:064x}"  # deleted by someone else: the engine says so in an event
    engine.images = [i for i in engine.images if normalize_id(i["Id"]) != gone]
    engine.gone.add(gone)
    assert await poller.apply_image_event([gone])
    live = poller.store.snapshot
    assert live is not None and gone not in live.by_id
    await poller.poll_once()
    listed = poller.store.snapshot
    assert listed is not None and listed is not live

    same_plan(make_plan(live, action, protect, 5e9), make_plan(listed, action, protect, 5e9))


# ---------------------------------------------------------------------------------- the loop keeps answering


class Held:
    """Wraps a blocking function so the test decides when it may finish (it runs in a worker thread)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.entered = threading.Event()
        self.release = threading.Event()
        self.on_loop = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            self.on_loop = True  # called on the event loop: what this test must never see
        except RuntimeError:
            pass
        self.entered.set()
        assert self.release.wait(30), "the test never released the held call"
        return self.fn(*args, **kwargs)


async def answered_while_held(client: Any, held: Held) -> None:
    """Start a dry run, wait until `held` is entered, then prove another request is answered meanwhile."""
    run = asyncio.create_task(client.post("/api/v1/actions/free-disk?dry_run=true", headers=AUTH_ONLY_HEADERS))
    assert await asyncio.to_thread(held.entered.wait, 30)
    other = await client.get("/api/v1/actions", headers=AUTH_ONLY_HEADERS)
    assert other.status == 200
    assert not run.done()  # the held call is still running: the answer above came in between
    held.release.set()
    assert (await run).status == 200
    assert held.on_loop is False


async def test_a_request_is_answered_while_a_plan_is_computed(app_factory, monkeypatch):
    held = Held(make_plan)
    monkeypatch.setattr(service_module, "make_plan", held)
    client, service, _ = await app_factory(with_copies(RecordedEngine(), 5), actions=UNUSED)
    await service.poller.poll_once()
    await answered_while_held(client, held)


async def test_a_request_is_answered_while_a_run_answer_is_encoded(app_factory, monkeypatch):
    held = Held(runs_module.Run.to_json)
    monkeypatch.setattr(runs_module.Run, "to_json", lambda run, limit=None: held(run, limit))
    client, service, _ = await app_factory(with_copies(RecordedEngine(), 5), actions=UNUSED)
    await service.poller.poll_once()
    await answered_while_held(client, held)
