"""/system/df results reach the published snapshot through the refresher, on demand and in the background."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.engine import apishapes
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.unit.recorded import RECORDED_ENGINES, RecordedEngine

NOW = 1_800_000_000.0


def make(
    engine: str, tmp_path: Path, **poll: str
) -> tuple[DiskUsageRefresher, Poller, RecordedEngine, CollectorRegistry]:
    recorded = RecordedEngine(engine)
    registry = CollectorRegistry()
    metrics = PollMetrics(registry)
    config = parse_config({"filesystem": {"path": str(tmp_path)}, "poll": dict(poll)})
    poller = Poller(recorded, config, ImageHistory(None), metrics)
    return DiskUsageRefresher(recorded, poller, config.poll, metrics, clock=lambda: NOW), poller, recorded, registry


@pytest.mark.parametrize("engine", RECORDED_ENGINES)
async def test_refresh_now_publishes_disk_usage(tmp_path: Path, engine: str) -> None:
    refresher, poller, recorded, _ = make(engine, tmp_path)
    polled = await poller.poll_once()
    assert polled is not None and polled.engine is not None
    snapshot = await refresher.refresh_now()
    assert snapshot is poller.store.snapshot and snapshot is not None and snapshot is not polled
    assert snapshot.disk_usage == apishapes.parse_disk_usage(recorded.df, NOW, polled.engine)
    if recorded.api >= "1.42":  # the listing had every shared size already: df changes no image
        assert snapshot.images == polled.images
    if engine == "podman":  # LayersSize 0 and SharedSize 0 there: unknown, not zero
        assert snapshot.disk_usage.layers_size is None and snapshot.disk_usage.reclaimable is None
        assert all(i.shared_size is None for i in snapshot.images)
    else:
        assert snapshot.disk_usage.layers_size


async def test_api_1_41_gets_shared_sizes_from_disk_usage(tmp_path: Path) -> None:
    refresher, poller, recorded, _ = make("bookworm", tmp_path)
    polled = await poller.poll_once()
    assert polled is not None and all(i.shared_size is None for i in polled.images)
    snapshot = await refresher.refresh_now()
    assert snapshot is not None
    from_df = {apishapes.normalize_id(i["Id"]): i["SharedSize"] for i in recorded.df["Images"]}
    assert {i.id: i.shared_size for i in snapshot.images} == from_df
    assert all(i.unique_size == i.size - from_df[i.id] for i in snapshot.images)


async def test_a_failed_call_keeps_the_last_figures(tmp_path: Path) -> None:
    refresher, poller, recorded, registry = make("sid", tmp_path)
    await poller.poll_once()
    first = await refresher.refresh_now()
    assert first is not None and first.disk_usage is not None
    recorded.failing = {"disk_usage"}
    assert await refresher.refresh_now() is None
    assert poller.store.snapshot is first and poller.disk_usage is first.disk_usage
    assert registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": "disk_usage"}) == 1


async def test_background_refresh_waits_for_the_first_poll_and_follows_changes(tmp_path: Path) -> None:
    refresher, poller, recorded, _ = make("sid", tmp_path, disk_usage_interval="1h", disk_usage_min_interval="0s")
    df_calls: asyncio.Queue[str] = asyncio.Queue()
    recorded.on_call = lambda call: df_calls.put_nowait(call) if call == "disk_usage" else None
    task = asyncio.create_task(refresher.run())
    try:
        await asyncio.sleep(0)
        assert df_calls.empty()  # no engine identity yet: nothing to parse the answer with
        await poller.poll_once()
        await asyncio.wait_for(df_calls.get(), 10)
        for _ in range(500):  # the answer is parsed in a worker thread after the call, then published
            if poller.store.snapshot is not None and poller.store.snapshot.disk_usage is not None:
                break
            await asyncio.sleep(0.01)
        assert poller.store.snapshot is not None and poller.store.snapshot.disk_usage is not None
        refresher.mark_changed()  # what the poller's on_change does when the set of images changes
        await asyncio.wait_for(df_calls.get(), 10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_failed_background_call_is_retried_soon_not_an_interval_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20.10 refuses a /system/df while another runs (a second exporter, a `docker system df`): with a 1h
    interval the figures stayed absent for an hour; a failure is retried after the minimum spacing."""
    import exporter.state.diskusage

    monkeypatch.setattr(exporter.state.diskusage, "RETRY_SECONDS", 0.01)
    refresher, poller, recorded, registry = make(
        "sid", tmp_path, disk_usage_interval="1h", disk_usage_min_interval="0s"
    )
    assert refresher.retry_delay() == 0.01
    recorded.failing = {"disk_usage"}
    df_calls: asyncio.Queue[str] = asyncio.Queue()
    made: list[str] = []

    def on_call(call: str) -> None:
        if call == "disk_usage":
            made.append(call)
            df_calls.put_nowait(call)
            if len(made) == 2:
                recorded.failing = set()  # the other operation has ended: the second call succeeds

    recorded.on_call = on_call
    await poller.poll_once()
    task = asyncio.create_task(refresher.run())
    try:
        for _ in range(2):
            await asyncio.wait_for(df_calls.get(), 10)
        for _ in range(1000):  # the second call's answer is published right after it returns
            if poller.store.snapshot is not None and poller.store.snapshot.disk_usage is not None:
                break
            await asyncio.sleep(0.01)
        assert poller.store.snapshot is not None and poller.store.snapshot.disk_usage is not None
        assert registry.get_sample_value("docker_exporter_poll_errors_total", {"stage": "disk_usage"}) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_the_retry_delay_is_the_minimum_spacing_within_bounds(tmp_path: Path) -> None:
    refresher, *_ = make("sid", tmp_path, disk_usage_interval="5m", disk_usage_min_interval="30s")
    assert refresher.retry_delay() == 30.0
    refresher, *_ = make("sid", tmp_path, disk_usage_interval="5m", disk_usage_min_interval="0s")
    assert refresher.retry_delay() == exporter_retry_seconds()
    refresher, *_ = make("sid", tmp_path, disk_usage_interval="2s", disk_usage_min_interval="0s")
    assert refresher.retry_delay() == 2.0


