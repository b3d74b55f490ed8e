"""GroupCommit: concurrent writers share fsyncs, and each learns whether its own line reached the disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from exporter.remediation.audit import AuditError, AuditLog, GroupCommit
from tests.harness.audit import read_audit
from tests.unit.test_executor import DiskFull


async def test_lines_written_together_share_one_fsync_and_keep_their_order(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    writer = GroupCommit(log)
    await asyncio.gather(*(writer.write({"event": "intent", "n": n}) for n in range(10)))
    await writer.write_many([{"event": "image", "n": 10}, {"event": "image", "n": 11}])
    assert [r["n"] for r in read_audit(log.path)] == list(range(12))
    assert writer.flushes < 11  # the ten concurrent lines did not take ten fsyncs


async def test_every_writer_of_a_failed_flush_gets_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    writer = GroupCommit(log)
    DiskFull(monkeypatch, fail_from=1)
    results = await asyncio.gather(*(writer.write({"n": n}) for n in range(4)), return_exceptions=True)
    assert all(isinstance(r, AuditError) for r in results)
    assert writer.flushes == 0
