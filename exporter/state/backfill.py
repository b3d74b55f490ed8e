"""LastTagTime, learned behind the listing: one image inspect per image and tag set.

Why behind the publish: LastTagTime needs one inspect per image (tens of seconds for many images on a first
poll), while counts, sizes and tags need only the listing. Until known, an image says so
(`Image.tag_time_pending`: no last-tag series, and remediation counts it as young) and
`docker_exporter_pending_inspects` counts them. The poller fills them in batches (`inspect_batch`) and
publishes as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator

from exporter.core.logs import WarnOnce, kv
from exporter.core.snapshot import Image, ImageRef
from exporter.engine import apishapes
from exporter.engine.apishapes import MalformedAnswer
from exporter.engine.errors import EngineError, EngineUnavailable
from exporter.engine.hints import engine_error_hint
from exporter.engine.seam import EngineSeam
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.store import SnapshotStore

log = logging.getLogger("exporter.poller")  # the caller= name log pipelines filter on, not the file's place

#: (image ID, its tags): the image's own refs tuple, shared with it, rather than a string per tag per image.
TagKey = tuple[str, tuple[ImageRef, ...]]
#: Share of a fill's keys inspected between two of its publishes (see `Backfill.fill`): a fill publishes about
#: 1 / share times before its last, however many images it fills.
FILL_PUBLISH_SHARE = 0.25
#: Seconds after which a fill publishes whatever share it reached: what it shows lags at most this much (a
#: pending image counts as young meanwhile, so the lag delays its last-tag series, never makes it deletable).
FILL_MAX_STALENESS = 10.0
#: Inspects a fill keeps in flight: the engine answers them on several threads, one at a time left it idle
#: between a reply and the next request.
FILL_IN_FLIGHT = 4
#: Longest a fill holds its inspects back for one /system/df in flight (see `Backfill.disk_usage_call`).
FILL_DISK_USAGE_WAIT = 60.0


def malformed_warning(warn: WarnOnce, exc: MalformedAnswer, what: str) -> None:
    """Warn once per distinct malformed answer (a broken engine repeats it every poll), debug after."""
    warn.log(str(exc), f"malformed engine answer; {what}", field=exc.field, problem=exc.problem)


def tag_key(image: Image) -> TagKey:
    """LastTagTime changes only with the tag set: an image is inspected again when its tags change."""
    return (image.id, image.refs)


class TagTimes:
    """LastTagTime by image and tag set, and the keys listed but not inspected yet."""

    def __init__(self) -> None:
        self.times: dict[TagKey, float | None] = {}
        self.pending: set[TagKey] = set()
        #: `pending` in inspect order, reversed (taken from the end); may hold keys no longer pending. Sorted
        #: once per listing: sorting all pending keys per batch made a fill quadratic in the images.
        self._queue: list[TagKey] = []

    def relisted(self, keys: Iterable[TagKey]) -> None:
        """A new listing: forget the tag sets it no longer holds, and mark the new ones pending."""
        wanted = set(keys)
        self.times = {k: v for k, v in self.times.items() if k in wanted}
        self.pending = wanted - self.times.keys()
        self._queue = sorted(self.pending, reverse=True)

    def learn(self, key: TagKey, value: float | None) -> None:
        self.times[key] = value
        self.pending.discard(key)

    def forget(self, key: TagKey) -> None:
        """Not wanted any more (the image is gone or its tags changed): no longer pending."""
        self.pending.discard(key)

    def next_batch(self, size: int) -> list[TagKey]:
        """Up to `size` pending keys, in key order."""
        if not self._queue:  # a failed batch left keys pending that were already taken: queue them again
            self._queue = sorted(self.pending, reverse=True)
        batch: list[TagKey] = []
        while self._queue and len(batch) < size:
            key = self._queue.pop()
            if key in self.pending:
                batch.append(key)
        return batch

    async def inspect_batch(self, engine: EngineSeam, batch: Iterable[TagKey], in_flight: int = 1) -> None:
        """Inspect each key's image, `in_flight` at a time; MalformedAnswer (naming the image's endpoint) or
        EngineError stop the batch with that key and the rest still pending (the answers before it in key
        order are learned). An image deleted between list and inspect is no longer pending: the next poll
        will not list it."""
        keys = list(batch)
        for start in range(0, len(keys), in_flight):
            chunk = keys[start : start + in_flight]
            answers = await asyncio.gather(*(engine.inspect_image(key[0]) for key in chunk), return_exceptions=True)
            for key, answer in zip(chunk, answers, strict=True):
                if isinstance(answer, EngineError) and answer.status == 404:
                    self.pending.discard(key)
                    continue
                if isinstance(answer, BaseException):
                    raise answer
                try:
                    value = apishapes.parse_last_tag_time(answer)
                except apishapes.MalformedAnswer as exc:
                    raise exc.within(f"/images/{key[0]}/json") from None
                self.learn(key, value)


class Backfill:
    """Fills the pending LastTagTimes in batches under the poller's lock (so events apply between), publishing
    (`republish`) at most once per `publish_interval` while filling, and when done.

    A malformed inspect leaves its keys pending and the engine not trusted: `refused` holds the error, and
    `up` stays 0 from one poll to the next until the inspects it left are answered properly (else every
    poll's publish would show the engine up for a moment).
    """

    def __init__(
        self,
        engine: EngineSeam,
        tag_times: TagTimes,
        store: SnapshotStore,
        metrics: PollMetrics,
        malformed: WarnOnce,
        lock: asyncio.Lock,
        republish: Callable[[set[str]], None],
    ) -> None:
        self.engine = engine
        self.tag_times = tag_times
        self.store = store
        self.metrics = metrics
        self.malformed = malformed
        self._lock = lock
        self._republish = republish
        self.refused: str | None = None
        self._disk_usage_idle = asyncio.Event()  # cleared while a /system/df is in flight
        self._disk_usage_idle.set()
        self._disk_usage_since = 0.0

    @contextlib.contextmanager
    def disk_usage_call(self) -> Iterator[None]:
        """Around a /system/df: the fill's next batch waits until it ends, at most `FILL_DISK_USAGE_WAIT`
        seconds from its start. Why: the engine answers a df and a stream of inspects slower side by side than
        one after the other, the more so the more images it holds; the df's figures come sooner too."""
        self._disk_usage_since = time.monotonic()
        self._disk_usage_idle.clear()
        try:
            yield
        finally:
            self._disk_usage_idle.set()

    async def _after_disk_usage(self) -> None:
        left = self._disk_usage_since + FILL_DISK_USAGE_WAIT - time.monotonic()
        if self._disk_usage_idle.is_set() or left <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(left):  # not wait_for: see Poller.run
                await self._disk_usage_idle.wait()

    async def fill(
        self,
        listed: bool,
        has_listing: Callable[[], bool],
        batch: int,
        publish_interval: float,
        publish_share: float = FILL_PUBLISH_SHARE,
        in_flight: int = FILL_IN_FLIGHT,
        max_staleness: float = FILL_MAX_STALENESS,
    ) -> bool:
        """Fill until nothing is pending or an inspect fails; False when a path to the engine failed
        (EngineUnavailable). `listed`: the last poll's reads all succeeded (a refusal can be lifted).

        While filling, a publish waits for `publish_interval` seconds and `publish_share` of the keys pending
        at the start to be filled since the last one, or for `max_staleness` seconds: a publish and its render
        cost time in the number of images (the render in the rows shown), and so does the fill, so publishing
        per interval made a fill quadratic in the images. A publish merges again only the images inspected
        since the one before."""
        published = time.monotonic()
        step = math.ceil(len(self.tag_times.pending) * publish_share)
        pending_at_publish = len(self.tag_times.pending)
        # the images inspected since the last publish: only they are merged and rendered again by the next
        learned: set[str] = set()
        while True:
            await self._after_disk_usage()  # outside the lock: events apply meanwhile
            async with self._lock:
                if not has_listing() or not self.tag_times.pending:
                    if self.refused is not None and listed and not self.tag_times.pending:
                        self.refused = None
                        self.store.set_error(None)
                        self.malformed.clear()
                        self.store.set_up(True)  # answered properly now
                        log.info("image inspects answer properly again")
                        self._republish(learned)
                    return True
                taken = self.tag_times.next_batch(batch)
                learned.update(key[0] for key in taken)  # a superset: a failed batch learned only some
                try:
                    await self.tag_times.inspect_batch(self.engine, taken, in_flight)
                except MalformedAnswer as exc:  # still pending, and the engine not trusted until a poll says so
                    self.metrics.errors.labels("images").inc()
                    self.refused = f"images: malformed answer: {exc}"
                    self.store.set_error(self.refused)
                    malformed_warning(self.malformed, exc, "LastTagTime not known; retried next poll")
                    self.store.set_up(False)
                    self._republish(learned)
                    return True
                except EngineError as exc:  # still pending: the next poll retries
                    self.metrics.errors.labels("images").inc()
                    self.store.set_error(f"images: {exc}")
                    log.warning(
                        "cannot inspect images for LastTagTime (retried next poll)",
                        extra=kv(err=exc, hint=engine_error_hint(str(exc))),
                    )
                    unavailable = isinstance(exc, EngineUnavailable)
                    if unavailable:  # a path to the engine fails: not up, whatever the poll saw
                        self.store.set_up(False)
                    self._republish(learned)
                    return not unavailable
                # each publish re-renders rows spread over the whole exposition, and a scrape waits for the
                # current render
                pending = len(self.tag_times.pending)
                waited = time.monotonic() - published
                if (
                    not pending
                    or (waited >= publish_interval and pending_at_publish - pending >= step)
                    or waited >= max_staleness
                ):
                    self._republish(learned)
                    learned = set()
                    published, pending_at_publish = time.monotonic(), pending
