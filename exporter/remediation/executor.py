"""Runs plans: one run per action at a time, up to `in_flight` deletions at once, the bounds kept exactly.

Each candidate goes through the deletion protocol of `deletion` (fresh checks, intent line, DELETEs the
engine cannot misdirect); this module decides which candidates start when, stops before the next one on
shutdown (`stop()`), and collects their outcomes into the run. The audit lines are `runaudit`'s; the
actions that delete no image are in `prunes`.
Reclaimed bytes count only images the engine answered `Deleted: <image id>` for, at their unique size.

Concurrency (why: one image at a time is slower than `docker image prune -a`, which is round trips and
fsyncs, not engine work): up to `in_flight` candidates whose DELETEs no re-tag can redirect (by image ID,
or of a hold and one digest reference) run at once on the engine's `delete` lane, each with its own checks
and intent; their audit lines share fsyncs (GroupCommit). A candidate that needs untags by name runs
alone, so nothing of ours widens that unavoidable window.
`max_deletions` counts deletions in flight, and `free_space` starts no candidate while those in flight
would already meet the goal: the bounds hold exactly as with one at a time. A deletion in flight counts as
freed only for that decision; the goal is met when the data root's statvfs after a returned DELETE says so,
and one refused frees nothing (the next candidates start). So a goal is overshot by at most the last
candidate started, as one at a time would (plus whatever the plan's size estimates were off).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from exporter.config import ActionConfig, BuildCacheAction, FreeSpaceAction, ProtectConfig, PruneContainersAction
from exporter.core import clocks, offloop
from exporter.core.logs import kv
from exporter.core.snapshot import Filesystem
from exporter.engine.seam import EngineSeam
from exporter.remediation import prunes
from exporter.remediation.audit import AuditLog
from exporter.remediation.deletion import STOPPED, Deleter, hold_reference
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Candidate, Plan, goal_met
from exporter.remediation.runaudit import RunAborted, RunAudit
from exporter.remediation.runs import Outcome, Run, outcome_of, would_delete
from exporter.remediation.trash import Trash

__all__ = ["DELETE_IN_FLIGHT", "PLAN_SLACK", "Executor", "RunAborted", "hold_reference"]

#: Seconds a run may start after its plan was made: the span `young_after` looks back for clock steps.
PLAN_SLACK = 300.0
#: Deletions in flight at once. More delete no faster (the engine's own work per DELETE dominates, on the
#: same cores), while their callbacks, ready together on the event loop, hold up the scrapes meanwhile;
#: fewer leave the engine idle between one deletion's round trips.
DELETE_IN_FLIGHT = 4

log = logging.getLogger(__name__)
T = TypeVar("T")


class Executor:
    """Runs plans; `try_begin`/`end` make sure one action has at most one run in progress."""

    def __init__(
        self,
        engine: EngineSeam,
        audit: AuditLog,
        metrics: RemediationMetrics,
        read_filesystem: Callable[[str], Filesystem],
        in_flight: int = DELETE_IN_FLIGHT,
        protect_now: Callable[[], ProtectConfig | None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.lines = RunAudit(audit)
        self.audit_writer = self.lines.writer
        self.in_flight = max(1, in_flight)
        self.metrics = metrics
        self.read_filesystem = read_filesystem
        #: The protections in force now (a reload may add some while a run is in progress).
        self.protect_now = protect_now
        #: Told of each `unknown` outcome of an image DELETE (its line is on disk by then).
        self.on_unknown: Callable[[Run, Candidate, Outcome], None] | None = None
        #: Saves an image with no known registry copy before its first DELETE (None: no trash configured).
        self.trash: Trash | None = None
        self._stopping = False
        self._running: set[str] = set()
        self._deleting = 0  # runs sending DELETEs now (not planning, not dry)

    def stop(self) -> None:
        """Shutdown: runs in progress end before their next candidate, and nothing new starts."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def deleting(self) -> bool:
        """True while a run deletes images (the event follower gathers the events it causes meanwhile)."""
        return self._deleting > 0

    # -- one run per action ----------------------------------------------------------------------------
    def is_running(self, action: str) -> bool:
        return action in self._running

    def try_begin(self, action: str) -> bool:
        """Claim the action (synchronous, so check-and-set cannot interleave on the event loop)."""
        if action in self._running:
            return False
        self._running.add(action)
        self.metrics.running.labels(action).set(1)
        return True

    def end(self, action: str) -> None:
        self._running.discard(action)
        self.metrics.running.labels(action).set(0)

    async def confirm_deleted(self, run: Run, outcome: Outcome, confirmed_by: str) -> None:
        """The `deleted` line of an `unknown` outcome whose image went after its run (same run_id).

        Raises AuditError when the line cannot be written.
        """
        await self.lines.confirmed(run, outcome, confirmed_by)

    def _heard_unknown(self, run: Run, cand: Candidate, outcome: Outcome) -> None:
        if self.on_unknown is not None:
            self.on_unknown(run, cand, outcome)

    # -- running a plan ---------------------------------------------------------------------------------
    async def execute(self, run: Run, plan: Plan, action: ActionConfig) -> None:
        """Carry out `plan` (or only describe it when `run.dry_run`); fills in `run`'s outcome and result."""
        run.plan = plan
        try:
            await self.lines.event(
                run,
                "run_start",
                type=action.type,
                candidates=len(plan.candidates),
                estimated_bytes=plan.estimated_bytes,
                **_selection(plan),
            )
            skips = [outcome_of(skip, "skipped") for skip in plan.skipped]
            if run.dry_run:
                run.outcomes.extend(skips)
            elif skips:
                await self.lines.record_all(run, skips)
            if isinstance(action, BuildCacheAction):
                await prunes.build_cache(self.engine, self.lines, run, action)
            elif isinstance(action, PruneContainersAction):
                await prunes.stopped_containers(
                    self.engine, self.lines, run, action, self.protect_now, lambda: self.stopping
                )
            else:
                await self._images(run, plan, action)
            if run.dry_run:
                await self.lines.dry_run_summary(run)
        except RunAborted as exc:
            run.result = "failure"
            run.detail = str(exc)
            log.error("remediation run failed", extra=kv(run_id=run.run_id, action=run.action, err=exc))
        run.finished_at = time.time()
        if run.result is None:
            run.result = "failure"
        try:
            await self.lines.event(
                run,
                "run_end",
                result=run.result,
                detail=run.detail,
                images_deleted=run.images_deleted,
                reclaimed_bytes=run.reclaimed_bytes,
            )
        except RunAborted as exc:  # the run is over; the log line about it is what failed
            log.error("cannot write the end of the run to the audit log", extra=kv(run_id=run.run_id, err=exc))
            run.result = "failure"
            run.detail = run.detail or str(exc)

    async def _images(self, run: Run, plan: Plan, action: ActionConfig) -> None:
        free_space = isinstance(action, FreeSpaceAction)
        if free_space and plan.filesystem is None:
            raise RunAborted("free_space: the data-root filesystem could not be read")
        if free_space and plan.goal_met:
            run.goal_met = True
            run.result = "dry_run" if run.dry_run else "success"
            run.detail = "goal already met at plan time: nothing to delete"
            return
        if run.dry_run:  # outcomes for every image are built off the loop: no scrape should wait behind them
            outcomes, goal_met = await offloop.off_loop(_described, plan, action)
            run.outcomes.extend(outcomes)
            if goal_met:
                run.goal_met = True
            run.result = "dry_run"
            if free_space and not run.goal_met:
                run.goal_met = False
            return
        self._deleting += 1
        try:
            incomplete = await self._delete_all(run, plan, action)
        finally:
            self._deleting -= 1
        if free_space:
            if not run.goal_met:
                run.goal_met = False
                run.detail = run.detail or "candidates ran out before the goal was met"
            run.result = "success" if run.goal_met else "partial"
            return
        run.result = "partial" if incomplete else "success"

    async def _delete_all(self, run: Run, plan: Plan, action: ActionConfig) -> bool:
        """Up to `in_flight` candidates at once (one alone when it untags by name), bounds kept exactly.

        True when the run left something undone: stopped, max_deletions reached, or a conflict.
        """
        fs = plan.filesystem if isinstance(action, FreeSpaceAction) else None
        # a tag too young for min_age is from the last min_age of real time (plus the time since planning): a
        # forward clock step in that span makes its LastTagTime look older by the step, so allow for it
        young_after = plan.now - action.min_age - clocks.CLOCK.forward_step_within(action.min_age + PLAN_SLACK)
        deleter = Deleter(
            self.engine,
            self.lines,
            run,
            young_after,
            self.protect_now,
            lambda: self.stopping,
            self._heard_unknown,
            self.trash,
        )
        pending = deque(plan.candidates)
        in_flight: dict[asyncio.Task[Outcome | None], Candidate] = {}
        alone = False  # the task in flight untags by name: nothing else runs beside it
        done = 0
        avail = fs.avail if fs else 0
        abort: RunAborted | None = None
        incomplete = False
        try:
            while True:
                while pending and abort is None and not run.goal_met and not alone and len(in_flight) < self.in_flight:
                    if self.stopping:
                        run.detail = "stopped early: the exporter is shutting down"
                        pending.clear()
                        incomplete = True
                        break
                    if done + len(in_flight) >= action.max_deletions:
                        if not in_flight:
                            detail = f"max_deletions {action.max_deletions} reached"
                            await self.lines.record_all(
                                run, [outcome_of(c, "skipped", "max_deletions", detail) for c in pending]
                            )
                            pending.clear()
                            incomplete = True
                        break
                    cand = pending[0]
                    by_name = not cand.removes_image or len(cand.references) > 1
                    if fs is not None:
                        on_the_way = sum(c.size for c in in_flight.values() if c.removes_image)
                        if in_flight and goal_met(action, fs.size, avail + on_the_way):
                            break  # those in flight may be enough: see before deleting more
                    if by_name and in_flight:
                        break
                    pending.popleft()
                    alone = by_name
                    in_flight[asyncio.create_task(self._one(run, deleter, cand))] = cand
                if not in_flight:
                    break
                finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    cand = in_flight.pop(task)
                    alone = False
                    try:
                        outcome = task.result()
                    except RunAborted as exc:
                        abort = abort or exc
                        continue
                    if outcome is None or (self.stopping and outcome.detail == STOPPED):
                        run.detail = "stopped early: the exporter is shutting down"
                        incomplete = True
                    if outcome is None:
                        continue
                    if outcome.result in ("deleted", "untagged"):
                        done += 1
                    if outcome.skip_reason == "conflict":
                        incomplete = True
                    if fs is not None and outcome.result == "deleted" and abort is None:
                        try:
                            run.filesystem_after = await self._read_fs(fs.path)
                        except RunAborted as exc:
                            abort = exc
                            continue
                        avail = run.filesystem_after.avail
                        if goal_met(action, run.filesystem_after.size, avail):
                            run.goal_met = True
        finally:  # cancelled (even repeatedly) or a bug: DELETEs already sent still get their outcome lines
            unwritten = await _despite_cancellation(self._finish(run, set(in_flight)))
        abort = abort or unwritten
        if abort is not None:
            raise abort
        return incomplete

    async def _finish(self, run: Run, in_flight: set[asyncio.Task[Outcome | None]]) -> RunAborted | None:
        """The deletions in flight end, then their outcome lines are on disk; the audit failure, if any."""
        if in_flight:
            await asyncio.wait(in_flight)
        return await self.lines.settle(run)

    async def _one(self, run: Run, deleter: Deleter, cand: Candidate) -> Outcome | None:
        """One candidate start to end: checks, intent, DELETE(s), counts, outcome line (None: stopped first)."""
        outcome = await deleter.delete(cand)
        if outcome is None:
            return None
        if outcome.result == "deleted":  # counted before its line is written: a failing write loses no count
            run.images_deleted += 1
            if cand.size_basis == "unique":
                run.reclaimed_bytes += cand.size
        self.lines.record_soon(run, outcome)
        return outcome

    async def _read_fs(self, path: str) -> Filesystem:
        try:
            return await asyncio.to_thread(self.read_filesystem, path)
        except OSError as exc:
            raise RunAborted(f"cannot statvfs {path}: {exc}") from exc


