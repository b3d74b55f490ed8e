"""Scrapes first: off-loop work pauses at its checkpoints while a scrape is served, within a bound, and only
then; the scrape handler holds that priority until its body is written, however it ends; the work's results
(plans, answers) are the same whatever pauses it took."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from exporter.config import MetricsConfig, ProtectConfig
from exporter.core import offloop
from exporter.core.snapshot import Filesystem, Image, ImageRef, Snapshot
from exporter.metrics.exposition import MetricsOf
from exporter.remediation.executor import _described
from exporter.remediation.planner import make_plan
from tests.unit.actions import action_of
from tests.unit.test_exposition import FakePoller, Setup, body_of, snapshot

LONG = 5.0  # a bound no test reaches unless the pause is wrongly unbounded


@pytest.fixture(autouse=True)
def no_scrape_left() -> Iterator[None]:
    yield
    assert offloop.scrapes_in_flight() == 0


class Worker:
    """Off-loop work that stops before one checkpoint until told to go on, and says when it passed it."""

    def __init__(self) -> None:
        self.reached, self.go, self.passed = threading.Event(), threading.Event(), threading.Event()

    def __call__(self) -> float:
        self.reached.set()
        self.go.wait(LONG)
        start = time.monotonic()
        offloop.checkpoint()
        self.passed.set()
        return time.monotonic() - start

    async def start(self) -> asyncio.Future[float]:
        future = asyncio.ensure_future(offloop.off_loop(self))
        assert await asyncio.to_thread(self.reached.wait, LONG)
        return future


async def passed_soon(worker: Worker, seconds: float = 0.1) -> bool:
    return await asyncio.to_thread(worker.passed.wait, seconds)


async def test_work_does_not_pause_when_no_scrape_is_in_flight() -> None:
    worker = Worker()
    future = await worker.start()
    worker.go.set()
    assert await future < 0.05


async def test_work_pauses_at_a_checkpoint_until_the_scrape_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offloop, "PAUSE_LIMIT", LONG)
    worker = Worker()
    future = await worker.start()
    with offloop.scrapes_first():
        worker.go.set()
        assert not await passed_soon(worker, 0.3)  # waiting at the checkpoint
    assert await future >= 0.3
    assert worker.passed.is_set()


async def test_a_pause_is_bounded_then_the_work_runs_a_while_without_pausing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offloop, "PAUSE_LIMIT", 0.2)
    monkeypatch.setattr(offloop, "RUN_AFTER_LIMIT", 0.5)

    def work() -> list[float]:
        waits = [time.monotonic()]  # the off-loop call paused at its start: a scrape goes first from there
        for _ in range(2):  # a pause cut short, then none within RUN_AFTER_LIMIT
            start = time.monotonic()
            offloop.checkpoint()
            waits.append(time.monotonic() - start)
        time.sleep(0.6)  # past RUN_AFTER_LIMIT: pausing again
        start = time.monotonic()
        offloop.checkpoint()
        waits.append(time.monotonic() - start)
        return waits

    with offloop.scrapes_first():  # a scrape that never ends
        called = time.monotonic()
        waits = await offloop.off_loop(work)
    assert 0.2 <= waits[0] - called < 0.2 + 1.0
    assert waits[1] < 0.05 and waits[2] < 0.05
    assert 0.2 <= waits[3] < 0.2 + 1.0


async def test_overlapping_scrapes_pause_the_work_until_the_last_one_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offloop, "PAUSE_LIMIT", LONG)
    worker = Worker()
    future = await worker.start()
    first, second = offloop.scrapes_first(), offloop.scrapes_first()
    first.__enter__()
    second.__enter__()
    with offloop.scrapes_first():  # nested in both
        assert offloop.scrapes_in_flight() == 3
        worker.go.set()
    first.__exit__(None, None, None)
    assert not await passed_soon(worker, 0.2)
    second.__exit__(None, None, None)
    await future
    assert worker.passed.is_set()


async def test_an_exception_ends_the_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offloop, "PAUSE_LIMIT", LONG)
    with pytest.raises(RuntimeError), offloop.scrapes_first():
        raise RuntimeError("the handler failed")
    assert offloop.scrapes_in_flight() == 0
    worker = Worker()
    future = await worker.start()
    worker.go.set()
    assert await future < 0.05


async def test_a_checkpoint_outside_off_loop_work_never_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop itself (a plan computed on it, as when a run is cancelled) and unrelated threads: a
    pause there would hold up the very scrape it waits for."""
    monkeypatch.setattr(offloop, "PAUSE_LIMIT", LONG)
    with offloop.scrapes_first():
        start = time.monotonic()
        offloop.checkpoint()
        await asyncio.to_thread(offloop.checkpoint)
        assert time.monotonic() - start < 0.5


class Probe(MetricsOf):
    """A collector of the exporter's own kind (rendered on the loop per scrape) that notes whether the scrape
    rendering it holds the priority."""

    def __init__(self) -> None:
        self.seen: list[int] = []
        super().__init__(self.note)

    def note(self) -> list[Any]:
        self.seen.append(offloop.scrapes_in_flight())
        return []


def served(probe: Probe | None = None) -> Setup:
    setup = Setup(FakePoller(snapshot(images=3000)), MetricsConfig(max_image_series=100_000))
    if probe is not None:
        setup.registry.register(probe)
        probe.seen.clear()  # registering collects once
    return setup


