"""`/metrics` serves the snapshot part rendered once per state, and the same bytes prometheus_client would."""

from __future__ import annotations

import asyncio
import gzip
import random
import threading
import zlib
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.aiohttp import make_aiohttp_handler

from exporter.config import MetricsConfig, parse_config
from exporter.core.snapshot import BuildCache, DiskUsage, EngineInfo, Filesystem, Image, ImageRef, Snapshot
from exporter.metrics import collector as table_rows
from exporter.metrics import exposition as rendering
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.exposition import RenderedPart, crc32_combine, deflate, gzip_member
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from exporter.web import exposition
from exporter.web.exposition import MetricsEndpoint
from tests.unit.recorded import RecordedEngine
from tests.unit.test_event_apply import ClassicStore, Clock, blobs, operations, refs

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
ACCEPTS = [
    "",
    "text/plain",
    "text/plain;version=1.0.0;escaping=allow-utf-8",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",  # Prometheus 2.42
]


def image(n: int, size: int, *refs: str) -> Image:
    return Image(
        id=f"sha256:{n:064x}",
        refs=tuple(r for r in (ImageRef.parse(x) for x in refs) if r is not None),
        digests=(),
        created=1000.0 + n,
        size=size,
        shared_size=size // 2,
        labels=MappingProxyType({}),
        containers=n % 2,
    )


def snapshot(taken_at: float = 1234.0, images: int = 5) -> Snapshot:
    return Snapshot(
        taken_at=taken_at,
        engine=EngineInfo("20.10.24", "1.41", "overlay2", "linux", "amd64"),
        images=(*(image(n, 100 * (n % 3 + 1), f"app{n % 2}:{n}") for n in range(images)), image(10**6, 7)),
        disk_usage=DiskUsage(1200.0, 700, 250, MappingProxyType({}), BuildCache(50, 20, 3)),
        filesystem=Filesystem("/var/lib/docker", 10_000, 2_500),
    )


class FakePoller:
    def __init__(self, snapshot: Snapshot | None, up: bool = True) -> None:
        self.snapshot = snapshot
        self.up = up


class Setup:
    """A registry shaped like the app's: own metrics before and after the snapshot collector."""

    def __init__(self, poller: Any, metrics: MetricsConfig | None = None) -> None:
        self.poller = poller
        self.registry = CollectorRegistry(auto_describe=True)
        self.poll_metrics = PollMetrics(self.registry)
        self.collector = SnapshotCollector(poller, metrics or MetricsConfig())
        self.registry.register(self.collector)
        self.after = Counter(
            "docker_exporter_test_runs", "A counter registered after the collector.", ["x"], registry=self.registry
        )
        self.after.labels("a").inc()
        self.endpoint = MetricsEndpoint(self.registry, self.collector)
        self.reference = make_aiohttp_handler(self.registry)

    async def scrape(self, accept: str = "", encoding: str = "", query: str = "") -> web.Response:
        headers = {k: v for k, v in (("Accept", accept), ("Accept-Encoding", encoding)) if v}
        return await self.endpoint.handle(make_mocked_request("GET", "/metrics" + query, headers=headers))

    async def text(self, accept: str = "") -> str:
        body = body_of(await self.scrape(accept))
        assert isinstance(body, bytes)
        return body.decode()

    async def expected(self, accept: str = "", query: str = "") -> web.Response:
        headers = {"Accept": accept} if accept else {}
        response = await self.reference(make_mocked_request("GET", "/metrics" + query, headers=headers))
        assert isinstance(response, web.Response)
        return response


