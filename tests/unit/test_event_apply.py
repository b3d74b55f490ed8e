"""Image events applied to the snapshot directly agree exactly with the full poll that follows.

The speed of a change reaching /metrics at 10k images rests on this: an event is applied by inspecting the
images it names (`Poller.apply_image_event`), without re-listing, and the periodic full poll only reconciles.
`ClassicStore` keeps a classic-store engine's state as image ID -> tags and answers `/images/json` and image
inspect in the shapes bookworm's dockerd recorded (tests/fixtures/api/bookworm/), and each operation returns
the events that dockerd emits for it (the recorded event shapes: `untag`/`delete` name the image ID, `tag`
names the ID and the new reference, `load` names the ID, `pull` names the reference).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.core.snapshot import Image
from exporter.engine.client import EngineNotFound, Lane
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state import events as events_module
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.unit.recorded import RecordedEngine, load

BLOBS = ("alpha", "beta", "gamma", "delta")
REFS = ("app:1", "app:latest", "127.0.0.1:5000/ns/app:1", "web:2", "tools")


def blob_id(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


@dataclass
class StoredImage:
    tags: list[str]
    created: int
    size: int
    labels: dict[str, str] = field(default_factory=dict)
    last_tag_time: str = "0001-01-01T00:00:00Z"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class ClassicStore(RecordedEngine):
    """bookworm's dockerd: images and tags in a dict; reads in its recorded shapes, writes return events."""

    def __init__(self, clock: Clock) -> None:
        super().__init__("bookworm")
        self.clock = clock
        self.store: dict[str, StoredImage] = {}
        self.containers = []
        self.list_template = next(i for i in load("bookworm", "images.json") if i.get("RepoTags"))
        self.inspect_template = load("bookworm", "image-inspect.json")

    def _event(self, action: str, actor: str, name: str) -> dict[str, Any]:
        self.clock.now += 1
        nanos = int(self.clock.now * 1e9)
        return {
            "status": action,
            "id": actor,
            "Type": "image",
            "Action": action,
            "Actor": {"ID": actor, "Attributes": {"name": name}},
            "scope": "local",
            "time": nanos // 10**9,
            "timeNano": nanos,
        }

    def _holder(self, ref: str) -> str | None:
        return next((i for i, image in self.store.items() if ref in image.tags), None)

    def _set_tag(self, image_id: str, ref: str) -> None:
        holder = self._holder(ref)
        if holder is not None:
            self.store[holder].tags.remove(ref)  # the old image stays, dangling if that was its last tag
        self.store[image_id].tags.append(ref)
        self.store[image_id].last_tag_time = f"2027-01-15T08:00:{int(self.clock.now) % 60:02d}.123456789Z"

    def _arrive(self, blob: str) -> str:
        image_id = blob_id(blob)
        if image_id not in self.store:
            index = BLOBS.index(blob)
            labels = {"org.example.team": blob} if index % 2 else {}
            self.store[image_id] = StoredImage([], 1_740_000_000 + 3600 * index, 4096 * (index + 1), labels)
        return image_id

    # operations: each changes the state and returns the events dockerd emits for it

    def tag(self, blob: str, ref: str) -> list[dict[str, Any]]:
        image_id = blob_id(blob)
        if image_id not in self.store:
            return []
        self._set_tag(image_id, ref)
        return [self._event("tag", image_id, ref)]

    def rmi(self, ref: str) -> list[dict[str, Any]]:
        """`docker rmi <ref>`: untag; the image goes with its last tag."""
        holder = self._holder(ref)
        if holder is None:
            return []
        self.store[holder].tags.remove(ref)
        events = [self._event("untag", holder, holder)]
        if not self.store[holder].tags:
            del self.store[holder]
            events.append(self._event("delete", holder, holder))
        return events

    def rmi_id(self, blob: str) -> list[dict[str, Any]]:
        """`docker rmi <id>`: refused with several tags; else untag each and delete."""
        image_id = blob_id(blob)
        image = self.store.get(image_id)
        if image is None or len(image.tags) > 1:
            return []
        events = [self._event("untag", image_id, image_id) for _ in image.tags]
        del self.store[image_id]
        return [*events, self._event("delete", image_id, image_id)]

    def load_image(self, blob: str, refs: list[str]) -> list[dict[str, Any]]:
        """`docker load` of an archive naming `refs`: tags move to the loaded image (no tag events)."""
        image_id = self._arrive(blob)
        for ref in refs:
            if ref not in self.store[image_id].tags:
                self._set_tag(image_id, ref)
        return [self._event("load", image_id, image_id)]

    def pull(self, blob: str, ref: str) -> list[dict[str, Any]]:
        image_id = self._arrive(blob)
        if ref not in self.store[image_id].tags:
            self._set_tag(image_id, ref)
        return [self._event("pull", ref, ref)]

    # reads in the recorded shapes

    async def list_images(self) -> list[dict[str, Any]]:
        self._answer("list_images")
        listed = []
        for image_id, image in self.store.items():
            entry = copy.deepcopy(self.list_template)
            entry.update(
                Id=image_id,
                RepoTags=list(image.tags) or ["<none>:<none>"],
                RepoDigests=None,
                Created=image.created,
                Size=image.size,
                VirtualSize=image.size,
                Labels=dict(image.labels) or None,
            )
            listed.append(entry)
        return listed

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        self._answer("inspect_image")
        image_id = ref if ref in self.store else self._holder(ref)
        if image_id is None:
            raise EngineNotFound(f"No such image: {ref}", 404)
        image = self.store[image_id]
        answer: dict[str, Any] = copy.deepcopy(self.inspect_template)
        answer.update(
            Id=image_id,
            RepoTags=list(image.tags),
            RepoDigests=[],
            Created=f"{_rfc3339(image.created)}.{image.size % 999_999_999:09d}Z",
            Size=image.size,
            VirtualSize=image.size,
            Metadata={"LastTagTime": image.last_tag_time},
        )
        answer["Config"] = {**answer.get("Config", {}), "Labels": dict(image.labels) or None}
        return answer


