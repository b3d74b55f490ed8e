"""`/metrics`: the snapshot's families rendered once per snapshot, the exporter's own metrics every scrape.

Why: rendering every per-image series on each scrape cost ~135 ms of event-loop CPU at 10k images (530 ms
uncapped), and nothing else on the loop ran meanwhile (issue 14). A snapshot is immutable, so is its text.

How:
- The registry keeps every collector, so `?name[]=`, duplicate-name checks and `get_sample_value` work as
  before. A scrape walks the registry's collectors in registration order: the exporter's own ones (poll and
  remediation metrics, process/python: tens of series) are rendered per scrape on the loop, and the snapshot
  collector's part is spliced in from a cache. The bytes equal prometheus_client's `generate_latest(registry)`
  for the same state (tests/unit/test_exposition.py checks it for both formats).
- The cache is keyed by the state the snapshot collector renders, `(poller.snapshot, poller.up, collector.config)`, compared by
  identity: the poller publishes a new Snapshot object for every change (a poll, a /system/df result, an event
  refresh), so there is no subscription to miss; an entry holds its snapshot, so an identity is never reused.
  Within a state, one entry per negotiated content type (format, version, escaping) and gzip, at most
  `MAX_VARIANTS`; rarer Accept headers are rendered uncached.
- A poll publishes a new Snapshot even when nothing changed (`taken_at` moves), so the collector yields its
  families in keyed sections (`SnapshotCollector.sections`): a render reuses the text (and deflate) of a section
  whose key equals the last render's, i.e. the image-derived families while `snapshot.images` is equal (one
  tuple comparison in the thread, ~10-30 ms at 10k images instead of a full render).
- Renders run in a worker thread, started by the first scrape that needs them (lazily per format); concurrent
  scrapes await the same future, shielded so a disconnecting client does not cancel it. A failed render is
  forgotten, so the next scrape retries.
- Staleness bound (chosen over serving the previous render): a scrape serves the state that was current when it
  arrived, waiting for that render rather than serving an older one; it is never behind by more than a publish
  that lands while it is being answered. The price: the first scrape after a publish waits for the render (in a
  thread: the loop keeps running), which is short unless the images changed. Serving the previous render
  instead could not bound staleness in publishes: publishes are seen only when a scrape arrives.
- OpenMetrics: every part is rendered without its `# EOF`, which is appended once, at the end.
- gzip (Prometheus always asks for it): the snapshot part is deflated once (raw deflate ended by a sync flush,
  so it is byte aligned and not final) and spliced between the per-scrape parts deflated the same way, in one
  gzip member whose CRC-32 is combined arithmetically (zlib's crc32_combine). A scrape compresses only its own
  metrics. Other codings (deflate) fall back to aiohttp compressing the whole body, as before.
- `?name[]=` requests bypass the cache: prometheus_client's restricted registry, rendered in a worker thread.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.collector import SnapshotCollector
from exporter.snapshot import Snapshot

MAX_VARIANTS = 8  # cached renders per state: (content type, gzip) pairs; Prometheus uses one
GZIP_LEVEL = 6  # zlib's default, as aiohttp compresses; the snapshot part is compressed once per state
OPENMETRICS = "application/openmetrics-text"
EOF = b"# EOF\n"

Encoder = Callable[[Collector], bytes]
State = tuple[Snapshot | None, bool, object]  # (snapshot, up, the collector's config: a reload may change it)


class _Collectors:
    """A fixed list of collectors, collected in order (what `generate_latest` needs for one part)."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class _Metrics:
    """Metrics from a callable, for one `generate_latest` call."""

    def __init__(self, metrics: Callable[[], Iterable[Metric]]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics()


def _part(encoder: Encoder, source: Collector, openmetrics: bool) -> bytes:
    body = encoder(source)
    if openmetrics:
        assert body.endswith(EOF), "OpenMetrics encoder output without # EOF"
        body = body[: -len(EOF)]
    return body


@dataclass
class RenderedSection:
    """One section of the snapshot part (no `# EOF`), and its deflated form once a gzip scrape asked for it."""

    key: object
    text: bytes
    deflated: Deflated | None = None


def render_snapshot(
    collector: SnapshotCollector,
    state: State,
    encoder: Encoder,
    openmetrics: bool,
    previous: Sequence[RenderedSection] = (),
) -> list[RenderedSection]:
    """The snapshot collector's sections for `state`, pinned to it (a render in a thread must not read a newer
    snapshot). A section whose key equals the one in the same place of `previous` (the last render of this
    format) keeps its text: polls publish new snapshots of unchanged images."""
    rendered: list[RenderedSection] = []
    for index, (key, families) in enumerate(collector.sections(state[0], state[1])):
        old = previous[index] if index < len(previous) else None
        if key is not None and old is not None and old.key is not None and old.key == key:
            rendered.append(RenderedSection(key, old.text, old.deflated))
        else:
            rendered.append(RenderedSection(key, _part(encoder, _Metrics(families), openmetrics)))
    return rendered


def deflate_sections(sections: Sequence[RenderedSection]) -> list[Deflated]:
    """Each section deflated on its own (kept on the section, so a reused section is not compressed again)."""
    for section in sections:
        if section.deflated is None:
            section.deflated = deflate(section.text)
    return [section.deflated for section in sections if section.deflated is not None]


# --- gzip splicing -------------------------------------------------------------------------------------------

_CRC_POLY = 0xEDB88320  # CRC-32 (gzip), reflected


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (reflected bit order); a must not be 0. Port of zlib's multmodp."""
    m = 1 << 31
    p = 0
    while True:
        if a & m:
            p ^= b
            if a & (m - 1) == 0:
                return p
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_multmodp(table[-1], table[-1]))
    return table


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B), without reading B (zlib's crc32_combine)."""
    p = 1 << 31  # x^0
    n, k = len2, 3  # x^(8 * len2)
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


@dataclass(frozen=True)
class Deflated:
    """A raw deflate segment that can be followed by another: ends byte-aligned and not final (unless `final`)."""

    data: bytes
    crc: int
    size: int


def deflate(body: bytes, *, final: bool = False, level: int = GZIP_LEVEL) -> Deflated:
    """Compress on its own (no back-references before its start), ending in a sync flush or the final block."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(body) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
    return Deflated(data, zlib.crc32(body), len(body))


_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # deflate, no flags, no mtime, unknown OS


def gzip_member(parts: Sequence[Deflated]) -> bytes:
    """One gzip member from segments; only the last may be (and must be) final."""
    crc = 0
    size = 0
    for part in parts:
        crc = crc32_combine(crc, part.crc, part.size)
        size += part.size
    return b"".join([_GZIP_HEADER, *(p.data for p in parts), struct.pack("<II", crc, size & 0xFFFFFFFF)])


# --- the handler ---------------------------------------------------------------------------------------------


class MetricsEndpoint:
    """The `/metrics` handler: `registry` holds every collector, `collector` is the one whose part is cached."""

    def __init__(self, registry: CollectorRegistry, collector: SnapshotCollector) -> None:
        with registry._lock:
            if collector not in registry._collector_to_names:
                raise ValueError("the snapshot collector must be registered in the registry it is served from")
        self.registry = registry
        self.collector = collector
        self._state: State | None = None
        self._texts: dict[str, asyncio.Future[list[RenderedSection]]] = {}  # by content type, for self._state
        self._gzips: dict[str, asyncio.Future[list[Deflated]]] = {}
        self._last: dict[str, list[RenderedSection]] = {}  # the last finished render per content type
        self._formats: dict[str, tuple[Encoder, bool, bool]] = {}  # content type -> encoder, openmetrics, gzip

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
        state = (self.collector.poller.snapshot, self.collector.poller.up, self.collector.config)
        gzipped = gzip_accepted(",".join(request.headers.getall(hdrs.ACCEPT_ENCODING, [])))
        if content_type in self._formats or len(self._formats) < MAX_VARIANTS:
            self._formats[content_type] = (encoder, openmetrics, gzipped)
        if gzipped:
            deflated = await self.deflated_part(state, encoder, content_type, openmetrics)
            prefix, suffix = self._own_parts(encoder, openmetrics)
            body = gzip_member([deflate(prefix), *deflated, deflate(suffix, final=True)])
            return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type, hdrs.CONTENT_ENCODING: "gzip"})
        sections = await self.text_part(state, encoder, content_type, openmetrics)
        prefix, suffix = self._own_parts(encoder, openmetrics)
        body = b"".join([prefix, *(s.text for s in sections), suffix])
        response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()  # deflate-only clients, as prometheus_client's handler did
        return response

    def prerender(self, _snapshot: Snapshot | None = None) -> list[asyncio.Future[object]]:
        """Start rendering the current state in every format scraped so far (the poller's `on_publish` hook).

        Why: the first scrape after a publish otherwise waits for the render; started at publish time, it is
        usually done before the next scrape arrives. Runs on the event loop; the render runs in a thread.
        """
        state = (self.collector.poller.snapshot, self.collector.poller.up, self.collector.config)
        if state[0] is None:
            return []
        started: list[asyncio.Future[object]] = []
        for content_type, (encoder, openmetrics, gzipped) in list(self._formats.items()):
            part = (
                self.deflated_part(state, encoder, content_type, openmetrics)
                if gzipped
                else self.text_part(state, encoder, content_type, openmetrics)
            )
            task: asyncio.Future[object] = asyncio.ensure_future(part)
            task.add_done_callback(_ignore_result)
            started.append(task)
        return started

    async def text_part(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool
    ) -> list[RenderedSection]:
        """The snapshot part for `state` in one format, rendered at most once (in a worker thread)."""
        self._follow(state)
        return await asyncio.shield(self._text_future(state, encoder, content_type, openmetrics))

    async def deflated_part(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool
    ) -> list[Deflated]:
        """The snapshot part for `state` deflated for splicing into a gzip member, compressed at most once."""

        async def compress() -> list[Deflated]:
            sections = await asyncio.shield(self._text_future(state, encoder, content_type, openmetrics))
            return await asyncio.to_thread(deflate_sections, sections)

        self._follow(state)
        return await asyncio.shield(_single_flight(self._gzips, content_type, compress))

    def _text_future(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool
    ) -> asyncio.Future[list[RenderedSection]]:
        async def render() -> list[RenderedSection]:
            previous = self._last.get(content_type, [])
            sections = await asyncio.to_thread(render_snapshot, self.collector, state, encoder, openmetrics, previous)
            if content_type in self._last or len(self._last) < MAX_VARIANTS:
                self._last[content_type] = sections
            return sections

        if not self._is_current(state):  # a gzip render that started before a newer publish: do not cache it
            return asyncio.ensure_future(render())
        return _single_flight(self._texts, content_type, render)

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
        prefix = _part(encoder, _Collectors(before), openmetrics)
        return prefix, _part(encoder, _Collectors(after), openmetrics) + (EOF if openmetrics else b"")

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
            before.insert(0, _Metrics(lambda: [metric]))
        return before, collectors[index + 1 :]


T = TypeVar("T")


def _single_flight(
    cache: dict[str, asyncio.Future[T]], key: str, make: Callable[[], Awaitable[T]]
) -> asyncio.Future[T]:
    """The one future computing `key`: started by the first caller, awaited by the rest; a failure is forgotten.

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


def _ignore_result(task: asyncio.Future[object]) -> None:
    """A pre-render nobody awaits: a failure is retried by the next scrape (see `_single_flight`)."""
    if not task.cancelled():
        task.exception()
