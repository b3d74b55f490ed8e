"""`/metrics`: the snapshot's families rendered once per snapshot, the exporter's own metrics every scrape.

Why: rendering every per-image series on each scrape costs event-loop CPU in proportion to the images, and
nothing else on the loop runs meanwhile. A snapshot is immutable, so is its text.

How:
- The registry keeps every collector, so `?name[]=`, duplicate-name checks and `get_sample_value` work as
  with any prometheus_client registry. A scrape walks the registry's collectors in registration order: the
  exporter's own ones (poll and remediation metrics, process/python: tens of series) are rendered per scrape on the loop, and the snapshot
  collector's part is spliced in from a cache. The bytes equal prometheus_client's `generate_latest(registry)`
  for the same state (tests/unit/test_exposition.py checks it for both formats).
- The cache is keyed by the state the snapshot collector renders, `(poller.snapshot, poller.up, collector.config)`, compared by
  identity: the poller publishes a new Snapshot object for every change (a poll, a /system/df result, an event
  refresh), so there is no subscription to miss; an entry holds its snapshot, so an identity is never reused.
  Within a state, one entry per negotiated content type (format, version, escaping) and gzip, at most
  `MAX_VARIANTS`; rarer Accept headers are rendered uncached.
- A render costs what changed, not every series (a full render of every series is the slow part with many
  images). The collector cuts its families into sections (`SnapshotCollector.sections`): plain ones (tens of
  series: `docker_up`, totals, disk) are rendered whole each time; the per-tag and per-repository families are
  Tables, rendered in chunks of about CHUNK_ROWS rows whose cuts depend on the rows' labels (`table_chunks`). A
  chunk made of the same row objects as one of the last render keeps its text; the collector's `TableCache`
  keeps the row objects of unchanged images (same or equal Image), so a publish after an event renders a
  chunk or two per table, a quiet poll or a /system/df result none. Byte-identical to a full render: the
  tests compare with prometheus_client over random sequences of snapshots.
- Renders run in a worker thread, started by the first scrape that needs them (lazily per format), and at
  every publish for the formats scraped before (`prerender`, handed to the thread at once); concurrent
  scrapes await the same future, shielded so a disconnecting client does not cancel it. A failed render is
  forgotten, so the next scrape retries.
- Staleness bound (chosen over serving the previous render): a scrape serves the state that was current when it
  arrived, waiting for that render rather than serving an older one; it is never behind by more than a publish
  that lands while it is being answered. The price: the first scrape after a publish waits for the render (in a
  thread: the loop keeps running), a chunk or two of rows after an event. Serving the previous render
  instead could not bound staleness in publishes: publishes are seen only when a scrape arrives.
- OpenMetrics: every part is rendered without its `# EOF`, which is appended once, at the end.
- gzip (Prometheus always asks for it): the snapshot part is deflated in segments (raw deflate ended by a sync
  flush, so byte aligned and not final) of a few table chunks each (SEGMENT_CHUNKS: large enough that
  compression stays close to one stream's); a segment of the very same pieces as last time is not compressed
  again, so after a change only the touched segments are (in the render's thread when a gzip scrape asked for the format).
  The part is spliced between the per-scrape parts deflated the same way, in one gzip member whose CRC-32 is
  combined arithmetically (zlib's crc32_combine). A scrape compresses only its own metrics. Other codings
  (deflate) fall back to aiohttp compressing the whole body.
- `?name[]=` requests bypass the cache: prometheus_client's restricted registry, rendered in a worker thread.
"""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.metrics.collector import SnapshotCollector, Table, TableFamily, TableRow
from exporter.snapshot import Snapshot

MAX_VARIANTS = 8  # cached renders per state: (content type, gzip) pairs; Prometheus uses one
GZIP_LEVEL = 6  # zlib's default, as aiohttp compresses; the snapshot part is compressed once per state
OPENMETRICS = "application/openmetrics-text"
EOF = b"# EOF\n"
CHUNK_ROWS = 32  # table rows per chunk on average: what one changed image costs to render again
MAX_CHUNK_ROWS = 256
SEGMENT_CHUNKS = 8  # table chunks per deflate segment on average: text near the size of deflate's 32 KiB window

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


class RenderedPart:
    """The snapshot collector's part of the exposition for one state in one format (no `# EOF`), in pieces.

    `cuts[i]`: a deflate segment may end after `texts[i]`. Segments are runs of pieces ending at a cut; the
    deflate of a run of the very same pieces is reused (`Segments`), so a gzip scrape after a change compresses
    the few segments it touched. Segments span several table chunks: deflate looks back 32 KiB, and segments
    much smaller than that would compress noticeably worse.
    """

    def __init__(self, texts: list[bytes], cuts: list[bool], segments: Segments) -> None:
        self.texts = texts
        self.cuts = cuts
        self.segments = segments
        self.deflated: Deflated | None = None

    def deflate(self) -> Deflated:
        """The whole part as one deflate segment, for splicing into a gzip member (in a worker thread).

        The CRC is computed over the text (zlib, in C) rather than combined per segment (pure Python).
        """
        if self.deflated is None:
            crc = 0
            for text in self.texts:
                crc = zlib.crc32(text, crc)
            data = self.segments.deflate(self.texts, self.cuts)
            self.deflated = Deflated(data, crc, sum(map(len, self.texts)))
        return self.deflated