def _rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")


blobs = st.sampled_from(BLOBS)
refs = st.sampled_from(REFS)
operations = st.one_of(
    st.tuples(st.just("tag"), blobs, refs),
    st.tuples(st.just("rmi"), refs),
    st.tuples(st.just("rmi_id"), blobs),
    st.tuples(st.just("load_image"), blobs, st.lists(refs, max_size=3, unique=True)),
    st.tuples(st.just("pull"), blobs, refs),
)


def _start(store: ClassicStore, clock: Clock) -> tuple[Poller, EventFollower, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = PollMetrics(registry)
    history = ImageHistory(None)
    poller = Poller(store, parse_config({"filesystem": {"path": "/"}}), history, metrics, clock=clock)
    return poller, EventFollower(store, poller, history, metrics), registry


def _engine_view(image: Image) -> tuple[Any, ...]:
    """What the engine's listing and inspect tell (history-derived times excluded: each poller has its own)."""
    return (image.refs, image.digests, image.created, image.size, dict(image.labels), image.shared_size,
            image.containers, image.last_tag_time)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    start=st.lists(st.tuples(blobs, st.lists(refs, max_size=2, unique=True)), max_size=4),
    steps=st.lists(operations, max_size=25),
)
async def test_events_applied_to_the_snapshot_agree_with_a_full_poll(
    start: list[tuple[str, list[str]]], steps: list[tuple[Any, ...]]
) -> None:
    clock = Clock()
    store = ClassicStore(clock)
    for blob, tags in start:
        store.load_image(blob, tags)
    poller, follower, registry = _start(store, clock)
    await poller.poll_once()
    for name, *args in steps:
        for event in getattr(store, name)(*args):
            await follower.handle(event)
    applied = poller.store.snapshot
    assert applied is not None
    # no full poll was needed: every event was applied by inspecting what it named
    assert registry.get_sample_value("docker_exporter_polls_total") == 1
    assert not poller._wake.is_set()
    assert "list_images" not in store.calls[store.calls.index("list_images") + 1 :]

    # the next full poll of the same exporter changes nothing at all (history included)
    repolled = await poller.poll_once()
    assert repolled is not None
    assert dict(applied.by_id) == dict(repolled.by_id)

    # and a fresh exporter polling the final engine state sees the same images
    fresh, _, _ = _start(store, clock)
    recomputed = await fresh.poll_once()
    assert recomputed is not None
    assert {i: _engine_view(v) for i, v in applied.by_id.items()} == {
        i: _engine_view(v) for i, v in recomputed.by_id.items()
    }


