"""The poller turns each recorded engine's answers into a Snapshot, and survives outages stage by stage."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.core.snapshot import EngineInfo
from exporter.engine import apishapes
from exporter.engine.client import EngineUnavailable
from exporter.engine.firstreads import FirstReads
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller, _with_learned
from tests.unit.recorded import RECORDED_ENGINES, RecordedEngine

PollerFactory = Callable[..., tuple[Poller, RecordedEngine, CollectorRegistry]]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_poller(tmp_path: Path) -> PollerFactory:
    def factory(engine: str = "bookworm", fs_path: Path = tmp_path) -> tuple[Poller, RecordedEngine, CollectorRegistry]:
        recorded = RecordedEngine(engine)
        registry = CollectorRegistry()
        config = parse_config({"filesystem": {"path": str(fs_path)}})
        poller = Poller(recorded, config, ImageHistory(None), PollMetrics(registry), clock=Clock())
        return poller, recorded, registry

    return factory


def errors(registry: CollectorRegistry, stage: str) -> float | None:
    return registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": stage})


@pytest.mark.parametrize("engine", RECORDED_ENGINES)
async def test_poll_publishes_what_the_engine_listed(make_poller: PollerFactory, tmp_path: Path, engine: str) -> None:
    poller, recorded, _ = make_poller(engine)
    snapshot = await poller.poll_once()
    assert snapshot is not None and poller.store.up and poller.store.ready.is_set() and poller.store.last_error is None
    assert {i.id for i in snapshot.images} == {apishapes.normalize_id(r["Id"]) for r in recorded.images}
    assert snapshot.by_id.keys() == {i.id for i in snapshot.images}
    used: dict[str, int] = {}
    for c in recorded.containers:
        used[apishapes.normalize_id(c["ImageID"])] = used.get(apishapes.normalize_id(c["ImageID"]), 0) + 1
    assert used and {i.id: i.containers for i in snapshot.images if i.containers} == used
    assert snapshot.engine is not None and snapshot.engine.podman is (engine == "podman")
    assert snapshot.engine.api_version == recorded.api
    assert snapshot.filesystem is not None and snapshot.filesystem.path == str(tmp_path)
    inspected = snapshot.by_id[apishapes.normalize_id(recorded.inspect["Id"])]
    assert inspected.last_tag_time == apishapes.parse_last_tag_time(recorded.inspect)


@pytest.mark.parametrize("engine", RECORDED_ENGINES)
async def test_shared_sizes_known_only_where_the_listing_computes_them(make_poller: PollerFactory, engine: str) -> None:
    poller, recorded, _ = make_poller(engine)
    snapshot = await poller.poll_once()
    assert snapshot is not None
    shared = [i.shared_size for i in snapshot.images]
    if engine == "podman":  # answers 0 for images that share layers: unknown, never a false 0
        assert shared and all(s is None for s in shared)
    elif recorded.api >= "1.42":  # shared-size=1 honoured: known from every poll
        assert all(s is not None for s in shared) and any(s for s in shared)
    else:  # 1.41 leaves -1: unknown until /system/df (tests/unit/test_diskusage.py)
        assert all(s is None for s in shared)


async def test_an_outage_keeps_the_last_snapshot_and_names_the_stage(make_poller: PollerFactory) -> None:
    poller, recorded, registry = make_poller()
    first = await poller.poll_once()
    recorded.failing = {"list_containers"}
    assert await poller.poll_once() is first
    assert not poller.store.up
    assert poller.store.last_error is not None and poller.store.last_error.startswith("containers:")
    assert errors(registry, "containers") == 1 and errors(registry, "images") == 0
    recorded.failing = set()
    second = await poller.poll_once()
    assert poller.store.up and poller.store.last_error is None and second is not first


async def test_the_outage_log_line_says_what_to_do(
    make_poller: PollerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    poller, recorded, _ = make_poller()

    async def denied() -> Any:
        raise EngineUnavailable("('Connection aborted.', PermissionError(13, 'Permission denied'))")

    monkeypatch.setattr(recorded, "version_and_info", denied)
    with caplog.at_level(logging.WARNING, logger="exporter.poller"):
        await poller.poll_once()
    [record] = [r for r in caplog.records if "unreachable or failing" in r.getMessage()]
    fields = getattr(record, "log_fields", {})
    assert "Permission denied" in str(fields["err"]) and "add the user to the docker group" in fields["hint"]


async def test_no_snapshot_while_the_engine_was_never_reached(make_poller: PollerFactory) -> None:
    poller, recorded, registry = make_poller()
    recorded.failing = {"version_and_info"}
    assert await poller.poll_once() is None
    assert not poller.store.up and not poller.store.ready.is_set()
    assert errors(registry, "info") == 1
    assert recorded.calls == ["version_and_info"]  # nothing else is asked of an engine that did not answer


async def test_last_tag_time_is_inspected_once_per_image_and_tag_set(make_poller: PollerFactory) -> None:
    poller, recorded, _ = make_poller()
    await poller.poll_once()
    assert recorded.calls.count("inspect_image") == len(recorded.images)
    recorded.calls.clear()
    await poller.poll_once()
    assert recorded.calls.count("inspect_image") == 0
    tagged = next(r for r in recorded.images if r.get("RepoTags") and r["RepoTags"] != ["<none>:<none>"])
    tagged["RepoTags"] = [*tagged["RepoTags"], "extra:1"]  # a new tag may come with a new LastTagTime
    await poller.poll_once()
    assert recorded.calls.count("inspect_image") == 1


async def test_an_image_deleted_between_list_and_inspect_is_not_an_error(make_poller: PollerFactory) -> None:
    poller, recorded, registry = make_poller()
    gone = apishapes.normalize_id(recorded.inspect["Id"])
    recorded.gone = {gone}
    snapshot = await poller.poll_once()
    assert snapshot is not None and poller.store.up and errors(registry, "images") == 0
    assert snapshot.by_id[gone].last_tag_time is None
    recorded.gone = set()
    snapshot = await poller.poll_once()  # a skipped inspect is not remembered as "no tag time": asked again
    assert snapshot is not None and snapshot.by_id[gone].last_tag_time == apishapes.parse_last_tag_time(
        recorded.inspect
    )


async def test_on_change_fires_when_the_set_of_images_changes(make_poller: PollerFactory) -> None:
    poller, recorded, _ = make_poller()
    changes: list[int] = []
    poller.store.subscribe_changes(
        lambda: changes.append(len(poller.store.snapshot.images if poller.store.snapshot else ()))
    )
    await poller.poll_once()
    await poller.poll_once()
    assert changes == [len(recorded.images)]
    recorded.images.pop()
    await poller.poll_once()
    assert changes == [len(recorded.images) + 1, len(recorded.images)]


async def test_images_appearing_after_the_first_poll_have_arrived(make_poller: PollerFactory) -> None:
    poller, recorded, _ = make_poller()
    late = recorded.images.pop()
    await poller.poll_once()
    # no saved state proves anything present: every image counts as arriving now (min_age waits, never less)
    assert isinstance(poller.clock, Clock)
    first = poller.history.arrived.copy()
    assert first and set(first.values()) == {poller.clock.now}
    recorded.images.append(late)
    poller.clock.now += 60
    await poller.poll_once()
    assert poller.history.arrived == {**first, apishapes.normalize_id(late["Id"]): poller.clock.now}


async def test_a_missing_filesystem_is_reported_but_the_engine_is_up(
    make_poller: PollerFactory, tmp_path: Path
) -> None:
    poller, _, registry = make_poller(fs_path=tmp_path / "not-mounted")
    snapshot = await poller.poll_once()
    assert snapshot is not None and poller.store.up and snapshot.filesystem is None
    assert poller.store.last_error is not None and poller.store.last_error.startswith("filesystem:")
    assert errors(registry, "filesystem") == 1


async def test_the_first_publish_comes_before_the_inspects_and_says_what_is_pending(
    make_poller: PollerFactory,
) -> None:
    """Ready after one listing; LastTagTime fills in behind it: absent (never 0) and counted while unknown."""
    from exporter.metrics.collector import SnapshotCollector

    poller, recorded, _ = make_poller()
    collector = SnapshotCollector(poller.store, parse_config({}).metrics)
    seen: list[tuple[bool, float, list[float]]] = []

    def at_first_inspect(call: str) -> None:
        if call == "inspect_image" and not seen:
            text = {m.name: m for m in collector.collect()}
            pending = text["docker_exporter_pending_inspects"].samples[0].value
            tag_times = [s.value for s in text["docker_image_last_tag_timestamp_seconds"].samples]
            seen.append((poller.store.ready.is_set(), pending, tag_times))

    recorded.on_call = at_first_inspect
    snapshot = await poller.poll_once()
    (ready, pending, tag_times) = seen[0]
    assert ready and pending == len(recorded.images) and tag_times == []
    assert snapshot is not None and snapshot.pending_inspects == 0
    assert not any(i.tag_time_pending for i in snapshot.images)
    inspected = snapshot.by_id[apishapes.normalize_id(recorded.inspect["Id"])]
    assert inspected.last_tag_time == apishapes.parse_last_tag_time(recorded.inspect)


async def test_an_image_whose_tag_time_is_pending_counts_as_young(make_poller: PollerFactory) -> None:
    """Remediation's `min_age` counts from `age_reference`: unknown must not read as old."""
    poller, recorded, registry = make_poller()
    recorded.failing = {"inspect_image"}  # the inspects behind the first publish fail: they stay pending
    snapshot = await poller.poll_once()
    # an inspect that cannot reach the engine is a path to it failing: not up (see test_engine_paths.py)
    assert snapshot is not None and not poller.store.up and errors(registry, "images") == 1
    assert snapshot.pending_inspects == len(snapshot.images) > 0
    assert all(i.tag_time_pending and i.age_reference == math.inf for i in snapshot.images)
    recorded.failing = set()
    snapshot = await poller.poll_once()  # retried by the next poll
    assert snapshot is not None and snapshot.pending_inspects == 0 and poller.store.up
    assert all(i.age_reference < math.inf for i in snapshot.images)


