"""`/metrics`: the snapshot's families rendered once per snapshot, the exporter's own metrics every scrape.

Why: rendering every per-image series on each scrape cost ~135 ms of event-loop CPU at 10k images (530 ms
uncapped), and nothing else on the loop ran meanwhile (issue 14). A snapshot is immutable, so is its text.

How:
- The registry keeps every collector, so `?name[]=`, duplicate-name checks and `get_sample_value` work as
  before. A scrape walks the registry's collectors in registration order: the exporter's own ones (poll and
  remediation metrics, process/python: tens of series) are rendered per scrape on the loop, and the snapshot
  collector's part is spliced in from a cache. The bytes equal prometheus_client's `generate_latest(registry)`
  for the same state (tests/unit/test_exposition.py checks it for both formats).
- The cache is keyed by the state the snapshot collector renders, `(poller.snapshot, poller.up)`, compared by
  identity: the poller publishes a new Snapshot object for every change (a poll, a /system/df result, an event
  refresh), so there is no subscription to miss; an entry holds its snapshot, so an identity is never reused.
  Within a state, one entry per negotiated content type (format, version, escaping) and gzip, at most
  `MAX_VARIANTS`; rarer Accept headers are rendered uncached.
- Renders run in a worker thread, started by the first scrape that needs them (lazily per format); concurrent
  scrapes await the same future, shielded so a disconnecting client does not cancel it. A failed render is
  forgotten, so the next scrape retries.
- Staleness bound: a scrape serves the state that was current when it arrived, waiting for that render rather
  than serving an older one. So a response is never behind by more than a publish that lands while it is being
  answered; the price is that the first scrape after each publish waits for one render (in a thread: the loop
  keeps running).
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
State = tuple[Snapshot | None, bool]


class _Collectors:
    """A fixed list of collectors, collected in order (what `generate_latest` needs for one part)."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class _Families:
    """The snapshot collector pinned to one state: a render in a thread must not read a newer snapshot."""

    def __init__(self, collector: SnapshotCollector, state: State) -> None:
        self.collector = collector
        self.state = state

    def collect(self) -> Iterator[Metric]:
        return self.collector.families(*self.state)


class _Metrics:
    def __init__(self, metrics: Sequence[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def _part(encoder: Encoder, source: Collector, openmetrics: bool) -> bytes:
    body = encoder(source)
    if openmetrics:
        assert body.endswith(EOF), "OpenMetrics encoder output without # EOF"
        body = body[: -len(EOF)]
    return body


def render_snapshot(collector: SnapshotCollector, state: State, encoder: Encoder, openmetrics: bool) -> bytes:
    """The snapshot collector's families for `state`, without a trailing `# EOF` (the expensive render)."""
    return _part(encoder, _Families(collector, state), openmetrics)


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
        self._parts: dict[tuple[str, bool], asyncio.Future[bytes | Deflated]] = {}

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
        use_gzip = gzip_accepted(",".join(request.headers.getall(hdrs.ACCEPT_ENCODING, [])))
        state = (self.collector.poller.snapshot, self.collector.poller.up)
        cached = await self.snapshot_part(state, encoder, content_type, openmetrics, use_gzip)
        before, after = self._own_collectors()
        prefix = _part(encoder, _Collectors(before), openmetrics)
        suffix = _part(encoder, _Collectors(after), openmetrics) + (EOF if openmetrics else b"")
        if isinstance(cached, Deflated):
            body = gzip_member([deflate(prefix), cached, deflate(suffix, final=True)])
            return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type, hdrs.CONTENT_ENCODING: "gzip"})
        response = web.Response(body=b"".join((prefix, cached, suffix)), headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()  # deflate-only clients, as prometheus_client's handler did
        return response

    async def snapshot_part(
        self, state: State, encoder: Encoder, content_type: str, openmetrics: bool, use_gzip: bool
    ) -> bytes | Deflated:
        """The cached snapshot part for `state` (text, or deflated when `use_gzip`), rendering it at most once."""

        async def text() -> bytes | Deflated:
            return await asyncio.to_thread(render_snapshot, self.collector, state, encoder, openmetrics)

        async def deflated() -> bytes | Deflated:
            plain = await self.snapshot_part(state, encoder, content_type, openmetrics, False)
            assert isinstance(plain, bytes)
            return await asyncio.to_thread(deflate, plain)

        return await asyncio.shield(
            self._single_flight(state, (content_type, use_gzip), deflated if use_gzip else text)
        )

    def _single_flight(
        self, state: State, key: tuple[str, bool], make: Callable[[], Awaitable[bytes | Deflated]]
    ) -> asyncio.Future[bytes | Deflated]:
        if self._state is None or self._state[0] is not state[0] or self._state[1] != state[1]:
            self._state = state  # a new publish: drop every render of the old state
            self._parts = {}
        future = self._parts.get(key)
        if future is not None:
            return future
        future = asyncio.ensure_future(make())
        if len(self._parts) < MAX_VARIANTS:
            parts = self._parts
            parts[key] = future

            def forget_failure(done: asyncio.Future[bytes | Deflated]) -> None:
                if (done.cancelled() or done.exception() is not None) and parts.get(key) is done:
                    del parts[key]

            future.add_done_callback(forget_failure)
        return future

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
            before.insert(0, _Metrics([metric]))
        return before, collectors[index + 1 :]
