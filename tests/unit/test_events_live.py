"""`Poller.behind` knows whether the event stream is live (issue: plans on a stale snapshot during an /events outage).

The snapshot is current between polls only while the follower's stream delivers and the replay of what came
before it has been applied. Before that, and from the moment the stream ends, breaks or the follower stops, a
remediation run must plan on a fresh poll. A poller with no follower keeps planning on its snapshot.

The engine is tests/unit/recorded.py's RecordedEngine (bookworm's recorded answers) with an event stream the
test opens, ends and breaks, and a replay it holds: the exact moments a real engine cannot be made to stop at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.engine.client import EngineError, EngineUnavailable
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.unit.recorded import RecordedEngine


class Stream:
    """One events request: the test decides when the engine answers it and when it ends (or breaks)."""

    def __init__(self) -> None:
        self.answer = threading.Event()
        self.end = threading.Event()
        self.error: EngineError | None = None


class GatedStreamEngine(RecordedEngine):
    """bookworm's recorded engine whose event stream and replay wait for the test."""

    def __init__(self) -> None:
        super().__init__("bookworm")
        self.streams: queue.Queue[Stream] = queue.Queue()  # each events request, as it is made
        self.replays: asyncio.Queue[asyncio.Future[list[dict[str, Any]]]] = asyncio.Queue()
        self._opened: list[Stream] = []

    def follow_events(
        self, on_event: Callable[[dict[str, Any]], None], on_connected: Callable[[], None] | None = None
    ) -> None:
        stream = Stream()
        self._opened.append(stream)
        self.streams.put(stream)
        assert stream.answer.wait(30), "the test never let the engine answer"
        if on_connected is not None:
            on_connected()
        assert stream.end.wait(30), "the test never ended the stream"
        if stream.error is not None:
            raise stream.error

    def close_events(self) -> None:
        for stream in self._opened:
            stream.answer.set()
            stream.end.set()

    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]:
        answer: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        await self.replays.put(answer)
        return await answer


class QuietPoller(Poller):
    """A poller whose `wake()` is only counted: the re-list a lost stream asks for would also make `behind`
    True until that poll ran, and no poll task runs here, so `behind` shows the stream's state alone."""

    def wake(self) -> None:
        self.wakes = getattr(self, "wakes", 0) + 1


def make_poller(engine: RecordedEngine, tmp_path: Path, cls: type[Poller] = QuietPoller) -> Poller:
    config = parse_config({"filesystem": {"path": str(tmp_path)}})
    return cls(engine, config, ImageHistory(None), PollMetrics(CollectorRegistry()))


async def next_stream(engine: GatedStreamEngine) -> Stream:
    """The follower's next events request (after its backoff when it reconnects)."""
    return await asyncio.to_thread(engine.streams.get, True, 30)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for the follower task to get there (no timing asserted: the 30 s bound only ends a hung test)."""
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def stop(task: asyncio.Task[None], engine: GatedStreamEngine) -> None:
    task.cancel()
    engine.close_events()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def connect_and_replay(engine: GatedStreamEngine, poller: Poller) -> Stream:
    """Let the next request connect and its replay answer; `behind` stays True until the replay is applied."""
    stream = await next_stream(engine)
    assert poller.behind is True  # asked for, not answered yet
    stream.answer.set()
    async with asyncio.timeout(30):  # only ends a hung test
        replay = await engine.replays.get()
    assert poller.behind is True  # connected, but what came before is not applied yet
    replay.set_result([])
    await until(lambda: not poller.behind)
    assert poller.store.events_live is True
    return stream


async def test_behind_until_connected_and_replayed_and_again_as_soon_as_the_stream_ends_or_breaks(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.events")
    engine = GatedStreamEngine()
    poller = make_poller(engine, tmp_path)
    await poller.poll_once()
    follower = EventFollower(engine, poller, poller.history, poller.metrics)
    assert poller.behind is True and poller.store.events_live is False  # attached, never connected
    follower.resume_from = time.time() - 60  # a replay is due, as after a start with a state file
    task = asyncio.create_task(follower.run())
    try:
        first = await connect_and_replay(engine, poller)

        first.end.set()  # the engine closes the stream (a restart, a proxy timeout)
        await until(lambda: poller.behind)
        assert poller.store.events_live is False
        second = await connect_and_replay(engine, poller)  # reconnected after the backoff
        said = [r.getMessage() for r in caplog.records if r.name == "exporter.events"]
        assert said == ["event stream ended; reconnecting", "event stream live again; re-listing"]

        second.error = EngineUnavailable("event stream broke: connection reset")
        second.end.set()
        await until(lambda: poller.behind)
        assert poller.store.events_live is False
    finally:
        await stop(task, engine)


async def test_a_follower_that_stops_leaves_the_poller_behind(tmp_path: Path) -> None:
    engine = GatedStreamEngine()
    poller = make_poller(engine, tmp_path)
    await poller.poll_once()
    follower = EventFollower(engine, poller, poller.history, poller.metrics)
    follower.resume_from = time.time() - 60
    task = asyncio.create_task(follower.run())
    try:
        await connect_and_replay(engine, poller)
    finally:
        await stop(task, engine)
    assert poller.store.events_live is False and poller.behind is True


async def test_a_poller_without_a_follower_is_current_after_a_poll(tmp_path: Path) -> None:
    """No follower (unit tests, benchmarks, embedding): `behind` is what it was before events existed."""
    engine = RecordedEngine("bookworm")
    poller = make_poller(engine, tmp_path, cls=Poller)
    assert poller.store.events_live is None and poller.behind is True  # no snapshot yet
    await poller.poll_once()
    assert poller.behind is False
    poller.wake()
    assert poller.behind is True  # a refresh asked for still says so


@pytest.mark.parametrize("live", [True, False])
async def test_behind_follows_events_live_on_a_current_snapshot(tmp_path: Path, live: bool) -> None:
    engine = RecordedEngine("bookworm")
    poller = make_poller(engine, tmp_path)
    await poller.poll_once()
    poller.store.stream_live(live)
    assert poller.behind is (not live)
