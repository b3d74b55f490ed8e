"""Builds each published Snapshot from the last listing and what was learned beside it.

The listing (engine, images, containers, filesystem) comes from a poll or an applied event; beside it come
LastTagTimes (`backfill`), /system/df's SharedSize (`diskusage`), and arrivals, uses and clock anchors
(`history`). The result is one immutable Snapshot handed to the `SnapshotStore`.

An unchanged image is the same object in the next Snapshot: the merged copy of the last publish is reused
when neither the listed image nor what was learned about it changed. The metrics' render caches key on that
identity (`exporter.metrics.render`), so a publish after an event re-renders only the images it touched.

Applied events change the listing in place (`change`): the listed images are kept by ID in listing order, with
an index of which images hold each tag, so an event finds the images it touches without a scan and its publish
merges only those again; what stays proportional to the images is copying the image tuple and ID map of the
new Snapshot (in C).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from types import MappingProxyType
from typing import Any

from exporter.core.snapshot import Container, DiskUsage, EngineInfo, Filesystem, Image, ImageRef, Snapshot
from exporter.state.backfill import TagKey, TagTimes, tag_key
from exporter.state.history import ImageHistory
from exporter.state.store import SnapshotStore

Listing = tuple[EngineInfo, list[Image], list[Container], Filesystem | None]
#: A listing as the builder keeps it: the images by ID, in listing order.
Listed = tuple[EngineInfo, dict[str, Image], list[Container], Filesystem | None]
_NOBODY: frozenset[str] = frozenset()
#: One image's last publish: (listed image, merged image, tag key).
Merged = tuple[Image, Image, TagKey]


def _learned(merged: Image) -> tuple[Any, ...]:
    """What `_with_learned` put into `merged`, in its order."""
    return (
        merged.shared_size,
        merged.containers,
        merged.last_tag_time,
        merged.tag_time_pending,
        merged.last_used,
        merged.arrived,
        merged.seen_offset,
    )


def _with_learned(image: Image, values: tuple[Any, ...]) -> Image:
    """`image` with what the poller learned elsewhere (`values` in `SnapshotBuilder.publish`'s order).

    The constructor with every field by position: `dataclasses.replace` re-reads the field list and passes
    them by name per call (several times the cost, for every image on every publish before the first ready).
    """
    shared_size, containers, last_tag_time, tag_time_pending, last_used, arrived, seen_offset = values
    return Image(
        image.id,
        image.refs,
        image.digests,
        image.created,
        image.size,
        shared_size,
        image.labels,
        containers,
        last_tag_time,
        last_used,
        arrived,
        seen_offset,
        tag_time_pending,
    )


class SnapshotBuilder:
    """The last listing, /system/df's figures and the merged images of the last publish."""

    def __init__(
        self, store: SnapshotStore, history: ImageHistory, tag_times: TagTimes, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.history = history
        self.tag_times = tag_times
        self.clock = clock
        self.listing: Listed | None = None
        self.disk_usage: DiskUsage | None = None
        #: The clock offset when the last listing was taken (see `publish`).
        self.listed_offset: float | None = None
        #: Whether the last poll's listing had SharedSize for some image (an event's inspect has none).
        self.shares_known = False
        #: tag -> the ID of the listed image holding it (a set in the rare case of several: a listing that raced a
        #: tag move); one string rather than a set per tag keeps this index small
        self._holders: dict[ImageRef, str | set[str]] = {}
        #: The last publish per image, in listing order: (listed image, merged image, tag key), so an event's
        #: publish rebuilds only the images it changed (rebuilding all is a large share of a poll). The learned
        #: values are compared with the merged image's own fields: a tuple of them per image costs memory.
        self._merged: dict[str, Merged] = {}
        #: the merged images of the last publish, in listing order: the next Snapshot's by-ID map is a copy
        #: (a copy of a dict is several times faster than building one from the images)
        self._out: dict[str, Image] = {}
        self._unpublished: set[str] = set()  # IDs `change` touched since the last publish
        self._relisted = True  # a new listing: the next publish merges every image

    def set_listing(self, listing: Listing, listed_offset: float | None = None) -> None:
        """A poll's new listing, and the clock offset when it was taken."""
        engine, images, containers, filesystem = listing
        before = self.listing[1] if self.listing is not None else {}
        listed: dict[str, Image] = {}
        for image in images:
            # an image listed again unchanged keeps its object: its merged copy, rows and texts are reused by
            # identity, and the new one is freed with the answer it was parsed from instead of being kept
            # among that answer's freed objects, which would keep their memory from going back to the system
            old = before.get(image.id)
            listed[image.id] = old if old is not None and old == image else image
        self.listing = (engine, listed, containers, filesystem)
        self._holders = {}
        for image in listed.values():
            self._hold(image)
        self.shares_known = any(i.shared_size is not None for i in images)
        self._relisted = True
        if listed_offset is not None:
            self.listed_offset = listed_offset

    def holders(self, ref: ImageRef) -> Iterable[str]:
        """The IDs of the listed images tagged `ref` (one, unless a listing raced a tag move)."""
        held = self._holders.get(ref, _NOBODY)
        return (held,) if isinstance(held, str) else held

    def change(self, inspected: dict[str, Image], gone: Iterable[str]) -> None:
        """Applied events: `inspected` images replace the listed ones (in place; new ones go last), `gone` leave."""
        assert self.listing is not None
        images = self.listing[1]
        for image_id in gone:
            old = images.pop(image_id, None)
            if old is not None:
                self._release(old)
                self._unpublished.add(image_id)
        for image_id, image in inspected.items():
            old = images.get(image_id)
            if old is not None:
                self._release(old)
            images[image_id] = image
            self._hold(image)
            self._unpublished.add(image_id)

    def _hold(self, image: Image) -> None:
        holders = self._holders
        for ref in image.refs:
            held = holders.setdefault(ref, image.id)
            if held == image.id:
                continue
            if isinstance(held, str):
                holders[ref] = {held, image.id}
            else:
                held.add(image.id)

    def _release(self, image: Image) -> None:
        holders = self._holders
        for ref in image.refs:
            held = holders.get(ref)
            if held == image.id:
                del holders[ref]
            elif isinstance(held, set):
                held.discard(image.id)
                if len(held) == 1:
                    holders[ref] = held.pop()

    def set_disk_usage(self, usage: DiskUsage) -> None:
        """/system/df's figures, merged into a fresh published view when there is a listing."""
        self.disk_usage = usage
        if self.listing is not None:
            snapshot = self.store.snapshot
            self.publish(snapshot.taken_at if snapshot else usage.taken_at)

    def republish(self, learned: set[str] | None = None) -> None:
        """Publish the same listing again with what was learned since (LastTagTimes, `up`); `learned`: the IDs
        of the only images whose learned values may have moved (None: merge every image again)."""
        snapshot = self.store.snapshot
        self.publish(snapshot.taken_at if snapshot else self.clock(), only=learned, offset=self.listed_offset)

    def publish(
        self,
        taken_at: float,
        only: set[str] | None = None,
        keys: dict[str, TagKey] | None = None,
        offset: float | None = None,
        by_events: bool = False,
    ) -> None:
        """A new Snapshot from the listing and what was learned; `only`: the image IDs an event changed (the
        others keep their merged copy as is, since nothing else they depend on moved); `keys`: the listed
        images' tag keys when the caller has them already; `offset`: the clock offset (exporter.core.clocks) when
        what is published was seen, which images seen for the first time are anchored at (now's if None).

        A LastTagTime inspected behind the listing is anchored at the listing's offset, not the inspect's:
        the tag is older than the listing, and a clock step between the two (NTP's first sync while a start
        fills thousands of tag times) is not age."""
        assert self.listing is not None
        engine, images, containers, filesystem = self.listing
        in_use: dict[str, int] = {}
        for c in containers:
            in_use[c.image_id] = in_use.get(c.image_id, 0) + 1
        if offset is None:
            offset = self.history.clock.offset()
        merge = _Merge(self, in_use, offset, keys)
        changed = None if only is None else only | self._unpublished
        if changed is None or self._relisted or not self._merge_changed(merge, changed):
            previous = self._merged
            self._merged = {}
            self._out = {}
            remerged: set[str] = set(previous.keys() - images.keys())  # gone
            for image_id, image in images.items():
                cached = previous.get(image_id)
                entry = merge.entry(image, cached)
                if entry is not cached:
                    remerged.add(image_id)
                self._merged[image_id] = entry
                self._out[image_id] = entry[1]
            changed = remerged
            self._relisted = False
        self._unpublished = set()
        snapshot = Snapshot(
            taken_at=taken_at,
            engine=engine,
            images=tuple(self._out.values()),
            containers=tuple(containers),
            disk_usage=self.disk_usage,
            filesystem=filesystem,
            by_id=MappingProxyType(dict(self._out)),
            pending_inspects=len(self.tag_times.pending),
        )
        self.store.publish(snapshot, by_events=by_events, changed=changed)

    def _merge_changed(self, merge: _Merge, changed: set[str]) -> bool:
        """Merge only the `changed` images again (the others keep their merged copy: nothing they depend on
        moved); False (nothing done) when the changes cannot be placed in listing order this way."""
        assert self.listing is not None
        images = self.listing[1]
        new = [i for i in changed if i in images and i not in self._merged]
        tail = list(islice(reversed(images), len(new)))[::-1]  # `change` appends new images to the listing
        if set(tail) != set(new):
            return False
        for image_id in changed:
            image = images.get(image_id)
            if image is None:
                self._merged.pop(image_id, None)
                self._out.pop(image_id, None)
            elif image_id in self._merged:
                entry = self._merged[image_id] = merge.entry(image, self._merged[image_id])
                self._out[image_id] = entry[1]
        for image_id in tail:
            entry = self._merged[image_id] = merge.entry(images[image_id], None)
            self._out[image_id] = entry[1]
        return True


class _Merge:
    """One publish's merge of a listed image with what was learned about it (see `SnapshotBuilder.publish`)."""

    def __init__(
        self, builder: SnapshotBuilder, in_use: dict[str, int], offset: float, keys: dict[str, TagKey] | None
    ) -> None:
        self.in_use = in_use
        self.offset = offset
        self.keys = keys
        self.du = builder.disk_usage
        history = builder.history
        self.last_used, self.arrived = history.last_used, history.arrived
        self.anchors, self.anchor = history.anchors, history.anchor
        self.tag_times, self.pending_keys = builder.tag_times.times, builder.tag_times.pending

    def entry(self, image: Image, cached: Merged | None) -> Merged:
        """(listed image, merged image, tag key); the cached entry when nothing moved."""
        same = cached is not None and cached[0] is image
        shared = image.shared_size
        if shared is None and self.du is not None:  # 1.41 computes SharedSize only in /system/df
            shared = self.du.shared_sizes.get(image.id)
        if cached is not None and same:
            key = cached[2]
        elif self.keys is not None:
            key = self.keys[image.id]
        else:
            key = tag_key(image)
        tag_time, pending, arrival = self.tag_times.get(key), key in self.pending_keys, self.arrived.get(image.id)
        seen: float | None = None
        if not pending:  # pending: counted as too young anyway; anchored once its tag time is known
            reference = image.created  # `Image.age_reference`, spelled out: this runs per image
            if tag_time is not None and tag_time > reference:
                reference = tag_time
            if arrival is not None and arrival > reference:
                reference = arrival
            held = self.anchors.get(image.id)
            seen = (
                held[1] if held is not None and held[0] == reference else self.anchor(image.id, reference, self.offset)
            )
        values = (shared, self.in_use.get(image.id, 0), tag_time, pending, self.last_used.get(image.id), arrival, seen)
        # the same listed image with the same learned values: reuse, do not rebuild
        if cached is not None and same and _learned(cached[1]) == values:
            return cached
        return (image, _with_learned(image, values), key)
