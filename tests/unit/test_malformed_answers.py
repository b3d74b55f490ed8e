"""Malformed engine answers never end polling: the read fails visibly (`docker_up 0`, a counted error, a log line
naming the field), the last good snapshot stays served, and the next good answer brings everything back.

The answers are each recorded engine's real payloads (tests/unit/recorded.py), mutated by hypothesis at any
place: a value of the wrong type, a number no disk holds, a key removed, the whole answer replaced. Some
mutations leave a valid answer (a label value swapped for another string): then the poll succeeds and every
published figure must still be a sane number. Decoding (not JSON, too deep, too large) is the engine facade's
part: tests/unit/test_engine_answers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.core import memory
from exporter.core.logs import _FIELDS_ATTR as FIELDS_ATTR
from exporter.core.snapshot import Snapshot
from exporter.metrics.selfmetrics import POLL_STAGES, PollMetrics
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import TRIM_AFTER_DROP, Poller
from tests.unit.recorded import RECORDED_ENGINES, RecordedEngine, load

Path_ = tuple[str | int, ...]
NOW = 1_800_000_000.0
#: The reads a poll makes (and /system/df), by the name `MutableEngine.replace` knows them.
READS = ("version", "info", "list_images", "list_containers", "inspect_image", "disk_usage")
BAD_VALUES = st.one_of(
    st.sampled_from(
        [
            "yesterday",
            "",
            math.inf,
            -math.inf,
            math.nan,
            10**30,
            -(10**30),
            True,
            [],
            {},
            [[[[["deep"]]]]],
            {"nested": {"object": 1}},
            1.5,
            0,
            None,
        ]
    ),
    st.text(max_size=6),
    st.integers(),
    st.floats(),
)


class MutableEngine(RecordedEngine):
    """A recorded engine whose answer to one read can be replaced (`replace[read]`) until removed."""

    def __init__(self, engine: str) -> None:
        super().__init__(engine)
        self.replace: dict[str, Any] = {}

    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        version, info, api = await super().version_and_info()
        return self.replace.get("version", version), self.replace.get("info", info), api

    async def list_images(self) -> list[dict[str, Any]]:
        return self.replace.get("list_images", await super().list_images())  # type: ignore[no-any-return]

    async def list_containers(self, *, lane: Any = "api") -> list[dict[str, Any]]:
        return self.replace.get("list_containers", await super().list_containers())  # type: ignore[no-any-return]

    async def inspect_image(self, ref: str, *, lane: Any = "api") -> dict[str, Any]:
        answer = await super().inspect_image(ref)
        if answer.get("Id") != self.inspect["Id"]:  # recorded for one image only (see RecordedEngine)
            return answer
        return self.replace.get("inspect_image", answer)  # type: ignore[no-any-return]

    async def disk_usage(self, kinds: Any = ()) -> dict[str, Any]:
        return self.replace.get("disk_usage", await super().disk_usage())  # type: ignore[no-any-return]


def recorded_answer(engine: MutableEngine, read: str) -> Any:
    return {
        "version": load(engine.engine, "version.json"),
        "info": load(engine.engine, "info.json"),
        "list_images": engine.images,
        "list_containers": engine.containers,
        "inspect_image": engine.inspect,
        "disk_usage": engine.df,
    }[read]


def paths(value: Any, at: Path_ = ()) -> Iterator[Path_]:
    """Every place in a JSON value, the whole value first."""
    yield at
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*at, index))


def mutated(value: Any, at: Path_, new: Any, delete: bool) -> Any:
    """A copy of `value` with the place `at` set to `new` (or removed, when it is an object's key)."""
    if not at:
        return new
    out = copy.deepcopy(value)
    parent = out
    for step in at[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[at[-1]]
    else:
        parent[at[-1]] = new
    return out


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def make_poller(engine: MutableEngine, tmp_path: Path) -> tuple[Poller, CollectorRegistry]:
    registry = CollectorRegistry()
    config = parse_config({"filesystem": {"path": str(tmp_path)}})
    return Poller(engine, config, ImageHistory(None), PollMetrics(registry), clock=lambda: NOW), registry


def errors(registry: CollectorRegistry) -> float:
    return sum(registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": s}) or 0 for s in POLL_STAGES)


def summary(snapshot: Snapshot | None) -> Any:
    """What the metrics say of a snapshot (times of arrival and use aside)."""
    assert snapshot is not None
    images = sorted(
        (i.id, i.refs, i.digests, i.created, i.size, i.shared_size, dict(i.labels), i.containers, i.last_tag_time)
        for i in snapshot.images
    )
    return (
        snapshot.engine,
        images,
        sorted(map(repr, snapshot.containers)),
        snapshot.disk_usage,
        snapshot.pending_inspects,
    )


def without_tag_times(summary: Any) -> Any:
    """A `summary` with every image's LastTagTime left out."""
    engine, images, *rest = summary
    return (engine, [image[:-1] for image in images], *rest)


def assert_sane(snapshot: Snapshot | None) -> None:
    """Whatever was published is made of numbers a metric can carry: finite, whole bytes, in range."""
    assert snapshot is not None
    for image in snapshot.images:
        assert type(image.size) is int and 0 <= image.size < 2**63
        assert image.shared_size is None or (type(image.shared_size) is int and 0 <= image.shared_size < 2**63)
        assert type(image.containers) is int and image.containers >= 0
        assert math.isfinite(image.created) and image.created >= 0
        assert image.last_tag_time is None or math.isfinite(image.last_tag_time)
        assert all(type(k) is str and type(v) is str for k, v in image.labels.items())
        assert all(type(r.repository) is str for r in image.refs)
    du = snapshot.disk_usage
    if du is not None:
        for value in (du.layers_size, du.reclaimable, *du.shared_sizes.values()):
            assert value is None or (type(value) is int and 0 <= value < 2**63)


async def clean_summary(engine_name: str, tmp_path: Path) -> Any:
    engine = MutableEngine(engine_name)
    poller, _ = make_poller(engine, tmp_path)
    await poller.poll_once()
    await DiskUsageRefresher(engine, poller, poller.config.poll, poller.metrics, clock=lambda: NOW).refresh_now()
    return summary(poller.store.snapshot)


async def poll_through(engine: MutableEngine, poller: Poller, read: str) -> Any:
    """One refresh of what `read` feeds: a poll, or /system/df (which the poll does not read)."""
    if read == "disk_usage":
        return await DiskUsageRefresher(
            engine, poller, poller.config.poll, poller.metrics, clock=lambda: NOW
        ).refresh_now()
    return await poller.poll_once()


async def malformed_then_good(engine_name: str, read: str, bad: Any, tmp_path: Path) -> None:
    """Bad answer first (no snapshot yet), then good, bad again (a snapshot to keep), good again."""
    expected = await clean_summary(engine_name, tmp_path)
    engine = MutableEngine(engine_name)
    poller, registry = make_poller(engine, tmp_path)
    handler = Records()
    logging.getLogger("exporter").addHandler(handler)
    accepted_inspect = False
    try:
        for rounds in range(2):
            if rounds == 1 or read == "disk_usage":  # /system/df waits for a first snapshot (the engine's identity)
                await poll_through(engine, poller, "list_images")
            engine.replace[read] = bad
            before = errors(registry), poller.store.snapshot
            await poll_through(engine, poller, read)  # never raises
            failed = errors(registry) > before[0]
            if failed:  # visibly: counted, logged with the field, the engine shown down, the old data kept
                assert any("malformed" in r.getMessage() for r in handler.records), [
                    r.getMessage() for r in handler.records
                ]
                if read != "disk_usage":
                    assert not poller.store.up and poller.store.last_error and "malformed" in poller.store.last_error
                if before[1] is not None:
                    assert poller.store.snapshot is not None
            else:  # the mutation left a valid answer: what it says is published, sanely
                assert poller.store.up
                # and an inspect's LastTagTime is kept until the image's tags change (it is not asked again)
                accepted_inspect = read == "inspect_image"
            if poller.store.snapshot is not None:
                assert_sane(poller.store.snapshot)
            del engine.replace[read]
            await poller.poll_once()
            await poll_through(engine, poller, "disk_usage")
            assert poller.store.up and poller.store.last_error is None
            if accepted_inspect:
                assert without_tag_times(summary(poller.store.snapshot)) == without_tag_times(expected)
            else:
                assert summary(poller.store.snapshot) == expected
    finally:
        logging.getLogger("exporter").removeHandler(handler)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_any_malformed_answer_fails_the_read_visibly_and_polling_recovers(tmp_path: Path, data: st.DataObject) -> None:
    engine_name = data.draw(st.sampled_from(RECORDED_ENGINES), label="engine")
    read = data.draw(st.sampled_from(READS), label="read")
    answer = recorded_answer(MutableEngine(engine_name), read)
    at = data.draw(st.sampled_from(list(paths(answer))), label="at")
    bad = mutated(answer, at, data.draw(BAD_VALUES, label="value"), data.draw(st.booleans(), label="delete"))
    asyncio.run(malformed_then_good(engine_name, read, bad, tmp_path))


@pytest.mark.parametrize(
    ("read", "at", "bad", "field"),
    [
        ("list_images", (), {"Id": "sha256:1"}, "/images/json"),
        ("list_images", (0, "Created"), "yesterday", "/images/json[0].Created"),
        ("list_images", (1, "Size"), math.inf, "/images/json[1].Size"),  # what json.loads makes of 1e400
        ("list_images", (0, "Labels"), {"a": [[[[[[]]]]]]}, "/images/json[0].Labels.a"),
        ("list_images", (0, "RepoTags"), "app:1", "/images/json[0].RepoTags"),
        ("list_containers", (0, "ImageID"), 7, "/containers/json[0].ImageID"),
        ("list_containers", (), None, None),  # null: no containers, as the engine says of an empty list
        ("version", ("Components",), "docker", "/version.Components"),
        ("info", ("Driver",), ["overlay2"], "/info.Driver"),
        ("inspect_image", ("Metadata", "LastTagTime"), "last week", "Metadata.LastTagTime"),
    ],
)
async def test_each_malformed_read_names_its_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, read: str, at: Path_, bad: Any, field: str | None
) -> None:
    engine = MutableEngine("bookworm")
    poller, registry = make_poller(engine, tmp_path)
    engine.replace[read] = mutated(recorded_answer(engine, read), at, bad, False)
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        await poller.poll_once()
    if field is None:
        assert poller.store.up and errors(registry) == 0
        return
    assert not poller.store.up and errors(registry) == 1
    [record] = [r for r in caplog.records if "malformed engine answer" in r.getMessage()]
    assert getattr(record, FIELDS_ATTR)["field"].endswith(field)
    assert poller.store.last_error is not None and field in poller.store.last_error
    del engine.replace[read]
    await poller.poll_once()
    assert poller.store.up and poller.store.last_error is None


async def test_a_malformed_system_df_keeps_the_last_figures(tmp_path: Path) -> None:
    engine = MutableEngine("bookworm")
    poller, registry = make_poller(engine, tmp_path)
    await poller.poll_once()
    refresher = DiskUsageRefresher(engine, poller, poller.config.poll, poller.metrics, clock=lambda: NOW)
    assert await refresher.refresh_now() is not None
    good = poller.disk_usage
    engine.replace["disk_usage"] = mutated(engine.df, ("LayersSize",), "lots", False)
    assert await refresher.refresh_now() is None
    assert registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": "disk_usage"}) == 1
    assert poller.disk_usage is good


def recorded_events() -> list[tuple[str, dict[str, Any]]]:
    return [(name, event) for name in RECORDED_ENGINES for event in load(name, "events.json")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_malformed_event_never_stops_the_follower(tmp_path: Path, data: st.DataObject) -> None:
    engine_name, event = data.draw(st.sampled_from(recorded_events()), label="event")
    at = data.draw(st.sampled_from(list(paths(event))), label="at")
    bad = mutated(event, at, data.draw(BAD_VALUES, label="value"), data.draw(st.booleans(), label="delete"))
    asyncio.run(follow_malformed_event(engine_name, bad, tmp_path))


async def follow_malformed_event(engine_name: str, bad: Any, tmp_path: Path) -> None:
    """The follower's own worker takes the bad event, then a good `tag` event, which is still applied."""
    engine = MutableEngine(engine_name)
    poller, _ = make_poller(engine, tmp_path)
    await poller.poll_once()
    follower = EventFollower(engine, poller, poller.history, poller.metrics)
    worker = asyncio.create_task(follower._handle_events())
    image = engine.images[0]["Id"]
    good = {"Type": "image", "Action": "tag", "Actor": {"ID": image, "Attributes": {"name": "again:1"}}, "time": 1}
    follower._queue.put_nowait(bad)
    follower._queue.put_nowait(good)
    follower._queue.put_nowait(None)  # the end of the stream: the worker returns once it has handled the rest
    async with asyncio.timeout(30):
        await worker
    assert poller.history.arrived  # the tag after the bad event was handled: its image arrived


async def test_a_malformed_event_is_counted_and_re_lists(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = MutableEngine("bookworm")
    poller, registry = make_poller(engine, tmp_path)
    await poller.poll_once()
    follower = EventFollower(engine, poller, poller.history, poller.metrics)
    with caplog.at_level(logging.WARNING, logger="exporter.events"):
        await follower.handle_batch([{"Type": "image", "Action": "tag", "Actor": ["not", "an", "object"]}])
    assert registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": "events"}) == 1
    assert any("malformed engine event" in r.getMessage() for r in caplog.records)
    assert poller._wake.is_set()  # a re-list finds out what it changed


async def test_memory_is_handed_back_after_a_failed_poll_and_after_a_listing_shrinks_by_thousands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trims: list[int] = []

    def trim() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(memory, "release_free_memory", trim)
    engine = MutableEngine("bookworm")
    poller, _ = make_poller(engine, tmp_path)
    await poller.poll_once()
    assert trims == []  # an ordinary poll: nothing to hand back
    engine.replace["list_images"] = {"not": "a list"}
    await poller.poll_once()
    assert len(trims) == 1
    phantoms = [{"Id": f"sha256:{i:064x}", "Created": 1, "Size": 1} for i in range(TRIM_AFTER_DROP)]
    engine.replace["list_images"] = engine.images + phantoms
    await poller.poll_once()
    assert poller.store.up and len(trims) == 1
    del engine.replace["list_images"]
    await poller.poll_once()  # the phantoms are gone: thousands of images freed at once
    assert poller.store.up and len(trims) == 2


async def test_an_unforeseen_error_in_a_poll_does_not_end_polling(tmp_path: Path) -> None:
    """Whatever escapes a poll (here a bug's RuntimeError) is logged with its traceback, shown as
    `docker_up 0`, and the loop polls again."""
    engine = MutableEngine("bookworm")
    poller, registry = make_poller(engine, tmp_path)
    poller.config = parse_config({"filesystem": {"path": str(tmp_path)}, "poll": {"debounce": "0s"}})
    list_images = engine.list_images
    failures = 0

    async def failing_once() -> list[dict[str, Any]]:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RuntimeError("a bug")
        return await list_images()

    engine.list_images = failing_once  # type: ignore[method-assign]
    logged = asyncio.Event()

    class Logged(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "poll failed unexpectedly" in record.getMessage() and record.exc_info:
                logged.set()

    handler = Logged()
    logging.getLogger("exporter.poller").addHandler(handler)
    task = asyncio.create_task(poller.run())
    try:
        async with asyncio.timeout(30):
            await logged.wait()
            assert not poller.store.up and poller.store.last_error == "poll: RuntimeError: a bug"
            poller.wake()
            await poller.store.ready.wait()
    finally:
        logging.getLogger("exporter.poller").removeHandler(handler)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert poller.store.up and registry.get_sample_value("docker_exporter_polls_total") == 2


async def test_an_unforeseen_error_handling_events_does_not_end_the_event_worker(tmp_path: Path) -> None:
    engine = MutableEngine("bookworm")
    poller, _ = make_poller(engine, tmp_path)
    await poller.poll_once()
    follower = EventFollower(engine, poller, poller.history, poller.metrics)
    applied: list[object] = []
    first = asyncio.Event()

    async def apply(events: object, deleted: object = ()) -> bool:
        applied.append(events)
        first.set()
        if len(applied) == 1:
            raise RuntimeError("a bug")
        return True

    poller.apply_image_events = apply  # type: ignore[method-assign]
    image = engine.images[0]["Id"]
    tag = {"Type": "image", "Action": "tag", "Actor": {"ID": image, "Attributes": {"name": "again:1"}}, "time": 1}
    worker = asyncio.create_task(follower._handle_events())
    follower._queue.put_nowait(tag)
    async with asyncio.timeout(30):
        await first.wait()  # the first batch, alone, before the second event is queued
    follower._queue.put_nowait(dict(tag, time=2))
    follower._queue.put_nowait(None)
    async with asyncio.timeout(30):
        await worker  # ends at the stream's end, not with the first batch's error
    assert len(applied) == 2 and poller._wake.is_set()


async def test_a_malformed_inspect_keeps_docker_up_0_at_every_publish_until_it_is_answered_properly(
    tmp_path: Path,
) -> None:
    """The listing is fine, so each poll publishes before the inspects run: the engine must not show up for
    that moment while the inspect it needs still answers garbage."""
    engine = MutableEngine("bookworm")
    poller, registry = make_poller(engine, tmp_path)
    published: list[bool] = []
    poller.store.subscribe(lambda _: published.append(poller.store.up))
    engine.replace["inspect_image"] = mutated(engine.inspect, ("Metadata",), "garbage", False)
    await poller.poll_once()
    assert not poller.store.up and poller.store.last_error is not None and "Metadata" in poller.store.last_error
    published.clear()
    await poller.poll_once()
    await poller.poll_once()
    assert published and not any(published)
    assert not poller.store.up and poller.store.last_error is not None and "Metadata" in poller.store.last_error
    assert registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": "images"}) == 3
    del engine.replace["inspect_image"]
    await poller.poll_once()
    assert poller.store.up and poller.store.last_error is None and published[-1] is True
    assert poller.store.snapshot is not None and poller.store.snapshot.pending_inspects == 0
