"""While a run deletes, the executor says so and the event follower gathers the events its DELETEs cause.

Each DELETE causes an untag and a delete event; every batch of them publishes a snapshot, and a scrape
after a publish waits for its render. So batches gather for DELETING_BATCH_INTERVAL while a run deletes
(BATCH_INTERVAL otherwise); a dry run and the planning before the first DELETE do not count as deleting.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.app import Services
from exporter.config import parse_config
from exporter.core.snapshot import Filesystem
from exporter.remediation.executor import Executor
from exporter.remediation.runs import Run
from exporter.state import events as events_module
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_event_apply import _two_tags_each_watched, burst_in_two_batches
from tests.unit.test_executor import OLD, Harness, act


async def test_the_executor_is_deleting_exactly_while_a_real_run_sends_deletes(tmp_path: Path) -> None:
    engine = FakeEngine()
    for n in range(3):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, read_fs=lambda path: Filesystem(path, 1000, 0))
    seen: list[tuple[str, bool]] = []
    executor: Executor = h.executor
    engine.before = lambda call, _arg: seen.append((call, executor.deleting))
    dry = await h.run(act("prune_unused"), dry_run=True)
    assert dry.result == "dry_run" and not executor.deleting
    run = await h.run(act("prune_unused"))
    assert run.result == "success" and run.images_deleted == 3
    assert [d for call, d in seen if call == "remove_image"] == [True] * 3
    assert not executor.deleting  # over with the run


async def test_a_run_that_fails_mid_way_is_no_longer_deleting(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.add("old0", ("app:0",), arrived=OLD)
    h = Harness(tmp_path, engine)

    def unwritable(call: str, _arg: str) -> None:
        if call == "remove_image":
            h.audit_path.unlink()
            h.audit_path.mkdir()  # the next line cannot be written: the run aborts

    engine.before = unwritable
    run = await h.run(act("prune_unused"))
    assert run.result == "failure"
    assert not h.executor.deleting


@pytest.mark.parametrize("deleting", [True, False])
async def test_while_a_run_deletes_a_burst_gathers_for_the_longer_interval(
    monkeypatch: pytest.MonkeyPatch, deleting: bool
) -> None:
    """The second batch of a burst waits DELETING_BATCH_INTERVAL while deleting, BATCH_INTERVAL otherwise."""
    monkeypatch.setattr(events_module, "BATCH_INTERVAL", 7.0)
    monkeypatch.setattr(events_module, "DELETING_BATCH_INTERVAL", 40.0)
    store, _poller, follower, published = await _two_tags_each_watched()
    follower.deleting = lambda: deleting
    sleeps, _first_alone = await burst_in_two_batches(monkeypatch, store, follower, published)
    assert len(published) == 2 and len(sleeps) == 1
    assert (30.0 < sleeps[0] <= 40.0) if deleting else (0 < sleeps[0] <= 7.0)


async def test_the_app_tells_the_event_follower_while_its_executor_deletes(tmp_path: Path) -> None:
    """`Services` hands the follower the executor's `deleting`: True during a real run's DELETEs only."""
    engine = FakeEngine()
    for n in range(2):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    config = parse_config(
        {
            "filesystem": {"path": str(tmp_path)},
            "state": {"path": str(tmp_path / "state.json")},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": "t0ken-t0ken"},
                "audit_log": str(tmp_path / "audit.jsonl"),
                "actions": {"unused": {"type": "prune_unused", "min_age": "0s"}},
            },
        }
    )
    services = Services(config, None, engine)
    assert services.events is not None and services.remediation is not None
    seen: list[bool] = []
    follower = services.events
    engine.before = lambda call, _arg: seen.append(follower.deleting()) if call == "remove_image" else None
    assert not follower.deleting()
    await services.poller.poll_once()
    run = await services.remediation.run_manual("unused", False)
    assert isinstance(run, Run) and run.images_deleted == 2, run
    assert seen == [True, True] and not follower.deleting()
