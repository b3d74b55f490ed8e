"""Recorded event streams of every engine drive refreshes, last-used and arrival tracking.

The engine facade is tests/unit/recorded.py's RecordedEngine: the same engine's recorded /images/json and
/containers/json payloads; only the resolution step (inspect by ID or name) is simulated, from real data.
"""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry

from exporter.engine.apishapes import normalize_id
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from tests.unit.recorded import FIXTURES, RecordedEngine

ENGINES = sorted(p.name for p in FIXTURES.iterdir() if (p / "events.json").exists())


class CountingPoller:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1

    async def apply_image_events(self, events: object, deleted: object = ()) -> bool:
        return False  # no snapshot to apply to: every change wakes a full poll


@pytest.mark.parametrize("engine", ENGINES)
async def test_recorded_events(engine: str) -> None:
    events = json.loads((FIXTURES / engine / "events.json").read_text())
    recorded = RecordedEngine(engine)
    poller = CountingPoller()
    history = ImageHistory(None)
    follower = EventFollower(recorded, poller, history, PollMetrics(CollectorRegistry()))  # type: ignore[arg-type]  # CountingPoller
    for event in events:
        await follower.handle(event)
    changes = [e for e in events if e.get("Action") in {"delete", "untag", "tag", "load", "loadfromarchive", "create"}]
    assert poller.wakes >= len(changes) > 0
    # containers created from runner:1 and team/web:1.0 mark their images used (ID resolved via inspect)
    used_images = {c["ImageID"] for c in recorded.containers}
    assert used_images and used_images <= {normalize_id(i) for i in history.last_used}
    # a tag event is an arrival for the tagged image (the doomed:2 tag in every recording)
    doomed = next(normalize_id(i["Id"]) for i in recorded.images if any("doomed" in t for t in i.get("RepoTags") or []))
    assert doomed in history.arrived


async def test_event_time_prefers_nanoseconds() -> None:
    from exporter.state.events import event_time

    assert event_time({"time": 10, "timeNano": 10_500_000_000}) == 10.5
    assert event_time({"time": 10}) == 10.0
