"""Off-loop work: the switch interval is lowered and the cyclic collector held for exactly as long as such
work runs (nested and overlapping calls included), and both come back as they were found."""

from __future__ import annotations

import asyncio
import gc
import random
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from exporter.core import offloop


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


def test_sorting_in_slices_gives_the_order_of_one_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offloop, "SLICE", 7)
    rng = random.Random(5)
    items = [(rng.random() < 0.5, float(rng.randrange(20)), f"id{n}", n) for n in range(100)]
    assert offloop.sorted_in_slices(list(items)) == sorted(items)
    assert offloop.sorted_in_slices(items[:5]) == sorted(items[:5])


def test_sorting_by_a_number_then_a_field_gives_the_order_of_one_sort(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offloop, "SLICE", 7)
    rng = random.Random(6)
    # few distinct times: runs of equal times, some longer than a slice; inf as for a pending tag time
    items = [(rng.choice([1.0, 2.5, float("inf"), 3]), f"id{rng.randrange(1000)}", n) for n in range(200)]
    assert offloop.sorted_by(list(items), 0, 1) == sorted(items, key=lambda i: (i[0], i[1]))


class Freed:
    """Records the thread it is freed in."""

    threads: list[str] = []

    def __del__(self) -> None:
        Freed.threads.append(threading.current_thread().name)


@dataclass(frozen=True)
class Result:
    items: tuple[Freed, ...]
    few: tuple[Freed, ...]


async def test_results_handed_over_are_freed_in_a_worker_once_nothing_else_refers_to_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(offloop, "FREE_INTERVAL", 0.01)
    monkeypatch.setattr(offloop, "SLICE", 10)
    Freed.threads = []
    outcomes = [Freed() for _ in range(25)]
    plan = Result(tuple(Freed() for _ in range(30)), (Freed(),))
    offloop.free_later(plan, outcomes)
    await asyncio.sleep(0.2)
    assert Freed.threads == [] and offloop.held_for_freeing() == 2  # the caller still refers to both
    del plan, outcomes  # as a run's answer lets go: nothing is freed here, on the loop
    assert Freed.threads == []
    for _ in range(200):
        if len(Freed.threads) == 56:
            break
        await asyncio.sleep(0.01)
    assert Freed.threads == ["offloop-free"] * 56
    assert offloop.held_for_freeing() == 0


async def test_a_dict_handed_over_is_freed_in_a_worker_value_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a planner hands over its large working dicts (by repository, by image) when it returns."""
    monkeypatch.setattr(offloop, "FREE_INTERVAL", 0.01)
    monkeypatch.setattr(offloop, "SLICE", 10)
    Freed.threads = []
    by_id = {n: (Freed(), [Freed()]) for n in range(25)}
    offloop.free_later(by_id)
    del by_id
    for _ in range(200):
        if len(Freed.threads) == 50:
            break
        await asyncio.sleep(0.01)
    assert Freed.threads == ["offloop-free"] * 50
    assert offloop.held_for_freeing() == 0


async def test_results_still_referred_to_are_let_go_after_the_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offloop, "FREE_INTERVAL", 0.01)
    monkeypatch.setattr(offloop, "FREE_PATIENCE", 0.05)
    Freed.threads = []
    kept = [Freed()]
    offloop.free_later(kept)
    for _ in range(100):
        if offloop.held_for_freeing() == 0:
            break
        await asyncio.sleep(0.01)
    assert offloop.held_for_freeing() == 0 and Freed.threads == []
    del kept
    assert Freed.threads == [threading.current_thread().name]  # its last reference went here