async def test_the_metrics_route_holds_the_priority_until_its_body_is_written() -> None:
    probe = Probe()
    setup = served(probe)
    writes: list[int] = []
    original = web.StreamResponse.write_eof

    async def write_eof(self: web.StreamResponse, data: bytes = b"") -> None:
        writes.append(offloop.scrapes_in_flight())
        await original(self, data)

    app = web.Application()
    app.router.add_get("/metrics", setup.endpoint.serve)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(web.StreamResponse, "write_eof", write_eof)
        async with TestClient(TestServer(app)) as client:
            for encoding in ("identity", "gzip"):
                response = await client.get("/metrics", headers={"Accept-Encoding": encoding})
                assert response.status == 200
                await response.read()
    assert probe.seen == [1, 1]
    assert writes[:1] == [1] and writes.count(1) >= 2  # the body written by serve, under the priority
    assert offloop.scrapes_in_flight() == 0


async def test_the_metrics_route_serves_the_same_bytes_as_the_handler() -> None:
    setup = served()
    want = body_of(await setup.endpoint.handle(make_mocked_request("GET", "/metrics")))
    app = web.Application()
    app.router.add_get("/metrics", setup.endpoint.serve)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        assert await response.read() == want


async def test_a_failing_scrape_ends_the_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    setup = served()

    async def failing(_: web.Request) -> web.Response:
        assert offloop.scrapes_in_flight() == 1
        raise RuntimeError("render failed")

    monkeypatch.setattr(setup.endpoint, "handle", failing)
    with pytest.raises(RuntimeError):
        await setup.endpoint.serve(make_mocked_request("GET", "/metrics"))
    assert offloop.scrapes_in_flight() == 0


@pytest.mark.parametrize(
    "value",
    [
        {"outcomes": [{"image": f"sha256:{n:064x}", "size": n, "ok": n % 2 == 0, "x": None} for n in range(1000)]},
        {"a": list(range(offloop.JSON_SLICE * 3 + 1)), "b": {"c": tuple(range(offloop.JSON_SLICE + 1))}},
        {"ü": "é\u2028", "n": 1.5, "big": [["x"] * 3] * 600, 3: "an int key"},
        [{"k": [1, 2]}] * (offloop.JSON_SLICE * 2),
        [],
        {},
        "text",
        float("nan"),
    ],
)
def test_dumps_in_slices_is_json_dumps(value: Any) -> None:
    assert offloop.dumps_in_slices(value) == json.dumps(value)


def test_dumps_in_slices_refuses_what_json_dumps_refuses() -> None:
    with pytest.raises(TypeError):
        offloop.dumps_in_slices({"a": [object()] * (offloop.JSON_SLICE + 1)})


def images(count: int, now: float) -> Snapshot:
    """`count` unused images in 100 repositories, ages spread over 100 days, some shared sizes."""
    listed = tuple(
        Image(
            id=f"sha256:{i:064x}",
            refs=(ImageRef(f"repo{i % 100}/app", f"v{i}"),) if i % 10 else (),
            digests=(),
            created=now - (i % 100) * 86400.0 - i,
            size=1 << 20,
            shared_size=i % 3,
            labels=MappingProxyType({}),
        )
        for i in range(count)
    )
    fs = Filesystem("/", count * (1 << 20) * 2, 0)
    return Snapshot(now, None, listed, filesystem=fs, by_id=MappingProxyType({i.id: i for i in listed}))


@pytest.mark.parametrize("kind", ["free_space", "keep_last"])
async def test_plans_and_outcomes_are_the_same_with_scrapes_in_flight(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plan paused at every checkpoint (a scrape in flight throughout, short bounds) equals one never paused."""
    monkeypatch.setattr(offloop, "PAUSE_LIMIT", 0.001)
    monkeypatch.setattr(offloop, "RUN_AFTER_LIMIT", 0.0)
    now = 1.8e9
    snap = images(3000, now)
    protect = ProtectConfig(references=("repo1/*",), local_only=False)
    action = action_of(kind, target_avail_ratio=0.9, keep=2, min_age=86400.0, max_deletions=100000)
    pauses: list[int] = []
    pause = offloop._pause

    def counted() -> None:
        pauses.append(1)
        pause()

    monkeypatch.setattr(offloop, "_pause", counted)

    def work() -> tuple[Any, Any]:
        plan = make_plan(snap, action, protect, now)
        return plan, _described(plan, action)

    alone = work()
    with offloop.scrapes_first():
        paused = await offloop.off_loop(work)
    assert len(pauses) > 10  # it did pause, in the loops over the images
    assert paused == alone
    del alone, paused
    for _ in range(300):  # what the planner handed over to be freed, gone before the next test
        if offloop.held_for_freeing() == 0 and offloop.computing() == 0:
            break
        await asyncio.sleep(0.01)


async def test_a_head_request_to_the_metrics_route_sends_headers_only_and_ends_the_priority() -> None:
    setup = served()
    app = web.Application()
    app.router.add_get("/metrics", setup.endpoint.serve)  # GET routes answer HEAD too
    async with TestClient(TestServer(app)) as client:
        got = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        head = await client.head("/metrics", headers={"Accept-Encoding": "identity"})
        assert head.status == 200
        assert head.headers["Content-Type"] == got.headers["Content-Type"]
        assert await head.read() == b""
        assert await got.read() != b""
    assert offloop.scrapes_in_flight() == 0