def body_of(response: web.Response) -> bytes:
    """The bytes a response sends: its body, or the pieces a `PiecesPayload` writes one after the other."""
    body = response.body
    if isinstance(body, exposition.PiecesPayload):
        return b"".join(body.pieces)
    assert isinstance(body, bytes)
    return body


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[rendering.State]:
    """Spy on the expensive render: the states it was called for."""
    calls: list[rendering.State] = []
    real = rendering.render_snapshot

    def spy(collector: SnapshotCollector, state: rendering.State, *args: Any) -> RenderedPart:
        calls.append(state)
        return real(collector, state, *args)

    monkeypatch.setattr(exposition, "render_snapshot", spy)
    return calls


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("state", ["none", "down", "up"])
async def test_bytes_and_content_type_equal_prometheus_client(accept: str, state: str) -> None:
    snap = None if state == "none" else snapshot()
    setup = Setup(FakePoller(snap, up=state == "up"), MetricsConfig(max_image_series=3))
    for _ in range(2):  # uncached, then cached
        got, want = await setup.scrape(accept), await setup.expected(accept)
        assert body_of(got) == body_of(want)
        assert got.content_type == want.content_type and got.charset == want.charset
        assert got.headers["Content-Type"] == want.headers["Content-Type"]


async def test_openmetrics_has_one_eof_at_the_end() -> None:
    text = await Setup(FakePoller(snapshot())).text("application/openmetrics-text")
    assert text.endswith("# EOF\n") and text.count("# EOF") == 1
    assert "docker_exporter_test_runs_total" in text and "docker_images " in text


async def test_first_scrape_without_snapshot_shows_no_unknown_zeros() -> None:
    text = await Setup(FakePoller(None, up=False)).text()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert families == {
        "docker_up",
        "docker_exporter_build_info",
        "docker_exporter_polls_total",
        "docker_exporter_poll_errors_total",
        "docker_exporter_poll_duration_seconds",
        "docker_exporter_disk_usage_duration_seconds",
        "docker_exporter_test_runs_total",
    }
    assert "docker_up 0.0\n" in text


@pytest.mark.parametrize("accept", ["", "application/openmetrics-text"])
async def test_gzip_is_one_member_equal_to_the_uncached_render(accept: str) -> None:
    setup = Setup(FakePoller(snapshot(images=300)))
    for _ in range(2):
        response = await setup.scrape(accept, encoding="deflate, gzip")
        assert response.headers["Content-Encoding"] == "gzip"
        one = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a single-member reader: no multi-member tolerance
        plain = one.decompress(body_of(response))
        assert one.eof and one.unused_data == b""
        assert plain == body_of(await setup.expected(accept)) == gzip.decompress(body_of(response))
        assert len(body_of(response)) < len(plain) / 3


async def test_deflate_only_clients_get_aiohttp_compression() -> None:
    setup = Setup(FakePoller(snapshot()))
    response = await setup.scrape(encoding="deflate")
    assert "Content-Encoding" not in response.headers and response.compression  # aiohttp compresses at prepare
    assert body_of(response) == body_of(await setup.expected())


@pytest.mark.parametrize("encoding", ["", "deflate"])
async def test_a_body_written_piece_by_piece_arrives_whole_over_http(encoding: str) -> None:
    """The plain body is written as its cached pieces, in batches (`PiecesPayload`): through a real aiohttp
    server, identity and aiohttp-compressed alike, the client reads exactly the reference bytes, with a
    Content-Length equal to their size when not compressed."""
    setup = Setup(FakePoller(snapshot(images=3000)), MetricsConfig(max_image_series=100_000))
    app = web.Application()
    app.router.add_get("/metrics", setup.endpoint.serve)  # the route the app registers
    want = body_of(await setup.expected())
    assert len(want) > 4 * exposition.WRITE_BATCH
    async with TestClient(TestServer(app)) as client:
        headers = {"Accept-Encoding": encoding} if encoding else {"Accept-Encoding": "identity"}
        for _ in range(2):  # rendered, then cached
            response = await client.get("/metrics", headers=headers)
            got = await response.read()
            assert got == want
            if encoding:
                assert response.headers["Content-Encoding"] == "deflate"
            else:
                assert int(response.headers["Content-Length"]) == len(want)


