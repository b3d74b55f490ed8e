"""Follow the engine's event stream: refresh within a second of a change, and learn image use/arrival.

The blocking stream runs in a thread and hands each event to the event loop. An image event that names its
image (tag, untag, delete, load, pull, import) is applied to the snapshot by inspecting that image
(`Poller.apply_image_event`) and published at once, with no re-list: with many images a full poll takes
seconds, and a burst of tags would cause several of them. Any other change (container events, `prune`, every
image event on the containerd store, an event whose inspect fails) wakes the poller (debounced there). Container create/start records the image's last-used time; image
pull/load/tag/import records its arrival, so a freshly pulled old image counts as young for `min_age`.
On start and after every reconnect the events since the last one known (the saved state's time on start)
are replayed with `since`/`until` (after a reconnect the poller also re-lists; at start its first poll is that
re-list), so uses and re-pulls during downtime are not lost; the engine keeps only
its last 256 events, so a replay is a hint: the poller also re-lists, and images it has not seen before
count as just arrived (see `history`). Event shapes differ (an untag names an ID on the classic store, a reference on the containerd
store; Podman says `loadfromarchive`): every name is resolved through an inspect, and the poller's
new-ID detection catches what events cannot name.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from exporter.core.logs import kv
from exporter.engine.apishapes import MalformedAnswer, normalize_id, parse_time
from exporter.engine.errors import EngineError, EngineUnavailable
from exporter.engine.seam import EngineSeam
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from exporter.state.store import SnapshotStore

log = logging.getLogger("exporter.events")  # the caller= name log pipelines filter on, not the file's place

ARRIVAL_ACTIONS = frozenset({"pull", "load", "tag", "import", "loadfromarchive"})
USE_ACTIONS = frozenset({"create", "start"})
IMAGE_CHANGES = frozenset({"delete", "untag", "prune", "remove"}) | ARRIVAL_ACTIONS
#: Image events naming the image they changed: applied by inspecting it, without a full re-list.
APPLICABLE_ACTIONS = frozenset({"pull", "load", "tag", "import", "untag", "delete"})
CONTAINER_CHANGES = frozenset({"create", "destroy", "remove", "start", "die"})
MAX_BACKOFF = 30.0
ENGINE_EVENT_BUFFER = 256  # events the engine keeps for a replay (moby's events buffer)
#: Queued events handled as one batch at most (see `EventFollower.handle_batch`).
MAX_BATCH = 1024
#: Seconds between event batches in a burst. Each batch publishes a snapshot, which costs time in the
#: number of images on the event loop the remediation executor shares: a run deleting 1,000 images made
#: a batch of two or three events every few milliseconds. An event after a quiet spell is taken at once.
BATCH_INTERVAL = 0.05
#: The same while a remediation run deletes: each DELETE causes an untag and a delete event, and every publish
#: they cause makes the next scrape wait for a render; the run's own outcome matters more than metrics fresher
#: than this while it lasts.
DELETING_BATCH_INTERVAL = 0.5
_HEX_ID = re.compile(r"(sha256:)?[0-9a-f]{64}")


def check_event(event: Any) -> None:
    """MalformedAnswer unless `event` has the shape `handle_batch` reads: strings where it reads strings, objects
    where it reads objects, positive whole times."""
    if not isinstance(event, dict):
        raise MalformedAnswer("", f"expected an object, got {type(event).__name__}")
    for key in ("Type", "Action", "status", "id"):
        if event.get(key) is not None and type(event[key]) is not str:
            raise MalformedAnswer(key, f"expected a string, got {type(event[key]).__name__}")
    for key in ("time", "timeNano"):
        value = event.get(key)
        if value is not None and (type(value) is not int or not 0 <= value < 2**63):
            raise MalformedAnswer(key, f"expected a positive whole number, got {type(value).__name__} {value!r:.40}")
    actor = event.get("Actor")
    if actor is None:
        return
    if not isinstance(actor, dict):
        raise MalformedAnswer("Actor", f"expected an object, got {type(actor).__name__}")
    if actor.get("ID") is not None and type(actor["ID"]) is not str:
        raise MalformedAnswer("Actor.ID", f"expected a string, got {type(actor['ID']).__name__}")
    attributes = actor.get("Attributes")
    if attributes is not None and not isinstance(attributes, dict):
        raise MalformedAnswer("Actor.Attributes", f"expected an object, got {type(attributes).__name__}")


def event_time(event: dict[str, Any]) -> float:
    nanos = event.get("timeNano")
    if isinstance(nanos, int) and nanos > 0:
        return nanos / 1e9
    seconds = event.get("time")
    return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else time.time()


class EventFollower:
    """One task: keep an event stream open, reconnecting with backoff while the engine is away."""

    def __init__(
        self,
        engine: EngineSeam,
        poller: Poller,
        history: ImageHistory,
        metrics: PollMetrics,
        store: SnapshotStore | None = None,
    ) -> None:
        """`poller` re-lists (`wake`) and applies image events; `store` (the poller's unless given) is told
        whether the stream keeps its snapshot current. A stand-in poller without a store (a test driving
        `handle` alone) has no liveness to tell."""
        self.engine = engine
        self.poller = poller
        self.history = history
        self.metrics = metrics
        #: The newest event handled: where the next replay starts (before any, the saved state's time).
        self.resume_from: float | None = None
        self.store: SnapshotStore | None = store if store is not None else getattr(poller, "store", None)
        if self.store is not None:
            self.store.follower_attached()  # the snapshot is current only while the stream is live
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        #: True while a remediation run deletes images: batches gather for DELETING_BATCH_INTERVAL then.
        self.deleting: Callable[[], bool] = lambda: False

    async def run(self) -> None:
        """Follow the stream until cancelled; the store's `events_live` is True only while the snapshot is current.

        Live from when the engine has answered the events request and the replay of what came before has
        been applied (before that the snapshot may lack changes), until the stream ends, breaks or this task
        is cancelled. A remediation run plans on a fresh poll while it is not (`SnapshotStore.behind`).
        """
        loop = asyncio.get_running_loop()
        backoff = 1.0
        reconnecting = False
        worker = asyncio.create_task(self._handle_events())
        try:
            while True:
                started = time.monotonic()

                connected = asyncio.Event()

                def deliver(event: dict[str, Any]) -> None:
                    loop.call_soon_threadsafe(self._queue.put_nowait, event)

                def on_connected(connected: asyncio.Event = connected) -> None:
                    loop.call_soon_threadsafe(connected.set)

                # Subscribe first, replay second: events from the moment the stream is live are delivered by
                # it, and the replay covers what came before. (Replaying first loses the events of a load
                # that runs during the replay: the engine keeps only its last 256 events for a stream that
                # starts later.) A change in the overlap is handled twice, which is harmless.
                stream = asyncio.create_task(asyncio.to_thread(self.engine.follow_events, deliver, on_connected))
                live = asyncio.create_task(connected.wait())
                try:
                    await asyncio.wait({stream, live}, return_when=asyncio.FIRST_COMPLETED)
                    if connected.is_set():
                        try:
                            await self.replay()
                        except EngineError as exc:  # the stream says whether the engine is gone; re-list
                            log.debug("cannot replay engine events", extra=kv(err=exc))
                            self.poller.wake()
                        if reconnecting:  # re-list: a replay is a hint; at start the first poll is that re-list
                            self.poller.wake()
                        if not stream.done():  # the replay is applied and the stream still delivers: current
                            self._live(True)
                            if reconnecting:  # the other half of "ended; reconnecting" / "lost" below
                                log.info("event stream live again; re-listing")
                        reconnecting = True
                    await stream
                    log.info("event stream ended; reconnecting")
                except EngineError as exc:
                    if time.monotonic() - started > 5:
                        log.warning("event stream lost", extra=kv(err=exc))
                    else:
                        log.debug("event stream unavailable", extra=kv(err=exc))
                    self.metrics.errors.labels("events").inc()
                finally:  # cancelled (stopping): the stream's thread ends with `close_events` below
                    self._live(False)  # ended, broke or stopping: changes may go unseen from now
                    live.cancel()
                    stream.cancel()
                self.poller.wake()  # the engine may be gone: let the poller say so now
                if time.monotonic() - started > 30:
                    backoff = 1.0
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        finally:
            self.engine.close_events()
            worker.cancel()

    def _live(self, live: bool) -> None:
        if self.store is not None:
            self.store.stream_live(live)

    async def replay(self) -> int:
        """Handle the events the engine still holds since `resume_from` (at most its last 256)."""
        since = self.resume_from if self.resume_from is not None else self.history.saved_at
        if since is None:
            return 0
        try:
            until = await self._engine_now()
            replayed = await self.engine.events_between(int(since), int(until) + 1)
            # `since` has whole seconds: what happened up to `since` itself is already in the state
            events = [e for e in replayed if event_time(e) > since]
            if len(replayed) >= ENGINE_EVENT_BUFFER:  # the engine may have dropped older ones: re-list too
                self.poller.wake()
        except EngineUnavailable:
            raise
        except EngineError as exc:  # an engine that cannot replay still streams: carry on without
            log.info("cannot replay engine events", extra=kv(since=int(since), err=exc))
            return 0
        try:
            await self.handle_batch(events)
        except EngineError as exc:
            log.debug("could not resolve replayed events", extra=kv(events=len(events), err=exc))
        if events:
            log.info("replayed engine events", extra=kv(events=len(events), since=int(since)))
        return len(events)

    async def _engine_now(self) -> float:
        """The engine's clock (`/info` SystemTime; this host's when it cannot tell): events are stamped with it,
        and a replay asked to run `until` a time the engine's clock has not reached is held open by the engine
        until then (a remote engine whose clock is behind, this process's clock stepped forward alone)."""
        _, info, _ = await self.engine.version_and_info()
        engine_now = parse_time(info.get("SystemTime"))
        return engine_now if engine_now is not None else time.time()

    async def _handle_events(self) -> None:
        """Take queued events in batches; in a burst, at most one batch per BATCH_INTERVAL (see there), or per
        DELETING_BATCH_INTERVAL while a remediation run deletes."""
        applied = float("-inf")
        while True:
            batch = [await self._queue.get()]
            interval = DELETING_BATCH_INTERVAL if self.deleting() else BATCH_INTERVAL
            gather = applied + interval - time.monotonic()
            if gather > 0:  # the previous batch was just now: this is a burst, let it gather
                await asyncio.sleep(gather)
            applied = time.monotonic()
            while len(batch) < MAX_BATCH and not self._queue.empty() and batch[-1] is not None:
                batch.append(self._queue.get_nowait())
            events = [e for e in batch if e is not None]
            try:
                await self.handle_batch(events)
            except EngineError as exc:
                log.debug("could not resolve events", extra=kv(events=len(events), err=exc))
            except Exception as exc:  # whatever a batch met, the events after it must still be handled
                log.exception("handling engine events failed; re-listing", extra=kv(events=len(events), err=exc))
                self.poller.wake()
            if len(events) < len(batch):
                return

    async def handle(self, event: dict[str, Any]) -> None:
        await self.handle_batch([event])

    async def handle_batch(self, events: list[dict[str, Any]]) -> None:
        """Handle events in their order, applying the image changes among them to the snapshot together.

        Why together: events queue up in bursts (a `docker load` of many images, a remediation run deleting
        a thousand), and one apply inspects each image once, publishes once and saves the state once, where
        one apply per event re-inspected an image for its untag and again for its delete, while the engine
        was busy deleting. An image whose last event in the batch is `delete` is gone: it is not inspected,
        unless an event naming only a reference (a pull) comes after it: that one may have brought it back.
        """
        changes: list[list[str]] = []
        deleted: dict[str, bool] = {}  # image ID -> whether its last event here is a delete
        relist = False
        for event in events:
            try:
                check_event(event)
            except MalformedAnswer as exc:  # what it changed is unknown: a re-list finds out
                self.metrics.errors.labels("events").inc()
                log.warning(
                    "malformed engine event ignored; re-listing",
                    extra=kv(field=exc.field, problem=exc.problem, event=repr(event)[:200]),
                )
                relist = True
                continue
            kind = event.get("Type")
            action = str(event.get("Action") or event.get("status") or "").split(":", 1)[0]
            actor = event.get("Actor") or {}
            attributes = actor.get("Attributes") or {}
            when = event_time(event)
            self.resume_from = max(self.resume_from or 0.0, when)
            if kind == "image" and action in IMAGE_CHANGES:
                subject = str(actor.get("ID") or event.get("id") or "")
                if action in ARRIVAL_ACTIONS:
                    image_id = await self._resolve_image(subject)
                    if image_id:
                        self.history.mark_arrived(image_id, when)
                names = [text for text in (subject, str(attributes.get("name") or "")) if text]
                if action not in APPLICABLE_ACTIONS or not names:
                    relist = True
                    continue
                changes.append(names)
                ids = [normalize_id(text) for text in names if _HEX_ID.fullmatch(text)]
                if not ids:  # a pull by name may have brought a deleted image back: inspect them after all
                    deleted = dict.fromkeys(deleted, False)
                for image_id in ids:
                    deleted[image_id] = action == "delete"
            elif kind == "container" and action in CONTAINER_CHANGES:
                if action in USE_ACTIONS:
                    image_id = await self._container_image(str(actor.get("ID") or ""), attributes.get("image"))
                    if image_id:
                        self.history.mark_used(image_id, when)
                relist = True
        if changes and not await self._apply(changes, {i for i, gone in deleted.items() if gone}):
            relist = True
        if relist:
            self.poller.wake()

    async def _apply(self, changes: list[list[str]], deleted: set[str]) -> bool:
        """Apply image events to the snapshot directly (see `Poller.apply_image_events`); False: re-list.

        Each event's actor is an image ID (classic store: tag, untag, delete, import) or a reference (pull,
        load; every name on the containerd store); `name` is the reference a tag event set. `prune` and
        Podman's `loadfromarchive` (a temp-file name) name no image, so they re-list.
        """
        groups: list[tuple[list[str], list[str]]] = []
        for names in changes:
            ids = [normalize_id(text) for text in names if _HEX_ID.fullmatch(text)]
            refs = [text for text in names if not _HEX_ID.fullmatch(text)]
            groups.append((ids, refs))
        try:
            return await self.poller.apply_image_events(groups, deleted)
        except EngineError as exc:
            log.debug("could not apply image events (re-listing)", extra=kv(events=len(groups), err=exc))
            return False

    async def _resolve_image(self, name: str) -> str | None:
        if not name:
            return None
        snapshot = self.store.snapshot if self.store is not None else None
        candidate = normalize_id(name) if _HEX_ID.fullmatch(name) else name  # Podman names IDs bare
        if snapshot is not None and candidate in snapshot.by_id:
            return candidate
        try:
            return str((await self.engine.inspect_image(name)).get("Id") or "") or None
        except EngineError:
            return None

    async def _container_image(self, container_id: str, image_attr: Any) -> str | None:
        if container_id:
            try:
                inspect = await self.engine.inspect_container(container_id)
                image = str(inspect.get("Image") or "")
                if image:
                    return normalize_id(image)
            except EngineError:
                pass  # container already gone (e.g. --rm): fall back to the image name in the event
        return await self._resolve_image(str(image_attr or ""))
