"""The current Snapshot and what is known about its freshness, published to whoever subscribed.

Why one object: the poller, the event follower and the disk-usage refresher each change what the exporter
knows, and the collector, the `/metrics` cache, the landing page and remediation read it. Each writer tells
the store through a method; readers read the store. Nobody sets another component's fields, so `behind`
(whether a run must poll before it plans) is answered in one place from everything that bears on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from exporter.core.snapshot import Snapshot


def _never() -> bool:
    return False


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
        self._published_ids: frozenset[str] = frozenset()

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

    def publish(self, snapshot: Snapshot, *, by_events: bool = False) -> None:
        """Make `snapshot` current and tell every subscriber; `by_events`: it shows engine events applied."""
        self.snapshot = snapshot
        self.ready.set()
        self.publishing_events = by_events
        try:
            for publish in self.on_publish:
                publish(snapshot)
        finally:
            self.publishing_events = False
        ids = frozenset(snapshot.by_id)
        if ids != self._published_ids:
            self._published_ids = ids
            for callback in self.on_change:
                callback()

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