class InspectingEverything(EventFollower):
    """The follower before batches: every image an event names is inspected, a deleted one included."""

    async def _apply(self, changes: list[list[str]], deleted: set[str]) -> bool:
        return await super()._apply(changes, set())


@settings(max_examples=150, deadline=None)
@given(
    start=st.lists(st.tuples(blobs, st.lists(refs, max_size=2, unique=True)), max_size=4),
    steps=st.lists(operations, max_size=25),
    cuts=st.lists(st.integers(min_value=1, max_value=6), max_size=25),
)
# a pull after a delete, in one batch, brings the deleted image back under a tag that
# then moved on; the image exists though its last event by ID is that delete
@example(
    start=[("alpha", []), ("beta", [])],
    steps=[("rmi_id", "beta"), ("pull", "beta", "app:latest"), ("tag", "alpha", "app:latest")],
    cuts=[],
)
async def test_events_applied_in_batches_agree_with_one_at_a_time(
    start: list[tuple[str, list[str]]], steps: list[tuple[Any, ...]], cuts: list[int]
) -> None:
    """Queued events are handled in batches (`EventFollower.handle_batch`: one inspect per image, none for
    an image whose last event is `delete`). Whatever happened while they queued (`cuts` groups the
    operations), a batch leaves the snapshot exactly as handling the same events one at a time and
    inspecting every image they name does (what the follower did before batches)."""
    clock = Clock()
    store = ClassicStore(clock)
    for blob, tags in start:
        store.load_image(blob, tags)
    single, _, _ = _start(store, clock)
    one_at_a_time = InspectingEverything(store, single, single.history, single.metrics)
    batched, in_batches, registry = _start(store, clock)
    await single.poll_once()
    await batched.poll_once()
    at = 0
    for size in [*cuts, len(steps)]:
        events = [event for name, *args in steps[at : at + size] for event in getattr(store, name)(*args)]
        at += size
        for event in events:
            await one_at_a_time.handle(event)
        await in_batches.handle_batch(events)
    assert single.store.snapshot is not None and batched.store.snapshot is not None
    assert {i: _engine_view(v) for i, v in batched.store.snapshot.by_id.items()} == {
        i: _engine_view(v) for i, v in single.store.snapshot.by_id.items()
    }
    assert registry.get_sample_value("docker_exporter_polls_total") == 1
    assert batched._wake.is_set() == single._wake.is_set()


async def test_a_batch_of_deletions_inspects_nothing_and_publishes_once() -> None:
    """What a remediation run deleting images looks like from the event stream: untag + delete per image.
    The images are gone by the engine's word: inspecting them (404 each) only loaded an engine that is busy
    deleting."""
    clock = Clock()
    store = ClassicStore(clock)
    for blob in BLOBS:
        store.load_image(blob, [f"{blob}:1"])
    poller, follower, _ = _start(store, clock)
    await poller.poll_once()
    published: list[object] = []
    poller.store.subscribe(published.append)
    inspects = store.calls.count("inspect_image")
    events = [event for blob in BLOBS for event in store.rmi_id(blob)]
    await follower.handle_batch(events)
    assert store.calls.count("inspect_image") == inspects
    assert poller.store.snapshot is not None and not poller.store.snapshot.by_id
    assert len(published) == 1
    assert not poller._wake.is_set()


