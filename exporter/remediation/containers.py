"""Removing stopped containers that pin their images: selection (pure) and removal (re-checked, audited).

A stopped container keeps its image in use for as long as it exists, so no image action can free that
image. Removing exited or dead containers is what `docker container prune` does; here it is bounded,
planned from a fresh inspect of each stopped container, and re-checked right before each DELETE.

Rules:
- only `exited` and `dead` containers are selected; never `running`, `paused`, `restarting` or `removing`,
  and never `created`: a created container has not run yet and is often about to (`docker create` then
  `docker start` is how runners and compose start containers);
- age is the time since `State.FinishedAt` (only container inspect has it, not the listing): a container
  whose FinishedAt is unknown is not selected;
- a container with a label matching `protect.labels` is kept (the same rules as for image labels);
- at most `max_deletions`, oldest finished first;
- right before the DELETE the container is inspected again: it must still be exited or dead, with the
  FinishedAt the plan saw (a container started and stopped again since is someone's, not litter), and not
  protected by the protections in force now; then an fsync'd `intent` line is written, and only then the
  `DELETE /containers/{id}` is sent, never with `force` (the engine refuses a running container: a start
  between the re-check and the DELETE gets a 409, recorded as a conflict) and never with `v` (volumes stay).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from exporter.config import ProtectConfig
from exporter.engine import apishapes
from exporter.engine.errors import EngineConflict, EngineNotFound, EngineUnavailable

#: States a container may be removed in: it has run and ended.
PRUNABLE_STATES = frozenset(("exited", "dead"))

ContainerSkipReason = Literal[
    "protected_label", "too_young", "max_deletions", "not_stopped", "restarted", "conflict", "not_found"
]
ContainerResult = Literal["deleted", "skipped", "would_delete", "not_found", "unknown"]


@dataclass(frozen=True)
class StoppedContainer:
    """One container as its inspect shows it; `finished_raw` is the engine's exact FinishedAt text."""

    id: str
    name: str
    image_id: str
    state: str
    finished_at: float | None
    finished_raw: str
    labels: Mapping[str, str] = field(default_factory=dict)


def parse_inspect(inspect: Mapping[str, Any]) -> StoppedContainer:
    """`GET /containers/{id}/json` as the selection needs it."""
    state = inspect.get("State") or {}
    config = inspect.get("Config") or {}
    labels = config.get("Labels") if isinstance(config, Mapping) else None
    finished = str(state.get("FinishedAt") or "") if isinstance(state, Mapping) else ""
    return StoppedContainer(
        id=str(inspect.get("Id") or ""),
        name=str(inspect.get("Name") or "").lstrip("/"),
        image_id=apishapes.normalize_id(str(inspect.get("Image") or "")),
        state=str(state.get("Status") or "") if isinstance(state, Mapping) else "",
        finished_at=apishapes.parse_time(finished),
        finished_raw=finished,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, Mapping) else {},
    )


@dataclass(frozen=True)
class ContainerPlan:
    """The containers to remove, oldest finished first, and the stopped ones kept with the rule that says so."""

    candidates: tuple[StoppedContainer, ...] = ()
    skipped: tuple[tuple[StoppedContainer, ContainerSkipReason, str], ...] = ()


def select(
    containers: Iterable[StoppedContainer], *, min_age: float, max_deletions: int, protect: ProtectConfig, now: float
) -> ContainerPlan:
    """The exited/dead containers finished more than `min_age` ago and not protected, at most `max_deletions`."""
    eligible: list[StoppedContainer] = []
    skipped: list[tuple[StoppedContainer, ContainerSkipReason, str]] = []
    for c in containers:
        if c.state not in PRUNABLE_STATES or c.finished_at is None:
            continue
        rule = protect.label_rule(c.labels)
        if rule is not None:
            skipped.append((c, "protected_label", f"label matches protect.labels {rule!r}"))
        elif now - c.finished_at < min_age:
            skipped.append((c, "too_young", f"finished {int(now - c.finished_at)}s ago, min_age {int(min_age)}s"))
        else:
            eligible.append(c)
    eligible.sort(key=lambda c: (c.finished_at or 0.0, c.id))
    over = eligible[max_deletions:]
    skipped.extend((c, "max_deletions", f"max_deletions {max_deletions} reached") for c in over)
    return ContainerPlan(tuple(eligible[:max_deletions]), tuple(skipped))


