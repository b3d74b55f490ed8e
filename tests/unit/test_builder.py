"""The state builder publishes an unchanged image as the very same object: the rule every render cache
(`exporter.metrics.render`) relies on to cost only what changed."""

from __future__ import annotations

from types import MappingProxyType

from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.core.snapshot import DiskUsage
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.unit.test_event_apply import BLOBS, ClassicStore, Clock


def start(store: ClassicStore, clock: Clock) -> tuple[Poller, EventFollower]:
    metrics = PollMetrics(CollectorRegistry())
    history = ImageHistory(None)
    poller = Poller(store, parse_config({"filesystem": {"path": "/"}}), history, metrics, clock=clock)
    return poller, EventFollower(store, poller, history, metrics)


async def test_a_publish_between_polls_that_changes_no_image_publishes_the_same_image_objects() -> None:
    clock = Clock()
    store = ClassicStore(clock)
    for n, blob in enumerate(BLOBS[:4]):
        store.load_image(blob, [f"app:{n}"])
    poller, _ = start(store, clock)
    first = await poller.poll_once()
    assert first is not None and len(first.images) == 4
    poller.set_disk_usage(DiskUsage(clock(), 100, 50, MappingProxyType({}), None))  # /system/df merged
    second = poller.snapshot
    assert second is not None and second is not first and second.disk_usage is not None
    assert all(a is b for a, b in zip(first.images, second.images, strict=True))


async def test_a_poll_that_finds_nothing_new_publishes_equal_images() -> None:
    """A poll parses a new listing: equal new objects, which the render caches match by equality."""
    clock = Clock()
    store = ClassicStore(clock)
    for n, blob in enumerate(BLOBS[:4]):
        store.load_image(blob, [f"app:{n}"])
    poller, _ = start(store, clock)
    first = await poller.poll_once()
    second = await poller.poll_once()
    assert first is not None and second is not None
    assert first.images == second.images


async def test_an_applied_event_publishes_a_new_object_for_the_image_it_changed_only() -> None:
    clock = Clock()
    store = ClassicStore(clock)
    for n, blob in enumerate(BLOBS[:4]):
        store.load_image(blob, [f"app:{n}"])
    poller, follower = start(store, clock)
    before = await poller.poll_once()
    assert before is not None
    for event in store.tag(BLOBS[1], "app:extra"):
        await follower.handle(event)
    after = poller.snapshot
    assert after is not None and after is not before
    old = {i.id: i for i in before.images}
    changed = {i.id for i in after.images if i is not old.get(i.id)}
    assert len(changed) == 1
    assert any(str(r) == "app:extra" for r in after.by_id[changed.pop()].refs)