@pytest.mark.parametrize("engine", RECORDED_ENGINES)
async def test_the_first_poll_takes_the_reads_started_before_it(make_poller: PollerFactory, engine: str) -> None:
    """`cli` sends the first reads before the app exists: the first poll uses their answers, asks nothing twice,
    dates the snapshot from when the reads were sent, and reads them as a poll of its own would."""
    plain = await make_poller(engine)[0].poll_once()
    poller, recorded, _ = make_poller(engine)
    reads = await FirstReads.start(recorded, clock=poller.clock)  # the same moment as the plain poll's
    assert recorded.calls == ["list_images", "version_and_info", "list_containers"]  # the long one first
    poller.first_reads = reads
    snapshot = await poller.poll_once()
    assert snapshot is not None and poller.store.up and poller.first_reads is None
    assert recorded.calls.count("list_images") == 1 and recorded.calls.count("version_and_info") == 1
    assert recorded.calls.count("list_containers") == 1
    assert snapshot.taken_at == reads.started_at
    assert plain is not None and snapshot.images == plain.images and snapshot.engine == plain.engine
    # the launcher keeps `reads` for the process's life: the answers (the whole raw listing) are not kept
    assert all(task.cancelled() for task in (reads.images, reads.info, reads.containers))
    await poller.poll_once()  # later polls ask the engine themselves
    assert recorded.calls.count("list_images") == 2


