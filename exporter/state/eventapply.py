"""Image events applied to the snapshot by inspecting only the images they name, without a re-list.

Why: a full poll re-lists and re-parses every image (seconds with many); an event names one image (an ID, or
a reference on the containerd store and Podman) and an inspect of it is exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from exporter.core.logs import WarnOnce
from exporter.core.snapshot import EngineInfo, Image, ImageRef
from exporter.engine import apishapes
from exporter.engine.apishapes import MalformedAnswer
from exporter.engine.errors import EngineError
from exporter.engine.seam import EngineSeam
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.backfill import malformed_warning, tag_key
from exporter.state.builder import SnapshotBuilder
from exporter.state.history import ImageHistory

#: Seconds between state-file writes caused by applied events (each rewrites and fsyncs the whole file,
#: re-encoding only the entries that changed): a burst of events writes once, and what it left unwritten goes with the next poll's or the
#: shutdown's save. A crash in between loses only arrivals and presence, which count as new on restart:
#: the safe side (too young to delete).
EVENT_SAVE_INTERVAL = 1.0


class EventApplier:
    """Applies image events to the builder's listing under the poller's lock, publishing once per batch.

    `started`: whether the first poll has started (before that, its listing will include any change);
    `up`: whether the engine answered the last poll; `wake`: ask for a (debounced) re-list.
    """

    def __init__(
        self,
        engine: EngineSeam,
        builder: SnapshotBuilder,
        history: ImageHistory,
        metrics: PollMetrics,
        lock: asyncio.Lock,
        malformed: WarnOnce,
        *,
        started: Callable[[], bool],
        up: Callable[[], bool],
        wake: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.builder = builder
        self.history = history
        self.metrics = metrics
        self.malformed = malformed
        self._lock = lock
        self._started = started
        self._up = up
        self._wake = wake
        self._clock = clock
        self._event_saved = float("-inf")  # monotonic time of the last state save an applied event made
        self._reconcile = False  # an applied event changed what only a listing can tell (SharedSize)

    def relisting(self) -> None:
        """A poll is re-listing (under the lock): SharedSize is reconciled by it."""
        self._reconcile = False

    async def apply(self, events: Sequence[tuple[Sequence[str], Sequence[str]]], deleted: Collection[str] = ()) -> bool:
        """Apply image events (each: the IDs and references it names) by inspecting only the images they
        touch, once each; publish once.

        Touched are the named images and whichever image held a named reference before (a tag that moved). An
        inspect answering 404 means the image is gone. False when the event cannot be applied exactly
        (no snapshot yet, the engine is down, the containerd store, whose inspect and listing disagree on
        sizes and digests): the caller schedules a full poll then. Events that add or remove
        images change other images' `SharedSize`: those also ask for a (debounced) reconciling poll.
        `deleted`: IDs a `delete` event said are gone (the last word on them in this batch): not inspected,
        except on Podman, whose `delete` event names each reference removed while the image may stay.
        """
        if not self._lock.locked() and not self._started():
            return True  # the first poll has not started: its listing will include this change
        async with self._lock:  # after a poll in progress (the first one at start): then exact on its result
            listing = self.builder.listing
            if self.builder.store.snapshot is None or listing is None or not self._up() or listing[0].containerd_store:
                return False
            engine, images = listing[0], listing[1]
            builder = self.builder
            touched: set[str] = set()
            for image_ids, refs in events:
                named = {apishapes.normalize_id(i) for i in image_ids if i}
                for text in refs:
                    ref = ImageRef.parse(text)
                    if ref is None:
                        continue
                    touched.update(builder.holders(ref))
                    if not named:
                        touched.add(text)  # what the name points to now (a tag event's ID already is that)
                touched |= named
            # dockerd says `delete` once the image is gone; Podman says it for each reference it removes
            gone = set() if engine.podman else {apishapes.normalize_id(i) for i in deleted} & images.keys()
            touched -= gone
            inspected: dict[str, Image] = {}
            try:
                await self._inspect_into(touched, engine, images, inspected, gone)
                # an image that lost a tag to an inspected one (a tag moved, e.g. by `load`): inspect it too
                moved = {r for i in inspected.values() for r in i.refs}
                losers = {i for r in moved for i in builder.holders(r) if i not in inspected}
                await self._inspect_into(losers, engine, images, inspected, gone)
            except MalformedAnswer as exc:  # nothing applied: the re-list the caller schedules says what is true
                self.metrics.errors.labels("events").inc()
                malformed_warning(self.malformed, exc, "event not applied; re-listing")
                return False
            removed = gone - inspected.keys()
            if removed and builder.shares_known:
                self._reconcile = True
            before = {i: images[i] for i in touched | losers | gone if i in images}
            builder.change(inspected, removed)
            now, offset = self._clock(), self.history.clock.offset()
            # an image new here arrives now; only the images these events touched can have come or gone
            self.history.observe_changed(images.keys(), touched | losers | gone | inspected.keys(), now)
            for image_id, old in before.items():  # their old tag sets are not wanted now
                image = images.get(image_id)
                if image is None or tag_key(image) != tag_key(old):
                    builder.tag_times.forget(tag_key(old))
            changed = (inspected.keys() | touched | losers) & images.keys()
            builder.publish(now, only=changed, offset=offset, by_events=True)
        if self._reconcile:
            self._wake()
        if time.monotonic() - self._event_saved >= EVENT_SAVE_INTERVAL:
            self._event_saved = time.monotonic()
            await self.history.save_in_thread()
        return True

    async def _inspect_into(
        self,
        names: Iterable[str],
        engine: EngineInfo,
        by_id: Mapping[str, Image],
        inspected: dict[str, Image],
        gone: set[str],
    ) -> None:
        """Inspect each name: the image it is now goes to `inspected`, an ID answering 404 to `gone`."""
        for name in names:
            try:
                raw = await self.engine.inspect_image(name)
            except EngineError as exc:
                if exc.status != 404:
                    raise
                if name in by_id:
                    gone.add(name)
                continue
            try:
                image = apishapes.parse_image_inspect(raw, engine)
                tag_time = apishapes.parse_last_tag_time(raw)
            except MalformedAnswer as exc:
                raise exc.within(f"/images/{name}/json") from None
            if image.id in inspected:
                continue
            if image.id in by_id:  # same layers, same sharing (None where the engine cannot tell)
                image = replace(image, shared_size=by_id[image.id].shared_size)
            elif self.builder.shares_known:
                self._reconcile = True  # a new image may share layers: the listing's SharedSize moves
            inspected[image.id] = image
            self.builder.tag_times.learn(tag_key(image), tag_time)
