"""A run's lines in the audit log: its start and end, an `intent` before each DELETE, an `image` line per outcome.

Lines go through one GroupCommit, so lines of DELETEs in flight at once share fsyncs. A deletion's outcome
line is queued without waiting for its own fsync (`record_soon`): lines reach the disk in order, so it is
durable once the next intent is (they usually share that fsync), and `intent` checks that every line queued
before it made it to disk before it lets a DELETE go out; `settle` waits for the last ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from exporter.core import offloop
from exporter.remediation.audit import AuditError, AuditLog, GroupCommit
from exporter.remediation.planner import Candidate
from exporter.remediation.runs import Outcome, Run, tally


class RunAborted(Exception):
    """Stop the run now (engine gone, audit log unwritable, unexpected engine error)."""


class RunAudit:
    """Writes the audit lines of runs; a line that cannot be written ends its run (RunAborted)."""

    def __init__(self, audit: AuditLog) -> None:
        self.writer = GroupCommit(audit)
        self._unsettled: dict[str, list[asyncio.Future[None]]] = {}  # outcome lines queued, per run

    @staticmethod
    def line(run: Run, event: str, **fields: Any) -> dict[str, Any]:
        return {
            "ts": time.time(),
            "event": event,
            "run_id": run.run_id,
            "action": run.action,
            "trigger": run.trigger_ref,
            "dry_run": run.dry_run,
            **fields,
        }

    async def write(self, records: list[dict[str, Any]]) -> None:
        try:
            await self.writer.write_many(records)
        except AuditError as exc:
            raise RunAborted(str(exc)) from exc

    async def event(self, run: Run, event: str, **fields: Any) -> None:
        await self.write([self.line(run, event, **fields)])

    async def record(self, run: Run, outcome: Outcome) -> None:
        await self.record_all(run, [outcome])

    async def record_all(self, run: Run, outcomes: list[Outcome]) -> None:
        """Outcomes join the run first (a failing write loses none), then their lines go in one fsync."""
        run.outcomes.extend(outcomes)
        await self.write([self.line(run, "image", **image_fields(o)) for o in outcomes])

    def record_soon(self, run: Run, outcome: Outcome) -> None:
        """Queue an outcome line without waiting for its fsync (see the module docstring); `settle` checks it."""
        run.outcomes.append(outcome)
        line = self.line(run, "image", **image_fields(outcome))
        self._unsettled.setdefault(run.run_id, []).append(self.writer.submit([line]))

    async def settle(self, run: Run) -> RunAborted | None:
        """Wait until the run's queued outcome lines are on disk; the failure if one could not be written."""
        return await _settled(self._unsettled.pop(run.run_id, []))

    async def intent(self, run: Run, cand: Candidate, target: str, hold: bool = False) -> None:
        """The durable line that says a DELETE is about to be sent; if it cannot be written, nothing is.

        `hold`: `target` is a hold reference about to be added (`POST /images/{id}/tag`) and DELETEd last.
        The outcome lines queued before the intent are on disk with it (lines go in order): checked here, so
        no DELETE follows a line that did not make it. Those queued after it (deletions beside this one that
        end meanwhile) are not waited for: their fsync would hold this DELETE up for nothing.
        """
        fields: dict[str, Any] = {"image_id": cand.image_id, "target": target, "references": list(cand.references)}
        if hold:
            fields["hold"] = True
        earlier = self._unsettled.pop(run.run_id, [])
        try:
            await self.event(run, "intent", **fields)
        except BaseException:
            self._unsettled.setdefault(run.run_id, [])[:0] = earlier  # still the run's, for `settle`
            raise
        unwritten = await _settled(earlier)
        if unwritten is not None:
            raise unwritten

    async def dry_run_summary(self, run: Run) -> None:
        """A dry run deletes nothing, so its audit is one line of counts, not a line per image (counted off
        the event loop: a pass over every outcome)."""
        counts, skipped, would_bytes = await offloop.off_loop(tally, run.outcomes)
        await self.event(
            run, "dry_run_summary", counts=counts, skipped_by_reason=skipped, would_delete_bytes=would_bytes
        )

    async def confirmed(self, run: Run, outcome: Outcome, confirmed_by: str) -> None:
        """The `deleted` line of an `unknown` outcome whose image went after its run (raises AuditError)."""
        line = self.line(run, "image", **image_fields(outcome), confirmed_by=confirmed_by)
        await self.writer.write_many([line])


def image_fields(o: Outcome) -> dict[str, Any]:
    """An outcome's audit line fields (the `image` event)."""
    return {
        "image_id": o.image_id,
        "references": list(o.references),
        "size": o.size,
        "size_basis": o.size_basis,
        "reason": o.reason,
        "result": o.result,
        "skip_reason": o.skip_reason,
        "detail": o.detail,
        "untagged": list(o.untagged),
        "tags": list(o.tags),
        "repo_digests": list(o.repo_digests),
        "created": o.created,
    }


async def _settled(futures: list[asyncio.Future[None]]) -> RunAborted | None:
    """Wait until these queued lines are on disk; the failure if one could not be written."""
    waiting = [f for f in futures if not f.done()]
    if waiting:
        await asyncio.wait(waiting)
    for f in futures:
        if f.cancelled():
            return RunAborted("audit write cancelled")
        if f.exception() is not None:
            return RunAborted(str(f.exception()))
    return None