async def test_reads_started_before_an_outage_are_dropped_and_asked_again(make_poller: PollerFactory) -> None:
    poller, recorded, registry = make_poller()
    recorded.failing = {"list_images", "version_and_info", "list_containers"}
    poller.first_reads = await FirstReads.start(recorded)
    assert await poller.poll_once() is None and not poller.store.up
    assert errors(registry, "info") == 1 and poller.first_reads is None  # the stage a poll reads first
    recorded.failing = set()
    snapshot = await poller.poll_once()
    assert snapshot is not None and poller.store.up and recorded.calls.count("list_images") == 2


async def test_an_event_before_the_first_poll_is_not_dropped_when_the_listing_was_taken_ahead(
    make_poller: PollerFactory,
) -> None:
    """Without reads ahead, an event before the first poll is in its listing; with them it may not be."""
    poller, recorded, _ = make_poller()
    assert await poller.apply_image_event([apishapes.normalize_id(recorded.images[0]["Id"])]) is True
    poller.first_reads = await FirstReads.start(recorded)
    applied = await poller.apply_image_event([apishapes.normalize_id(recorded.images[0]["Id"])])
    assert applied is False  # the caller wakes the poller: a listing after the event
    poller.first_reads.discard()


def test_a_published_image_is_the_listed_one_with_the_learned_values() -> None:
    listed = apishapes.parse_images(RecordedEngine("bookworm").images, EngineInfo("24.0", "1.43", "overlay2", "", ""))[
        0
    ]
    learned = _with_learned(listed, (7, 2, 1.5, True, 3.0, 4.0, 5.0))
    assert learned == replace(
        listed,
        shared_size=7,
        containers=2,
        last_tag_time=1.5,
        tag_time_pending=True,
        last_used=3.0,
        arrived=4.0,
        seen_offset=5.0,
    )
    assert listed.shared_size != 7 or listed.containers != 2  # the listed image itself is not changed


