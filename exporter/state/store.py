"""The current Snapshot and what is known about its freshness, published to whoever subscribed.

Why one object: the poller, the event follower and the disk-usage refresher each change what the exporter
knows, and the collector, the `/metrics` cache, the landing page and remediation read it. Each writer tells
the store through a method; readers read the store. Nobody sets another component's fields, so `behind`
(whether a run must poll before it plans) is answered in one place from everything that bears on it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Collection

from exporter.core import gcpolicy
from exporter.core.snapshot import Snapshot

#: Publishes whose changed image IDs are kept: a render that skipped this many publishes diffs the images.
PUBLISHES_KEPT = 64


def _never() -> bool:
    return False


class PublishLog:
    """Which image IDs each of the last PUBLISHES_KEPT publishes changed, for the render caches.

    Why: the collector's row cache (`exporter.metrics.collector.TableCache`) would otherwise find what changed
    by comparing every image of two snapshots, a cost in proportion to the images on every applied event,
    while the builder knows exactly which images it merged again. A publish records that set (None: not known,
    e.g. a poll's new listing); `changed_between` answers the union over a span of publishes, or None when one
    of them is unknown or no longer kept (then the cache compares the images, as with no log at all).
    Snapshots are numbered by identity, verified through a weak reference (an `id()` alone may be reused).
    """

    def __init__(self) -> None:
        self.number = 0  # of the last publish
        self._changed: dict[int, frozenset[str] | None] = {}  # publish number -> changed IDs
        self._numbers: dict[int, tuple[weakref.ref[Snapshot], int]] = {}  # id(snapshot) -> (it, its number)
        self._ids: dict[int, int] = {}  # publish number -> id(snapshot), to forget it

    def record(self, snapshot: Snapshot, changed: Collection[str] | None) -> None:
        self.number += 1
        number = self.number
        self._changed[number] = None if changed is None else frozenset(changed)
        try:
            self._numbers[id(snapshot)] = (weakref.ref(snapshot), number)
            self._ids[number] = id(snapshot)
        except TypeError:  # a Snapshot without weak references: every render diffs the images
            pass
        old = number - PUBLISHES_KEPT
        self._changed.pop(old, None)
        key = self._ids.pop(old, None)
        if key is not None and self._numbers.get(key, (None, 0))[1] == old:
            del self._numbers[key]

    def number_of(self, snapshot: Snapshot) -> int | None:
        """The publish number of `snapshot` if it is one of the last kept, else None."""
        entry = self._numbers.get(id(snapshot))
        return entry[1] if entry is not None and entry[0]() is snapshot else None

    def changed_between(self, first: int, last: int) -> frozenset[str] | None:
        """The IDs changed by the publishes after number `first` up to `last` (a superset of the images that
        are not the same object in both), or None when unknown."""
        if last < first:
            return None
        out: set[str] = set()
        for number in range(first + 1, last + 1):
            changed = self._changed.get(number)
            if changed is None:
                return None
            out |= changed
        return frozenset(out)


class SnapshotStore:
    """Holds the published Snapshot, `up`, the last error and the event stream's liveness.

    `refreshing`: asked by `behind`, True while a refresh is asked for or running (the poller's side).
    """

    def __init__(self, refreshing: Callable[[], bool] = _never) -> None:
        self._refreshing = refreshing
        self.snapshot: Snapshot | None = None
        #: Whether the engine answered the last poll on every path (a failed read says no until a poll says yes).
        self.up = False
        self.last_error: str | None = None
        #: Whether the engine's event stream keeps the snapshot current between polls: False from when a
        #: follower attaches until its stream is connected and the replay applied, and again as soon as the
        #: stream ends. None: no follower at all (unit tests, benchmarks, embedding). That is not "not live":
        #: nothing ever applies events to such a snapshot, so nothing can be missing from it but what the
        #: next poll brings, as with polls alone; saying False there would make every remediation run re-list
        #: for no gain.
        self.events_live: bool | None = None
        #: True while an `on_publish` call shows engine events applied (False: a poll or what it learned later).
        self.publishing_events = False
        self.ready = asyncio.Event()
        #: Every publish (a poll, an event applied, /system/df merged): e.g. start rendering /metrics now.
        self.on_publish: list[Callable[[Snapshot], object]] = []
        self.on_change: list[Callable[[], None]] = []  # the set of image IDs changed
        #: which images each recent publish changed (read by the collector's row cache)
        self.publishes = PublishLog()

    # -- subscribers -----------------------------------------------------------------------------------
    def subscribe(self, on_publish: Callable[[Snapshot], object]) -> None:
        """Call `on_publish` with every snapshot published from now on, in the publishing task."""
        self.on_publish.append(on_publish)

    def subscribe_changes(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` after every publish whose set of image IDs differs from the one before."""
        self.on_change.append(on_change)

    # -- writers ---------------------------------------------------------------------------------------
    def set_up(self, up: bool) -> None:
        self.up = up

    def set_error(self, error: str | None) -> None:
        self.last_error = error

    def follower_attached(self) -> None:
        """An event follower feeds this store: the snapshot is current only while its stream is live."""
        self.events_live = False

    def stream_live(self, live: bool) -> None:
        """The follower's stream is connected with its replay applied (True), or ended, broke or stopped."""
        self.events_live = live

    def publish(self, snapshot: Snapshot, *, by_events: bool = False, changed: Collection[str] | None = None) -> None:
        """Make `snapshot` current and tell every subscriber; `by_events`: it shows engine events applied;
        `changed`: the IDs of every image that is not the very same object as in the last publish (None: not
        known)."""
        previous = self.snapshot
        self.publishes.record(snapshot, changed if previous is not None else None)
        self.snapshot = snapshot
        self.ready.set()
        self.publishing_events = by_events
        try:
            for publish in self.on_publish:
                publish(snapshot)
        finally:
            self.publishing_events = False
        if previous is None:
            moved = bool(snapshot.by_id)
        elif changed is not None:  # the IDs moved only if a changed image came or went: no pass over every image
            by_id, before = snapshot.by_id, previous.by_id
            moved = any((i in by_id) != (i in before) for i in changed)
        else:
            moved = snapshot.by_id.keys() != previous.by_id.keys()
        if moved:
            for callback in self.on_change:
                callback()
        if not by_events:  # a poll or a catch-up replaced many objects: keep later collections off them
            gcpolicy.freeze_long_lived()

    # -- readers ---------------------------------------------------------------------------------------
    @property
    def behind(self) -> bool:
        """Whether the snapshot may lag the engine: none yet, the engine down, the event stream of an attached
        follower not live (not connected yet, or lost: changes since the last poll are not applied), a refresh
        asked for (a change no event could apply, a reconnect, SharedSize to reconcile) or running, or
        LastTagTimes still pending."""
        snapshot = self.snapshot
        return (
            snapshot is None
            or not self.up
            or self.events_live is False
            or self._refreshing()
            or snapshot.pending_inspects > 0
        )