class Segments:
    """The deflate segments of the last gzip render of one format, by the identity of the pieces they hold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pieces: dict[tuple[int, ...], tuple[tuple[bytes, ...], bytes]] = {}
        #: bytes compressed so far (not reused): what shows a change is compressed incrementally
        self.compressed = 0

    def deflate(self, texts: Sequence[bytes], cuts: Sequence[bool]) -> bytes:
        with self._lock:
            old = self._by_pieces
            new: dict[tuple[int, ...], tuple[tuple[bytes, ...], bytes]] = {}
            out: list[bytes] = []
            run: list[bytes] = []
            for text, cut in zip(texts, cuts, strict=True):
                run.append(text)
                if not cut:
                    continue
                key = tuple(map(id, run))  # the entry keeps the pieces alive: an id is not reused meanwhile
                entry = old.get(key) or new.get(key)
                if entry is None:
                    joined = b"".join(run)
                    entry = (tuple(run), deflate(joined).data if joined else b"")
                    self.compressed += len(joined)
                new[key] = entry
                out.append(entry[1])
                run = []
            if run:
                raise AssertionError("the last piece of a part must end a segment")
            self._by_pieces = new
            return b"".join(out)


def table_chunks(rows: Sequence[TableRow]) -> list[tuple[int, int]]:
    """Bounds of consecutive runs of rows, each ended by a row whose labels hash to 0 modulo CHUNK_ROWS (or
    at MAX_CHUNK_ROWS rows). The cuts depend on the rows' labels, not their positions: adding or removing a row
    changes only the chunk it is in, and a changed value only its own chunk."""
    ends = [index + 1 for index, code in enumerate(map(hash, map(itemgetter(0), rows))) if not code % CHUNK_ROWS]
    if not ends or ends[-1] != len(rows):
        ends.append(len(rows))
    bounds: list[tuple[int, int]] = []
    start = 0
    for end in ends:
        while end - start > MAX_CHUNK_ROWS:
            bounds.append((start, start + MAX_CHUNK_ROWS))
            start += MAX_CHUNK_ROWS
        if end > start:
            bounds.append((start, end))
        start = end
    return bounds


class _TableText:
    """One table rendered in one format: each family's header, and each chunk's lines per family."""

    def __init__(self, headers: tuple[bytes, ...]) -> None:
        self.headers = headers
        #: by the identity of the chunk's rows (held in the entry) -> the chunk's rows, its text per family
        self.chunks: dict[tuple[int, ...], tuple[tuple[TableRow, ...], tuple[bytes, ...]]] = {}


TableKey = tuple[tuple[TableFamily, ...], tuple[str, ...]]


class FormatRenderer:
    """Renders the snapshot part in one format, keeping what the next render of a new state can reuse.

    Plain sections (tens of series) are rendered whole every time. A table is rendered chunk by chunk
    (`table_chunks`): a chunk made of the very same row objects as one of the last render keeps its text (the
    collector's `TableCache` keeps the rows of unchanged images), so a publish that changed one image renders
    about CHUNK_ROWS rows per family. A family's text is its header followed by its lines of each chunk in
    order, which is what the encoder writes for the whole family: a gauge's samples are independent lines
    (the tests compare the bytes with prometheus_client's). Renders of one format run one at a time.
    """

    def __init__(self, encoder: Encoder, openmetrics: bool) -> None:
        self.encoder = encoder
        self.openmetrics = openmetrics
        self.segments = Segments()
        self._lock = threading.Lock()
        self._tables: dict[TableKey, _TableText] = {}
        #: table rows rendered (not reused) so far: what shows a render is incremental
        self.rows_rendered = 0

    def render(self, collector: SnapshotCollector, state: State) -> RenderedPart:
        """The part for `state`, pinned to it (a render in a thread must not read a newer snapshot)."""
        with self._lock:
            texts: list[bytes] = []
            cuts: list[bool] = []
            tables: dict[TableKey, _TableText] = {}
            for section in collector.sections(state[0], state[1]):
                if section.table is None:
                    texts.append(_part(self.encoder, _Metrics(section.families), self.openmetrics))
                    cuts.append(True)
                    continue
                key = (section.table.families, section.table.labelnames)
                text = self._tables.get(key) or self._new_table(section.table)
                tables[key] = text
                self._table(section.table, text, texts, cuts)
            self._tables = tables  # a table that is gone (metrics.per_image switched off) is forgotten
            return RenderedPart(texts, cuts, self.segments)

    def _new_table(self, table: Table) -> _TableText:
        return _TableText(tuple(self._family(table, index, ()) for index in range(len(table.families))))

    def _family(self, table: Table, index: int, rows: Iterable[TableRow]) -> bytes:
        """Family `index` of `table` with the samples of `rows` only, as the encoder writes it (header included)."""
        family = table.families[index]
        metric = GaugeMetricFamily(family.name, family.documentation, labels=list(table.labelnames))
        for labels, values in rows:
            value = values[index]
            if value is not None:
                metric.add_metric(labels, value)
        return _part(self.encoder, _Metrics(lambda: [metric]), self.openmetrics)

    def _table(self, table: Table, text: _TableText, texts: list[bytes], cuts: list[bool]) -> None:
        """Append the table's pieces to `texts` (and where segments may end to `cuts`)."""
        rows = table.rows
        chunks: dict[tuple[int, ...], tuple[tuple[TableRow, ...], tuple[bytes, ...]]] = {}
        ordered: list[tuple[bytes, ...]] = []
        ends: list[bool] = []
        for start, end in table_chunks(rows):
            chunk = tuple(rows[start:end])
            key = tuple(map(id, chunk))
            entry = text.chunks.get(key) or chunks.get(key)
            if entry is None:
                entry = (
                    chunk,
                    tuple(self._lines(table, index, chunk, header) for index, header in enumerate(text.headers)),
                )
                self.rows_rendered += len(chunk)
            chunks[key] = entry
            ordered.append(entry[1])
            ends.append(not (hash(chunk[-1][0]) // CHUNK_ROWS) % SEGMENT_CHUNKS)
        text.chunks = chunks  # only the chunks of this render: memory follows the table's size
        if ends:
            ends[-1] = True  # the next family's header starts a segment
        for index, header in enumerate(text.headers):
            texts.append(header)
            cuts.append(not ordered)
            texts.extend(lines[index] for lines in ordered)
            cuts.extend(ends)

    def _lines(self, table: Table, index: int, rows: tuple[TableRow, ...], header: bytes) -> bytes:
        rendered = self._family(table, index, rows)
        if not rendered.startswith(header):
            raise AssertionError(f"{table.families[index].name}: the encoder wrote another header for some rows")
        return rendered[len(header) :]


def render_snapshot(
    collector: SnapshotCollector, state: State, renderer: FormatRenderer, compress: bool = False
) -> RenderedPart:
    """The snapshot part for `state` in the renderer's format, deflated too when `compress` (a render thread)."""
    part = renderer.render(collector, state)
    if compress:
        part.deflate()
    return part


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
        self._texts: dict[str, asyncio.Future[RenderedPart]] = {}  # by content type, for self._state
        self._gzips: dict[str, asyncio.Future[Deflated]] = {}
        self._renderers: dict[str, FormatRenderer] = {}  # by content type: what the next render reuses
        self._formats: dict[str, tuple[Encoder, bool, bool]] = {}  # content type -> encoder, openmetrics, gzip
        self._prerendering: asyncio.Future[Any] | None = None  # the renders the last publish started
        self._prerender_again = False  # publishes landed while they ran: render the newest state next

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
            body = gzip_member([deflate(prefix), deflated, deflate(suffix, final=True)])
            return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type, hdrs.CONTENT_ENCODING: "gzip"})
        rendered = await self.text_part(state, encoder, content_type, openmetrics)
        prefix, suffix = self._own_parts(encoder, openmetrics)
        body = b"".join([prefix, *rendered.texts, suffix])
        response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()  # deflate-only clients, as prometheus_client's handler did
        return response

    def prerender(self, _snapshot: Snapshot | None = None) -> list[asyncio.Future[Any]]:
        """Start rendering the current state in every format scraped so far (the poller's `on_publish` hook).

        Why: the first scrape after a publish otherwise waits for the render; started at publish time, it is
        usually done before the next scrape arrives. Runs on the event loop and hands the render to a worker
        thread at once (not from a task the loop would start later, after whatever the publisher does next).
        While the renders of an earlier publish still run, nothing starts: once they end, the newest state is
        rendered (one render per format, however many publishes landed meanwhile). A burst of events
        publishing every few milliseconds otherwise queued a render per publish, each for a state already
        gone, all of them taking the interpreter lock from the engine work that caused the burst. A scrape in
        between renders its own state on demand, as ever.
        """
        state = (self.collector.poller.snapshot, self.collector.poller.up, self.collector.config)
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

    async def text_part(self, state: State, encoder: Encoder, content_type: str, openmetrics: bool) -> RenderedPart:
        """The snapshot part for `state` in one format, rendered at most once (in a worker thread)."""
        self._follow(state)
        return await asyncio.shield(self._text_future(state, encoder, content_type, openmetrics))

    async def deflated_part(self, state: State, encoder: Encoder, content_type: str, openmetrics: bool) -> Deflated:
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
            renderer = self._renderers.get(content_type)
            if renderer is None:
                renderer = FormatRenderer(encoder, openmetrics)
                if len(self._renderers) < MAX_VARIANTS:
                    self._renderers[content_type] = renderer
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