@pytest.mark.parametrize(("interval", "fill_publishes"), [(0.0, "one per share"), (3600.0, "one at the end")])
async def test_the_fill_publishes_at_most_once_per_interval_and_always_when_done(
    make_poller: PollerFactory, monkeypatch: pytest.MonkeyPatch, interval: float, fill_publishes: str
) -> None:
    """Each fill publish re-renders rows all over the exposition: throttled (with no interval, once per
    `FILL_PUBLISH_SHARE` of the images), but the last one never withheld."""
    import exporter.state.poller
    from exporter.state.backfill import FILL_PUBLISH_SHARE

    monkeypatch.setattr(exporter.state.poller, "FILL_BATCH", 1)
    monkeypatch.setattr(exporter.state.poller, "FILL_PUBLISH_INTERVAL", interval)
    poller, recorded, _ = make_poller()
    published: list[int] = []
    poller.store.subscribe(lambda snapshot: published.append(snapshot.pending_inspects))
    snapshot = await poller.poll_once()
    assert snapshot is not None and snapshot.pending_inspects == 0
    batches = len({(i["Id"], tuple(sorted(i.get("RepoTags") or []))) for i in recorded.images})
    assert batches > 1, "the recorded engine needs several images for this test"
    fills = published[1:]  # the first publish is the listing's, before any inspect
    assert published[0] == batches and fills[-1] == 0
    if fill_publishes == "one per share":
        step = math.ceil(batches * FILL_PUBLISH_SHARE)
        assert fills == [*range(batches - step, 0, -step), 0]
    else:
        assert fills == [0]


@pytest.mark.parametrize("yields", [0, 1, 2, 3])
async def test_a_wake_at_the_moment_of_stopping_does_not_swallow_the_cancel(
    make_poller: PollerFactory, yields: int
) -> None:
    """Reproduces a shutdown hang (seen on SIGTERM and as a 300 s test teardown): on Python 3.11,
    `asyncio.wait_for` returns the result of an inner wait that finished as the task was cancelled, so a
    `wake()` (the event follower calls it often) right before the stop swallowed the cancel, and the poller
    slept on for a whole poll interval."""
    poller, _, _ = make_poller()
    task = asyncio.create_task(poller.run())
    for _ in range(1000):
        if poller.store.snapshot is not None and not poller._lock.locked():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the first poll's fill is done: the poller waits for the interval or a wake
    poller.wake()
    for _ in range(yields):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=10)
    assert done == {task}, "the poller did not stop"
    assert task.cancelled()


