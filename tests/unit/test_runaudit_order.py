"""An intent waits for its own line and the lines queued before it, never for those queued after it.

With deletions in flight together, another deletion's outcome line is often queued while an intent's fsync
runs; waiting for that line's own fsync held each DELETE up by one more fsync for nothing.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from exporter.remediation.audit import AuditError, AuditLog
from exporter.remediation.planner import Candidate
from exporter.remediation.runaudit import RunAborted, RunAudit
from exporter.remediation.runs import Run, outcome_of

CAND = Candidate("sha256:" + "a" * 64, ("app:1",), 100, "unique", "unused")
OTHER = Candidate("sha256:" + "b" * 64, ("app:2",), 100, "unique", "unused")


class GatedLog(AuditLog):
    """Each batch waits for its gate (in the writer thread) and may be made to fail."""

    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        self.gates: list[threading.Event] = []
        self.batches: list[list[str]] = []
        self.fail: set[int] = set()

    def write_many(self, records: list[dict[str, Any]]) -> None:
        index = len(self.batches)
        self.batches.append([str(r["event"]) for r in records])
        gate = threading.Event()
        self.gates.append(gate)
        gate.wait(10)
        if index in self.fail:
            raise AuditError("disk full")
        super().write_many(records)


async def _batches(log: GatedLog, count: int) -> None:
    for _ in range(1000):
        if len(log.batches) >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{count} batches never started: {log.batches}")


async def test_an_intent_does_not_wait_for_lines_queued_after_it(tmp_path: Path) -> None:
    log = GatedLog(tmp_path / "audit.jsonl")
    audit = RunAudit(log)
    run = Run("a", "prune_unused", "manual", False)
    intent = asyncio.create_task(audit.intent(run, CAND, CAND.image_id))
    await _batches(log, 1)  # the intent's fsync is under way ...
    audit.record_soon(run, outcome_of(OTHER, "deleted"))  # ... when another deletion ends
    log.gates[0].set()
    await asyncio.wait_for(intent, 5)  # returned while the outcome line's batch is still held
    await _batches(log, 2)
    assert log.batches == [["intent"], ["image"]] and not log.gates[1].is_set()
    log.gates[1].set()
    assert await audit.settle(run) is None


async def test_an_intent_still_refuses_after_an_earlier_line_that_failed(tmp_path: Path) -> None:
    """The line queued before the intent did not reach the disk: the intent raises, so no DELETE goes."""
    log = GatedLog(tmp_path / "audit.jsonl")
    log.fail = {0}
    audit = RunAudit(log)
    run = Run("a", "prune_unused", "manual", False)
    audit.record_soon(run, outcome_of(OTHER, "deleted"))
    await _batches(log, 1)
    intent = asyncio.create_task(audit.intent(run, CAND, CAND.image_id))
    log.gates[0].set()
    await _batches(log, 2)
    log.gates[1].set()
    with pytest.raises(RunAborted, match="disk full"):
        await asyncio.wait_for(intent, 5)


async def test_an_intent_that_fails_leaves_earlier_lines_to_the_runs_settle(tmp_path: Path) -> None:
    """The earlier line's failure is still the run's to report (`settle` at its end), not lost with the intent."""
    log = GatedLog(tmp_path / "audit.jsonl")
    log.fail = {0, 1}
    audit = RunAudit(log)
    run = Run("a", "prune_unused", "manual", False)
    audit.record_soon(run, outcome_of(OTHER, "deleted"))
    intent = asyncio.create_task(audit.intent(run, CAND, CAND.image_id))
    await _batches(log, 1)
    log.gates[0].set()
    await _batches(log, 2)
    log.gates[1].set()
    with pytest.raises(RunAborted):
        await asyncio.wait_for(intent, 5)
    unwritten = await audit.settle(run)
    assert isinstance(unwritten, RunAborted)
