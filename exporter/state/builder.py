"""Builds each published Snapshot from the last listing and what was learned beside it.

The listing (engine, images, containers, filesystem) comes from a poll or an applied event; beside it come
LastTagTimes (`backfill`), /system/df's SharedSize (`diskusage`), and arrivals, uses and clock anchors
(`history`). The result is one immutable Snapshot handed to the `SnapshotStore`.

An unchanged image is the same object in the next Snapshot: the merged copy of the last publish is reused
when neither the listed image nor what was learned about it changed. The metrics' render caches key on that
identity (`exporter.metrics.render`), so a publish after an event re-renders only the images it touched.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from exporter.core.snapshot import Container, DiskUsage, EngineInfo, Filesystem, Image, Snapshot
from exporter.state.backfill import TagKey, TagTimes, tag_key
from exporter.state.history import ImageHistory
from exporter.state.store import SnapshotStore

Listing = tuple[EngineInfo, list[Image], list[Container], Filesystem | None]


def _with_learned(image: Image, values: tuple[Any, ...]) -> Image:
    """`image` with what the poller learned elsewhere (`values` in `SnapshotBuilder.publish`'s order).

    A shallow copy of the frozen dataclass's fields, as `copy.copy` makes it: `dataclasses.replace`
    re-reads the field list and re-runs `__init__` per call (several times the cost, for every
    image on every publish before the first ready).
    """
    out: Image = object.__new__(Image)
    fields = out.__dict__
    fields.update(image.__dict__)
    (
        fields["shared_size"],
        fields["containers"],
        fields["last_tag_time"],
        fields["tag_time_pending"],
        fields["last_used"],
        fields["arrived"],
        fields["seen_offset"],
    ) = values
    return out


class SnapshotBuilder:
    """The last listing, /system/df's figures and the merged images of the last publish."""

    def __init__(
        self, store: SnapshotStore, history: ImageHistory, tag_times: TagTimes, clock: Callable[[], float]
    ) -> None:
        self.store = store
        self.history = history
        self.tag_times = tag_times
        self.clock = clock
        self.listing: Listing | None = None
        self.disk_usage: DiskUsage | None = None
        #: The clock offset when the last listing was taken (see `publish`).
        self.listed_offset: float | None = None
        #: The last publish per image: (listed image, learned values, merged image, tag key), so an event's
        #: publish rebuilds only the images it changed (rebuilding all is a large share of a poll).
        self._merged: dict[str, tuple[Image, tuple[Any, ...], Image, TagKey]] = {}

    def set_listing(self, listing: Listing, listed_offset: float | None = None) -> None:
        """A new listing (a poll's; an applied event's keeps the poll's offset when `listed_offset` is None)."""
        self.listing = listing
        if listed_offset is not None:
            self.listed_offset = listed_offset

    def set_disk_usage(self, usage: DiskUsage) -> None:
        """/system/df's figures, merged into a fresh published view when there is a listing."""
        self.disk_usage = usage
        if self.listing is not None:
            snapshot = self.store.snapshot
            self.publish(snapshot.taken_at if snapshot else usage.taken_at)

    def republish(self) -> None:
        """Publish the same listing again with what was learned since (LastTagTimes, `up`)."""
        snapshot = self.store.snapshot
        self.publish(snapshot.taken_at if snapshot else self.clock(), offset=self.listed_offset)

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
        du = self.disk_usage
        merged: list[Image] = []
        previous = self._merged
        self._merged = {}
        last_used, arrived = self.history.last_used, self.history.arrived
        if offset is None:
            offset = self.history.clock.offset()
        anchors, anchor = self.history.anchors, self.history.anchor
        tag_times, pending_keys = self.tag_times.times, self.tag_times.pending
        for image in images:
            cached = previous.get(image.id)
            same = cached is not None and cached[0] is image
            if only is not None and same and image.id not in only:
                assert cached is not None
                self._merged[image.id] = cached
                merged.append(cached[2])
                continue
            shared = image.shared_size
            if shared is None and du is not None:  # 1.41 computes SharedSize only in /system/df
                shared = du.shared_sizes.get(image.id)
            if cached is not None and same:
                key = cached[3]
            elif keys is not None:
                key = keys[image.id]
            else:
                key = tag_key(image)
            tag_time, pending, arrival = tag_times.get(key), key in pending_keys, arrived.get(image.id)
            seen: float | None = None
            if not pending:  # pending: counted as too young anyway; anchored once its tag time is known
                reference = image.created  # `Image.age_reference`, spelled out: this loop runs per image
                if tag_time is not None and tag_time > reference:
                    reference = tag_time
                if arrival is not None and arrival > reference:
                    reference = arrival
                held = anchors.get(image.id)
                seen = held[1] if held is not None and held[0] == reference else anchor(image.id, reference, offset)
            values = (shared, in_use.get(image.id, 0), tag_time, pending, last_used.get(image.id), arrival, seen)
            # the same listed image with the same learned values: reuse, do not rebuild
            out = cached[2] if cached is not None and same and cached[1] == values else _with_learned(image, values)
            self._merged[image.id] = (image, values, out, key)
            merged.append(out)
        snapshot = Snapshot(
            taken_at=taken_at,
            engine=engine,
            images=tuple(merged),
            containers=tuple(containers),
            disk_usage=du,
            filesystem=filesystem,
            by_id=MappingProxyType({i.id: i for i in merged}),
            pending_inspects=len(pending_keys),
        )
        self.store.publish(snapshot, by_events=by_events)