async def _despite_cancellation(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even if the caller is cancelled meanwhile (then re-raise the cancellation)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


def _selection(plan: Plan) -> dict[str, Any]:
    """The `run_start` fields of an action with `select`: its rules and how many images they left out."""
    if plan.select is None:
        return {}
    return {"select": {**plan.select.describe(), "not_selected": plan.not_selected}}


def _described(plan: Plan, action: ActionConfig) -> tuple[list[Outcome], bool]:
    """Dry run: what would go, in plan order, within max_deletions and (free_space) until the goal; and
    whether the goal is met by then. Pure, so it can run off the event loop."""
    fs = plan.filesystem if isinstance(action, FreeSpaceAction) else None
    projected_avail = fs.avail if fs else 0
    goal = None if fs is None else _goal_avail(action, fs, plan.estimated_bytes)
    outcomes: list[Outcome] = []
    append = outcomes.append
    max_deletions = action.max_deletions
    for index, cand in enumerate(plan.candidates):
        if not index & 63:
            offloop.checkpoint()  # scrapes first (see offloop.py)
        if index >= max_deletions:
            detail = f"max_deletions {max_deletions} reached"
            outcomes.extend(outcome_of(rest, "skipped", "max_deletions", detail) for rest in plan.candidates[index:])
            return outcomes, False
        append(would_delete(cand))
        if fs is not None:
            projected_avail += cand.size if cand.removes_image else 0
            if goal is not None and projected_avail >= goal:
                return outcomes, True
    return outcomes, False


def _goal_avail(action: ActionConfig, fs: Filesystem, most: int) -> int | None:
    """The fewest available bytes, up to `fs.avail + most`, with which `goal_met` says yes (None: not even
    then), found by bisection: a dry run then compares one number per candidate instead of asking `goal_met`.
    Exact because `goal_met` is monotone in the available bytes (each goal is `avail` or `avail / size`
    compared to a bound, and both grow with `avail`)."""
    low, high = fs.avail, fs.avail + most
    if not goal_met(action, fs.size, high):
        return None
    while low < high:
        middle = (low + high) // 2
        if goal_met(action, fs.size, middle):
            high = middle
        else:
            low = middle + 1
    return low
