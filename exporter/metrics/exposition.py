"""The snapshot's part of `/metrics`, rendered for one state in one format, and the gzip splicing around it.

No HTTP here: the handler (`exporter.web.exposition`) decides when a render runs and caches its result per
state; this module makes the bytes, which equal prometheus_client's `generate_latest(registry)` for the
same state (tests/unit/test_exposition.py checks it for both formats).

- A render costs what changed, not every series (a full render of every series is the slow part with many
  images). The collector cuts its families into sections (`SnapshotCollector.sections`): plain ones (tens of
  series: `docker_up`, totals, disk) are rendered whole each time; the per-tag and per-repository families are
  Tables, rendered in chunks of about CHUNK_ROWS rows whose cuts depend on the rows' labels (`table_chunks`).
  A chunk that is the same tuple as one of the last render (the per-tag table: the collector's `TableCache`
  keeps its chunks) or is made of the same row objects (a table cut per render) keeps its text
  (`FormatRenderer`, one per format); the `TableCache` keeps the row objects and chunks of unchanged images
  (same or equal Image), so a publish after an event renders a chunk or two per table, a quiet poll or a
  /system/df result none, and walks the chunks, not the rows.
  Byte-identical to a full render: the tests compare with prometheus_client over random sequences of
  snapshots.
- OpenMetrics: every part is rendered without its `# EOF`, which the handler appends once, at the end.
- gzip (Prometheus always asks for it): the snapshot part is deflated in segments (raw deflate ended by a sync
  flush, so byte aligned and not final) of a few table chunks each (SEGMENT_CHUNKS: large enough that
  compression stays close to one stream's); a segment of the very same pieces as last time is not
  compressed again, so after a change only the touched segments are. `gzip_member` splices deflated parts
  into one gzip member whose CRC-32 is combined arithmetically (zlib's crc32_combine).
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress
from operator import itemgetter

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from exporter.core.snapshot import Snapshot
from exporter.metrics import collector as table_rows
from exporter.metrics.collector import Chunk, SnapshotCollector, Table, TableFamily, TableRow, chunk_ends

GZIP_LEVEL = 6  # zlib's default, as aiohttp compresses; the snapshot part is compressed once per state
OPENMETRICS = "application/openmetrics-text"
EOF = b"# EOF\n"
SEGMENT_CHUNKS = 8  # table chunks per deflate segment on average: text near the size of deflate's 32 KiB window

Encoder = Callable[[Collector], bytes]
State = tuple[Snapshot | None, bool, object]  # (snapshot, up, the collector's config: a reload may change it)


class CollectorList:
    """A fixed list of collectors, collected in order (what `generate_latest` needs for one part)."""

    def __init__(self, collectors: Iterable[Collector]) -> None:
        self.collectors = list(collectors)

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class MetricsOf:
    """Metrics from a callable, for one `generate_latest` call."""

    def __init__(self, metrics: Callable[[], Iterable[Metric]]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics()


def encode_part(encoder: Encoder, source: Collector, openmetrics: bool) -> bytes:
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
        """The whole part as one deflate segment, for splicing into a gzip member (in a worker thread)."""
        if self.deflated is None:
            self.deflated = self.segments.deflate(self.texts, self.cuts)
        return self.deflated


#: A segment as kept: its pieces (held: their ids key it), its deflate, its text's CRC-32 and size, and
#: x^(8 * size) modulo the CRC polynomial (what combining a CRC with this segment's multiplies by).
_Segment = tuple[tuple[bytes, ...], bytes, int, int, int]


class Segments:
    """The deflate segments of the last gzip render of one format, by the identity of the pieces they hold.

    The part's CRC-32 is combined from the segments' (one multiplication each, the factor kept with the
    segment, and none for the unchanged segments before the first change) rather than computed over every
    byte of text on every render: that pass would cost in proportion to the series."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pieces: dict[tuple[int, ...], _Segment] = {}
        #: per segment of the last render: the CRC of the text before it and the CRC up to its end, so the
        #: segments before the first change are not combined again
        self._links: dict[tuple[int, ...], tuple[int, int]] = {}
        #: bytes compressed so far (not reused): what shows a change is compressed incrementally
        self.compressed = 0

    def deflate(self, texts: Sequence[bytes], cuts: Sequence[bool]) -> Deflated:
        with self._lock:
            old, links = self._by_pieces, self._links
            new: dict[tuple[int, ...], _Segment] = {}
            new_links: dict[tuple[int, ...], tuple[int, int]] = {}
            out: list[bytes] = []
            crc = size = 0
            if len(texts) != len(cuts):
                raise AssertionError("a cut per piece")
            start = 0
            for end in compress(range(1, len(cuts) + 1), cuts):  # a loop per segment, not per piece
                run = texts[start:end]
                start = end
                key = tuple(map(id, run))  # the entry keeps the pieces alive: an id is not reused meanwhile
                entry = old.get(key) or new.get(key)
                if entry is None:
                    joined = b"".join(run)
                    done = deflate(joined)
                    entry = (tuple(run), done.data if joined else b"", done.crc, done.size, _shift(done.size))
                    self.compressed += len(joined)
                new[key] = entry
                out.append(entry[1])
                link = links.get(key)  # the same segment after the same CRC as last time: the same CRC after it
                if link is None or link[0] != crc:
                    link = (crc, _multmodp(entry[4], crc) ^ entry[2] if crc else entry[2])
                new_links[key] = link
                crc = link[1]
                size += entry[3]
            if start != len(texts):
                raise AssertionError("the last piece of a part must end a segment")
            self._by_pieces, self._links = new, new_links
            return Deflated(b"".join(out), crc, size)


