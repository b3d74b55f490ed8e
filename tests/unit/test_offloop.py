"""Off-loop work: the switch interval is lowered and the cyclic collector held for exactly as long as such
work runs (nested and overlapping calls included), and both come back as they were found."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from exporter.remediation import offloop


@pytest.fixture(autouse=True)
def collecting() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    assert offloop.collector_holds() == 0 and offloop.computing() == 0
    if not was:
        gc.disable()


LOWERED: Any = (pytest.approx(offloop.SWITCH_INTERVAL), False)  # the interval is kept in whole microseconds


def seen() -> tuple[float, bool]:
    return sys.getswitchinterval(), gc.isenabled()


async def test_the_interval_is_lowered_and_the_collector_held_while_the_work_runs_then_restored() -> None:
    before = sys.getswitchinterval()
    assert await offloop.off_loop(seen) == LOWERED
    assert seen() == (before, True)


async def test_overlapping_work_restores_only_when_the_last_one_ends() -> None:
    before = sys.getswitchinterval()
    first_in, release_first = threading.Event(), threading.Event()

    def long() -> tuple[float, bool]:
        first_in.set()
        release_first.wait(5)
        return seen()

    first = asyncio.ensure_future(offloop.off_loop(long))
    await asyncio.to_thread(first_in.wait, 5)
    assert await offloop.off_loop(seen) == LOWERED  # the first still runs
    assert seen() == LOWERED
    release_first.set()
    assert await first == LOWERED
    assert seen() == (before, True)


async def test_a_failing_call_restores_both() -> None:
    before = sys.getswitchinterval()

    def fail() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError):
        await offloop.off_loop(fail)
    assert seen() == (before, True)


async def test_a_hold_outlives_the_work_and_a_collector_found_off_stays_off() -> None:
    offloop.hold_collector()
    await offloop.off_loop(seen)
    assert not gc.isenabled()  # still held: the dry run's objects are not freed yet
    offloop.release_collector()
    assert gc.isenabled()
    gc.disable()
    try:
        await offloop.off_loop(seen)
        assert not gc.isenabled()
    finally:
        gc.enable()
