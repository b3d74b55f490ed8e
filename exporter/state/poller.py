"""Background refresh: builds a new immutable Snapshot every `poll.interval`, or sooner when woken.

The poller is the only reader of the cheap endpoints (/version, /info, /images/json,
/containers/json, image inspect for LastTagTime, container inspect once per stopped container for when
it last ran) and of statvfs. It never raises out of its loop: a failed
stage is counted, `up` goes to 0 and the last good data keeps being served with its age visible. An answer
of the wrong shape (`apishapes.MalformedAnswer`) fails its stage the same way, logged with the endpoint and
field, never half-parsed into wrong counts; the next poll asks again.
/system/df lives in `diskusage`, which hands its result here to be merged into the next published view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from exporter import memory
from exporter.config import Config
from exporter.engine import apishapes
from exporter.engine.apishapes import MalformedAnswer
from exporter.engine.client import Engine, EngineError, EngineUnavailable
from exporter.engine.firstreads import FirstReads
from exporter.engine.hints import engine_error_hint, filesystem_error
from exporter.logs import kv
from exporter.metrics.selfmetrics import PollMetrics
from exporter.snapshot import Container, DiskUsage, EngineInfo, Filesystem, Image, ImageRef, Snapshot
from exporter.state.history import ImageHistory

log = logging.getLogger("exporter.poller")  # the caller= name log pipelines filter on, not the file's place

# Marking running images as used at most this often keeps the state file from being rewritten every poll.
RUNNING_USE_RESOLUTION = 60.0
#: Inspects per lock hold (and publish) while filling LastTagTime behind the first publish.
FILL_BATCH = 500
FILL_PUBLISH_INTERVAL = 1.0  # seconds between publishes while LastTagTimes fill in
#: Seconds between state-file writes caused by applied events (each is a JSON dump and fsync of every image's
#: history): a burst of events writes once, and what it left unwritten goes with the next poll's or the
#: shutdown's save. A crash in between loses only arrivals and presence, which count as new on restart:
#: the safe side (too young to delete).
EVENT_SAVE_INTERVAL = 1.0
#: Images fewer than the poll before, from which the freed memory is handed back to the system at once (see
#: `poll_once`).
TRIM_AFTER_DROP = 10_000

TagKey = tuple[str, tuple[str, ...]]


def _tag_key(image: Image) -> TagKey:
    """LastTagTime changes only with the tag set: an image is inspected again when its tags change."""
    return (image.id, tuple(map(str, image.refs)))


def _with_learned(image: Image, values: tuple[Any, ...]) -> Image:
    """`image` with what the poller learned elsewhere (`values` in `_publish`'s order).

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


def data_root_path(configured: str | None, engine: EngineInfo) -> str:
    """The path whose statvfs is the data-root filesystem: the configured one, else where the engine says."""
    return configured or engine.data_root or "/var/lib/docker"


def read_filesystem(path: str) -> Filesystem:
    """statvfs of the engine's data root: what `df` shows, in bytes (avail = space for non-root)."""
    st = os.statvfs(path)
    return Filesystem(path=path, size=st.f_blocks * st.f_frsize, avail=st.f_bavail * st.f_frsize)


class Poller:
    """Owns the current Snapshot; `wake()` asks for a refresh soon (debounced)."""

    def __init__(
        self,
        engine: Engine,
        config: Config,
        history: ImageHistory,
        metrics: PollMetrics,
        clock: Callable[[], float] = time.time,
        first_reads: FirstReads | None = None,
    ) -> None:
        self.engine = engine
        #: Reads started before the poller existed (see `FirstReads`): the first poll's, then None.
        self.first_reads = first_reads
        self.config = config
        self.history = history
        self.metrics = metrics
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.up = False
        self._logged_up: bool | None = None  # the engine state last logged: log transitions only, the first too
        self._logged_fs_error: str | None = None  # likewise for statvfs, so a missing mount warns once
        self._logged_malformed: str | None = None  # the malformed answer last logged: each new problem warns once
        #: A malformed inspect's error: `up` stays 0 from one poll to the next until the inspects it left pending
        #: are answered properly (else every poll's publish would show the engine up for a moment).
        self._refused_inspect: str | None = None
        self._listed = False  # the last poll's reads all succeeded
        self.last_error: str | None = None
        self.disk_usage: DiskUsage | None = None
        self.on_change: list[Callable[[], None]] = []  # the set of image IDs changed
        #: Every publish (a poll, an event applied, /system/df merged): e.g. start rendering /metrics now.
        self.on_publish: list[Callable[[Snapshot], object]] = []
        #: True while an `on_publish` call shows engine events applied (False: a poll or what it learned later).
        self.publishing_events = False
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tag_times: dict[TagKey, float | None] = {}  # LastTagTime by image and tag set
        self._pending: set[TagKey] = set()  # keys listed but not inspected yet
        #: (container ID, state) -> when that stopped container last ran (inspect State), read once
        self._container_use: dict[tuple[str, str], float | None] = {}
        self._parts: tuple[EngineInfo, list[Image], list[Container], Filesystem | None] | None = None
        self._published_ids: frozenset[str] = frozenset()
        #: The last publish per image: (listed image, learned values, merged image, tag key), so an event's publish
        #: rebuilds only the images it changed (rebuilding all is a large share of a poll).
        self._merged: dict[str, tuple[Image, tuple[Any, ...], Image, TagKey]] = {}
        self._event_saved = float("-inf")  # monotonic time of the last state save an applied event made
        #: The clock offset when the last listing was taken (see `_publish`).
        self._listed_offset: float | None = None
        self._attempted = False  # a poll has run (an event before that is in the first listing)
        self._reconcile = False  # an applied event changed what only a listing can tell (SharedSize)
        #: Whether the engine's event stream keeps the snapshot current between polls; set by the
        #: `EventFollower` fed by this poller (False from its creation until its stream is connected and the
        #: replay applied, and again as soon as the stream ends). None: no follower at all (unit tests,
        #: benchmarks, embedding). That is not "not live": nothing ever applies events to such a snapshot,
        #: so nothing can be missing from it but what the next poll brings, as with polls alone;
        #: saying False there would make every remediation run re-list for no gain.
        self.events_live: bool | None = None
        self.ready = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

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
            or self._wake.is_set()
            or self._lock.locked()
            or snapshot.pending_inspects > 0
        )

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: a changed `poll` or `filesystem` section polls soon, so it shows at once."""
        changed = config.poll != self.config.poll or config.filesystem != self.config.filesystem
        self.config = config
        if changed:
            self.wake()

    async def run(self) -> None:
        """One task: poll, then sleep until the interval passes or something wakes us."""
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # a bug or an answer nobody foresaw must not end polling for good
                self.up = False
                self.last_error = f"poll: {type(exc).__name__}: {exc}"
                self._logged_up = False
                log.exception("poll failed unexpectedly; retrying next interval", extra=kv(err=exc))
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the result of an inner future done at
            # the moment the task is cancelled and swallows the cancel, and a wake() at shutdown hung the
            # stop for a whole poll interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll.interval):
                    await self._wake.wait()
            if self._wake.is_set():
                await asyncio.sleep(self.config.poll.debounce)  # let a burst of events settle
                self._wake.clear()

    async def poll_once(self) -> Snapshot | None:
        """Refresh now; concurrent callers wait for the one poll in progress instead of starting another."""
        async with self._lock:
            start = time.monotonic()
            self.metrics.polls.inc()
            self._reconcile = False
            listed = len(self._parts[1]) if self._parts is not None else 0
            try:
                await self._poll()
            finally:
                self._attempted = True
                self.metrics.duration.set(time.monotonic() - start)
            dropped = listed - (len(self._parts[1]) if self._parts is not None else 0)
        if not self.up or dropped >= TRIM_AFTER_DROP:
            # a failed read (a refused or malformed answer may have been large) or a listing that shrank by
            # thousands of images freed much at once: glibc keeps freed pages for reuse unless asked
            await asyncio.to_thread(memory.release_free_memory)
        await self._fill_pending()
        return self.snapshot

    async def _stage(self, stage: str, call: Any) -> Any:
        try:
            return await call
        except EngineError as exc:
            self.metrics.errors.labels(stage).inc()
            self.last_error = f"{stage}: {exc}"
            raise

    def _parse(self, stage: str, endpoint: str, parse: Callable[..., Any], *raw: Any) -> Any:
        """`parse(*raw)`; a MalformedAnswer is counted against `stage` and names `endpoint` and the field."""
        try:
            return parse(*raw)
        except MalformedAnswer as exc:
            self.metrics.errors.labels(stage).inc()
            bad = exc.within(endpoint) if not exc.field.startswith("/") else exc
            self.last_error = f"{stage}: malformed answer: {bad}"
            raise bad from None

    def _log_malformed(self, exc: MalformedAnswer, what: str) -> None:
        """Warn once per distinct problem (a broken engine repeats it every poll), debug after."""
        text = str(exc)
        level = logging.DEBUG if text == self._logged_malformed else logging.WARNING
        self._logged_malformed = text
        log.log(level, f"malformed engine answer; {what}", extra=kv(field=exc.field, problem=exc.problem))

    async def _poll(self) -> None:
        reads, self.first_reads = self.first_reads, None
        now = reads.started_at if reads is not None else self.clock()
        # the offset when `now` was read: what this listing's images are seen at (a launch read is from before
        # this poll: the lowest offset since the process started, at most that)
        listed_offset = self.history.clock.offset() if reads is None else self.history.clock.lowest()
        listed: list[Image] | None = None
        if reads is not None:  # the listing answers first: parse it while version and info are read
            await asyncio.wait([reads.images])
            if not reads.images.cancelled() and reads.images.exception() is None:
                # a malformed one is parsed again below, in order, where its error is counted and logged
                with contextlib.suppress(MalformedAnswer):
                    listed = apishapes.parse_listing(reads.images.result())
        try:
            version, info, api = await self._stage(
                "info", reads.info if reads is not None else self.engine.version_and_info()
            )
            engine = self._parse("info", "/version", apishapes.parse_engine_info, version, info, api)
            raw_images = await self._stage("images", reads.images if reads is not None else self.engine.list_images())
            raw_containers = await self._stage(
                "containers", reads.containers if reads is not None else self.engine.list_containers()
            )
            if listed is not None:
                images = apishapes.for_engine(listed, engine)
            else:
                images = self._parse("images", "/images/json", apishapes.parse_images, raw_images, engine)
            containers = list(self._parse("containers", "/containers/json", apishapes.parse_containers, raw_containers))
            await self._stage("containers", self._fill_container_use(containers))
            # the inspects and deletions' path: up means every path reaches the engine, not only the SDK's
            await self._stage("images", self.engine.check_lean())
        except MalformedAnswer as exc:
            if reads is not None:
                reads.discard()
            self._log_malformed(exc, "poll failed, serving the last snapshot; retrying")
            self._logged_up = False
            self.up = self._listed = False
            return
        except EngineError as exc:
            if reads is not None:
                reads.discard()  # reads queued behind the one that failed: the next poll asks again
            if self._logged_up is not False:
                served = "serving the last snapshot" if self.snapshot else "no snapshot yet, /-/ready answers 503"
                log.warning(
                    "engine unreachable or failing; retrying",
                    extra=kv(host=self.engine.where, serving=served, err=exc, hint=engine_error_hint(str(exc))),
                )
                self._logged_up = False
            self.up = self._listed = False
            return
        self.last_error = None  # the engine answered; a statvfs failure below is the one left to show
        filesystem: Filesystem | None = None
        fs_path = data_root_path(self.config.filesystem.path, engine)
        try:
            filesystem = await asyncio.to_thread(read_filesystem, fs_path)
        except OSError as exc:
            self.metrics.errors.labels("filesystem").inc()
            self.last_error = filesystem_error(fs_path, bool(self.config.filesystem.path), exc)
            if str(exc) != self._logged_fs_error:
                log.warning(
                    "cannot statvfs the data-root filesystem",
                    extra=kv(path=fs_path, err=exc, hint=engine_error_hint(self.last_error)),
                )
                self._logged_fs_error = str(exc)
        else:
            if self._logged_fs_error is not None:
                log.info("statvfs works again", extra=kv(path=fs_path))
            self._logged_fs_error = None
        self._listed = True
        self.up = self._refused_inspect is None
        if not self.up:
            self.last_error = self._refused_inspect
        elif self._logged_up is not True:
            log.info(
                "engine reachable",
                extra=kv(version=engine.version, api_version=api, storage_driver=engine.storage_driver),
            )
            self._logged_up = True
            self._logged_malformed = None
        self._track_history(images, containers, now)
        self._parts = (engine, images, containers, filesystem)
        keys = {i.id: _tag_key(i) for i in images}
        wanted = set(keys.values())
        self._tag_times = {k: v for k, v in self._tag_times.items() if k in wanted}
        self._pending = wanted - self._tag_times.keys()  # inspected behind the publish: `_fill_pending`
        self._listed_offset = listed_offset
        self._publish(now, keys=keys, offset=listed_offset)
        await self.history.save_in_thread()

    async def _fill_pending(self) -> None:
        """Inspect images whose LastTagTime is not known yet (new images or tag sets), publishing as they come.

        Why behind the publish: LastTagTime needs one inspect per image (tens of seconds for many images on
        a first poll), while counts, sizes and tags need only the listing. Until known, an image
        says so (`Image.tag_time_pending`: no last-tag series, and remediation counts it as young) and
        `docker_exporter_pending_inspects` counts them. The lock is taken per batch, so events apply between.
        """
        published = time.monotonic()
        while True:
            async with self._lock:
                if self._parts is None or not self._pending:
                    if self._refused_inspect is not None and self._listed and not self._pending:
                        self._refused_inspect = self.last_error = self._logged_malformed = None
                        self.up = True  # answered properly now
                        log.info("image inspects answer properly again")
                        self._publish(
                            self.snapshot.taken_at if self.snapshot else self.clock(), offset=self._listed_offset
                        )
                    return
                batch = sorted(self._pending)[:FILL_BATCH]
                try:
                    for key in batch:
                        try:
                            inspect = await self.engine.inspect_image(key[0])
                        except EngineError as exc:
                            if exc.status != 404:
                                raise
                            # deleted between list and inspect: the next poll will not list it
                        else:
                            self._tag_times[key] = apishapes.parse_last_tag_time(inspect)
                        self._pending.discard(key)
                except MalformedAnswer as exc:  # still pending, and the engine not trusted until a poll says so
                    bad = exc.within(f"/images/{key[0]}/json")
                    self.metrics.errors.labels("images").inc()
                    self.last_error = f"images: malformed answer: {bad}"
                    self._log_malformed(bad, "LastTagTime not known; retried next poll")
                    self._refused_inspect = self.last_error
                    self.up = False
                    self._publish(self.snapshot.taken_at if self.snapshot else self.clock(), offset=self._listed_offset)
                    return
                except EngineError as exc:  # still pending: the next poll retries
                    self.metrics.errors.labels("images").inc()
                    self.last_error = f"images: {exc}"
                    log.warning(
                        "cannot inspect images for LastTagTime (retried next poll)",
                        extra=kv(err=exc, hint=engine_error_hint(str(exc))),
                    )
                    if isinstance(exc, EngineUnavailable):  # a path to the engine fails: not up, whatever the poll saw
                        self.up = False
                        self._logged_up = False
                    self._publish(self.snapshot.taken_at if self.snapshot else self.clock(), offset=self._listed_offset)
                    return
                # publish at most once a second while filling, and when done: each publish re-renders rows
                # spread over the whole exposition, and a scrape waits for the current render
                if not self._pending or time.monotonic() - published >= FILL_PUBLISH_INTERVAL:
                    self._publish(self.snapshot.taken_at if self.snapshot else self.clock(), offset=self._listed_offset)
                    published = time.monotonic()

    async def apply_image_event(self, image_ids: Iterable[str], refs: Iterable[str] = ()) -> bool:
        """One image event: `apply_image_events` with that event alone."""
        return await self.apply_image_events([(list(image_ids), list(refs))])

    async def apply_image_events(
        self, events: Sequence[tuple[Sequence[str], Sequence[str]]], deleted: Collection[str] = ()
    ) -> bool:
        """Apply image events (each: the IDs and references it names) by inspecting only the images they
        touch, once each; publish once.

        Why: a full poll re-lists and re-parses every image (seconds with many); an event names one image
        (an ID, or a reference on the containerd store and Podman) and an inspect of it is exact. Touched
        are the named images and whichever image held a named reference before (a tag that moved). An
        inspect answering 404 means the image is gone. False when the event cannot be applied exactly
        (no snapshot yet, the engine is down, the containerd store, whose inspect and listing disagree on
        sizes and digests): the caller schedules a full poll then. Events that add or remove
        images change other images' `SharedSize`: those also ask for a (debounced) reconciling poll.
        `deleted`: IDs a `delete` event said are gone (the last word on them in this batch): not inspected,
        except on Podman, whose `delete` event names each reference removed while the image may stay.
        """
        if not self._lock.locked() and not self._attempted and self.first_reads is None:
            return True  # the first poll has not started: its listing will include this change
        async with self._lock:  # after a poll in progress (the first one at start): then exact on its result
            if self.snapshot is None or self._parts is None or not self.up or self._parts[0].containerd_store:
                return False
            engine, images, containers, filesystem = self._parts
            by_id = {i.id: i for i in images}
            touched: set[str] = set()
            for image_ids, refs in events:
                named = {apishapes.normalize_id(i) for i in image_ids if i}
                for text in refs:
                    ref = ImageRef.parse(text)
                    if ref is None:
                        continue
                    touched.update(i.id for i in images if ref in i.refs)
                    if not named:
                        touched.add(text)  # what the name points to now (a tag event's ID already is that)
                touched |= named
            # dockerd says `delete` once the image is gone; Podman says it for each reference it removes
            gone = set() if engine.podman else {apishapes.normalize_id(i) for i in deleted} & by_id.keys()
            touched -= gone
            inspected: dict[str, Image] = {}
            try:
                await self._inspect_into(touched, engine, by_id, inspected, gone)
                # an image that lost a tag to an inspected one (a tag moved, e.g. by `load`): inspect it too
                moved = {r for i in inspected.values() for r in i.refs}
                losers = {i.id for i in images if i.id not in inspected and moved.intersection(i.refs)}
                await self._inspect_into(losers, engine, by_id, inspected, gone)
            except MalformedAnswer as exc:  # nothing applied: the re-list the caller schedules says what is true
                self.metrics.errors.labels("events").inc()
                self._log_malformed(exc, "event not applied; re-listing")
                return False
            if gone - inspected.keys() and any(i.shared_size is not None for i in images):
                self._reconcile = True
            updated: list[Image] = []
            for image in images:
                if image.id in gone and image.id not in inspected:
                    continue
                updated.append(inspected.pop(image.id, image))
            updated.extend(inspected.values())  # images new to the snapshot
            updated_ids = {i.id: i for i in updated}
            now, offset = self.clock(), self.history.clock.offset()
            self.history.observe((i.id for i in updated), now)  # an image new here arrives now
            self._parts = (engine, updated, containers, filesystem)
            for image_id in (touched | losers | gone) & by_id.keys():  # their old tag sets are not wanted now
                old_key = _tag_key(by_id[image_id])
                if image_id in gone or image_id not in updated_ids or _tag_key(updated_ids[image_id]) != old_key:
                    self._pending.discard(old_key)
            changed = set(updated_ids.keys() - by_id.keys()) | (touched | losers) & updated_ids.keys()
            self.publishing_events = True
            try:
                self._publish(now, only=changed, offset=offset)
            finally:
                self.publishing_events = False
        if self._reconcile:
            self.wake()
        if time.monotonic() - self._event_saved >= EVENT_SAVE_INTERVAL:
            self._event_saved = time.monotonic()
            await self.history.save_in_thread()
        return True

    async def _inspect_into(
        self,
        names: Iterable[str],
        engine: EngineInfo,
        by_id: dict[str, Image],
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
            elif any(i.shared_size is not None for i in by_id.values()):
                self._reconcile = True  # a new image may share layers: the listing's SharedSize moves
            inspected[image.id] = image
            key = _tag_key(image)
            self._tag_times[key] = tag_time
            self._pending.discard(key)

    async def _fill_container_use(self, containers: list[Container]) -> None:
        """When each stopped container last ran, so an image used before the exporter started (or while it
        was down) has a last use from the first poll.

        One inspect per (container ID, state) never seen before: a container is read once, and once more
        after it stops. Running containers need none (`_track_history` marks their image used now), nor do
        containers created and never started (nothing ran).
        """
        wanted = {(c.id, c.state) for c in containers if c.state not in ("running", "created")}
        self._container_use = {k: v for k, v in self._container_use.items() if k in wanted}
        for key in sorted(wanted - self._container_use.keys()):
            try:
                inspect = await self.engine.inspect_container(key[0])
            except EngineError as exc:
                if exc.status == 404:  # removed between list and inspect: the next poll will not list it
                    continue
                raise
            self._container_use[key] = self._parse(
                "containers", f"/containers/{key[0]}/json", apishapes.parse_container_last_use, inspect
            )

    def _track_history(self, images: list[Image], containers: list[Container], now: float) -> None:
        """Arrivals (images not proven present before count as arriving now, see `history`) and use."""
        self.history.observe((i.id for i in images), now)
        for c in containers:
            ran = self._container_use.get((c.id, c.state))
            if ran is not None:
                self.history.mark_used(c.image_id, ran)
            if c.state == "running" and now - self.history.last_used.get(c.image_id, 0.0) > RUNNING_USE_RESOLUTION:
                self.history.mark_used(c.image_id, now)

    def set_disk_usage(self, usage: DiskUsage) -> None:
        """Called by the disk-usage task: merge the new /system/df data into a fresh published view."""
        self.disk_usage = usage
        if self._parts is not None:
            self._publish(self.snapshot.taken_at if self.snapshot else usage.taken_at)

    def _publish(
        self,
        taken_at: float,
        only: set[str] | None = None,
        keys: dict[str, TagKey] | None = None,
        offset: float | None = None,
    ) -> None:
        """A new Snapshot from `_parts` and what was learned; `only`: the image IDs an event changed (the
        others keep their merged copy as is, since nothing else they depend on moved); `keys`: the listed
        images' tag keys when the caller has them already; `offset`: the clock offset (exporter.clocks) when
        what is published was seen, which images seen for the first time are anchored at (now's if None).

        A LastTagTime inspected behind the listing is anchored at the listing's offset, not the inspect's:
        the tag is older than the listing, and a clock step between the two (NTP's first sync while a start
        fills thousands of tag times) is not age."""
        assert self._parts is not None
        engine, images, containers, filesystem = self._parts
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
                key = _tag_key(image)
            tag_time, pending, arrival = self._tag_times.get(key), key in self._pending, arrived.get(image.id)
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
        self.snapshot = Snapshot(
            taken_at=taken_at,
            engine=engine,
            images=tuple(merged),
            containers=tuple(containers),
            disk_usage=du,
            filesystem=filesystem,
            by_id=MappingProxyType({i.id: i for i in merged}),
            pending_inspects=len(self._pending),
        )
        self.ready.set()
        for publish in self.on_publish:
            publish(self.snapshot)
        ids = frozenset(self.snapshot.by_id)
        if ids != self._published_ids:
            self._published_ids = ids
            for callback in self.on_change:
                callback()