def exporter_retry_seconds() -> float:
    from exporter.state.diskusage import RETRY_SECONDS

    return RETRY_SECONDS


async def test_a_refresh_with_the_same_shared_sizes_keeps_the_last_mapping(tmp_path: Path) -> None:
    """An unchanged answer's mapping (a number per image) is dropped with the answer, a changed one replaces it."""
    refresher, poller, recorded, _ = make("bookworm", tmp_path)
    await poller.poll_once()
    first = await refresher.refresh_now()
    second = await refresher.refresh_now()
    assert first is not None and second is not None and first.disk_usage and second.disk_usage
    assert second is not first and second.disk_usage.shared_sizes is first.disk_usage.shared_sizes
    image = recorded.df["Images"][0]
    image["SharedSize"] += 1
    third = await refresher.refresh_now()
    assert third is not None and third.disk_usage is not None
    assert third.disk_usage.shared_sizes[apishapes.normalize_id(image["Id"])] == image["SharedSize"]
    assert third.disk_usage.shared_sizes is not first.disk_usage.shared_sizes


async def test_the_fill_waits_while_a_disk_usage_call_is_in_flight(tmp_path: Path) -> None:
    """A /system/df holds the LastTagTime inspects back for as long as it runs (`Backfill.disk_usage_call`)."""
    refresher, poller, recorded, _ = make("sid", tmp_path)
    await poller.poll_once()
    seen: list[bool] = []
    recorded.on_call = lambda call: (
        seen.append(poller.backfill._disk_usage_idle.is_set()) if call == "disk_usage" else None
    )
    assert await refresher.refresh_now() is not None
    assert seen == [False], "the df ran without holding the fill back"
    assert poller.backfill._disk_usage_idle.is_set(), "and the fill goes on after it"


async def test_the_answer_is_parsed_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`/system/df` lists every image, as long to parse as a poll's listing: not on the loop scrapes need."""
    refresher, poller, _, _ = make("bookworm", tmp_path)
    await poller.poll_once()
    parsed_in: list[threading.Thread] = []
    real = apishapes.parse_disk_usage

    def parse_disk_usage(*raw: Any) -> Any:
        parsed_in.append(threading.current_thread())
        return real(*raw)

    monkeypatch.setattr(apishapes, "parse_disk_usage", parse_disk_usage)
    assert await refresher.refresh_now() is not None
    assert parsed_in and threading.current_thread() not in parsed_in
