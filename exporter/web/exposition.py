"""`/metrics`: the snapshot's families rendered once per snapshot, the exporter's own metrics every scrape.

Why: rendering every per-image series on each scrape costs event-loop CPU in proportion to the images, and
nothing else on the loop runs meanwhile. A snapshot is immutable, so is its text. The rendering itself and
every cache it reuses (rows, chunk texts, deflate segments) is `exporter.metrics.render` (`SnapshotRenderer`);
this module decides when a render runs and which one a scrape gets, and keeps the finished renders of the
current state for the scrapes that ask for it.

How:
- The registry keeps every collector, so `?name[]=`, duplicate-name checks and `get_sample_value` work as
  with any prometheus_client registry. A scrape walks the registry's collectors in registration order: the
  exporter's own ones (poll and remediation metrics, process/python: tens of series) are rendered per scrape
  on the loop, and the snapshot collector's part is spliced in from a cache. The bytes equal
  prometheus_client's `generate_latest(registry)` for the same state (tests/unit/test_exposition.py checks it
  for both formats).
- The cache is keyed by the state the snapshot collector renders, `(store.snapshot, store.up,
  collector.config)`, compared by identity: the store publishes a new Snapshot object for every change (a
  poll, a /system/df result, an event refresh), so there is no subscription to miss; an entry holds its
  snapshot, so an identity is never reused. Within a state, one entry per negotiated content type (format,
  version, escaping) and gzip, at most `MAX_VARIANTS`; rarer Accept headers are rendered uncached.
- Renders run in a worker thread, started by the first scrape that needs them (lazily per format), and at
  every publish for the formats scraped before (`prerender`, handed to the thread at once); concurrent
  scrapes await the same future, shielded so a disconnecting client does not cancel it. A failed render is
  forgotten, so the next scrape retries.
- Staleness bound (chosen over serving the previous render): a scrape serves the state that was current when it
  arrived, waiting for that render rather than serving an older one; it is never behind by more than a publish
  that lands while it is being answered. The price: the first scrape after a publish waits for the render (in a
  thread: the loop keeps running), a chunk or two of rows after an event. Serving the previous render
  instead could not bound staleness in publishes: publishes are seen only when a scrape arrives.
- gzip: the snapshot part is deflated once per state and format (in the render's thread when a gzip
  scrape asked for the format) and spliced between the per-scrape parts deflated the same way; a scrape
  compresses only its own metrics. Other codings (deflate) fall back to aiohttp compressing the whole body.
- `?name[]=` requests bypass the cache: prometheus_client's restricted registry, rendered in a worker thread.
- OpenMetrics: every part is rendered without its `# EOF`, which is appended once, at the end.
- The plain text is written as the pieces it is cached in (`PiecesPayload`), never joined into one body: with
  many images that body is tens of MB, and joining it per scrape would cost in proportion to the series.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import hdrs, payload, web
from aiohttp.abc import AbstractStreamWriter
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.core import offloop
from exporter.core.snapshot import Snapshot
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.exposition import (
    EOF,
    OPENMETRICS,
    CollectorList,
    Deflated,
    Encoder,
    MetricsOf,
    RenderedPart,
    State,
    deflate,
    encode_part,
    gzip_member,
    render_snapshot,
)
from exporter.metrics.render import SnapshotRenderer

MAX_VARIANTS = 8  # cached renders per state: (content type, gzip) pairs; Prometheus uses one


class MetricsEndpoint:
    """The `/metrics` handler: `registry` holds every collector, `collector` is the one whose part is cached."""

    def __init__(self, registry: CollectorRegistry, collector: SnapshotCollector) -> None:
        with registry._lock:
            if collector not in registry._collector_to_names:
                raise ValueError("the snapshot collector must be registered in the registry it is served from")
        self.registry = registry
        self.collector = collector
        self._state: State | None = None
        self._texts: dict[str, asyncio.Future[RenderedPart]] = {}  # by content type, for self._state
        self._gzips: dict[str, asyncio.Future[Deflated]] = {}
        #: the per-format renderers and every cache they reuse (`exporter.metrics.render`)
        self.renderer = SnapshotRenderer(collector)
        self._renderers = self.renderer.renderers  # by content type (read by the tests of incremental renders)
        self._formats: dict[str, tuple[Encoder, bool, bool]] = {}  # content type -> encoder, openmetrics, gzip
        self._prerendering: asyncio.Future[Any] | None = None  # the renders the last publish started
        self._prerender_again = False  # publishes landed while they ran: render the newest state next

    async def serve(self, request: web.Request) -> web.Response:
        """The route's handler: `handle`, its body written here, and off-loop work (plans, dry-run outcomes)
        paused at its checkpoints meanwhile (`offloop.scrapes_first`), so that a scrape does not share the
        interpreter with them. Written here rather than by aiohttp after returning, so that the pause covers
        it; aiohttp sees a response already sent."""
        with offloop.scrapes_first():
            response = await self.handle(request)
            await response.prepare(request)
            await response.write_eof()
        return response

    async def handle(self, request: web.Request) -> web.Response:
        accept = ",".join(request.headers.getall(hdrs.ACCEPT, []))
        encoder, content_type = choose_encoder(accept)
        names = request.query.getall("name[]", [])
        if names:  # rare and already narrow: prometheus_client's own path, off the loop
            body = await asyncio.to_thread(encoder, self.registry.restricted_registry(names))
            response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
            response.enable_compression()
            return response
        openmetrics = content_type.startswith(OPENMETRICS)
        state = (self.collector.source.snapshot, self.collector.source.up, self.collector.config)
        gzipped = gzip_accepted(",".join(request.headers.getall(hdrs.ACCEPT_ENCODING, [])))
        if content_type in self._formats or len(self._formats) < MAX_VARIANTS:
            self._formats[content_type] = (encoder, openmetrics, gzipped)
        if gzipped:
            deflated = await self.deflatedencode_part(state, encoder, content_type, openmetrics)
            prefix, suffix = self._own_parts(encoder, openmetrics)
            body = gzip_member([deflate(prefix), deflated, deflate(suffix, final=True)])
            return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type, hdrs.CONTENT_ENCODING: "gzip"})
        rendered = await self.textencode_part(state, encoder, content_type, openmetrics)
        prefix, suffix = self._own_parts(encoder, openmetrics)
        pieces = PiecesPayload([prefix, *rendered.texts, suffix])
        response = web.Response(body=pieces, headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()  # deflate-only clients, as prometheus_client's handler did
        return response

    def prerender(self, _snapshot: Snapshot | None = None) -> list[asyncio.Future[Any]]:
        """Start rendering the current state in every format scraped so far (the store's `on_publish` hook).

        Why: the first scrape after a publish otherwise waits for the render; started at publish time, it is
        usually done before the next scrape arrives. Runs on the event loop and hands the render to a worker
        thread at once (not from a task the loop would start later, after whatever the publisher does next).
        While the renders of an earlier publish still run, nothing starts: once they end, the newest state is
        rendered (one render per format, however many publishes landed meanwhile). A burst of events
        publishing every few milliseconds otherwise queued a render per publish, each for a state already
        gone, all of them taking the interpreter lock from the engine work that caused the burst. A scrape in
        between renders its own state on demand, as ever.
        """
        state = (self.collector.source.snapshot, self.collector.source.up, self.collector.config)
        if state[0] is None:
            return []
        self._follow(state)
        if self._prerendering is not None and not self._prerendering.done():
            self._prerender_again = True
            return []
        started: list[asyncio.Future[Any]] = []
        for content_type, (encoder, openmetrics, gzipped) in list(self._formats.items()):
            future: asyncio.Future[Any] = (
                self._gzip_future(state, encoder, content_type, openmetrics)
                if gzipped
                else self._text_future(state, encoder, content_type, openmetrics)
            )
            future.add_done_callback(_ignore_result)
            started.append(future)
        if started:
            self._prerendering = asyncio.gather(*started, return_exceptions=True)
            self._prerendering.add_done_callback(self._prerender_newest)
        return started

    def _prerender_newest(self, _: asyncio.Future[Any]) -> None:
        if self._prerender_again:
            self._prerender_again = False
            self.prerender()

    async def textencode_part(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool
    ) -> RenderedPart:
        """The snapshot part for `state` in one format, rendered at most once (in a worker thread)."""
        self._follow(state)
        return await asyncio.shield(self._text_future(state, encoder, content_type, openmetrics))

    async def deflatedencode_part(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool
    ) -> Deflated:
        """The snapshot part for `state` deflated for splicing into a gzip member, compressed at most once."""
        self._follow(state)
        return await asyncio.shield(self._gzip_future(state, encoder, content_type, openmetrics))

    def _gzip_future(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool
    ) -> asyncio.Future[Deflated]:
        text = self._text_future(state, encoder, content_type, openmetrics, compress=True)

        async def compress() -> Deflated:
            rendered = await asyncio.shield(text)
            if rendered.deflated is not None:  # compressed in the render's thread
                return rendered.deflated
            return await asyncio.to_thread(rendered.deflate)

        return _single_flight(self._gzips, content_type, compress)

    def _text_future(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool, *, compress: bool = False
    ) -> asyncio.Future[RenderedPart]:
        """The render of `state` in one format, submitted to a worker thread now; `compress`: deflate it there
        too, right after (a gzip scrape is what asks)."""

        def start() -> asyncio.Future[RenderedPart]:
            renderer = self.renderer.renderer(content_type, encoder, openmetrics)
            loop = asyncio.get_running_loop()
            return loop.run_in_executor(None, render_snapshot, self.collector, state, renderer, compress)

        if not self._is_current(state):  # a gzip render that started before a newer publish: do not cache it
            return start()
        return _single_flight(self._texts, content_type, start)

    def _is_current(self, state: State) -> bool:
        return (
            self._state is not None
            and self._state[0] is state[0]
            and self._state[1] == state[1]
            and self._state[2] is state[2]
        )

    def _follow(self, state: State) -> None:
        """A new state (a publish, or `up` changed): forget every render of the old one."""
        if not self._is_current(state):
            self._state = state
            self._texts = {}
            self._gzips = {}

    def _own_parts(self, encoder: Encoder, openmetrics: bool) -> tuple[bytes, bytes]:
        """The exporter's own metrics before and after the snapshot part, rendered now (they change per scrape)."""
        before, after = self._own_collectors()
        prefix = encode_part(encoder, CollectorList(before), openmetrics)
        return prefix, encode_part(encoder, CollectorList(after), openmetrics) + (EOF if openmetrics else b"")

    def _own_collectors(self) -> tuple[list[Collector], list[Collector]]:
        """The registry's other collectors before and after the snapshot collector, in registration order.

        Reads the registry's private ordered map (under its lock, as its own `collect()` does): there is no
        public way to list collectors; the byte-for-byte test against `generate_latest` guards this.
        """
        with self.registry._lock:
            collectors: list[Collector] = list(self.registry._collector_to_names)
        index = collectors.index(self.collector)
        before = collectors[:index]
        target_info = self.registry.get_target_info()
        if target_info:  # the registry yields it first
            metric = Metric("target", "Target metadata", "info")
            metric.add_sample("target_info", target_info, 1)
            before.insert(0, MetricsOf(lambda: [metric]))
        return before, collectors[index + 1 :]


#: Bytes handed to the connection per write when a body is written piece by piece.
WRITE_BATCH = 1 << 16


class PiecesPayload(payload.Payload):
    """A body written as the pieces it is made of, a batch of them at a time: the snapshot's part is thousands of
    cached pieces (tens of MB uncapped), and joining them into one copy per scrape would cost in proportion
    to the series; the connection copies what it cannot send at once in any case, a batch at a time here."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        super().__init__(pieces)
        self.pieces = pieces
        self._size = sum(map(len, pieces))

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self.pieces).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        batch: list[bytes] = []
        size = 0
        for piece in self.pieces:
            batch.append(piece)
            size += len(piece)
            if size >= WRITE_BATCH:
                await writer.write(b"".join(batch))
                batch, size = [], 0
        if batch:
            await writer.write(b"".join(batch))


T = TypeVar("T")


def _single_flight(
    cache: dict[str, asyncio.Future[T]], key: str, make: Callable[[], Awaitable[T]]
) -> asyncio.Future[T]:
    """The one future computing `key`: started by the first caller (`make` returns a coroutine, or a future
    already running), awaited by the rest; a failure is forgotten.

    At most MAX_VARIANTS keys are kept: a client inventing Accept headers gets uncached renders, not a leak.
    """
    future = cache.get(key)
    if future is not None:
        return future
    future = asyncio.ensure_future(make())
    if len(cache) < MAX_VARIANTS:
        cache[key] = future

        def forget_failure(done: asyncio.Future[T]) -> None:
            if (done.cancelled() or done.exception() is not None) and cache.get(key) is done:
                del cache[key]

        future.add_done_callback(forget_failure)
    return future


def _ignore_result(task: asyncio.Future[Any]) -> None:
    """A pre-render nobody awaits: a failure is retried by the next scrape (see `_single_flight`)."""
    if not task.cancelled():
        task.exception()
