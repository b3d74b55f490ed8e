"""The removal protocol over the CRI, where the runtime itself protects nothing.

containerd's CRI `RemoveImage` removes an image a container uses (CRI-O refuses), removes every reference of
the image whatever name it is given, and answers a missing image with success. So every check the Docker
engine makes itself is made here, right before each removal, after the plan's own:
- the image is still there and has gained no reference since planning, and the protections in force now
  still let it go (the executor's `changed`);
- the runtime does not pin it (`pinned`, or the `io.cri-containerd.pinned` label of older containerd), and
  it is not the node's pod sandbox (pause) image, read from the runtime's Status now;
- no container uses it (`ListContainers`, by image ID and by its references) at this re-check;
- then the fsync'd intent line, then `RemoveImage` by ID, then `ImageStatus` says whether it went (the answer
  of `RemoveImage` cannot: it is the same for an image removed and one that was not there).

What cannot be closed: a container created between the re-check and `RemoveImage` (the CRI has no conditional
removal). Kubelet pulls, then creates; the window is one round trip. A candidate that removes one tag of an
image (the rest staying) is skipped: the CRI cannot untag.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from exporter.engine.errors import EngineNotFound, EngineUnavailable
from exporter.remediation.planner import Candidate, SkipReason
from exporter.remediation.runs import OutcomeKind

Result = tuple[OutcomeKind, SkipReason | None, str]
CANNOT_UNTAG = "the CRI removes every reference of an image: one tag alone cannot be removed"


@runtime_checkable
class CriRemoval(Protocol):
    """What the protocol needs of an engine: `CriEngine`'s re-checks and removal."""

    async def inspect_image(self, ref: str, *, lane: Any = ...) -> dict[str, Any]: ...
    async def protection(self, image_id: str) -> str | None: ...
    async def users(self, image_id: str, references: Sequence[str]) -> list[str]: ...
    async def present(self, image_id: str) -> bool: ...
    async def remove_image(self, ref: str) -> list[dict[str, Any]]: ...


async def remove(
    engine: CriRemoval,
    cand: Candidate,
    changed: Callable[[dict[str, Any]], tuple[SkipReason, str] | None],
    intent: Callable[[], Awaitable[None]],
) -> Result:
    """One candidate over the CRI: (result, skip reason, detail). EngineUnavailable ends the run (the caller's)."""
    if not cand.removes_image:
        return "skipped", "conflict", CANNOT_UNTAG
    try:
        current = await engine.inspect_image(cand.image_id, lane="delete")
    except EngineNotFound as exc:
        return "skipped", "not_found", f"not found by the runtime: {exc}"
    problem = changed(current)
    if problem is not None:
        return "skipped", problem[0], problem[1]
    kept = await engine.protection(cand.image_id)
    if kept is not None:
        # pinned is the runtime's label-like mark; the sandbox image is named by the runtime's config
        return "skipped", "protected_reference" if "sandbox" in kept else "protected_label", f"kept: {kept}"
    users = await engine.users(cand.image_id, [*current.get("RepoTags", []), *current.get("RepoDigests", [])])
    if users:
        return "skipped", "in_use", f"in use by container(s) {', '.join(users)} at the re-check before removal"
    await intent()
    try:
        await engine.remove_image(cand.image_id)
    except EngineUnavailable:
        if await engine.present(cand.image_id):
            raise  # the runtime may still remove it: the run ends, its intent line says what was attempted
        return "deleted", None, "RemoveImage got no answer; the image is gone"
    if await engine.present(cand.image_id):
        return "skipped", "conflict", "RemoveImage answered, but the runtime still has the image"
    return "deleted", None, ""
