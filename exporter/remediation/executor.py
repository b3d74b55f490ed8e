"""Follows a Plan: a few DELETEs in flight, never forced, each written down before it is sent.

Safety beyond the plan, because the engine moves while we work:
- a tagged image goes by **image ID** (its extra tags first, by name): with its one remaining tag, the
  engine refuses the ID once the image gained another tag or a container (409 -> skip), and no re-tag can
  redirect a DELETE by ID to a newcomer;
- an image without tags (dangling, or known only by digest) does not: moby deletes by ID an image with at
  most one tag, *with* that tag, so one gained on the way would go too. It gets a hold reference of the
  exporter's own (`docker-image-exporter.hold/<run id>:<short id>`, announced by the intent line), loses
  its digest references by name, and goes with a DELETE of the hold *by name*: the engine deletes the
  image only with its last reference, so a reference gained before that DELETE makes it an untag and
  the image stays (audited as a conflict). Hold references are never the image's tags (`apishapes`
  leaves them out of every listing and inspect); one left by an interrupted run goes with the image;
- every DELETE is preceded by fresh checks (the image gained no tag, an untagged name still names it and
  no container uses it; for the last DELETE the engine's own reference and container checks are that
  last check) and by an fsync'd `intent` audit line; if the intent cannot be written, nothing is deleted
  (nor is a hold added); the outcome line follows the DELETE, counts are updated before it is written;
- an unexpected engine error (dockerd answers 500 "unrecognized image ID" to the loser of two DELETEs
  racing) re-checks the image by ID: gone is recorded as gone (not counted as ours) and the run goes on;
- a deletion's outcome line is queued without waiting for its own fsync: lines reach the disk in order,
  so it is durable once the next intent is (they usually share that fsync), and before the next DELETE
  goes out every queued line is known to be on disk, or the run ends; the run waits for the last ones;
- a DELETE without an answer (timeout) is ambiguous: the image is looked up by ID (gone = deleted; still
  there = `unknown`, since the engine may still finish the DELETE), the finding is recorded, `on_unknown`
  hears of an `unknown` one (the service watches for it to go) and the run ends;
- untagging by name has a window the engine cannot close (a re-tag between our inspect and the DELETE):
  the answer is checked, and an image the engine deleted instead is audited under its own ID;
- protections only grow mid-run: every re-check before a DELETE also applies the protections in force
  now (`protect_now`, the reloaded config's), on top of the run's own that the plan applied;
- `stop()` (shutdown) ends the run before the next candidate and before the next untag of a many-tag
  image (each untag is a few round trips and an fsync: thousands of tags take minutes).
Reclaimed bytes count only images the engine answered `Deleted: <image id>` for, at their unique size.

Concurrency (why: one image at a time is slower than `docker image prune -a`, which is round trips and
fsyncs, not engine work): up to `in_flight` candidates whose DELETEs no re-tag can redirect (by image ID,
or of a hold and one digest reference) run at once on the engine's `delete` lane, each with its own checks
and intent; their audit lines share fsyncs (GroupCommit). A candidate that needs untags by name runs
alone, so nothing of ours widens that unavoidable window.
`max_deletions` counts deletions in flight, and `free_space` starts no candidate while those in flight
would already meet the goal: the bounds hold exactly as with one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from exporter import clocks
from exporter.config import ActionConfig, BuildCacheAction, FreeSpaceAction, ProtectConfig, PruneContainersAction
from exporter.engine import apishapes
from exporter.engine.apishapes import HOLD_REPOSITORY, normalize_id
from exporter.engine.apishapes import is_hold_reference as is_hold
from exporter.engine.client import (
    DELETE_LANE_THREADS,
    Engine,
    EngineConflict,
    EngineError,
    EngineNotFound,
    EngineUnavailable,
)
from exporter.logs import kv
from exporter.remediation import containers, crideletion
from exporter.remediation.audit import AuditError, AuditLog, GroupCommit
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Candidate, Plan, Skip, SkipReason, goal_met
from exporter.remediation.runs import Outcome, OutcomeKind, Run
from exporter.snapshot import Filesystem

#: Seconds a run may start after its plan was made: the span `young_after` looks back for clock steps.
PLAN_SLACK = 300.0

log = logging.getLogger(__name__)
T = TypeVar("T")

STOPPED = "stopped part-way: the exporter is shutting down"


class RunAborted(Exception):
    """Stop the run now (engine gone, audit log unwritable, unexpected engine error)."""


class Executor:
    """Runs plans; `try_begin`/`end` make sure one action has at most one run in progress."""

    def __init__(
        self,
        engine: Engine,
        audit: AuditLog,
        metrics: RemediationMetrics,
        read_filesystem: Callable[[str], Filesystem],
        in_flight: int = DELETE_LANE_THREADS,
        protect_now: Callable[[], ProtectConfig | None] = lambda: None,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.audit_writer = GroupCommit(audit)
        self.in_flight = max(1, in_flight)
        self.metrics = metrics
        self.read_filesystem = read_filesystem
        #: The protections in force now (a reload may add some while a run is in progress).
        self.protect_now = protect_now
        #: Told of each `unknown` outcome of an image DELETE (its line is on disk by then).
        self.on_unknown: Callable[[Run, Candidate, Outcome], None] | None = None
        self._stopping = False
        self._running: set[str] = set()
        self._unsettled: dict[str, list[asyncio.Future[None]]] = {}  # outcome lines queued, per run

    def stop(self) -> None:
        """Shutdown: runs in progress end before their next candidate, and nothing new starts."""
        self._stopping = True

    @property
    def stopping(self) -> bool:
        return self._stopping

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

    # -- audit -------------------------------------------------------------------------------------------
    @staticmethod
    def _line(run: Run, event: str, **fields: Any) -> dict[str, Any]:
        return {
            "ts": time.time(),
            "event": event,
            "run_id": run.run_id,
            "action": run.action,
            "trigger": run.trigger_ref,
            "dry_run": run.dry_run,
            **fields,
        }

    async def _write(self, records: list[dict[str, Any]]) -> None:
        try:
            await self.audit_writer.write_many(records)
        except AuditError as exc:
            raise RunAborted(str(exc)) from exc

    async def _audit(self, run: Run, event: str, **fields: Any) -> None:
        await self._write([self._line(run, event, **fields)])

    async def _record(self, run: Run, outcome: Outcome) -> None:
        await self._record_all(run, [outcome])

    async def _record_all(self, run: Run, outcomes: list[Outcome]) -> None:
        """Outcomes join the run first (a failing write loses none), then their lines go in one fsync."""
        run.outcomes.extend(outcomes)
        await self._write([self._line(run, "image", **_image_fields(o)) for o in outcomes])

    def _record_soon(self, run: Run, outcome: Outcome) -> None:
        """Queue an outcome line without waiting for its fsync (see the module docstring); `_settle` checks it."""
        run.outcomes.append(outcome)
        line = self._line(run, "image", **_image_fields(outcome))
        self._unsettled.setdefault(run.run_id, []).append(self.audit_writer.submit([line]))

    async def _settle(self, run: Run) -> RunAborted | None:
        """Wait until the run's queued outcome lines are on disk; the failure if one could not be written."""
        futures = self._unsettled.pop(run.run_id, [])
        waiting = [f for f in futures if not f.done()]
        if waiting:
            await asyncio.wait(waiting)
        for f in futures:
            if f.cancelled():
                return RunAborted("audit write cancelled")
            if f.exception() is not None:
                return RunAborted(str(f.exception()))
        return None

    async def _dry_run_summary(self, run: Run) -> None:
        """A dry run deletes nothing, so its audit is one line of counts, not a line per image."""
        counts: dict[str, int] = {}
        skipped: dict[str, int] = {}
        would_bytes = 0
        for o in run.outcomes:
            counts[o.result] = counts.get(o.result, 0) + 1
            if o.result == "skipped":
                skipped[o.skip_reason or "error"] = skipped.get(o.skip_reason or "error", 0) + 1
            if o.result == "would_delete":
                would_bytes += o.size
        await self._audit(
            run, "dry_run_summary", counts=counts, skipped_by_reason=skipped, would_delete_bytes=would_bytes
        )

    # -- running a plan ---------------------------------------------------------------------------------
    async def execute(self, run: Run, plan: Plan, action: ActionConfig) -> None:
        """Carry out `plan` (or only describe it when `run.dry_run`); fills in `run`'s outcome and result."""
        run.plan = plan
        try:
            await self._audit(
                run,
                "run_start",
                type=action.type,
                candidates=len(plan.candidates),
                estimated_bytes=plan.estimated_bytes,
                **_selection(plan),
            )
            skips = [_outcome(skip, "skipped") for skip in plan.skipped]
            if run.dry_run:
                run.outcomes.extend(skips)
            elif skips:
                await self._record_all(run, skips)
            if isinstance(action, BuildCacheAction):
                await self._build_cache(run, action)
            elif isinstance(action, PruneContainersAction):
                await self._containers(run, action)
            else:
                await self._images(run, plan, action)
            if run.dry_run:
                await self._dry_run_summary(run)
        except RunAborted as exc:
            run.result = "failure"
            run.detail = str(exc)
            log.error("remediation run failed", extra=kv(run_id=run.run_id, action=run.action, err=exc))
        run.finished_at = time.time()
        if run.result is None:
            run.result = "failure"
        try:
            await self._audit(
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

    async def _build_cache(self, run: Run, action: BuildCacheAction) -> None:
        filters = {"until": f"{int(action.min_age)}s"} if action.min_age > 0 else {}
        reason = f"build cache older than {int(action.min_age)}s, keep-storage {action.keep_storage}"
        if run.dry_run:
            run.outcomes.append(Outcome(None, (), 0, "total", reason, "would_delete", detail="build cache"))
            run.result = "dry_run"
            return
        try:
            answer = await self.engine.prune_builds(action.keep_storage or None, filters)
        except EngineNotFound as exc:
            # Podman 4.3 has no build-cache endpoint: say so plainly instead of "unexpected engine error".
            raise RunAborted(
                f"build_cache is not supported by this engine: POST /build/prune answered 404 ({exc}); "
                "nothing was pruned (on Podman, build layers are images: use prune_dangling)"
            ) from exc
        except EngineError as exc:
            raise RunAborted(f"POST /build/prune failed: {exc}") from exc
        reclaimed = int(answer.get("SpaceReclaimed") or 0)
        deleted = answer.get("CachesDeleted") or []
        run.reclaimed_bytes = reclaimed
        await self._record(
            run,
            Outcome(None, (), reclaimed, "total", reason, "deleted", detail=f"{len(deleted)} build cache records"),
        )
        run.result = "success"

    async def _containers(self, run: Run, action: PruneContainersAction) -> None:
        """prune_containers: select from a fresh inspect of each stopped container, then remove (see containers)."""
        try:
            listed = apishapes.parse_containers(await self.engine.list_containers(lane="delete"))
            stopped: list[containers.StoppedContainer] = []
            for c in listed:
                if c.state in containers.PRUNABLE_STATES:
                    try:
                        stopped.append(containers.parse_inspect(await self.engine.inspect_container_now(c.id)))
                    except EngineNotFound:
                        continue  # removed since the listing: nothing to do
        except EngineError as exc:
            raise RunAborted(f"cannot read the containers: {exc}") from exc

        def protect_now() -> ProtectConfig:
            return self.protect_now() or ProtectConfig()

        plan = containers.select(
            stopped, min_age=action.min_age, max_deletions=action.max_deletions, protect=protect_now(), now=time.time()
        )
        await self._container_outcomes(
            run, [containers.skipped(c, reason, detail) for c, reason, detail in plan.skipped]
        )

        async def audit(event: str, fields: dict[str, Any]) -> None:
            await self._audit(run, event, **fields)

        try:
            done = await containers.remove(
                self.engine,
                plan,
                audit=audit,
                protect_now=protect_now,
                dry_run=run.dry_run,
                stopping=lambda: self.stopping,
            )
        except containers.RemovalAborted as exc:
            await self._container_outcomes(run, exc.done)
            raise RunAborted(str(exc)) from exc
        await self._container_outcomes(run, done)
        if run.dry_run:
            run.result = "dry_run"
        elif self.stopping and len(done) < len(plan.candidates):
            run.result = "partial"
            run.detail = "stopped: the exporter is shutting down"
        else:
            run.result = "success"

    async def _container_outcomes(self, run: Run, done: list[containers.ContainerOutcome]) -> None:
        """Outcomes join the run; a real run writes their `container` lines (a dry run only its summary)."""
        run.outcomes.extend(_from_container(o) for o in done)
        if not run.dry_run and done:
            await self._write([self._line(run, "container", **containers.audit_fields(o)) for o in done])

    async def _images(self, run: Run, plan: Plan, action: ActionConfig) -> None:
        free_space = isinstance(action, FreeSpaceAction)
        if free_space and plan.filesystem is None:
            raise RunAborted("free_space: the data-root filesystem could not be read")
        if free_space and plan.goal_met:
            run.goal_met = True
            run.result = "dry_run" if run.dry_run else "success"
            run.detail = "goal already met at plan time: nothing to delete"
            return
        if run.dry_run:  # outcomes for every image are built in a worker thread: no scrape should wait behind them
            outcomes, goal_met = await asyncio.to_thread(_described, plan, action)
            run.outcomes.extend(outcomes)
            if goal_met:
                run.goal_met = True
            run.result = "dry_run"
            if free_space and not run.goal_met:
                run.goal_met = False
            return
        incomplete = await self._delete_all(run, plan, action)
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
                            await self._record_all(
                                run, [_outcome(c, "skipped", "max_deletions", detail) for c in pending]
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
                    in_flight[asyncio.create_task(self._one(run, cand, young_after))] = cand
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
        return await self._settle(run)

    async def _one(self, run: Run, cand: Candidate, young_after: float) -> Outcome | None:
        """One candidate start to end: checks, intent, DELETE(s), counts, outcome line (None: stopped first)."""
        outcome = await self._delete(run, cand, young_after)
        if outcome is None:
            return None
        if outcome.result == "deleted":  # counted before its line is written: a failing write loses no count
            run.images_deleted += 1
            if cand.size_basis == "unique":
                run.reclaimed_bytes += cand.size
        self._record_soon(run, outcome)
        return outcome

    async def _read_fs(self, path: str) -> Filesystem:
        try:
            return await asyncio.to_thread(self.read_filesystem, path)
        except OSError as exc:
            raise RunAborted(f"cannot statvfs {path}: {exc}") from exc

    # -- deleting one candidate ---------------------------------------------------------------------------
    async def _delete(self, run: Run, cand: Candidate, young_after: float) -> Outcome | None:
        """Delete one candidate; every DELETE is preceded by a fsync'd intent line and fresh checks.

        `young_after`: a tag set after this time (the plan's `now` minus min_age and a recent forward clock step)
        makes the image too young.
        """
        steps = _Steps(cand, young_after, self.protect_now)
        try:
            if isinstance(self.engine, crideletion.CriRemoval):  # a CRI runtime protects nothing itself
                intent = lambda: self._intent(run, cand, cand.image_id)  # noqa: E731
                result, reason, detail = await crideletion.remove(self.engine, cand, steps.changed, intent)
                return _outcome(cand, result, reason, detail)
            if cand.removes_image:
                return await self._delete_image(run, cand, steps)
            return await self._untag_only(run, cand, steps)
        except EngineUnavailable as exc:
            raise RunAborted(f"engine unreachable: {exc}") from exc
        except EngineError as exc:
            raise RunAborted(f"engine error on {cand.image_id}: {exc}") from exc

    async def _delete_image(self, run: Run, cand: Candidate, steps: _Steps) -> Outcome | None:
        """The whole image goes: extra tags are untagged by name, the last reference goes conditionally.

        A tagged image's last DELETE is by image ID: the engine refuses it (409) once the image has a
        second tag or a container, and whatever a tag points to next is never touched. So containers are
        not listed first here (a round trip per image, and the 409 is the guard anyway: it becomes
        `in_use`); each untag by name, which the engine would not refuse, lists them right before its
        DELETE. An image without tags (dangling, or known only by digest) goes through a hold reference
        instead (`_delete_held`): a DELETE by ID would take a tag it gained on the way.
        """
        try:
            current = await self.engine.inspect_image(cand.image_id, lane="delete")
        except EngineNotFound as exc:
            return _outcome(cand, "skipped", "not_found", f"404 from the engine: {exc}")
        problem = steps.changed(current)
        if problem is not None:
            return _outcome(cand, "skipped", *problem)
        tags = _tags(current)
        holds = sorted(_holds(current))
        if not tags:
            return await self._delete_held(run, cand, steps, _digests(current), holds)
        for ref in sorted(tags)[:-1]:  # more than one tag: all but the last go by name, checked each time
            if self.stopping:
                return steps.stopped()
            problem = await self._untag(run, cand, ref, steps)
            if problem is not None:
                return steps.outcome(*problem)
            if steps.gone:  # its other tags went elsewhere meanwhile: that untag was the last reference
                return _outcome(cand, "deleted", untagged=steps.untagged)
        for hold in holds:  # left by an interrupted run: with it, the DELETE by ID would meet two tags
            problem = await self._drop_ref(run, cand, hold, steps)
            if problem is not None:
                return steps.outcome(*problem)
            if steps.gone:
                return _outcome(cand, "deleted", untagged=steps.untagged)
        return await self._delete_by_id(run, cand, steps)

    async def _delete_by_id(self, run: Run, cand: Candidate, steps: _Steps) -> Outcome:
        await self._intent(run, cand, cand.image_id)
        try:
            answer = await self.engine.remove_image(cand.image_id)
        except EngineConflict as exc:
            return steps.outcome("in_use" if _in_use(exc) else "conflict", f"409 from the engine: {exc}")
        except EngineNotFound as exc:
            return steps.outcome("not_found", f"404 from the engine: {exc}")
        except EngineUnavailable as exc:
            await self._ambiguous(run, cand, steps, exc)
        except EngineError as exc:
            return await self._gone_or_raise(cand, steps, cand.image_id, exc)
        steps.untagged.extend(str(e["Untagged"]) for e in answer if isinstance(e, dict) and e.get("Untagged"))
        if _deleted(answer, cand.image_id):
            return _outcome(cand, "deleted", untagged=steps.untagged)
        return steps.outcome("conflict", f"the engine did not delete the image: {answer!r}")

    async def _delete_held(
        self, run: Run, cand: Candidate, steps: _Steps, digests: list[str], holds: list[str]
    ) -> Outcome:
        """An image without tags: give it a reference of our own, drop its others, then DELETE ours by name.

        The engine has no conditional delete, but its reference counting is one: a DELETE by name removes
        the image only with its last reference, so a tag (or digest) someone adds before that DELETE
        reaches the engine makes it an untag and the image stays. A DELETE by ID would instead take the
        image together with one newly gained tag (moby removes every reference when there is at most one
        tag, all in one repository). The hold's repository is unique to the run and the image, so no one
        else moves it, and moby's clean-up of digest references within the untagged repository touches
        nothing else. Digest references are content-addressed (no re-tag redirects them) and, with the
        hold in place, removing them by name only untags.
        """
        repository, tag = hold_reference(run.run_id, cand.image_id)
        hold = f"{repository}:{tag}"
        await self._intent(run, cand, hold, hold=True)
        try:
            await self.engine.tag_image(cand.image_id, repository, tag)
        except EngineNotFound as exc:
            return steps.outcome("not_found", f"404 from the engine: {exc}")
        except EngineUnavailable as exc:  # nothing was deleted: whether the hold exists is for the next run
            raise RunAborted(f"engine unreachable while adding the hold reference {hold}: {exc}") from exc
        except EngineError as exc:
            return await self._gone_or_raise(cand, steps, hold, exc)
        for ref in [*digests, *holds]:  # a few at most: no stop check, the hold would stay behind
            problem = await self._drop_ref(run, cand, ref, steps)
            if problem is not None:
                return steps.outcome(*problem)
            if steps.gone:  # the hold went meanwhile (someone removed it): that was the last reference
                return _outcome(cand, "deleted", untagged=steps.untagged)
        try:  # the hold intent line announced this DELETE too
            answer = await self.engine.remove_image(hold)
        except EngineConflict as exc:  # a container came: the hold stays its name (only force removes it)
            reason: SkipReason = "in_use" if _in_use(exc) else "conflict"
            return steps.outcome(reason, f"409 from the engine: {exc}; {hold} stays on the image")
        except EngineNotFound as exc:
            return steps.outcome("not_found", f"404 from the engine for {hold}: {exc}")
        except EngineUnavailable as exc:
            await self._ambiguous(run, cand, steps, exc, hold)
        except EngineError as exc:
            return await self._gone_or_raise(cand, steps, hold, exc)
        steps.untagged.extend(r for r in _untagged(answer) if not is_hold(r))
        if _deleted(answer, cand.image_id):
            return _outcome(cand, "deleted", untagged=steps.untagged)
        gained = await self._references_now(cand.image_id)
        detail = f"gained a reference during its DELETE ({gained}): the engine removed only {hold}; the image stays"
        return steps.outcome("conflict", detail)

    async def _drop_ref(self, run: Run, cand: Candidate, ref: str, steps: _Steps) -> tuple[SkipReason, str] | None:
        """Untag a reference no one can move (a digest, a hold) while a hold keeps the image: no re-check."""
        await self._intent(run, cand, ref)
        try:
            answer = await self.engine.remove_image(ref)
        except EngineNotFound:
            if not is_hold(ref):
                steps.missing.append(ref)
            return None
        except EngineConflict as exc:
            return "conflict", f"409 from the engine on {ref}: {exc}"
        except EngineUnavailable as exc:
            await self._ambiguous(run, cand, steps, exc, ref)
        except EngineError as exc:
            outcome = await self._gone_or_raise(cand, steps, ref, exc)
            return outcome.skip_reason or "not_found", outcome.detail
        steps.untagged.extend(r for r in _untagged(answer) if not is_hold(r) and r not in steps.untagged)
        if _deleted(answer, cand.image_id):  # not held (a tagged image's leftover hold was its last name)
            steps.gone = True
        return None

    async def _gone_or_raise(self, cand: Candidate, steps: _Steps, target: str, exc: EngineError) -> Outcome:
        """An unexpected engine error for a call on the image: if the image is gone, that is the outcome.

        Two DELETEs of one image racing (a run and someone's `docker rmi`) make dockerd answer 500
        "unrecognized image ID" to one of them about half the time. Which client deleted it is unknown,
        so it is not counted as ours (nor its bytes); the run goes on. An image still there with an answer
        asking for force (Podman 4.3's "by ID with more than one tag … please force removal") is a
        refusal, as a 409 would be.
        """
        if await self._absent(cand.image_id):
            detail = f"gone; another client deleted it concurrently ({target} answered: {exc})"
            return steps.outcome("not_found", detail)
        if "force" in str(exc).lower():  # Podman refuses an ID with two tags so, not with a 409
            return steps.outcome("conflict", f"the engine refused it: {exc}")
        raise exc

    async def _references_now(self, image_id: str) -> str:
        """The image's references now, for the audit line of an image that stayed (best effort)."""
        try:
            current = await self.engine.inspect_image(image_id, lane="delete")
        except EngineError as exc:
            return f"cannot inspect it: {exc}"
        refs = sorted(_tags(current)) + _digests(current)
        return ", ".join(refs) or "none left"

    async def _untag_only(self, run: Run, cand: Candidate, steps: _Steps) -> Outcome | None:
        """keep_last: old tags of an image that keeps others go by name, re-checked right before each."""
        for ref in cand.references:
            if self.stopping:
                return steps.stopped()
            problem = await self._untag(run, cand, ref, steps)
            if problem is not None:
                return steps.outcome(*problem)
        if steps.gone:
            return _outcome(cand, "deleted", untagged=steps.untagged)
        if steps.untagged:
            return _outcome(cand, "untagged", untagged=steps.untagged)
        return _outcome(cand, "skipped", "not_found", f"already gone: {', '.join(steps.missing)}")

    async def _untag(self, run: Run, cand: Candidate, ref: str, steps: _Steps) -> tuple[SkipReason, str] | None:
        """Untag `ref` if it still names the candidate, the image gained no tag and no container uses it.

        The engine has no atomic "untag this name only if it points to this ID": between the re-inspect
        and the DELETE a re-tag can still redirect the name. The answer is checked afterwards and what the
        engine really deleted is recorded.
        """
        users = await self._users(cand.image_id)
        if users:
            return "in_use", f"came into use since planning ({', '.join(users)}): its tags stay"
        try:
            current = await self.engine.inspect_image(ref, lane="delete")
        except EngineNotFound:
            steps.missing.append(ref)
            return None
        current_id = normalize_id(str(current.get("Id", "")))
        if current_id != cand.image_id:
            return "conflict", f"{ref} now names another image ({current_id}): left alone"
        problem = steps.changed(current)
        if problem is not None:
            return problem
        await self._intent(run, cand, ref)
        try:
            answer = await self.engine.remove_image(ref)
        except EngineNotFound:
            steps.missing.append(ref)
            return None
        except EngineConflict as exc:
            return "conflict", f"409 from the engine on {ref}: {exc}"
        except EngineUnavailable as exc:
            await self._ambiguous(run, cand, steps, exc, ref)
        except EngineError as exc:
            outcome = await self._gone_or_raise(cand, steps, ref, exc)
            return outcome.skip_reason or "not_found", outcome.detail
        steps.untagged.append(ref)
        deleted = _deleted_ids(answer)
        if cand.image_id in deleted:
            steps.gone = True
        elif deleted:  # the name moved to another image between our inspect and the DELETE
            other = deleted[0]
            detail = f"{ref} was re-tagged onto {other} just before its DELETE: the engine untagged and deleted it"
            run.images_deleted += 1  # never report fewer deletions than happened
            await self._record(
                run,
                Outcome(
                    other, (ref,), 0, "total", f"re-tag race while untagging {cand.image_id}", "deleted", detail=detail
                ),
            )
            steps.untagged.remove(ref)
            return "conflict", f"{ref} moved to {other} before its DELETE, which deleted {other}: see its line"
        return None

    async def _ambiguous(
        self, run: Run, cand: Candidate, steps: _Steps, exc: EngineError, ref: str | None = None
    ) -> NoReturn:
        """A DELETE without an answer may still have been done: look, record what is known, end the run.

        An image still there is `unknown`, not skipped: the engine goes on with a DELETE whose client gave
        up, so it may finish it any moment now. `on_unknown` hears of it once its line is on disk.
        """
        target = ref or cand.image_id
        try:
            gone = await self._absent(cand.image_id)
            if not gone and ref is not None and await self._absent(ref):
                steps.untagged.append(ref)
        except EngineError:
            detail = f"DELETE {target} got no answer ({exc}) and the engine cannot be asked whether it was done"
            await self._unknown(run, cand, _outcome(cand, "unknown", detail=detail, untagged=steps.untagged))
            raise RunAborted(f"engine unreachable during DELETE {target}: {exc}") from exc
        if gone:
            run.images_deleted += 1
            if cand.size_basis == "unique":
                run.reclaimed_bytes += cand.size
            detail = f"DELETE {target} got no answer ({exc}); the image is gone"
            await self._record(run, _outcome(cand, "deleted", detail=detail, untagged=steps.untagged))
        else:
            detail = f"DELETE {target} got no answer ({exc}); the image is still there, the engine may still delete it"
            await self._unknown(run, cand, _outcome(cand, "unknown", detail=detail, untagged=steps.untagged))
        raise RunAborted(f"DELETE {target} got no answer: {exc}") from exc

    async def _unknown(self, run: Run, cand: Candidate, outcome: Outcome) -> None:
        await self._record(run, outcome)
        if self.on_unknown is not None:
            self.on_unknown(run, cand, outcome)

    async def confirm_deleted(self, run: Run, outcome: Outcome, confirmed_by: str) -> None:
        """The `deleted` line of an `unknown` outcome whose image went after its run (same run_id).

        Raises AuditError when the line cannot be written.
        """
        line = self._line(run, "image", **_image_fields(outcome), confirmed_by=confirmed_by)
        await self.audit_writer.write_many([line])

    async def _absent(self, name: str) -> bool:
        try:
            await self.engine.inspect_image(name, lane="delete")
        except EngineNotFound:
            return True
        return False

    async def _intent(self, run: Run, cand: Candidate, target: str, hold: bool = False) -> None:
        """The durable line that says a DELETE is about to be sent; if it cannot be written, nothing is.

        `hold`: `target` is a hold reference about to be added (`POST /images/{id}/tag`) and DELETEd last.
        """
        fields: dict[str, Any] = {"image_id": cand.image_id, "target": target, "references": list(cand.references)}
        if hold:
            fields["hold"] = True
        await self._audit(run, "intent", **fields)
        unwritten = await self._settle(run)  # queued before the intent, so on disk by now: check they made it
        if unwritten is not None:
            raise unwritten

    async def _users(self, image_id: str) -> list[str]:
        """Containers (any state) using the image now: the engine's 409 comes too late for untags."""
        containers = apishapes.parse_containers(await self.engine.list_containers(lane="delete"))
        return sorted(c.id[:12] for c in containers if c.image_id == image_id)


@dataclass
class _Steps:
    """What one candidate's DELETEs have done so far (several for a multi-tag image)."""

    cand: Candidate
    young_after: float
    protect_now: Callable[[], ProtectConfig | None] = lambda: None
    untagged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    gone: bool = False

    def changed(self, inspect: dict[str, Any]) -> tuple[SkipReason, str] | None:
        """What the engine now says that the plan did not know: a protection added by a reload since the run
        began, a new tag, or a tag set too recently."""
        protect = self.protect_now()
        if protect is not None:
            problem = _protected(inspect, protect)
            if problem is not None:
                return problem
        gained = sorted(_tags(inspect) - set(self.cand.known_references or self.cand.references))
        if gained:
            return "conflict", f"tagged since planning ({', '.join(gained)}): left alone"
        tagged_at = apishapes.parse_last_tag_time(inspect)
        if tagged_at is not None and tagged_at > self.young_after:
            return "too_young", "tagged again since planning (Metadata.LastTagTime): younger than min_age now"
        return None

    def stopped(self) -> Outcome | None:
        """Shutting down between two untags: what went so far, or None when nothing did."""
        if not self.untagged:
            return None
        return _outcome(self.cand, "untagged", detail=STOPPED, untagged=self.untagged)

    def outcome(self, reason: SkipReason, detail: str) -> Outcome:
        """Stopped part-way: untagged if something went, else skipped."""
        return _outcome(self.cand, "untagged" if self.untagged else "skipped", reason, detail, self.untagged)


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


def _outcome(
    item: Candidate | Skip,
    result: OutcomeKind,
    reason: SkipReason | None = None,
    detail: str = "",
    untagged: list[str] | None = None,
) -> Outcome:
    """The Outcome for a candidate (its planned reason) or a plan skip (selected, then excluded)."""
    if isinstance(item, Skip):
        return Outcome(
            item.image_id,
            item.references,
            item.size,
            item.size_basis,
            item.summary,
            result,
            item.reason,
            item.detail,
        )
    return Outcome(
        item.image_id,
        item.references,
        item.size,
        item.size_basis,
        item.reason,
        result,
        reason,
        detail,
        tuple(untagged or ()),
        item.known_references,
        item.repo_digests,
        item.created,
    )


def _from_container(o: containers.ContainerOutcome) -> Outcome:
    """A container's outcome as the run lists it: `references` is its name, `image_id` the image it pins."""
    name = (o.name or o.id[:12],)
    if o.result == "not_found":
        return Outcome(o.image_id or None, name, 0, "total", o.reason, "skipped", "not_found", o.detail)
    return Outcome(o.image_id or None, name, 0, "total", o.reason, o.result, o.skip_reason, o.detail)


def _selection(plan: Plan) -> dict[str, Any]:
    """The `run_start` fields of an action with `select`: its rules and how many images they left out."""
    if plan.select is None:
        return {}
    return {"select": {**plan.select.describe(), "not_selected": plan.not_selected}}


def _protected(inspect: dict[str, Any], protect: ProtectConfig) -> tuple[SkipReason, str] | None:
    """The planner's reference and label rules on a fresh inspect (the protections in force now)."""
    if protect.references:
        refs = [str(r) for r in apishapes.parse_refs(inspect.get("RepoTags"))]
        for ref in [*refs, *apishapes.parse_digests(inspect.get("RepoDigests"))]:
            rule = protect.reference_rule(ref)
            if rule is not None:
                return (
                    "protected_reference",
                    f"{ref} matches protect.references {rule!r} (as in force right before the DELETE)",
                )
    labels = (inspect.get("Config") or {}).get("Labels")
    if protect.labels and isinstance(labels, dict) and labels:
        rule = protect.label_rule({str(k): str(v) for k, v in labels.items()})
        if rule is not None:
            return "protected_label", f"label matches protect.labels {rule!r} (as in force right before the DELETE)"
    return None


def _in_use(conflict: EngineConflict) -> bool:
    """A 409 for a container using the image: dockerd says "being used by" (by ID) or "container … is using
    its referenced image" (by name), Podman "in use by"."""
    text = str(conflict).lower()
    return "being used" in text or "in use" in text or "is using" in text


def hold_reference(run_id: str, image_id: str) -> tuple[str, str]:
    """The hold reference of one image in one run: (repository, tag), a repository of its own.

    The dot makes `docker-image-exporter.hold` a registry host, so no engine prefixes it (`docker.io/`,
    Podman's `localhost/`) and it can never be pushed anywhere by accident.
    """
    return f"{HOLD_REPOSITORY}/{run_id}", image_id.removeprefix("sha256:")[:12]


def _tags(inspect: dict[str, Any]) -> set[str]:
    """The image's own tags (hold references are the exporter's, and parse_refs leaves them out)."""
    return {str(r) for r in apishapes.parse_refs(inspect.get("RepoTags"))}


def _holds(inspect: dict[str, Any]) -> set[str]:
    return {t for t in inspect.get("RepoTags") or () if isinstance(t, str) and is_hold(t)}


def _digests(inspect: dict[str, Any]) -> list[str]:
    return list(apishapes.parse_digests(inspect.get("RepoDigests")))


def _untagged(answer: list[dict[str, Any]]) -> list[str]:
    return [str(e["Untagged"]) for e in answer if isinstance(e, dict) and e.get("Untagged")]


def _deleted_ids(answer: list[dict[str, Any]]) -> list[str]:
    """IDs the engine's DELETE answer lists as deleted (the image first, then its layers)."""
    return [normalize_id(str(e["Deleted"])) for e in answer if isinstance(e, dict) and e.get("Deleted")]


def _deleted(answer: list[dict[str, Any]], image_id: str) -> bool:
    """True when the engine's DELETE answer lists the image ID itself as deleted (not just layers)."""
    return image_id in _deleted_ids(answer)


def _image_fields(o: Outcome) -> dict[str, Any]:
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


def _described(plan: Plan, action: ActionConfig) -> tuple[list[Outcome], bool]:
    """Dry run: what would go, in plan order, within max_deletions and (free_space) until the goal; and
    whether the goal is met by then. Pure, so it can run off the event loop."""
    fs = plan.filesystem if isinstance(action, FreeSpaceAction) else None
    projected_avail = fs.avail if fs else 0
    outcomes: list[Outcome] = []
    for index, cand in enumerate(plan.candidates):
        if index >= action.max_deletions:
            detail = f"max_deletions {action.max_deletions} reached"
            outcomes.extend(_outcome(rest, "skipped", "max_deletions", detail) for rest in plan.candidates[index:])
            return outcomes, False
        outcomes.append(_outcome(cand, "would_delete"))
        if fs is not None:
            projected_avail += cand.size if cand.removes_image else 0
            if goal_met(action, fs.size, projected_avail):
                return outcomes, True
    return outcomes, False
