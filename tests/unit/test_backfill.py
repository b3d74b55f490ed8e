"""LastTagTime fill: the inspect order, a failed batch's keys taken again, and how often a fill publishes."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from exporter.core.logs import WarnOnce
from exporter.core.snapshot import ImageRef
from exporter.engine.client import EngineError
from exporter.state import backfill as backfill_module
from exporter.state.backfill import Backfill, TagKey, TagTimes


def keys(n: int) -> list[TagKey]:
    return [(f"sha256:{i:04d}", (ImageRef("r", str(i)),)) for i in range(n)]


class Inspects:
    """Answers inspects with a LastTagTime; raises a 500 at the `fail_at`-th call."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_at = fail_at

    async def inspect_image(self, image_id: str) -> dict[str, Any]:
        self.calls.append(image_id)
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise EngineError("boom", status=500)
        return {"Id": image_id, "Metadata": {"LastTagTime": "2026-01-01T00:00:00Z"}}


class Metrics:
    class _Errors:
        def labels(self, *_: str) -> Any:
            return self

        def inc(self) -> None:
            pass

    errors = _Errors()


class Store:
    def set_error(self, _: str | None) -> None:
        pass

    def set_up(self, _: bool) -> None:
        pass


def backfill(
    tag_times: TagTimes, engine: Inspects, publishes: list[int], learned: list[set[str]] | None = None
) -> Backfill:
    def republish(ids: set[str]) -> None:
        publishes.append(len(tag_times.pending))
        if learned is not None:
            learned.append(set(ids))

    return Backfill(
        cast(Any, engine),
        tag_times,
        cast(Any, Store()),
        cast(Any, Metrics()),
        WarnOnce(logging.getLogger("test")),
        asyncio.Lock(),
        republish,
    )


def test_batches_come_in_key_order_and_skip_what_is_no_longer_pending() -> None:
    times = TagTimes()
    times.relisted(reversed(keys(10)))
    times.learn(keys(10)[1], 1.0)  # an event learned it
    times.forget(keys(10)[2])  # its tags changed
    assert times.next_batch(3) == [keys(10)[0], *keys(10)[3:5]]
    assert times.next_batch(100) == keys(10)[5:]
    assert times.next_batch(100) == [keys(10)[0], *keys(10)[3:]], "taken, not learned: pending, so taken again"


@pytest.mark.parametrize("in_flight", [1, 2, 4])
async def test_a_failed_batch_leaves_its_keys_pending_and_the_next_fill_takes_them(in_flight: int) -> None:
    times = TagTimes()
    times.relisted(keys(6))
    engine = Inspects(fail_at=2)
    published: list[int] = []
    fill = backfill(times, engine, published)
    assert await fill.fill(True, lambda: True, batch=3, publish_interval=0.0, in_flight=in_flight)
    assert len(times.pending) == 5
    engine.fail_at = None
    assert await fill.fill(True, lambda: True, batch=3, publish_interval=0.0, in_flight=in_flight)
    assert not times.pending and sorted(times.times) == keys(6)
    assert engine.calls.count(keys(6)[1][0]) == 2, "the failed one is inspected again"
    assert engine.calls.count(keys(6)[0][0]) == 1, "the one answered before it in key order is not"


@pytest.mark.parametrize(("images", "share"), [(100, 0.1), (1000, 0.1), (1000, 0.25)])
async def test_a_fill_publishes_a_bounded_number_of_times_whatever_the_image_count(images: int, share: float) -> None:
    """Each publish costs time in the number of images: publishing per batch (or per second of a fill that
    lasts longer with more images) made a fill quadratic. With no interval, the share alone spaces them."""
    times = TagTimes()
    times.relisted(keys(images))
    published: list[int] = []
    assert await backfill(times, Inspects(), published).fill(
        True, lambda: True, batch=1, publish_interval=0.0, publish_share=share
    )
    assert published[-1] == 0
    assert len(published) == round(1 / share)
    assert all(a - b >= images * share for a, b in zip([images, *published], published, strict=False))


async def test_each_publish_names_the_images_inspected_since_the_one_before() -> None:
    """The builder merges (and the renders re-render) only the images a fill publish names: each inspected
    image must be named by the publish after its inspect, and by that one only."""
    times = TagTimes()
    times.relisted(keys(40))
    published: list[int] = []
    learned: list[set[str]] = []
    assert await backfill(times, Inspects(), published, learned).fill(
        True, lambda: True, batch=3, publish_interval=0.0, publish_share=0.25
    )
    assert len(learned) == 4 and set().union(*learned) == {key[0] for key in keys(40)}
    assert sum(map(len, learned)) == 40, "no image named twice"


async def test_a_fill_publishes_at_least_once_per_max_staleness() -> None:
    """A share of many images can take long: past `max_staleness` seconds the fill publishes what it has."""
    times = TagTimes()
    times.relisted(keys(12))
    published: list[int] = []
    assert await backfill(times, Inspects(), published).fill(
        True, lambda: True, batch=2, publish_interval=0.0, publish_share=1.0, max_staleness=0.0
    )
    assert published == [10, 8, 6, 4, 2, 0]


async def test_a_fill_waits_for_a_disk_usage_call_in_flight() -> None:
    """The engine answers a /system/df and a stream of inspects slower side by side than one after the other:
    no inspect starts while a df is in flight, and the fill goes on once it ends."""
    times = TagTimes()
    times.relisted(keys(6))
    engine = Inspects()
    fill = backfill(times, engine, [])
    with fill.disk_usage_call():
        task = asyncio.create_task(fill.fill(True, lambda: True, batch=2, publish_interval=0.0))
        for _ in range(20):
            await asyncio.sleep(0)
        assert engine.calls == [] and not task.done()
    assert await asyncio.wait_for(task, 5)
    assert not times.pending and len(engine.calls) == 6


async def test_a_fill_waits_for_a_disk_usage_call_a_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A df can take minutes on a large host: past FILL_DISK_USAGE_WAIT the inspects run beside it."""
    monkeypatch.setattr(backfill_module, "FILL_DISK_USAGE_WAIT", 0.05)
    times = TagTimes()
    times.relisted(keys(6))
    engine = Inspects()
    fill = backfill(times, engine, [])
    with fill.disk_usage_call():
        assert await asyncio.wait_for(fill.fill(True, lambda: True, batch=2, publish_interval=0.0), 5)
        assert not times.pending and len(engine.calls) == 6
