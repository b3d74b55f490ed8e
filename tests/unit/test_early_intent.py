"""A one-tag image's intent line is written during its re-check, and still durable before its DELETE.

The engine here answers the re-check only once the intent line is on disk (or after a while): written after
the re-check, as for other images, the line would never be there in time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from exporter.engine.seam import Lane
from exporter.remediation.deletion import Deleter
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_executor import OLD, DiskFull, Harness, act


class _RecheckWaitsForTheIntent(FakeEngine):
    """The executor's inspect (the `delete` lane) answers once its image's intent line is in the audit file."""

    def __init__(self) -> None:
        super().__init__()
        self.harness: Harness | None = None
        self.intent_on_disk_at_recheck: list[bool] = []

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        if lane == "delete" and self.harness is not None:
            seen = False
            for _ in range(100):  # up to a second: an fsync on a loaded machine
                seen = any(r["event"] == "intent" and r["image_id"] == ref for r in self.harness.audit())
                if seen:
                    break
                await asyncio.sleep(0.01)
            self.intent_on_disk_at_recheck.append(seen)
        return await super().inspect_image(ref, lane=lane)


@pytest.fixture
def engine() -> _RecheckWaitsForTheIntent:
    return _RecheckWaitsForTheIntent()


async def test_the_intent_is_written_during_the_recheck_and_before_the_delete(
    tmp_path: Path, engine: _RecheckWaitsForTheIntent
) -> None:
    for n in range(3):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, in_flight=2)
    engine.harness = h
    on_disk: list[list[str]] = []
    engine.before = lambda call, arg: (
        on_disk.append([r["target"] for r in h.audit() if r["event"] == "intent"]) if call == "remove_image" else None
    )
    run = await h.run(act("prune_unused"))
    assert run.result == "success" and run.images_deleted == 3
    assert engine.intent_on_disk_at_recheck == [True, True, True]
    removed = [arg for call, arg in engine.calls if call == "remove_image"]
    assert all(target in seen for target, seen in zip(removed, on_disk, strict=True))
    assert [r["event"] for r in h.audit()].count("intent") == 3  # one each: the DELETE used the early line


async def test_a_recheck_that_stops_the_image_leaves_its_intent_with_a_skipped_line_and_no_delete(
    tmp_path: Path, engine: _RecheckWaitsForTheIntent
) -> None:
    old = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    plan = h.plan(act("prune_unused"))
    engine.images[old].tags.add("app:keep")  # tagged again after planning
    run = await h.run(act("prune_unused"), plan=plan)
    assert engine.removals == [] and run.images_deleted == 0
    lines = [(r["event"], r.get("result"), r.get("skip_reason")) for r in h.audit() if r.get("image_id") == old]
    assert lines == [("intent", None, None), ("image", "skipped", "conflict")]


async def test_an_early_intent_that_cannot_be_written_ends_the_run_even_when_the_image_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine()
    old = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    plan = h.plan(act("prune_unused"))
    engine.images[old].tags.add("app:keep")
    DiskFull(monkeypatch, fail_from=2)  # run_start is written, the intent is not
    run = await h.run(act("prune_unused"), plan=plan)
    assert engine.removals == [] and run.result == "failure" and "audit log" in (run.detail or "")


async def test_without_early_intents_the_recheck_comes_first(
    tmp_path: Path, engine: _RecheckWaitsForTheIntent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The switch the benchmark's variants use: the re-check, then the intent (this engine waits in vain)."""
    monkeypatch.setattr(Deleter, "early_intent", False)
    engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    engine.harness = h
    run = await h.run(act("prune_unused"))
    assert run.images_deleted == 1 and engine.intent_on_disk_at_recheck == [False]