def test_crc32_combine_matches_zlib() -> None:
    rng = random.Random(14)
    for size_a, size_b in [(0, 0), (0, 5), (5, 0), (1, 1), (1000, 77), (3, 1 << 16), (70_000, 12_345)]:
        a, b = rng.randbytes(size_a), rng.randbytes(size_b)
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)


def test_gzip_member_of_spliced_segments() -> None:
    parts = [b"", b"abc" * 1000, b"x", b"tail" * 50]
    segments = [deflate(p) for p in parts[:-1]] + [deflate(parts[-1], final=True)]
    assert gzip.decompress(gzip_member(segments)) == b"".join(parts)


async def test_own_metrics_change_per_scrape_while_the_snapshot_part_is_reused(
    renders: list[rendering.State],
) -> None:
    setup = Setup(FakePoller(snapshot()))
    first = await setup.text()
    setup.poll_metrics.polls.inc(3)
    setup.after.labels("b").inc()
    second = await setup.text()
    assert "docker_exporter_polls_total 0.0\n" in first and "docker_exporter_polls_total 3.0\n" in second
    assert 'docker_exporter_test_runs_total{x="b"} 1.0' in second
    assert second.encode() == body_of(await setup.expected())
    assert len(renders) == 1


async def test_formats_render_lazily_once_each(renders: list[rendering.State]) -> None:
    setup = Setup(FakePoller(snapshot()))
    for accept in ["", "application/openmetrics-text", "", "application/openmetrics-text"]:
        await setup.scrape(accept)
        await setup.scrape(accept, encoding="gzip")
    assert len(renders) == 2  # text and OpenMetrics; each gzip variant deflates its cached text


async def test_every_state_change_invalidates(renders: list[rendering.State]) -> None:
    poller = FakePoller(snapshot(taken_at=1.0))
    setup = Setup(poller)
    assert "docker_exporter_snapshot_timestamp_seconds 1.0\n" in await setup.text()
    poller.snapshot = snapshot(taken_at=2.0)
    assert "docker_exporter_snapshot_timestamp_seconds 2.0\n" in await setup.text()
    poller.up = False  # the engine went away: same snapshot, docker_up must say so at once
    down = await setup.text()
    assert "docker_up 0.0\n" in down and "docker_exporter_snapshot_timestamp_seconds 2.0\n" in down
    poller.snapshot = snapshot(taken_at=2.0)  # equal but a new publish: rendered again, not compared
    await setup.text()
    assert len(renders) == 4


async def test_a_reloaded_metrics_config_invalidates_with_an_unchanged_snapshot() -> None:
    """A reload swaps the collector's config (metrics.per_image: false) while the snapshot stays the same."""
    poller = FakePoller(snapshot(taken_at=1.0, images=5))
    setup = Setup(poller)
    assert "docker_image_size_bytes{" in await setup.text()
    setup.collector.config = MetricsConfig(per_image=False)
    assert "docker_image_size_bytes{" not in await setup.text()


