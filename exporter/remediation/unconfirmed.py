"""The watch on DELETEs that got no answer: confirm them when the image goes, give up after a while.

A DELETE that got no answer while its image stayed is recorded `unknown`, since the engine may still finish
it. Such images are watched for UNCONFIRMED_WATCH_SECONDS: when a published snapshot no longer has one, a
`deleted` line is written under the same run_id with `confirmed_by` (`event` or `poll`) and counted. The
watch lives in this process only: after a restart the audit keeps `unknown` (docs/remediation.md says how
to read it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from exporter.core.logs import kv
from exporter.core.snapshot import Snapshot
from exporter.remediation.audit import AuditError
from exporter.remediation.executor import Executor
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Candidate
from exporter.remediation.runs import Outcome, Run
from exporter.state.store import SnapshotStore

log = logging.getLogger(__name__)

#: How long an `unknown` DELETE's image is watched: an engine carries out a DELETE whose client gave up as
#: soon as it gets to it; an image that goes much later is more likely someone else's doing than that DELETE's.
UNCONFIRMED_WATCH_SECONDS = 600.0
#: The most `unknown` images watched at once (each run ends at its first one, so this is many runs' worth).
UNCONFIRMED_MAX = 1000
STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Unconfirmed:
    """An image whose DELETE got no answer while it was still there: the engine may still delete it."""

    run: Run
    outcome: Outcome
    candidate: Candidate
    since: float  # monotonic


class UnknownWatch:
    """Hooked to the executor (`watch`) and to every publish of the snapshot store (`on_publish`)."""

    def __init__(
        self,
        executor: Executor,
        store: SnapshotStore,
        metrics: RemediationMetrics,
        history: Iterable[dict[str, Any]],
        monotonic: Callable[[], float],
    ) -> None:
        self.executor = executor
        self.store = store
        self.metrics = metrics
        self.history = history
        self.monotonic = monotonic
        self.watched: dict[str, Unconfirmed] = {}  # image ID -> its unknown outcome
        self.confirming: set[asyncio.Task[None]] = set()

    def watch(self, run: Run, cand: Candidate, outcome: Outcome) -> None:
        """Executor hook: watch an `unknown` DELETE's image until a snapshot shows it gone (or time runs out).

        Only whole-image candidates: an untag of an image that keeps other tags does not make it go.
        """
        if not cand.removes_image or run.dry_run:
            return
        if len(self.watched) >= UNCONFIRMED_MAX:
            oldest = min(self.watched, key=lambda i: self.watched[i].since)
            self._give_up(self.watched.pop(oldest), "too many unconfirmed DELETEs watched")
        # only what its audit line needs: the run itself holds its whole plan (every image) and outcomes
        names = Run(run.action, run.type, run.trigger, run.dry_run, run.fingerprints, run.run_id, run.started_at)
        self.watched[cand.image_id] = Unconfirmed(names, outcome, cand, self.monotonic())
        snapshot = self.store.snapshot
        if snapshot is not None:  # a publish may have shown it gone while its line was written
            self.on_publish(snapshot)

    def on_publish(self, snapshot: Snapshot) -> None:
        """Store hook (every publish): confirm watched images the snapshot no longer has.

        Not once stopping: the audit log closes when the service stops; the `unknown` line stays.
        """
        if not self.watched or self.executor.stopping:
            return
        by = "event" if self.store.publishing_events else "poll"
        now = self.monotonic()
        for image_id, entry in list(self.watched.items()):
            if image_id not in snapshot.by_id:
                del self.watched[image_id]
                task = asyncio.create_task(self._confirm(entry, by, now - entry.since), name=f"confirm-{image_id[:19]}")
                self.confirming.add(task)
                task.add_done_callback(self.confirming.discard)
            elif now - entry.since > UNCONFIRMED_WATCH_SECONDS:
                del self.watched[image_id]
                self._give_up(entry, f"still there after {UNCONFIRMED_WATCH_SECONDS:g}s")

    async def stop(self) -> None:
        """Let confirmations already seen be written (before the audit log closes)."""
        if self.confirming:
            await asyncio.wait(list(self.confirming), timeout=STOP_GRACE_SECONDS)

    def _give_up(self, entry: Unconfirmed, why: str) -> None:
        log.info(
            "no longer watching an image whose DELETE got no answer: its audit line stays `unknown`",
            extra=kv(run_id=entry.run.run_id, action=entry.run.action, image_id=entry.candidate.image_id, why=why),
        )

    async def _confirm(self, entry: Unconfirmed, by: str, after: float) -> None:
        """The `deleted` line (same run_id, `confirmed_by`) and the counts of an image an unknown DELETE took."""
        run, cand = entry.run, entry.candidate
        reclaimed = cand.size if cand.size_basis == "unique" else 0
        self.metrics.images_deleted.labels(run.action).inc()
        self.metrics.reclaimed.labels(run.action).inc(reclaimed)
        for summary in self.history:  # the run's entry in GET /api/v1/actions counts it too
            if summary["run_id"] == run.run_id:
                summary["images_deleted"] += 1
                summary["reclaimed_bytes"] += reclaimed
                summary["confirmed_later"] = summary.get("confirmed_later", 0) + 1
        outcome = Outcome(
            cand.image_id,
            cand.references,
            cand.size,
            cand.size_basis,
            cand.reason,
            "deleted",
            detail=f"its DELETE got no answer; gone {after:.1f}s later (seen by {by})",
            untagged=entry.outcome.untagged,
            tags=cand.known_references,
            repo_digests=cand.repo_digests,
            created=cand.created,
        )
        log.info(
            "a DELETE that got no answer did delete the image",
            extra=kv(run_id=run.run_id, action=run.action, image_id=cand.image_id, confirmed_by=by),
        )
        try:
            await self.executor.confirm_deleted(run, outcome, by)
        except AuditError as exc:
            log.error(
                "cannot write a confirmed deletion to the audit log",
                extra=kv(run_id=run.run_id, image_id=cand.image_id, err=exc),
            )
