"""The state builder publishes an unchanged image as the very same object: the rule every render cache
(`exporter.metrics.render`) relies on to cost only what changed."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.core.snapshot import DiskUsage, EngineInfo, Image, ImageRef, Snapshot
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.backfill import TagTimes
from exporter.state.builder import SnapshotBuilder, _Merge
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from exporter.state.store import SnapshotStore
from tests.unit.test_event_apply import BLOBS, ClassicStore, Clock

ENGINE = EngineInfo("28.5.1", "1.51", "overlay2", "linux", "amd64")


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
    second = poller.store.snapshot
    assert second is not None and second is not first and second.disk_usage is not None
    assert all(a is b for a, b in zip(first.images, second.images, strict=True))


async def test_a_poll_that_finds_nothing_new_publishes_the_same_image_objects() -> None:
    """A poll parses a new listing; an image listed again unchanged keeps the object it had (the new one is
    freed with the answer), one that changed is published anew."""
    clock = Clock()
    store = ClassicStore(clock)
    for n, blob in enumerate(BLOBS[:4]):
        store.load_image(blob, [f"app:{n}"])
    poller, _ = start(store, clock)
    first = await poller.poll_once()
    second = await poller.poll_once()
    assert first is not None and second is not None
    assert all(a is b for a, b in zip(first.images, second.images, strict=True))
    store.tag(BLOBS[1], "app:other")  # no event follower here: the next poll finds it
    third = await poller.poll_once()
    assert third is not None and len(third.images) == 4
    same = [a is b for a, b in zip(second.images, third.images, strict=True)]
    assert same.count(False) == 1 and ImageRef("app", "other") in third.images[same.index(False)].refs


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
    after = poller.store.snapshot
    assert after is not None and after is not before
    old = {i.id: i for i in before.images}
    changed = {i.id for i in after.images if i is not old.get(i.id)}
    assert len(changed) == 1
    assert any(str(r) == "app:extra" for r in after.by_id[changed.pop()].refs)


def _image(number: int, tags: frozenset[int], size: int) -> Image:
    refs = tuple(sorted(ImageRef("app", str(t)) for t in tags))
    return Image(f"sha256:{number:064x}", refs, (), float(number), size, None, MappingProxyType({}))


def _builder() -> SnapshotBuilder:
    return SnapshotBuilder(SnapshotStore(), ImageHistory(None), TagTimes(), lambda: 1.0)


@settings(max_examples=100, deadline=None)
@given(
    start=st.dictionaries(
        st.integers(0, 12), st.tuples(st.frozensets(st.integers(0, 6), max_size=2), st.integers(1, 9))
    ),
    changes=st.lists(
        st.tuples(
            st.dictionaries(
                st.integers(0, 12), st.tuples(st.frozensets(st.integers(0, 6), max_size=2), st.integers(1, 9))
            ),
            st.sets(st.integers(0, 12)),
        ),
        max_size=12,
    ),
)
def test_applied_changes_publish_what_a_full_merge_of_the_same_listing_publishes(
    start: dict[int, tuple[frozenset[int], int]], changes: list[tuple[dict[int, tuple[frozenset[int], int]], set[int]]]
) -> None:
    """`change` edits the listing in place and the publish after it merges only the images it names: the
    Snapshot must still equal a full merge of the same listing (same images, same order), unchanged images
    must stay the very same objects, and the tag index must answer as a scan of the listing would."""
    builder = _builder()
    listed = [_image(n, tags, size) for n, (tags, size) in start.items()]
    builder.set_listing((ENGINE, listed, [], None), 0.0)
    builder.publish(1.0, offset=0.0)
    for replaced, gone in changes:
        before = builder.store.snapshot
        assert before is not None
        inspected = {i.id: i for i in (_image(n, tags, size) for n, (tags, size) in replaced.items())}
        gone_ids = {f"sha256:{n:064x}" for n in gone} - inspected.keys()
        builder.change(inspected, gone_ids)
        builder.publish(2.0, only=set(inspected), offset=0.0, by_events=True)
        after = builder.store.snapshot
        assert after is not None and builder.listing is not None
        full = _builder()
        full.set_listing((ENGINE, list(builder.listing[1].values()), [], None), 0.0)
        full.publish(2.0, offset=0.0)
        assert full.store.snapshot is not None
        assert after.images == full.store.snapshot.images and dict(after.by_id) == dict(full.store.snapshot.by_id)
        untouched = before.by_id.keys() - inspected.keys() - gone_ids
        assert all(after.by_id[i] is before.by_id[i] for i in untouched)
        for tag in range(7):
            ref = ImageRef("app", str(tag))
            assert set(builder.holders(ref)) == {i.id for i in after.images if ref in i.refs}
        _assert_logged(builder, before)
        builder.republish()  # every image merged again, none changed: the log says so
        _assert_logged(builder, after)
        assert (
            builder.store.publishes.changed_between(builder.store.publishes.number - 1, builder.store.publishes.number)
            == frozenset()
        )


def _assert_logged(builder: SnapshotBuilder, before: Snapshot) -> None:
    """The store's publish log names every image that is not the very same object as in `before` (the render
    caches read only those)."""
    after = builder.store.snapshot
    assert after is not None
    log = builder.store.publishes
    said = log.changed_between(log.number - 1, log.number)
    assert said is not None and log.number_of(after) == log.number
    moved = {i for i in before.by_id.keys() | after.by_id.keys() if before.by_id.get(i) is not after.by_id.get(i)}
    assert moved <= said


@settings(max_examples=100, deadline=None)
@given(
    start=st.dictionaries(
        st.integers(0, 12),
        st.tuples(st.frozensets(st.integers(0, 6), max_size=2), st.integers(1, 9), st.integers(0, 30)),
        min_size=1,
    ),
    steps=st.lists(st.sets(st.integers(0, 12)), max_size=6),
)
def test_a_fill_publish_of_the_learned_images_equals_a_full_merge(
    start: dict[int, tuple[frozenset[int], int, int]], steps: list[set[int]]
) -> None:
    """A LastTagTime fill republishes merging only the images it inspected since the last publish (`learned`):
    the Snapshot must equal a full merge of the same listing with the same learned values (tag times, their
    anchors, pending counts), and the images not inspected must stay the very same objects."""
    builder = _builder()
    listed = [_image(n, tags, size) for n, (tags, size, _) in start.items()]
    builder.set_listing((ENGINE, listed, [], None), 0.0)
    assert builder.listing is not None
    times = builder.tag_times
    times.relisted((i.id, i.refs) for i in builder.listing[1].values())
    builder.publish(1.0, offset=0.0)
    merged: list[str] = []
    entry = _Merge.entry

    def counted(self: _Merge, image: Image, cached: Any) -> Any:
        merged.append(image.id)
        return entry(self, image, cached)

    for step in steps:
        before = builder.store.snapshot
        assert before is not None
        learned = {f"sha256:{n:064x}" for n in step if n in start}
        for image_id in learned:
            image = builder.listing[1][image_id]
            times.learn((image.id, image.refs), float(start[int(image_id[7:], 16)][2]))
        merged.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_Merge, "entry", counted)
            builder.republish(learned)
        assert set(merged) <= learned, "a fill's publish merges the images it learned, not every image"
        after = builder.store.snapshot
        assert after is not None
        full = SnapshotBuilder(SnapshotStore(), builder.history, times, lambda: 1.0)
        full.set_listing((ENGINE, list(builder.listing[1].values()), [], None), 0.0)
        full.publish(after.taken_at, offset=0.0)
        assert full.store.snapshot is not None
        assert after.images == full.store.snapshot.images
        assert after.pending_inspects == full.store.snapshot.pending_inspects == len(times.pending)
        assert all(after.by_id[i] is before.by_id[i] for i in before.by_id.keys() - learned)
        _assert_logged(builder, before)
