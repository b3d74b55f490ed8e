"""`SnapshotRenderer.render(snapshot, format)`: one call in front of every render cache, byte-equal to
prometheus_client's `generate_latest` of the same collector, and as cheap as the rule "an unchanged image is
the same object" (kept by `state.builder`) lets it be."""

from __future__ import annotations

import gzip
from dataclasses import replace
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.config import MetricsConfig
from exporter.core.snapshot import Snapshot
from exporter.metrics import collector as table_rows
from exporter.metrics import exposition as rendering
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.render import Format, SnapshotRenderer
from tests.unit.test_exposition import image_specs, snapshot, snapshot_of, spec_image

FORMATS: tuple[Format, ...] = get_args(Format)


class Source:
    def __init__(self, snapshot: Snapshot | None, up: bool = True) -> None:
        self.snapshot = snapshot
        self.up = up


def reference(snapshot: Snapshot | None, up: bool, config: MetricsConfig, fmt: Format) -> bytes:
    """What prometheus_client writes for a registry holding a fresh snapshot collector (no cache at all)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(SnapshotCollector(Source(snapshot, up), config))
    if fmt.startswith("openmetrics"):
        body: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        return body
    return generate_latest(registry)


def rendered(renderer: SnapshotRenderer, snapshot: Snapshot | None, fmt: Format, up: bool = True) -> bytes:
    body = renderer.render(snapshot, fmt, up=up)
    return gzip.decompress(body) if fmt.endswith("+gzip") else body


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("state", ["none", "down", "up"])
def test_render_is_generate_latest(fmt: Format, state: str) -> None:
    snap = None if state == "none" else snapshot()
    renderer = SnapshotRenderer(SnapshotCollector(Source(None), MetricsConfig()))
    assert rendered(renderer, snap, fmt, up=state == "up") == reference(snap, state == "up", MetricsConfig(), fmt)


steps = st.one_of(
    st.tuples(st.just("put"), image_specs),  # an image appears or changes: a new object for it alone
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("quiet_poll")),  # equal images, new objects, another order
    st.tuples(st.just("republish")),  # the very same image objects in a new snapshot
    st.tuples(st.just("up"), st.booleans()),
)


@settings(max_examples=100, deadline=None)
@given(
    start=st.lists(image_specs, max_size=25),
    changes=st.lists(st.tuples(steps, st.sampled_from(FORMATS)), max_size=30),
)
def test_render_equals_generate_latest_over_sequences_of_snapshots(
    start: list[tuple[Any, ...]], changes: list[tuple[tuple[Any, ...], Format]]
) -> None:
    """Random snapshots, and sequences of them sharing unchanged images (as the builder publishes them), in
    every format: each render is byte for byte what prometheus_client writes for that snapshot, and the gzip
    variant decompresses to the plain one. Tiny chunks and segments so that 40 images span many of them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(table_rows, "CHUNK_ROWS", 3)
        patch.setattr(table_rows, "MAX_CHUNK_ROWS", 4)
        patch.setattr(rendering, "SEGMENT_CHUNKS", 2)
        config = MetricsConfig(max_image_series=30)
        renderer = SnapshotRenderer(SnapshotCollector(Source(None), config))
        images = {spec[0]: spec_image(spec) for spec in start}
        current, up = snapshot_of(images.values(), 1.0), True
        for n, ((action, *args), fmt) in enumerate(changes):
            if action == "put":
                images[args[0][0]] = spec_image(args[0])
            elif action == "drop":
                images.pop(args[0], None)
            elif action == "quiet_poll":
                images = {number: replace(image) for number, image in reversed(images.items())}
            elif action == "up":
                up = args[0]
            current = snapshot_of(images.values(), 2.0 + n)
            body = rendered(renderer, current, fmt, up)
            assert body == reference(current, up, config, fmt)
            tables = renderer.collector.tables.tables(current)  # the chunks kept run by run, as if cut afresh
            assert tables.chunks == rendering.table_chunks(tables.rows)
            if fmt.endswith("+gzip"):
                assert body == renderer.render(current, fmt.removesuffix("+gzip"), up=up)  # type: ignore[arg-type]


def test_a_snapshot_of_the_same_image_objects_renders_no_row_again() -> None:
    """The rule the caches rely on: an image that is the same object keeps its rows and their text."""
    renderer = SnapshotRenderer(SnapshotCollector(Source(None), MetricsConfig()))
    first = snapshot(taken_at=1.0, images=300)
    renderer.render(first)
    text = renderer.renderer(*_text_format()).rows_rendered
    renderer.render(replace(first, taken_at=2.0))  # a /system/df merge: the same images tuple
    renderer.render(snapshot_of(first.images, 3.0))  # a new tuple of the same objects
    assert renderer.renderer(*_text_format()).rows_rendered == text


def test_one_changed_image_renders_about_one_chunk_per_family() -> None:
    renderer = SnapshotRenderer(SnapshotCollector(Source(None), MetricsConfig()))
    first = snapshot(taken_at=1.0, images=300)
    renderer.render(first)
    before = renderer.renderer(*_text_format()).rows_rendered
    changed = list(first.images)
    changed[150] = replace(changed[150], containers=changed[150].containers + 1)
    second = snapshot_of(changed, 2.0)
    assert renderer.render(second) == reference(second, True, MetricsConfig(), "text")
    assert 0 < renderer.renderer(*_text_format()).rows_rendered - before <= 2 * table_rows.MAX_CHUNK_ROWS


def _text_format() -> tuple[str, Any, bool]:
    from prometheus_client.exposition import choose_encoder

    encoder, content_type = choose_encoder("text/plain")
    return content_type, encoder, False