@pytest.mark.parametrize("encoding", ["", "gzip"])
async def test_a_publish_renders_and_compresses_only_what_changed(
    monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """A quiet poll (equal images, new objects) renders no table row again; a changed image renders about a
    chunk of rows per table, not the table, and a gzip scrape then compresses a few segments, not the part.

    Chunks of 8 rows on average and no forced cuts. The cuts come from `hash()` of the labels, which Python
    randomises per process: a stable hash here makes the test the same in every run (with the random one, one
    run in a few dozen drew a segment holding over a quarter of the text).
    """
    for module in (rendering, table_rows):
        monkeypatch.setattr(module, "hash", lambda labels: zlib.crc32("\0".join(labels).encode()), raising=False)
    monkeypatch.setattr(table_rows, "CHUNK_ROWS", 8)
    monkeypatch.setattr(table_rows, "MAX_CHUNK_ROWS", 1_000_000)
    poller = FakePoller(snapshot(taken_at=1.0, images=2000))
    setup = Setup(poller, MetricsConfig(max_image_series=1_000_000))

    async def scrape() -> bytes:
        body = body_of(await setup.scrape(encoding=encoding))
        assert isinstance(body, bytes)
        return gzip.decompress(body) if encoding else body

    await scrape()
    (renderer,) = setup.endpoint._renderers.values()
    rows, compressed = renderer.rows_rendered, renderer.segments.compressed
    assert rows > 2000 and (compressed > 0) is bool(encoding)

    poller.snapshot = snapshot(taken_at=2.0, images=2000)  # what a quiet poll publishes
    assert b"docker_exporter_snapshot_timestamp_seconds 2.0\n" in await scrape()
    assert renderer.rows_rendered == rows

    images = list(poller.snapshot.images)
    images[700] = replace(images[700], size=images[700].size + 1, containers=5)  # moves in the sort order
    poller.snapshot = replace(poller.snapshot, taken_at=3.0, images=tuple(images))
    assert await scrape() == body_of(await Setup(FakePoller(poller.snapshot), setup.collector.config).expected())
    assert 0 < renderer.rows_rendered - rows < rows / 10
    if encoding:
        assert 0 < renderer.segments.compressed - compressed < compressed / 4


async def test_poller_publishes_and_disk_usage_updates_invalidate(tmp_path: Path) -> None:
    """Every place that replaces the store's snapshot goes through SnapshotStore.publish: a poll and a /system/df
    result."""
    recorded = RecordedEngine("bookworm")
    setup_registry = CollectorRegistry(auto_describe=True)
    metrics = PollMetrics(setup_registry)
    config = parse_config({"filesystem": {"path": str(tmp_path)}})
    poller = Poller(recorded, config, ImageHistory(None), metrics)
    refresher = DiskUsageRefresher(recorded, poller, config.poll, metrics)
    collector = SnapshotCollector(poller.store, config.metrics)
    setup_registry.register(collector)
    endpoint = MetricsEndpoint(setup_registry, collector)

    async def scrape() -> str:
        body = body_of(await endpoint.handle(make_mocked_request("GET", "/metrics")))
        assert isinstance(body, bytes)
        return body.decode()

    assert "docker_images " not in await scrape()
    await poller.poll_once()
    text = await scrape()
    assert f"docker_images {float(len(recorded.images))}\n" in text
    assert "docker_images_disk_usage_bytes" not in text
    await refresher.refresh_now()
    assert "docker_images_disk_usage_bytes" in await scrape()
    recorded.images = recorded.images[1:]
    await poller.poll_once()
    assert f"docker_images {float(len(recorded.images))}\n" in await scrape()
    recorded.failing.add("version_and_info")
    await poller.poll_once()
    assert "docker_up 0.0\n" in await scrape()


class BlockingRenders:
    """A render spy that holds each render in its thread until released, so a test controls the moment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[rendering.State] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        real = rendering.render_snapshot

        def spy(collector: SnapshotCollector, state: rendering.State, *args: Any) -> RenderedPart:
            self.calls.append(state)
            self.started.release()
            assert self.release.wait(30), "the test never released the render"
            return real(collector, state, *args)

        monkeypatch.setattr(exposition, "render_snapshot", spy)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 30), "no render started"


async def settle() -> None:
    """Let every ready task run until it blocks (scrapes waiting on a render future)."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_concurrent_scrapes_share_one_render(monkeypatch: pytest.MonkeyPatch) -> None:
    blocking = BlockingRenders(monkeypatch)
    setup = Setup(FakePoller(snapshot(images=50)))
    first = asyncio.create_task(setup.scrape())
    await blocking.wait_started()
    others = [asyncio.create_task(setup.scrape()) for _ in range(5)]
    await settle()
    assert not any(t.done() for t in [first, *others])  # all waiting for the one render
    blocking.release.set()
    bodies = {body_of(await t) for t in [first, *others]}
    assert len(bodies) == 1 and len(blocking.calls) == 1


async def test_a_scrape_never_serves_a_state_older_than_at_its_arrival(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound: wait for the current state's render; a publish during it is served by the next scrape."""
    poller = FakePoller(snapshot(taken_at=1.0))
    setup = Setup(poller)
    assert "snapshot_timestamp_seconds 1.0\n" in await setup.text()
    blocking = BlockingRenders(monkeypatch)
    poller.snapshot = snapshot(taken_at=2.0)
    waiting = asyncio.create_task(setup.text())
    await blocking.wait_started()
    poller.snapshot = snapshot(taken_at=3.0)  # published while the render of 2.0 runs
    blocking.release.set()
    assert "snapshot_timestamp_seconds 2.0\n" in await waiting  # not 1.0: one publish behind at most
    assert "snapshot_timestamp_seconds 3.0\n" in await setup.text()
    assert [s.taken_at for s, _, _ in blocking.calls if s] == [2.0, 3.0]


async def test_a_client_going_away_does_not_cancel_the_shared_render(monkeypatch: pytest.MonkeyPatch) -> None:
    blocking = BlockingRenders(monkeypatch)
    setup = Setup(FakePoller(snapshot()))
    gone = asyncio.create_task(setup.scrape())
    await blocking.wait_started()
    staying = asyncio.create_task(setup.scrape())
    await settle()
    gone.cancel()
    blocking.release.set()
    assert body_of(await staying) == body_of(await setup.expected())
    assert len(blocking.calls) == 1


async def test_a_failed_render_is_retried_by_the_next_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    real = rendering.render_snapshot
    failures = [RuntimeError("boom")]

    def flaky(*args: Any) -> RenderedPart:
        if failures:
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(exposition, "render_snapshot", flaky)
    setup = Setup(FakePoller(snapshot()))
    with pytest.raises(RuntimeError, match="boom"):
        await setup.scrape()
    assert body_of(await setup.scrape()) == body_of(await setup.expected())


@pytest.mark.parametrize(
    "query", ["?name[]=docker_images", "?name[]=docker_images&name[]=docker_exporter_polls_total", "?name[]=nope"]
)
async def test_name_filter_bypasses_the_cache(query: str, renders: list[rendering.State]) -> None:
    setup = Setup(FakePoller(snapshot()))
    got = await setup.scrape(query=query)
    assert body_of(got) == body_of(await setup.expected(query=query))
    text = got.text or ""
    assert ("docker_images " in text) is ("docker_images" in query)
    assert "docker_image_size_bytes" not in text
    assert renders == []


async def test_uncommon_accept_headers_are_not_cached_without_bound(
    renders: list[rendering.State],
) -> None:
    setup = Setup(FakePoller(snapshot()))
    accepts = [f"application/openmetrics-text;version=1.0.{n}" for n in range(exposition.MAX_VARIANTS + 4)]
    for accept in accepts:
        got = await setup.scrape(accept)
        assert body_of(got) == body_of(await setup.expected(accept))
    assert len(setup.endpoint._texts) == exposition.MAX_VARIANTS
    for accept in accepts[: exposition.MAX_VARIANTS]:
        await setup.scrape(accept)
    assert len(renders) == len(accepts)  # the cached ones were not rendered again


def test_the_collector_must_be_in_the_served_registry() -> None:
    collector = SnapshotCollector(FakePoller(None), MetricsConfig())
    with pytest.raises(ValueError, match="registered"):
        MetricsEndpoint(CollectorRegistry(), collector)


async def test_a_publish_starts_rendering_every_format_scraped_before_the_next_scrape(
    renders: list[tuple[Snapshot | None, bool]],
) -> None:
    """The poller's `on_publish` hook: the render of a new snapshot starts at publish time, in each format
    (and gzip variant) a scraper asked for; the next scrape awaits that render instead of starting one."""
    poller = FakePoller(snapshot(taken_at=1.0))
    setup = Setup(poller)
    await setup.scrape("", encoding="gzip")
    await setup.scrape("application/openmetrics-text")
    assert len(renders) == 2
    poller.snapshot = snapshot(taken_at=2.0)
    started = setup.endpoint.prerender(poller.snapshot)  # scheduled by the hook, before any scrape
    assert len(started) == 2
    await asyncio.gather(*started)
    assert len(renders) == 4 and all(state[0] is poller.snapshot for state in renders[2:])
    assert "docker_exporter_snapshot_timestamp_seconds 2.0\n" in await setup.text("application/openmetrics-text")
    await setup.scrape("", encoding="gzip")
    assert len(renders) == 4  # neither scrape rendered again


# --- incremental == full render, over random sequences of snapshots --------------------------------------------

REPOS = ("app", "web", "localhost:5000/team/api")
TAGS = tuple(f"{repo}:{tag}" for repo in REPOS for tag in ("1", "2", "latest"))
image_specs = st.tuples(
    st.integers(0, 40),  # which image (its ID)
    st.sampled_from([7, 100, 200, 300]),  # sizes that tie, so the ID decides the order too
    st.lists(st.sampled_from(TAGS), max_size=3, unique=True),
    st.integers(0, 2),  # containers
    st.none() | st.integers(0, 150),  # shared size (None: not computed)
    st.none() | st.sampled_from([1.7e9, 1.75e9, 1.8e9 + 0.5]),  # last used
)
steps = st.one_of(
    st.tuples(st.just("put"), image_specs),  # an image appears or changes
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("quiet_poll")),  # equal images, new objects, another order
    st.tuples(st.just("disk_usage")),  # the same images tuple, a new snapshot
    st.tuples(st.just("cap"), st.integers(0, 60)),
    st.tuples(st.just("per_image"), st.booleans()),
    st.tuples(st.just("up"), st.booleans()),
)


def spec_image(spec: tuple[Any, ...]) -> Image:
    number, size, tags, containers, shared, last_used = spec
    return replace(
        image(number, size, *tags), containers=containers, shared_size=shared, last_used=last_used, digests=()
    )


@settings(max_examples=80, deadline=None)
@given(
    start=st.lists(image_specs, max_size=25),
    changes=st.lists(st.tuples(steps, st.sampled_from(ACCEPTS), st.booleans()), max_size=30),
)
async def test_incremental_render_equals_a_full_render(
    start: list[tuple[Any, ...]], changes: list[tuple[tuple[Any, ...], str, bool]]
) -> None:
    """Every scrape after any sequence of snapshot changes (events, polls, /system/df, reloads, engine going
    away) is byte for byte what a fresh collector and prometheus_client render for that state, in every
    format, gzip included. Tiny chunks and segments (and forced cuts) so that 40 images span many of them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(table_rows, "CHUNK_ROWS", 3)
        patch.setattr(table_rows, "MAX_CHUNK_ROWS", 4)
        patch.setattr(rendering, "SEGMENT_CHUNKS", 2)
        images = {spec[0]: spec_image(spec) for spec in start}
        poller = FakePoller(snapshot_of(images.values(), 1.0))
        setup = Setup(poller, MetricsConfig(max_image_series=30))
        for n, ((action, *args), accept, gzipped) in enumerate(changes):
            assert poller.snapshot is not None
            if action == "put":
                images[args[0][0]] = spec_image(args[0])
            elif action == "drop":
                images.pop(args[0], None)
            if action in ("put", "drop"):
                poller.snapshot = snapshot_of(images.values(), 2.0 + n)
            elif action == "quiet_poll":
                copies = [replace(i) for i in images.values()]
                poller.snapshot = snapshot_of(reversed(copies), 2.0 + n)
            elif action == "disk_usage":
                poller.snapshot = replace(poller.snapshot, taken_at=2.0 + n)
            elif action == "cap":
                setup.collector.config = setup.collector.config.model_copy(update={"max_image_series": args[0]})
            elif action == "per_image":
                setup.collector.config = setup.collector.config.model_copy(update={"per_image": args[0]})
            else:
                poller.up = args[0]
            response = await setup.scrape(accept, encoding="gzip" if gzipped else "")
            body = gzip.decompress(body_of(response)) if gzipped else body_of(response)
            fresh = Setup(FakePoller(poller.snapshot, poller.up), setup.collector.config)
            assert body == body_of(await fresh.expected(accept))


def snapshot_of(images: Iterable[Image], taken_at: float) -> Snapshot:
    return replace(snapshot(taken_at=taken_at, images=0), images=tuple(images))


@settings(max_examples=40, deadline=None)
@given(
    start=st.lists(st.tuples(blobs, st.lists(refs, max_size=2, unique=True)), max_size=4),
    steps=st.lists(operations, max_size=15),
)
async def test_every_event_applied_change_is_in_the_next_scrape(
    start: list[tuple[str, list[str]]], steps: list[tuple[Any, ...]]
) -> None:
    """Events applied to the snapshot (no re-list), with the app's publish hook rendering ahead: the scrape
    after each event is exactly a fresh full render of the snapshot the event produced, and so is the scrape
    after the reconciling poll."""
    clock = Clock()
    store = ClassicStore(clock)
    for blob, tags in start:
        store.load_image(blob, tags)
    metrics = PollMetrics(CollectorRegistry())  # the exporter's own metrics are not what this test is about
    history = ImageHistory(None)
    poller = Poller(store, parse_config({"filesystem": {"path": "/"}}), history, metrics, clock=clock)
    follower = EventFollower(store, poller, history, metrics)
    registry = CollectorRegistry(auto_describe=True)
    collector = SnapshotCollector(poller.store, MetricsConfig())
    registry.register(collector)
    endpoint = MetricsEndpoint(registry, collector)
    poller.store.subscribe(endpoint.prerender)

    async def check() -> None:
        response = await endpoint.handle(make_mocked_request("GET", "/metrics", headers={"Accept-Encoding": "gzip"}))
        fresh = CollectorRegistry(auto_describe=True)
        fresh.register(SnapshotCollector(FakePoller(poller.store.snapshot, poller.store.up), MetricsConfig()))
        assert gzip.decompress(body_of(response)) == generate_latest(fresh)

    await poller.poll_once()
    await check()
    for name, *args in steps:
        for event in getattr(store, name)(*args):
            await follower.handle(event)
            await check()
    await poller.poll_once()
    await check()


async def test_publishes_that_land_while_a_render_runs_are_rendered_once_after_it_at_the_newest(
    renders: list[tuple[Snapshot | None, bool]],
) -> None:
    """A burst of events publishes every few milliseconds: no render is queued per publish (each for a state
    already gone); once the running one ends, the newest state is rendered, once per format."""
    poller = FakePoller(snapshot(taken_at=1.0))
    setup = Setup(poller)
    await setup.scrape("application/openmetrics-text")
    before = len(renders)
    running: list[asyncio.Future[Any]] = []
    first = snapshot(taken_at=2.0)
    for taken_at in range(2, 12):
        poller.snapshot = first if taken_at == 2 else snapshot(taken_at=float(taken_at))
        running += setup.endpoint.prerender(poller.snapshot)
    assert len(running) == 1  # the first publish's render; the nine after it wait
    await asyncio.gather(*running)
    for _ in range(500):
        if renders[-1][0] is poller.snapshot:
            break
        await asyncio.sleep(0.01)
    assert [state[0] for state in renders[before:]] == [first, poller.snapshot]
    assert "docker_exporter_snapshot_timestamp_seconds 11.0\n" in await setup.text("application/openmetrics-text")
    assert len(renders) == before + 2  # that scrape took the trailing render