class ContainerEngine(Protocol):
    """The engine calls container removal makes (every `EngineSeam` has them)."""

    async def inspect_container_now(self, container_id: str) -> dict[str, Any]: ...

    async def remove_container(self, container_id: str) -> None: ...


@dataclass(frozen=True)
class ContainerOutcome:
    """What happened to one planned container."""

    id: str
    name: str
    image_id: str
    result: ContainerResult
    skip_reason: ContainerSkipReason | None = None
    detail: str = ""
    reason: str = ""


def audit_fields(o: ContainerOutcome) -> dict[str, Any]:
    """A container outcome's audit line fields (the `container` event)."""
    return {
        "container_id": o.id,
        "name": o.name,
        "image_id": o.image_id,
        "reason": o.reason,
        "result": o.result,
        "skip_reason": o.skip_reason,
        "detail": o.detail,
    }


def skipped(c: StoppedContainer, reason: ContainerSkipReason, detail: str) -> ContainerOutcome:
    """The outcome of a stopped container the selection kept."""
    return _outcome(c, "skipped", reason, detail)


class RemovalAborted(Exception):
    """The run cannot go on: an intent could not be written, or a DELETE got no answer."""

    def __init__(self, message: str, done: list[ContainerOutcome] | None = None) -> None:
        super().__init__(message)
        self.done = done or []


#: Writes one durable audit line (event, fields); raises when it cannot, and then nothing is deleted.
AuditLine = Callable[[str, dict[str, Any]], Awaitable[None]]


async def remove(
    engine: ContainerEngine,
    plan: ContainerPlan,
    *,
    audit: AuditLine,
    protect_now: Callable[[], ProtectConfig],
    dry_run: bool,
    stopping: Callable[[], bool] = lambda: False,
) -> list[ContainerOutcome]:
    """Remove the plan's candidates in order, each re-checked and announced by an intent line first.

    Raises RemovalAborted (with the outcomes so far in `done`) when an intent cannot be written or a
    DELETE gets no answer: whether that container went is then unknown, so the run stops there. Ends
    before the next candidate once `stopping()` says so (shutdown).
    """
    outcomes: list[ContainerOutcome] = []
    for planned in plan.candidates:
        if stopping():
            break
        if dry_run:
            outcomes.append(_outcome(planned, "would_delete"))
            continue
        try:
            outcome = await _remove_one(engine, planned, audit, protect_now())
        except RemovalAborted as exc:
            raise RemovalAborted(str(exc), outcomes) from exc
        outcomes.append(outcome)
        if outcome.result == "unknown":
            raise RemovalAborted(outcome.detail, outcomes)
    return outcomes


async def _remove_one(
    engine: ContainerEngine, planned: StoppedContainer, audit: AuditLine, protect: ProtectConfig
) -> ContainerOutcome:
    try:
        now = parse_inspect(await engine.inspect_container_now(planned.id))
    except EngineNotFound:
        return _outcome(planned, "not_found", detail="gone before its DELETE")
    if now.state not in PRUNABLE_STATES:
        return _outcome(planned, "skipped", "not_stopped", f"now {now.state or 'in an unknown state'}")
    if now.finished_raw != planned.finished_raw:
        detail = f"ran again since the plan: FinishedAt {planned.finished_raw} -> {now.finished_raw}"
        return _outcome(planned, "skipped", "restarted", detail)
    rule = protect.label_rule(now.labels)
    if rule is not None:
        detail = f"label matches protect.labels {rule!r} (as in force right before the DELETE)"
        return _outcome(planned, "skipped", "protected_label", detail)
    try:
        await audit("intent", {"container_id": planned.id, "name": planned.name, "target": f"/containers/{planned.id}"})
    except Exception as exc:
        raise RemovalAborted(f"cannot write the intent line, nothing deleted: {exc}") from exc
    try:
        await engine.remove_container(planned.id)
    except EngineConflict as exc:
        return _outcome(planned, "skipped", "conflict", f"the engine refused: {exc}")
    except EngineNotFound:
        return _outcome(planned, "not_found", detail="gone before its DELETE")
    except EngineUnavailable as exc:
        return _outcome(planned, "unknown", detail=f"DELETE /containers/{planned.id} got no answer: {exc}")
    return _outcome(planned, "deleted")


def _outcome(
    c: StoppedContainer, result: ContainerResult, reason: ContainerSkipReason | None = None, detail: str = ""
) -> ContainerOutcome:
    return ContainerOutcome(c.id, c.name, c.image_id, result, reason, detail, f"stopped container ({c.state})")
