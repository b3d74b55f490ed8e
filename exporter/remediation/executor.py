"""Follows a Plan: one DELETE at a time, never forced, each decision audited before the next deletion.

Safety beyond the plan, because the engine moves while we work:
- a reference is re-inspected right before its DELETE; if it now names another image (a fresh pull or
  re-tag took the name) the candidate is skipped as a conflict instead of deleting the newcomer;
- a dangling image is re-inspected before its DELETE by ID; if it got a tag since planning it is skipped
  (DELETE by ID of an image with one tag would untag and delete it);
- 409 (in use, child images) is a skip with the engine's message, 404 means someone else removed it;
- an unreachable engine or an unwritable audit log ends the run as a failure: nothing is deleted that
  is not written down.
Reclaimed bytes count only images the engine answered `Deleted: <image id>` for, at their unique size.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from exporter.config import ActionConfig, BuildCacheAction, FreeSpaceAction
from exporter.engine import Engine, EngineConflict, EngineError, EngineNotFound, EngineUnavailable
from exporter.remediation.audit import AuditError, AuditLog
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Candidate, Plan, SkipReason
from exporter.remediation.runs import Outcome, OutcomeKind, Run
from exporter.snapshot import Filesystem

log = logging.getLogger(__name__)


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
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.metrics = metrics
        self.read_filesystem = read_filesystem
        self.stopping = False
        self._running: set[str] = set()

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
    async def _audit(self, run: Run, event: str, **fields: Any) -> None:
        record: dict[str, Any] = {
            "ts": time.time(),
            "event": event,
            "run_id": run.run_id,
            "action": run.action,
            "trigger": run.trigger_ref,
            "dry_run": run.dry_run,
            **fields,
        }
        try:
            await asyncio.to_thread(self.audit.write, record)
        except AuditError as exc:
            raise RunAborted(str(exc)) from exc

    async def _record(self, run: Run, outcome: Outcome) -> None:
        run.outcomes.append(outcome)
        await self._audit(
            run,
            "image",
            image_id=outcome.image_id,
            references=list(outcome.references),
            size=outcome.size,
            size_basis=outcome.size_basis,
            reason=outcome.reason,
            result=outcome.result,
            skip_reason=outcome.skip_reason,
            detail=outcome.detail,
            untagged=list(outcome.untagged),
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
            )
            for skip in plan.skipped:
                await self._record(
                    run,
                    Outcome(
                        skip.image_id,
                        skip.references,
                        skip.size,
                        skip.size_basis,
                        "selected by the action",
                        "skipped",
                        skip.reason,
                        skip.detail,
                    ),
                )
            if isinstance(action, BuildCacheAction):
                await self._build_cache(run, action)
            else:
                await self._images(run, plan, action)
        except RunAborted as exc:
            run.result = "failure"
            run.detail = str(exc)
            log.error("remediation run %s of %s failed: %s", run.run_id, run.action, exc)
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
            log.error("cannot write the end of run %s to the audit log: %s", run.run_id, exc)
            run.result = "failure"
            run.detail = run.detail or str(exc)

    async def _build_cache(self, run: Run, action: BuildCacheAction) -> None:
        filters = {"until": f"{int(action.min_age)}s"} if action.min_age > 0 else {}
        reason = f"build cache older than {int(action.min_age)}s, keep-storage {action.keep_storage}"
        if run.dry_run:
            await self._record(run, Outcome(None, (), 0, "total", reason, "would_delete", detail="build cache"))
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

    async def _images(self, run: Run, plan: Plan, action: ActionConfig) -> None:
        free_space = isinstance(action, FreeSpaceAction)
        target = action.target_avail_ratio if isinstance(action, FreeSpaceAction) else 1.0
        if free_space and plan.filesystem is None:
            raise RunAborted("free_space: the data-root filesystem could not be read")
        if free_space and plan.goal_met:
            run.goal_met = True
            run.result = "dry_run" if run.dry_run else "success"
            run.detail = "goal already met at plan time: nothing to delete"
            return
        fs = plan.filesystem
        projected_avail = fs.avail if fs else 0
        done = 0
        incomplete = False
        candidates = list(plan.candidates)
        for index, cand in enumerate(candidates):
            if self.stopping:
                run.detail = "stopped early: the exporter is shutting down"
                incomplete = True
                break
            if done >= action.max_deletions:
                for rest in candidates[index:]:
                    await self._record(
                        run,
                        Outcome(
                            rest.image_id,
                            rest.references,
                            rest.size,
                            rest.size_basis,
                            rest.reason,
                            "skipped",
                            "max_deletions",
                            f"max_deletions {action.max_deletions} reached",
                        ),
                    )
                incomplete = True
                break
            if run.dry_run:
                await self._record(
                    run,
                    Outcome(cand.image_id, cand.references, cand.size, cand.size_basis, cand.reason, "would_delete"),
                )
                done += 1
                if free_space and fs is not None:
                    projected_avail += cand.size if cand.removes_image else 0
                    if projected_avail / fs.size >= target:
                        run.goal_met = True
                        break
                continue
            outcome = await self._delete(cand)
            await self._record(run, outcome)
            if outcome.result == "deleted":
                run.images_deleted += 1
                if cand.size_basis == "unique":
                    run.reclaimed_bytes += cand.size
            if outcome.result in ("deleted", "untagged"):
                done += 1
            if outcome.skip_reason == "conflict":
                incomplete = True
            if free_space and fs is not None and outcome.result == "deleted":
                run.filesystem_after = await self._read_fs(fs.path)
                if run.filesystem_after.avail_ratio >= target:
                    run.goal_met = True
                    break
        if run.dry_run:
            run.result = "dry_run"
            if free_space and not run.goal_met:
                run.goal_met = False
            return
        if free_space:
            if not run.goal_met:
                run.goal_met = False
                run.detail = run.detail or "candidates ran out before the goal was met"
            run.result = "success" if run.goal_met else "partial"
            return
        run.result = "partial" if incomplete else "success"

    async def _read_fs(self, path: str) -> Filesystem:
        try:
            return await asyncio.to_thread(self.read_filesystem, path)
        except OSError as exc:
            raise RunAborted(f"cannot statvfs {path}: {exc}") from exc

    async def _delete(self, cand: Candidate) -> Outcome:
        """Delete one candidate: by ID when dangling, else reference by reference (untag)."""
        try:
            if not cand.references:
                return await self._delete_by_id(cand)
            return await self._delete_refs(cand)
        except EngineUnavailable as exc:
            raise RunAborted(f"engine unreachable: {exc}") from exc
        except EngineConflict as exc:  # the helpers map these per call; this is only a safety net
            return _outcome(cand, "skipped", "conflict", f"409 from the engine: {exc}")
        except EngineNotFound as exc:
            return _outcome(cand, "skipped", "not_found", f"404 from the engine: {exc}")
        except EngineError as exc:
            raise RunAborted(f"engine error on {cand.image_id}: {exc}") from exc

    async def _delete_by_id(self, cand: Candidate) -> Outcome:
        try:
            current = await self.engine.inspect_image(cand.image_id)
            tags = [t for t in (current.get("RepoTags") or []) if "<none>" not in t]
            if tags:
                return _outcome(cand, "skipped", "conflict", f"tagged since planning ({', '.join(tags)}): left alone")
            answer = await self.engine.remove_image(cand.image_id)
        except EngineConflict as exc:
            return _outcome(cand, "skipped", "conflict", f"409 from the engine: {exc}")
        except EngineNotFound as exc:
            return _outcome(cand, "skipped", "not_found", f"404 from the engine: {exc}")
        if _deleted(answer, cand.image_id):
            return _outcome(cand, "deleted")
        return _outcome(cand, "skipped", "conflict", f"the engine did not delete the image: {answer!r}")

    async def _delete_refs(self, cand: Candidate) -> Outcome:
        untagged: list[str] = []
        missing: list[str] = []
        gone = False
        problem: tuple[SkipReason, str] | None = None
        for ref in cand.references:
            try:
                current = await self.engine.inspect_image(ref)
                if _norm(str(current.get("Id", ""))) != cand.image_id:
                    problem = ("conflict", f"{ref} now names another image ({current.get('Id')}): left alone")
                    break
                answer = await self.engine.remove_image(ref)
            except EngineNotFound:
                missing.append(ref)
                continue
            except EngineConflict as exc:
                problem = ("conflict", f"409 from the engine on {ref}: {exc}")
                break
            untagged.append(ref)
            gone = gone or _deleted(answer, cand.image_id)
        if gone:
            return _outcome(cand, "deleted", untagged=untagged)
        if problem is not None:
            return _outcome(cand, "untagged" if untagged else "skipped", *problem, untagged=untagged)
        if untagged:
            return _outcome(cand, "untagged", untagged=untagged)
        return _outcome(cand, "skipped", "not_found", f"already gone: {', '.join(missing)}")


def _outcome(
    cand: Candidate,
    result: OutcomeKind,
    reason: SkipReason | None = None,
    detail: str = "",
    untagged: list[str] | None = None,
) -> Outcome:
    return Outcome(
        cand.image_id,
        cand.references,
        cand.size,
        cand.size_basis,
        cand.reason,
        result,
        reason,
        detail,
        tuple(untagged or ()),
    )


def _norm(image_id: str) -> str:
    return image_id if ":" in image_id or not image_id else f"sha256:{image_id}"


def _deleted(answer: list[dict[str, Any]], image_id: str) -> bool:
    """True when the engine's DELETE answer lists the image ID itself as deleted (not just layers)."""
    return any(_norm(str(entry.get("Deleted", ""))) == image_id for entry in answer if isinstance(entry, dict))
