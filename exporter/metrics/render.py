"""The snapshot collector's exposition behind one call: `SnapshotRenderer.render(snapshot, format) -> bytes`.

Every render cache of the snapshot's part sits behind it, each keyed on what it can trust:
- the collector's `TableCache`: the per-tag rows (and their chunks), repository rows and totals of the last
  snapshot's images, updated for the images the store's publish log names (or, without it, those that are
  not the same object) and compared by equality, so an unchanged image keeps its row objects. The state
  builder (`exporter.state.builder`) publishes an unchanged image as the very same object, on a poll's new
  listing too, and says which images it merged again, so a publish costs the images it touched; an equal new
  object (a source without the log) is matched by equality
  (tests/unit/test_builder.py, tests/unit/test_collector.py and tests/unit/test_render.py prove these);
- per format, `exposition.FormatRenderer`: the text of each table chunk, kept while the chunk is the same
  tuple or holds the same row objects;
- per format, `exposition.Segments`: the deflate of each segment, kept while it holds the same pieces.

`render` gives the bytes prometheus_client's `generate_latest` writes for a registry holding only the snapshot
collector (and their gzip member): the property tests compare the two over random sequences of snapshots.
`/metrics` (`exporter.web.exposition`) takes the same renders as parts (`part`), spliced between the
exporter's own metrics, and decides when a render runs and which one a scrape gets.
"""

from __future__ import annotations

import threading
from typing import Literal

from prometheus_client.exposition import choose_encoder

from exporter.core.snapshot import Snapshot
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.exposition import (
    EOF,
    OPENMETRICS,
    Encoder,
    FormatRenderer,
    RenderedPart,
    State,
    deflate,
    gzip_member,
    render_snapshot,
)

#: What `render` writes: the text format or OpenMetrics, plain or as one gzip member.
Format = Literal["text", "text+gzip", "openmetrics", "openmetrics+gzip"]
#: Renderers kept (one per negotiated content type); rarer ones render without a cache.
MAX_FORMATS = 8
_ACCEPT = {"text": "text/plain", "openmetrics": OPENMETRICS}


class SnapshotRenderer:
    """The snapshot collector's renders, with every cache they reuse (see the module doc)."""

    def __init__(self, collector: SnapshotCollector) -> None:
        self.collector = collector
        self._lock = threading.Lock()
        self.renderers: dict[str, FormatRenderer] = {}  # by content type

    def renderer(self, content_type: str, encoder: Encoder, openmetrics: bool) -> FormatRenderer:
        """The renderer of one content type, kept for the next render (at most MAX_FORMATS are)."""
        with self._lock:
            renderer = self.renderers.get(content_type)
            if renderer is None:
                renderer = FormatRenderer(encoder, openmetrics)
                if len(self.renderers) < MAX_FORMATS:
                    self.renderers[content_type] = renderer
            return renderer

    def part(
        self, state: State, content_type: str, encoder: Encoder, openmetrics: bool, *, compress: bool = False
    ) -> RenderedPart:
        """The snapshot's part for `state` (no `# EOF`), deflated too when `compress`."""
        return render_snapshot(self.collector, state, self.renderer(content_type, encoder, openmetrics), compress)

    def render(self, snapshot: Snapshot | None, format: Format = "text", *, up: bool = True) -> bytes:
        """The snapshot collector's whole exposition of `snapshot` in `format` (`up`: what `docker_up` says)."""
        return b"".join(self.pieces(snapshot, format, up=up))

    def pieces(self, snapshot: Snapshot | None, format: Format = "text", *, up: bool = True) -> list[bytes]:
        """`render` as the pieces `/metrics` writes one after the other (the plain text is not joined)."""
        base = format.removesuffix("+gzip")
        encoder, content_type = choose_encoder(_ACCEPT[base])
        openmetrics = base == "openmetrics"
        gzipped = format.endswith("+gzip")
        state: State = (snapshot, up, self.collector.config)
        part = self.part(state, content_type, encoder, openmetrics, compress=gzipped)
        tail = EOF if openmetrics else b""
        if gzipped:
            return [gzip_member([part.deflate(), deflate(tail, final=True)])]
        return [*part.texts, tail]