@pytest.mark.parametrize("engine", RECORDED_ENGINES)
async def test_without_filesystem_path_the_engines_own_data_root_is_measured(tmp_path: Path, engine: str) -> None:
    """A relocated or rootless engine is found without configuration: the path is the engine's Docker Root Dir."""
    recorded = RecordedEngine(engine)
    recorded.info = {**recorded.info, "DockerRootDir": str(tmp_path)}
    poller = Poller(recorded, parse_config({}), ImageHistory(None), PollMetrics(CollectorRegistry()), clock=Clock())
    snapshot = await poller.poll_once()
    assert snapshot is not None and snapshot.filesystem is not None
    assert snapshot.filesystem.path == str(tmp_path) and poller.store.last_error is None


async def test_a_data_root_this_process_cannot_see_is_named_with_its_own_hint(tmp_path: Path) -> None:
    """Not "is the engine running?": the engine answered; the error names the path and where it came from."""
    from exporter.engine.hints import engine_error_hint

    recorded = RecordedEngine("bookworm")
    recorded.info = {**recorded.info, "DockerRootDir": str(tmp_path / "host-only")}
    poller = Poller(recorded, parse_config({}), ImageHistory(None), PollMetrics(CollectorRegistry()), clock=Clock())
    await poller.poll_once()
    assert poller.store.up and poller.store.last_error is not None
    assert str(tmp_path / "host-only") in poller.store.last_error and "filesystem.path unset" in poller.store.last_error
    hint = engine_error_hint(poller.store.last_error)
    assert hint is not None and "mount the host's data root" in hint and "socket" not in hint

    configured = Poller(
        recorded,
        parse_config({"filesystem": {"path": str(tmp_path / "typo")}}),
        ImageHistory(None),
        PollMetrics(CollectorRegistry()),
        clock=Clock(),
    )
    await configured.poll_once()
    assert configured.store.last_error is not None
    hint = engine_error_hint(configured.store.last_error)
    assert hint is not None and hint.startswith("filesystem.path must be")


async def test_the_listing_is_parsed_off_the_event_loop(
    make_poller: PollerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large host's listing is long to parse: scrapes on the event loop must not wait behind it at each poll."""
    poller, _, _ = make_poller()
    parsed_in: list[threading.Thread] = []
    real = apishapes.parse_images

    def parse_images(*raw: Any) -> Any:
        parsed_in.append(threading.current_thread())
        return real(*raw)

    monkeypatch.setattr(apishapes, "parse_images", parse_images)
    assert await poller.poll_once() is not None
    assert parsed_in and threading.current_thread() not in parsed_in


async def test_a_failed_poll_is_retried_soon_not_an_interval_later(
    make_poller: PollerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine slow or down at the exporter's start left it unready for a whole `poll.interval` (30 s by
    default, 10 minutes where a large host raises it): after a failure the next poll comes RETRY_SECONDS later."""
    import exporter.state.poller

    monkeypatch.setattr(exporter.state.poller, "RETRY_SECONDS", 0.05)
    poller, recorded, _ = make_poller()
    assert poller.config.poll.interval == 30  # the default: far longer than this test waits
    assert poller.retry_delay() == 0.05
    recorded.failing = {"list_images"}
    task = asyncio.create_task(poller.run())
    try:
        for _ in range(100):
            if poller._attempted:
                break
            await asyncio.sleep(0.01)
        assert poller.store.snapshot is None and not poller.store.up
        recorded.failing = set()  # the engine answers now: the retry, not the interval, brings the first snapshot
        for _ in range(500):
            if poller.store.snapshot is not None:
                break
            await asyncio.sleep(0.01)
        assert poller.store.snapshot is not None and poller.store.up
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
