"""Background refresh: builds a new immutable Snapshot every `poll.interval`, or sooner when woken.

The poller is the only reader of the cheap endpoints (/version, /info, /images/json, /containers/json, image
inspect for LastTagTime (`backfill`), container inspect once per stopped container for when it last ran
(`containeruse`)) and of statvfs. It never raises out of its loop: a failed stage is counted, `up` goes to 0
and the last good data keeps being served with its age visible. An answer of the wrong shape
(`apishapes.MalformedAnswer`) fails its stage the same way, logged with the endpoint and field, never
half-parsed into wrong counts; the next poll asks again. What it reads goes to the `SnapshotBuilder`, which
publishes through the `SnapshotStore`; image events are applied between polls by `eventapply`, under the same
lock. /system/df lives in `diskusage`, which hands its result here to be merged into the next published view.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from exporter.config import Config
from exporter.core import memory, offloop
from exporter.core.logs import WarnOnce, kv
from exporter.core.snapshot import DiskUsage, Image, Snapshot
from exporter.engine import apishapes
from exporter.engine.apishapes import MalformedAnswer
from exporter.engine.errors import EngineError
from exporter.engine.firstreads import FirstReads
from exporter.engine.hints import engine_error_hint
from exporter.engine.seam import EngineSeam
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.backfill import Backfill, TagTimes, malformed_warning, tag_key
from exporter.state.builder import SnapshotBuilder, _with_learned
from exporter.state.containeruse import RUNNING_USE_RESOLUTION, ContainerUse
from exporter.state.eventapply import EVENT_SAVE_INTERVAL, EventApplier
from exporter.state.filesystem import FilesystemReader, data_root_path, read_filesystem
from exporter.state.history import ImageHistory
from exporter.state.store import SnapshotStore

__all__ = [
    "EVENT_SAVE_INTERVAL",
    "FILL_BATCH",
    "FILL_PUBLISH_INTERVAL",
    "RUNNING_USE_RESOLUTION",
    "TRIM_AFTER_DROP",
    "Poller",
    "_with_learned",
    "data_root_path",
    "read_filesystem",
]

log = logging.getLogger("exporter.poller")  # the caller= name log pipelines filter on, not the file's place

#: Inspects per lock hold (and publish) while filling LastTagTime behind the first publish.
FILL_BATCH = 500
FILL_PUBLISH_INTERVAL = 1.0  # seconds between publishes while LastTagTimes fill in
#: Images fewer than the poll before, from which the freed memory is handed back to the system at once (see
#: `poll_once`).
TRIM_AFTER_DROP = 10_000
#: After a failed poll the next one comes this soon (seconds; the interval if shorter): an engine that was slow
#: or down at the exporter's start would otherwise leave it unready for a whole `poll.interval`.
RETRY_SECONDS = 5.0


class Poller:
    """The poll loop: `wake()` asks for a refresh soon (debounced); `store` holds what it publishes."""

    def __init__(
        self,
        engine: EngineSeam,
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
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self.store = SnapshotStore(refreshing=lambda: self._wake.is_set() or self._lock.locked())
        self.tag_times = TagTimes()
        self.builder = SnapshotBuilder(self.store, history, self.tag_times, clock)
        self.container_use = ContainerUse(history)
        self.filesystem = FilesystemReader(metrics, self.store)
        self.malformed = WarnOnce(log)
        self.backfill = Backfill(
            engine, self.tag_times, self.store, metrics, self.malformed, self._lock, self.builder.republish
        )
        self.applier = EventApplier(
            engine,
            self.builder,
            history,
            metrics,
            self._lock,
            self.malformed,
            started=lambda: self._attempted or self.first_reads is not None,
            up=lambda: self.store.up,
            wake=lambda: self.wake(),
            clock=clock,
        )
        self._logged_up: bool | None = None  # the engine state last logged: log transitions only, the first too
        self._listed = False  # the last poll's reads all succeeded
        self._attempted = False  # a poll has run (an event before that is in the first listing)

    def wake(self) -> None:
        self._wake.set()

    @property
    def behind(self) -> bool:
        """`SnapshotStore.behind`: whether the snapshot may lag the engine."""
        return self.store.behind

    @property
    def disk_usage(self) -> DiskUsage | None:
        return self.builder.disk_usage

    def disk_usage_call(self) -> contextlib.AbstractContextManager[None]:
        """Around a /system/df call: LastTagTime inspects wait for it (`Backfill.disk_usage_call`)."""
        return self.backfill.disk_usage_call()

    def set_disk_usage(self, usage: DiskUsage) -> None:
        """Called by the disk-usage task: merge the new /system/df data into a fresh published view."""
        self.builder.set_disk_usage(usage)

    async def apply_image_event(self, image_ids: Iterable[str], refs: Iterable[str] = ()) -> bool:
        """One image event: `apply_image_events` with that event alone."""
        return await self.applier.apply([(list(image_ids), list(refs))])

    async def apply_image_events(
        self, events: Sequence[tuple[Sequence[str], Sequence[str]]], deleted: Collection[str] = ()
    ) -> bool:
        """`EventApplier.apply`: the images the events name inspected, published at once; False: re-list."""
        return await self.applier.apply(events, deleted)

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
                failed = not self._listed
            except Exception as exc:  # a bug or an answer nobody foresaw must not end polling for good
                self.store.set_up(False)
                self.store.set_error(f"poll: {type(exc).__name__}: {exc}")
                self._logged_up = False
                log.exception("poll failed unexpectedly; retrying", extra=kv(err=exc))
                failed = True
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the result of an inner future done at
            # the moment the task is cancelled and swallows the cancel, and a wake() at shutdown hung the
            # stop for a whole poll interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.retry_delay() if failed else self.config.poll.interval):
                    await self._wake.wait()
            if self._wake.is_set():
                await asyncio.sleep(self.config.poll.debounce)  # let a burst of events settle
                self._wake.clear()

    def retry_delay(self) -> float:
        """Seconds from a failed poll to the next: RETRY_SECONDS, or the interval when that is shorter."""
        return min(self.config.poll.interval, RETRY_SECONDS)

    def _listed_images(self) -> int:
        listing = self.builder.listing
        return len(listing[1]) if listing is not None else 0

    async def poll_once(self) -> Snapshot | None:
        """Refresh now; concurrent callers wait for the one poll in progress instead of starting another."""
        async with self._lock:
            start = time.monotonic()
            self.metrics.polls.inc()
            self.applier.relisting()
            listed = self._listed_images()
            try:
                await self._poll()
            finally:
                self._attempted = True
                self.metrics.duration.set(time.monotonic() - start)
            dropped = listed - self._listed_images()
        if not self.store.up or dropped >= TRIM_AFTER_DROP:
            # a failed read (a refused or malformed answer may have been large) or a listing that shrank by
            # thousands of images freed much at once: glibc keeps freed pages for reuse unless asked
            await asyncio.to_thread(memory.release_free_memory)
        await self._fill_pending()
        return self.store.snapshot

    async def _stage(self, stage: str, call: Any) -> Any:
        try:
            return await call
        except EngineError as exc:
            self.metrics.errors.labels(stage).inc()
            self.store.set_error(f"{stage}: {exc}")
            raise

    def _malformed(self, stage: str, bad: MalformedAnswer) -> MalformedAnswer:
        """Count `bad` against `stage` and make it the last error; returned for the caller to raise."""
        self.metrics.errors.labels(stage).inc()
        self.store.set_error(f"{stage}: malformed answer: {bad}")
        return bad

    def _parse(self, stage: str, endpoint: str, parse: Callable[..., Any], *raw: Any) -> Any:
        """`parse(*raw)`; a MalformedAnswer is counted against `stage` and names `endpoint` and the field."""
        try:
            return parse(*raw)
        except MalformedAnswer as exc:
            raise self._malformed(stage, exc.within(endpoint) if not exc.field.startswith("/") else exc) from None

    async def _parse_off_loop(self, stage: str, endpoint: str, parse: Callable[..., Any], *raw: Any) -> Any:
        """`_parse` in a worker thread (`core.offloop`): a large host's listing is long to parse, and scrapes
        would wait behind it on the event loop at every poll."""
        try:
            return await offloop.off_loop(parse, *raw)
        except MalformedAnswer as exc:
            raise self._malformed(stage, exc.within(endpoint) if not exc.field.startswith("/") else exc) from None

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
                    listed = await offloop.off_loop(apishapes.parse_listing, reads.images.result())
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
                images = await self._parse_off_loop(
                    "images", "/images/json", apishapes.parse_images, raw_images, engine
                )
            containers = list(self._parse("containers", "/containers/json", apishapes.parse_containers, raw_containers))
            try:
                await self._stage("containers", self.container_use.fill(self.engine, containers))
            except MalformedAnswer as exc:
                raise self._malformed("containers", exc) from None
            # the inspects and deletions' path: up means every path reaches the engine, not only the SDK's
            await self._stage("images", self.engine.check_lean())
        except MalformedAnswer as exc:
            if reads is not None:
                reads.discard()
            malformed_warning(self.malformed, exc, "poll failed, serving the last snapshot; retrying")
            self._logged_up = False
            self.store.set_up(False)
            self._listed = False
            return
        except EngineError as exc:
            if reads is not None:
                reads.discard()  # reads queued behind the one that failed: the next poll asks again
            if self._logged_up is not False:
                served = "serving the last snapshot" if self.store.snapshot else "no snapshot yet, /-/ready answers 503"
                log.warning(
                    "engine unreachable or failing; retrying",
                    extra=kv(host=self.engine.where, serving=served, err=exc, hint=engine_error_hint(str(exc))),
                )
                self._logged_up = False
            self.store.set_up(False)
            self._listed = False
            return
        if reads is not None:
            reads.discard()  # answered and parsed: the raw answers are not kept
        self.store.set_error(None)  # the engine answered; a statvfs failure below is the one left to show
        fs_path = data_root_path(self.config.filesystem.path, engine)
        filesystem = await self.filesystem.read(fs_path, bool(self.config.filesystem.path))
        self._listed = True
        self.store.set_up(self.backfill.refused is None)
        if self.backfill.refused is not None:
            self.store.set_error(self.backfill.refused)
        elif self._logged_up is not True:
            log.info(
                "engine reachable",
                extra=kv(version=engine.version, api_version=api, storage_driver=engine.storage_driver),
            )
            self._logged_up = True
            self.malformed.clear()
        self.container_use.track(images, containers, now)
        self.builder.set_listing((engine, images, containers, filesystem), listed_offset)  # keeps unchanged objects
        # the answer and its parse are dropped before the publish: what the publish and its render keep would
        # otherwise be placed among them, and keep their freed memory from going back to the system
        del raw_images, raw_containers, listed, images
        assert self.builder.listing is not None
        # the new tag sets are inspected behind the publish: `_fill_pending`
        self.tag_times.relisted(map(tag_key, self.builder.listing[1].values()))
        self.builder.publish(now, offset=listed_offset)
        await self.history.save_in_thread()

    async def _fill_pending(self) -> None:
        if not await self.backfill.fill(
            self._listed, lambda: self.builder.listing is not None, FILL_BATCH, FILL_PUBLISH_INTERVAL
        ):
            self._logged_up = False