def table_chunks(rows: Sequence[TableRow]) -> list[Chunk]:
    """Consecutive runs of rows, each ended by a row whose labels end a chunk (`ends_chunk`: they hash to 0
    modulo CHUNK_ROWS) or at MAX_CHUNK_ROWS rows. The cuts depend on the rows' labels, not their positions:
    adding or removing a row changes only the chunk it is in, and a changed value only its own chunk. (The
    collector's TableCache keeps these chunks up to date instead for the per-tag table.)"""
    ends = chunk_ends(rows)
    if not ends or ends[-1] != len(rows):
        ends.append(len(rows))
    size = table_rows.MAX_CHUNK_ROWS
    chunks: list[Chunk] = []
    start = 0
    for end in ends:
        while end - start > size:
            chunks.append(tuple(rows[start : start + size]))
            start += size
        if end > start:
            chunks.append(tuple(rows[start:end]))
        start = end
    return chunks


class _TableText:
    """One table rendered in one format: each family's header, and each chunk's lines per family."""

    def __init__(self, headers: tuple[bytes, ...]) -> None:
        self.headers = headers
        #: by the identity of the chunk (a kept chunk tuple) or of its rows (a chunk cut for this render) -> the
        #: chunk (held: an identity is not reused meanwhile), its text per family, whether a segment may end after it
        self.chunks: dict[int | tuple[int, ...], ChunkText] = {}


TableKey = tuple[tuple[TableFamily, ...], tuple[str, ...]]
ChunkText = tuple[Chunk, tuple[bytes, ...], bool]


class FormatRenderer:
    """Renders the snapshot part in one format, keeping what the next render of a new state can reuse.

    Plain sections (tens of series) are rendered whole every time. A table is rendered chunk by chunk
    (`table_chunks`, or the chunks the table carries): a chunk that is the very same tuple, or is made of the
    very same row objects, as one of the last render keeps its text (the collector's `TableCache` keeps the
    rows and chunks of unchanged images), so a publish that changed one image renders
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
                    texts.append(encode_part(self.encoder, MetricsOf(section.families), self.openmetrics))
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
        return encode_part(self.encoder, MetricsOf(lambda: [metric]), self.openmetrics)

    def _table(self, table: Table, text: _TableText, texts: list[bytes], cuts: list[bool]) -> None:
        """Append the table's pieces to `texts` (and where segments may end to `cuts`)."""
        kept = table.chunks
        chunks: dict[int | tuple[int, ...], ChunkText] = {}
        ordered: list[ChunkText] = []
        old = text.chunks
        for chunk in kept if kept is not None else table_chunks(table.rows):
            key: int | tuple[int, ...] = id(chunk) if kept is not None else tuple(map(id, chunk))
            entry = old.get(key) or chunks.get(key)
            if entry is None:
                entry = (
                    chunk,
                    tuple(self._lines(table, index, chunk, header) for index, header in enumerate(text.headers)),
                    not (hash(chunk[-1][0]) // table_rows.CHUNK_ROWS) % SEGMENT_CHUNKS,
                )
                self.rows_rendered += len(chunk)
            chunks[key] = entry
            ordered.append(entry)
        text.chunks = chunks  # only the chunks of this render: memory follows the table's size
        ends = list(map(itemgetter(2), ordered))
        if ends:
            ends[-1] = True  # the next family's header starts a segment
        lines = list(map(itemgetter(1), ordered))
        for index, header in enumerate(text.headers):
            texts.append(header)
            cuts.append(not ordered)
            texts.extend(map(itemgetter(index), lines))
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


def _shift(length: int) -> int:
    """x^(8 * length) modulo the CRC polynomial: a CRC followed by `length` bytes is multiplied by it."""
    p = 1 << 31  # x^0
    n, k = length, 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and len(B), without reading B (zlib's crc32_combine)."""
    return _multmodp(_shift(len2), crc1) ^ crc2


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
