"""The collector policy: holds pause the cyclic collector and nest; a chain of holds never keeps it paused past
MAX_PAUSE_SECONDS without one collection; freezing after a publish collects what just became garbage (cycles
included) and takes what is alive out of later collections' walks."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from exporter.core import gcpolicy


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object cycle nothing else refers to: only the cyclic collector can free it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def collecting(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    monkeypatch.setattr(gcpolicy, "_collections_at_pause", -1)  # whatever chain of holds came before has ended
    yield
    assert gcpolicy.holds() == 0 and not gcpolicy.paused()
    gc.unfreeze()
    if not was:
        gc.disable()


def test_holds_nest_and_the_last_release_resumes_the_collector() -> None:
    gcpolicy.hold()
    gcpolicy.hold()
    assert not gc.isenabled() and gcpolicy.holds() == 2
    gcpolicy.release()
    assert not gc.isenabled()
    gcpolicy.release()
    assert gc.isenabled()


def test_back_to_back_holds_without_a_collection_stop_pausing_it_after_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gcpolicy, "MAX_PAUSE_SECONDS", 0.05)
    ran = [0]  # collections so far, as the policy counts them: none unless the test says so
    monkeypatch.setattr(gcpolicy, "_collections", lambda: ran[0])
    gcpolicy.hold()
    gcpolicy.release()
    gcpolicy.hold()  # the next dry run, at once: the same chain, within the bound
    assert not gc.isenabled()
    gcpolicy.release()
    time.sleep(0.06)
    gcpolicy.hold()  # still no collection since the chain began: this hold leaves the collector running
    assert gc.isenabled() and not gcpolicy.paused() and gcpolicy.holds() == 1
    gcpolicy.release()
    ran[0] += 1  # it ran: the next hold starts a new chain
    gcpolicy.hold()
    assert not gc.isenabled()
    gcpolicy.release()


def test_a_collector_left_running_for_the_gap_starts_a_new_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpolicy, "MAX_PAUSE_SECONDS", 0.05)
    monkeypatch.setattr(gcpolicy, "CHAIN_GAP_SECONDS", 0.1)
    monkeypatch.setattr(gcpolicy, "_collections", lambda: 0)  # as if no collection ever ran
    gcpolicy.hold()
    time.sleep(0.06)
    gcpolicy.release()
    gcpolicy.hold()  # at once: the same chain, past the bound
    assert gc.isenabled()
    gcpolicy.release()
    time.sleep(0.11)
    gcpolicy.hold()  # after the gap: a new chain
    assert not gc.isenabled()
    gcpolicy.release()


def test_holds_that_never_all_end_are_broken_by_the_next_hold_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpolicy, "MAX_PAUSE_SECONDS", 0.05)
    gcpolicy.hold()  # an overlapping run that keeps its hold throughout
    assert not gc.isenabled()
    time.sleep(0.06)
    gcpolicy.hold()
    assert gc.isenabled() and gcpolicy.holds() == 2
    gcpolicy.release()
    gcpolicy.release()
    assert gc.isenabled()


def test_a_collector_found_off_is_left_off() -> None:
    gc.disable()
    try:
        gcpolicy.hold()
        gcpolicy.release()
        assert not gc.isenabled()
        gcpolicy.freeze_long_lived()
        assert gc.get_freeze_count() == 0
    finally:
        gc.enable()


def test_freezing_collects_new_garbage_cycles_and_takes_the_living_out_of_collections() -> None:
    gone = cycle()
    kept = [Node() for _ in range(100)]
    gcpolicy.freeze_long_lived()
    assert gone() is None
    assert gc.get_freeze_count() >= len(kept)
    assert not any(gc.is_tracked(k) and k in gc.get_objects(generation=2) for k in kept[:3])


def test_freezing_is_skipped_while_holds_pause_the_collector() -> None:
    gcpolicy.hold()
    try:
        gcpolicy.freeze_long_lived()
        assert gc.get_freeze_count() == 0
    finally:
        gcpolicy.release()


def test_a_cycle_frozen_by_mistake_is_collected_at_the_next_refreeze(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = cycle()
    gc.disable()  # it must reach the frozen set uncollected, as a cycle that became garbage in gen 2
    gc.freeze()
    gc.enable()
    monkeypatch.setattr(gcpolicy, "REFREEZE_SECONDS", 3600.0)
    gcpolicy.freeze_long_lived()
    assert gone() is not None  # frozen: no collection sees it
    monkeypatch.setattr(gcpolicy, "REFREEZE_SECONDS", 0.0)
    gcpolicy.freeze_long_lived()
    assert gone() is None
