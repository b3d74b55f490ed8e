"""Malformed and oversized engine answers, through the real read paths (the SDK's and the lean unix-socket
client) to a private dockerd, with the fault proxy answering chosen requests itself: no engine sends these
on demand. The poll fails visibly (`docker_up 0`, a counted error naming the problem) and recovers with the
engine's next real answer; nothing past `docker.max_response_bytes` is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.engine.client import AnswerTooLarge, Engine, EngineError, EngineUnavailable
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.harness.dockerd import PrivateDockerd, short_workdir
from tests.harness.faultproxy import FaultProxy
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images

pytestmark = pytest.mark.engine

LIMIT = 1 << 20
DEEP = b"[" * 100_000 + b"]" * 100_000


def listing(entries: int) -> bytes:
    """A well-formed listing of `entries` phantom images (about 140 bytes each)."""
    return json.dumps(
        [
            {"Id": f"sha256:{i:064x}", "RepoTags": [f"phantom/{i}:1"], "Created": 1, "Size": 1, "Labels": None}
            for i in range(entries)
        ]
    ).encode()


@contextlib.asynccontextmanager
async def polling(
    dockerd: PrivateDockerd, tmp_path: Path
) -> AsyncIterator[tuple[FaultProxy, Poller, CollectorRegistry]]:
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    load_images(dockerd, [ImageSpec(tags=["answers/app:1"], layers=[Layer.random(4096, "answers")], created=old)])
    with FaultProxy(dockerd.socket, short_workdir("answers-proxy-") / "p.sock") as proxy:
        engine = Engine(proxy.host, timeout=30, max_response_bytes=LIMIT)
        registry = CollectorRegistry()
        config = parse_config({"filesystem": {"path": str(tmp_path)}})
        poller = Poller(engine, config, ImageHistory(None), PollMetrics(registry), clock=lambda: 1_800_000_000.0)
        try:
            yield proxy, poller, registry
        finally:
            engine.close()


def errors(registry: CollectorRegistry, stage: str) -> float | None:
    return registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": stage})


@pytest.mark.parametrize(
    ("body", "chunked", "problem"),
    [
        (b'{"message": "an object, not a list"}', False, "expected a list"),
        (DEEP, True, "nests too deeply"),
        (b"<html>busy</html>", False, "not JSON"),
        (b'[{"Id": "sha256:1", "Created": "yesterday", "Size": 1}]', False, "[0].Created"),
        (b'[{"Id": "sha256:1", "Created": 1, "Size": 1e400}]', True, "[0].Size"),
        (listing(12000), True, "over docker.max_response_bytes"),  # ~1.7 MB, chunked: read up to the limit
        (listing(12000), False, "over docker.max_response_bytes"),  # Content-Length: refused before reading
    ],
)
async def test_a_bad_listing_fails_the_poll_and_the_next_good_one_recovers(
    dockerd: PrivateDockerd, tmp_path: Path, body: bytes, chunked: bool, problem: str
) -> None:
    async with polling(dockerd, tmp_path) as (proxy, poller, registry):
        good = await poller.poll_once()
        assert good is not None and poller.store.up, poller.store.last_error
        bad = proxy.replace("GET", r"^/images/json$", body, chunked=chunked)
        assert await poller.poll_once() is good  # the last good snapshot stays served
        assert bad.served == 1
        assert not poller.store.up and poller.store.last_error is not None and problem in poller.store.last_error
        assert errors(registry, "images") == 1
        proxy.restore(bad)
        again = await poller.poll_once()
        assert poller.store.up and poller.store.last_error is None and again is not None
        assert {i.id for i in again.images} == {i.id for i in good.images}


async def test_an_announced_length_over_the_limit_is_refused_without_waiting_for_it(
    dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    """The proxy announces 10 GB and sends 2 bytes: a reader that trusted the length would wait for the rest
    until `docker.timeout`; this one refuses at once."""
    async with polling(dockerd, tmp_path) as (proxy, poller, _):
        await poller.poll_once()
        proxy.replace("GET", r"^/images/json$", b"[]", length=10**10)
        async with asyncio.timeout(10):
            with pytest.raises(AnswerTooLarge, match=r"10000000000 bytes, over docker.max_response_bytes"):
                await poller.engine.list_images()
        inspect = proxy.replace("GET", r"^/images/.+/json$", b"{}", length=10**10)  # the lean client's read
        async with asyncio.timeout(10):
            with pytest.raises(AnswerTooLarge):
                await poller.engine.inspect_image("answers/app:1")
        proxy.restore(inspect)
        assert (await poller.engine.inspect_image("answers/app:1"))["RepoTags"] == ["answers/app:1"]


@pytest.mark.parametrize(
    ("body", "chunked", "error"),
    [
        (b"[1, 2]", False, "expected an object"),
        (DEEP, True, "nests too deeply"),
        (b"{" + b'"a": "' + b"x" * (2 * LIMIT) + b'"}', True, "over docker.max_response_bytes"),
    ],
)
async def test_a_bad_inspect_is_an_engine_error_on_the_lean_client(
    dockerd: PrivateDockerd, tmp_path: Path, body: bytes, chunked: bool, error: str
) -> None:
    async with polling(dockerd, tmp_path) as (proxy, poller, _):
        bad = proxy.replace("GET", r"^/images/.+/json$", body, chunked=chunked)
        with pytest.raises(EngineError, match=error):
            await poller.engine.inspect_image("answers/app:1")
        proxy.restore(bad)
        assert (await poller.engine.inspect_image("answers/app:1"))["RepoTags"] == ["answers/app:1"]


async def test_bad_version_containers_and_disk_usage_answers_are_engine_errors(
    dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    async with polling(dockerd, tmp_path) as (proxy, poller, registry):
        await poller.poll_once()
        engine = poller.engine
        reads: list[tuple[str, Callable[[], Awaitable[object]], str]] = [
            (r"^/info$", engine.version_and_info, "info"),
            (r"^/containers/json$", engine.list_containers, "containers"),
        ]
        for path, call, stage in reads:
            bad = proxy.replace("GET", path, b'"a string"')
            with pytest.raises(EngineError, match="expected"):
                await call()
            await poller.poll_once()
            assert not poller.store.up and errors(registry, stage) == 1
            proxy.restore(bad)
            await poller.poll_once()
            assert poller.store.up
        bad = proxy.replace("GET", r"^/system/df$", DEEP, chunked=True)
        with pytest.raises(EngineError, match="nests too deeply"):
            await engine.disk_usage()


async def test_a_malformed_event_line_ends_the_stream_as_an_outage(dockerd: PrivateDockerd, tmp_path: Path) -> None:
    """The SDK decodes each event itself: a line nested too deeply must end the stream as a broken one (the
    follower reconnects and re-lists), not escape as a RecursionError that ends the follower task."""
    async with polling(dockerd, tmp_path) as (proxy, poller, _):
        event = {"Type": "image", "Action": "tag", "Actor": {"ID": "sha256:1"}, "time": 1}
        proxy.replace("GET", r"^/events$", json.dumps(event).encode() + b"\n" + DEEP + b"\n", chunked=True)
        seen: list[dict[str, object]] = []
        with pytest.raises(EngineUnavailable, match="event stream broke"):
            await asyncio.wait_for(asyncio.to_thread(poller.engine.follow_events, seen.append), 30)
        assert seen == [event]


def test_the_exporter_reports_refused_listings_keeps_polling_and_recovers(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory
) -> None:
    """The whole process, from its launch read on: a malformed first listing leaves it unready with
    `docker_up 0` while `polls_total` keeps growing; the engine's real answer brings it up; an answer over
    `docker.max_response_bytes` takes it down again, logged with the key and the size, until it is gone."""
    with FaultProxy(dockerd.socket, short_workdir("answers-e2e-") / "p.sock") as proxy:
        bad = proxy.replace("GET", r"^/images/json$", b'{"message": "an object, not a list"}')
        config = {"poll": {"interval": "1s", "debounce": "0s"}, "docker": {"max_response_bytes": "1MiB"}}
        exp = exporter_factory(proxy.host, config, ready=False)

        def images_errors() -> float:
            return exp.sample("docker_exporter_poll_errors_total", {"stage": "images"}) or 0

        exp.wait_for(lambda: exp.sample("docker_up") == 0 and images_errors() >= 1, what="the refused listing")
        polls = exp.sample("docker_exporter_polls_total") or 0
        exp.wait_for(lambda: (exp.sample("docker_exporter_polls_total") or 0) >= polls + 2, what="polling goes on")
        assert images_errors() >= 2
        assert "GET /images/json: expected a list, the engine answered dict" in exp.logs()
        proxy.restore(bad)
        exp.wait_for(lambda: exp.sample("docker_up") == 1, what="recovery")
        exp.wait_ready()

        big = proxy.replace("GET", r"^/images/json$", listing(12000), chunked=True)
        errors_before = images_errors()
        exp.wait_for(lambda: exp.sample("docker_up") == 0 and images_errors() > errors_before, what="too large")
        assert "over docker.max_response_bytes (1048576)" in exp.logs()
        proxy.restore(big)
        exp.wait_for(lambda: exp.sample("docker_up") == 1, what="recovery after the large answer")
