"""The store's publish log: which image IDs recent publishes changed, for the render caches."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from exporter.core import gcpolicy
from exporter.core.snapshot import Snapshot
from exporter.state import store as store_module
from exporter.state.store import PublishLog, SnapshotStore
from tests.unit.test_collector import image


def snap(n: float) -> Snapshot:
    return Snapshot(taken_at=n, engine=None)


def test_changes_over_a_span_of_publishes_are_their_union() -> None:
    log = PublishLog()
    first, second, third = snap(1), snap(2), snap(3)
    log.record(first, None)
    log.record(second, {"a"})
    log.record(third, ["b", "c"])
    assert (log.number_of(first), log.number_of(second), log.number_of(third)) == (1, 2, 3)
    assert log.changed_between(1, 3) == frozenset({"a", "b", "c"})
    assert log.changed_between(2, 2) == frozenset()
    assert log.changed_between(0, 3) is None  # the first publish's changes are not known
    assert log.changed_between(3, 1) is None  # backwards: an older snapshot rendered after a newer one


def test_publishes_beyond_those_kept_are_not_known() -> None:
    log = PublishLog()
    kept = store_module.PUBLISHES_KEPT
    snapshots = [snap(n) for n in range(kept + 3)]
    for s in snapshots:
        log.record(s, {"x"})
    assert log.number_of(snapshots[0]) is None and log.number_of(snapshots[-1]) == kept + 3
    assert log.changed_between(1, kept + 3) is None
    assert log.changed_between(4, kept + 3) == frozenset({"x"})


def test_the_store_records_every_publish_and_tells_on_change_only_when_the_ids_move() -> None:
    store = SnapshotStore()
    calls: list[int] = []
    store.on_change.append(lambda: calls.append(store.publishes.number))
    a, b = image("a", 5, "app:1"), image("b", 6, "app:2")
    first = Snapshot(1.0, None, (a,), by_id=MappingProxyType({a.id: a}))
    store.publish(first)  # no previous: unknown changes, the IDs appeared
    retagged = image("a", 5, "app:1", "app:3")
    second = Snapshot(2.0, None, (retagged,), by_id=MappingProxyType({a.id: retagged}))
    store.publish(second, changed={a.id})  # same IDs
    third = Snapshot(3.0, None, (retagged, b), by_id=MappingProxyType({a.id: retagged, b.id: b}))
    store.publish(third, changed={b.id})  # b came
    store.publish(Snapshot(4.0, None, (b,), by_id=MappingProxyType({b.id: b})))  # unknown: compared whole
    assert calls == [1, 3, 4]
    assert store.publishes.changed_between(1, 3) == frozenset({a.id, b.id})


def test_a_poll_publish_freezes_the_long_lived_objects_and_an_event_publish_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a full collection walks every object tracked: a poll's new snapshot is moved out of its reach, while one
    # event's few objects are not worth a collection each
    freezes: list[float] = []
    store = SnapshotStore()
    monkeypatch.setattr(
        gcpolicy, "freeze_long_lived", lambda: freezes.append(store.snapshot.taken_at if store.snapshot else -1)
    )
    store.publish(snap(1))
    store.publish(snap(2), by_events=True, changed=set())
    store.publish(snap(3), changed=set())
    assert freezes == [1, 3]