async def test_a_burst_of_untags_is_applied_without_re_listing() -> None:
    clock = Clock()
    store = ClassicStore(clock)
    store.load_image("alpha", ["keep:1"])
    for n in range(200):
        store.store[blob_id("alpha")].tags.append(f"burst:{n}")
    poller, follower, registry = _start(store, clock)
    await poller.poll_once()
    for n in range(200):
        for event in store.rmi(f"burst:{n}"):
            await follower.handle(event)
    snapshot = poller.store.snapshot
    assert snapshot is not None
    assert [str(r) for r in snapshot.by_id[blob_id("alpha")].refs] == ["keep:1"]
    assert registry.get_sample_value("docker_exporter_polls_total") == 1
    assert store.calls.count("list_images") == 1
    assert not poller._wake.is_set()


async def test_every_publish_calls_the_publish_hooks() -> None:
    clock = Clock()
    store = ClassicStore(clock)
    store.load_image("alpha", ["app:1"])
    poller, follower, _ = _start(store, clock)
    published: list[object] = []
    poller.store.subscribe(published.append)
    await poller.poll_once()  # publishes after the listing, then again when LastTagTime is known
    assert len(published) == 2 and published[0] is not published[1]
    await poller.poll_once()  # nothing changed: still a publish (taken_at moves)
    assert len(published) == 3
    for event in store.tag("alpha", "app:2"):
        await follower.handle(event)
    assert len(published) == 4
    assert published[-1] is poller.store.snapshot


async def test_containerd_store_events_fall_back_to_a_full_poll() -> None:
    """Inspect and listing disagree there (Size, RepoDigests): an applied event would not be exact."""
    recorded = RecordedEngine("trixie-containerd")
    registry = CollectorRegistry()
    history = ImageHistory(None)
    poller = Poller(recorded, parse_config({"filesystem": {"path": "/"}}), history, PollMetrics(registry))
    await poller.poll_once()
    before = poller.store.snapshot
    image = recorded.images[0]
    assert await poller.apply_image_event([image["Id"]]) is False
    assert poller.store.snapshot is before


async def _two_tags_each_watched() -> tuple[ClassicStore, Poller, EventFollower, list[object]]:
    """Every blob loaded with two tags and polled; the publishes from then on are listed."""
    clock = Clock()
    store = ClassicStore(clock)
    for blob in BLOBS:
        store.load_image(blob, [f"{blob}:1", f"{blob}:2"])
    poller, follower, _ = _start(store, clock)
    await poller.poll_once()
    published: list[object] = []
    poller.store.subscribe(published.append)
    return store, poller, follower, published


async def test_events_that_queued_up_while_one_was_handled_go_in_one_batch() -> None:
    """The follower's worker takes every event already queued (a burst from the stream) as one batch."""
    store, poller, follower, published = await _two_tags_each_watched()
    for blob in BLOBS:
        for event in store.rmi(f"{blob}:2"):
            follower._queue.put_nowait(event)
    worker = asyncio.create_task(follower._handle_events())
    try:
        for _ in range(1000):
            if published:
                break
            await asyncio.sleep(0.01)
    finally:
        worker.cancel()
    assert len(published) == 1
    assert poller.store.snapshot is not None
    assert sorted(str(r) for i in poller.store.snapshot.images for r in i.refs) == sorted(f"{b}:1" for b in BLOBS)


