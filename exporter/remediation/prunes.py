"""The two actions that delete no image: `build_cache` (one engine call) and `prune_containers` (see containers).

Each fills in its run's outcomes and result; the executor writes the run's start and end around them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from exporter.config import BuildCacheAction, ProtectConfig, PruneContainersAction
from exporter.engine import apishapes
from exporter.engine.errors import EngineError, EngineNotFound
from exporter.engine.seam import EngineSeam
from exporter.remediation import containers
from exporter.remediation.runaudit import RunAborted, RunAudit
from exporter.remediation.runs import Outcome, Run


async def build_cache(engine: EngineSeam, audit: RunAudit, run: Run, action: BuildCacheAction) -> None:
    filters = {"until": f"{int(action.min_age)}s"} if action.min_age > 0 else {}
    reason = f"build cache older than {int(action.min_age)}s, keep-storage {action.keep_storage}"
    if run.dry_run:
        run.outcomes.append(Outcome(None, (), 0, "total", reason, "would_delete", detail="build cache"))
        run.result = "dry_run"
        return
    try:
        answer = await engine.prune_builds(action.keep_storage or None, filters)
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
    await audit.record(
        run,
        Outcome(None, (), reclaimed, "total", reason, "deleted", detail=f"{len(deleted)} build cache records"),
    )
    run.result = "success"


async def stopped_containers(
    engine: EngineSeam,
    audit: RunAudit,
    run: Run,
    action: PruneContainersAction,
    protect_now: Callable[[], ProtectConfig | None],
    stopping: Callable[[], bool],
) -> None:
    """prune_containers: select from a fresh inspect of each stopped container, then remove (see containers)."""
    try:
        listed = apishapes.parse_containers(await engine.list_containers(lane="delete"))
        stopped: list[containers.StoppedContainer] = []
        for c in listed:
            if c.state in containers.PRUNABLE_STATES:
                try:
                    stopped.append(containers.parse_inspect(await engine.inspect_container_now(c.id)))
                except EngineNotFound:
                    continue  # removed since the listing: nothing to do
    except EngineError as exc:
        raise RunAborted(f"cannot read the containers: {exc}") from exc

    def protect() -> ProtectConfig:
        return protect_now() or ProtectConfig()

    plan = containers.select(
        stopped, min_age=action.min_age, max_deletions=action.max_deletions, protect=protect(), now=time.time()
    )
    await _container_outcomes(audit, run, [containers.skipped(c, reason, detail) for c, reason, detail in plan.skipped])

    async def write(event: str, fields: dict[str, Any]) -> None:
        await audit.event(run, event, **fields)

    try:
        done = await containers.remove(
            engine, plan, audit=write, protect_now=protect, dry_run=run.dry_run, stopping=stopping
        )
    except containers.RemovalAborted as exc:
        await _container_outcomes(audit, run, exc.done)
        raise RunAborted(str(exc)) from exc
    await _container_outcomes(audit, run, done)
    if run.dry_run:
        run.result = "dry_run"
    elif stopping() and len(done) < len(plan.candidates):
        run.result = "partial"
        run.detail = "stopped: the exporter is shutting down"
    else:
        run.result = "success"


async def _container_outcomes(audit: RunAudit, run: Run, done: list[containers.ContainerOutcome]) -> None:
    """Outcomes join the run; a real run writes their `container` lines (a dry run only its summary)."""
    run.outcomes.extend(_from_container(o) for o in done)
    if not run.dry_run and done:
        await audit.write([audit.line(run, "container", **containers.audit_fields(o)) for o in done])


def _from_container(o: containers.ContainerOutcome) -> Outcome:
    """A container's outcome as the run lists it: `references` is its name, `image_id` the image it pins."""
    name = (o.name or o.id[:12],)
    if o.result == "not_found":
        return Outcome(o.image_id or None, name, 0, "total", o.reason, "skipped", "not_found", o.detail)
    return Outcome(o.image_id or None, name, 0, "total", o.reason, o.result, o.skip_reason, o.detail)