async def test_on_podman_a_delete_event_is_not_taken_as_the_image_gone() -> None:
    """Podman sends `delete` for each reference it removes (recorded: untag + delete of doomed:2 while the
    image keeps doomed:1), so there the image is inspected as before, not dropped."""
    recorded = RecordedEngine("podman")
    metrics = PollMetrics(CollectorRegistry())
    history = ImageHistory(None)
    poller = Poller(recorded, parse_config({"filesystem": {"path": "/"}}), history, metrics)
    follower = EventFollower(recorded, poller, history, metrics)
    await poller.poll_once()
    events = load("podman", "events.json")
    doomed = [e for e in events if e["Actor"]["Attributes"].get("name") == "docker.io/library/doomed:2"]
    assert [e["Action"] for e in doomed] == ["tag", "untag", "delete"]
    await follower.handle_batch(doomed[1:])
    assert poller.store.snapshot is not None
    assert "sha256:" + doomed[-1]["Actor"]["ID"] in poller.store.snapshot.by_id


async def test_a_burst_of_applied_events_writes_the_state_file_once_and_the_next_poll_catches_up(
    tmp_path: Path,
) -> None:
    """Each state write is a JSON dump and fsync of every image's history: events applied in a burst write
    once (at most one per EVENT_SAVE_INTERVAL); what they left unwritten goes with the next poll."""
    clock = Clock()
    store = ClassicStore(clock)
    for blob in BLOBS:
        store.load_image(blob, [f"{blob}:1"])
    history = ImageHistory(str(tmp_path / "state.json"))
    metrics = PollMetrics(CollectorRegistry())
    poller = Poller(store, parse_config({"filesystem": {"path": "/"}}), history, metrics, clock=clock)
    follower = EventFollower(store, poller, history, metrics)
    await poller.poll_once()
    writes: list[list[str]] = []
    real_write = history.write

    def write(data: list[str]) -> None:
        writes.append(data)
        real_write(data)

    history.write = write  # type: ignore[method-assign]
    for blob in BLOBS:
        for event in store.rmi_id(blob):
            await follower.handle(event)
    assert len(writes) == 1
    await poller.poll_once()
    assert len(writes) == 2 and json.loads("".join(writes[-1]))["present"] == []
    assert json.loads((tmp_path / "state.json").read_text())["present"] == []


async def burst_in_two_batches(
    monkeypatch: pytest.MonkeyPatch, store: ClassicStore, follower: EventFollower, published: list[object]
) -> tuple[list[float], bool]:
    """Feed the running follower a burst of untags: the first alone, the rest once it was published. The
    interval waits the follower asked for (recorded and cut short), and whether the first event was published
    at once, alone and without a wait."""
    worker = asyncio.create_task(follower._handle_events())
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:  # the interval's wait, recorded and cut short
        sleeps.append(seconds)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    try:
        first, *rest = [event for blob in BLOBS for event in store.rmi(f"{blob}:2")]
        follower._queue.put_nowait(first)
        for _ in range(1000):
            if published:
                break
            await real_sleep(0.01)
        first_alone = len(published) == 1 and not sleeps
        for event in rest:
            follower._queue.put_nowait(event)
        for _ in range(1000):
            if len(published) > 1:
                break
            await real_sleep(0.01)
    finally:
        worker.cancel()
    return sleeps, first_alone


async def test_in_a_burst_events_gather_for_one_batch_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event after a quiet spell is applied at once; events following it within BATCH_INTERVAL wait for
    the interval's end and go as one batch, one publish (each publish costs time in the number of images, on
    the loop the remediation executor shares)."""
    monkeypatch.setattr(events_module, "BATCH_INTERVAL", 30.0)  # the whole burst falls within it
    store, poller, follower, published = await _two_tags_each_watched()
    sleeps, first_alone = await burst_in_two_batches(monkeypatch, store, follower, published)
    assert first_alone  # the first one was not held back
    assert len(published) == 2 and len(sleeps) == 1 and 0 < sleeps[0] <= 30.0
    assert poller.store.snapshot is not None
    assert sorted(str(r) for i in poller.store.snapshot.images for r in i.refs) == sorted(f"{b}:1" for b in BLOBS)
