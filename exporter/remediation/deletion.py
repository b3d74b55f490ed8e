"""The deletion protocol of one image: fresh checks, an intent line, then DELETEs the engine cannot misdirect.

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
  last check) and by an fsync'd `intent` audit line (`RunAudit.intent`); if the intent cannot be written,
  nothing is deleted (nor is a hold added). Every destructive request of a candidate follows its intent
  in one of three places: `_delete_by_id`, `_delete_held` (the hold, then its last DELETE) and
  `_delete_name` (every DELETE by name);
- an unexpected engine error (dockerd answers 500 "unrecognized image ID" to the loser of two DELETEs
  racing) re-checks the image by ID: gone is recorded as gone (not counted as ours) and the run goes on;
- a DELETE without an answer (timeout) is ambiguous: the image is looked up by ID (gone = deleted; still
  there = `unknown`, since the engine may still finish the DELETE), the finding is recorded, `on_unknown`
  hears of an `unknown` one (the service watches for it to go) and the run ends;
- untagging by name has a window the engine cannot close (a re-tag between our inspect and the DELETE):
  the answer is checked, and an image the engine deleted instead is audited under its own ID;
- protections only grow mid-run: every re-check before a DELETE also applies the protections in force
  now (`protect_now`, the reloaded config's), on top of the run's own that the plan applied;
- a shutdown stops a many-tag image between two untags (each untag is a few round trips and an fsync:
  thousands of tags take minutes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from exporter.config import ProtectConfig
from exporter.engine import apishapes
from exporter.engine.apishapes import HOLD_REPOSITORY, normalize_id
from exporter.engine.apishapes import is_hold_reference as is_hold
from exporter.engine.errors import EngineConflict, EngineError, EngineNotFound, EngineUnavailable
from exporter.engine.seam import EngineSeam
from exporter.remediation import crideletion
from exporter.remediation.planner import Candidate, SkipReason
from exporter.remediation.runaudit import RunAborted, RunAudit
from exporter.remediation.runs import Outcome, Run, outcome_of
from exporter.remediation.trash import Trash

STOPPED = "stopped part-way: the exporter is shutting down"

#: Why a step did not go as planned: the outcome's skip reason and detail.
Problem = tuple[SkipReason, str]


class Deleter:
    """Deletes the candidates of one run, one call of `delete` per candidate (several may be in flight)."""

    def __init__(
        self,
        engine: EngineSeam,
        audit: RunAudit,
        run: Run,
        young_after: float,
        protect_now: Callable[[], ProtectConfig | None],
        stopping: Callable[[], bool],
        on_unknown: Callable[[Run, Candidate, Outcome], None],
        trash: Trash | None = None,
    ) -> None:
        self.engine = engine
        self.audit = audit
        self.run = run
        #: A tag set after this time (the plan's `now` minus min_age and a recent forward clock step) makes
        #: the image too young.
        self.young_after = young_after
        self.protect_now = protect_now
        self.stopping = stopping
        self.on_unknown = on_unknown
        #: Saves an image with no known registry copy before its first DELETE (None: no trash configured).
        self.trash = trash
        self.checks = Aftermath(self)

    async def delete(self, cand: Candidate) -> Outcome | None:
        """Delete one candidate; every DELETE is preceded by a fsync'd intent line and fresh checks.

        None: stopped (shutting down) before anything went.
        """
        steps = _Steps(cand, self.young_after, self.protect_now)
        try:
            if isinstance(self.engine, crideletion.CriRemoval):  # a CRI runtime protects nothing itself
                intent = lambda: self.audit.intent(self.run, cand, cand.image_id)  # noqa: E731
                result, reason, detail = await crideletion.remove(self.engine, cand, steps.changed, intent)
                return outcome_of(cand, result, reason, detail)
            if cand.removes_image:
                return await self._delete_image(cand, steps)
            return await self._untag_only(cand, steps)
        except EngineUnavailable as exc:
            raise RunAborted(f"engine unreachable: {exc}") from exc
        except EngineError as exc:
            raise RunAborted(f"engine error on {cand.image_id}: {exc}") from exc

    async def _delete_image(self, cand: Candidate, steps: _Steps) -> Outcome | None:
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
            return outcome_of(cand, "skipped", "not_found", f"404 from the engine: {exc}")
        problem = steps.changed(current)
        if problem is not None:
            return outcome_of(cand, "skipped", *problem)
        if self.trash is not None and (
            unsaved := await self.trash.before_delete(self.run, cand.image_id, current, self.audit.event)
        ):
            return outcome_of(cand, "skipped", "trash", unsaved)  # no save, no DELETE (as with the intent line)
        tags = _tags(current)
        holds = sorted(_holds(current))
        if not tags:
            return await self._delete_held(cand, steps, _digests(current), holds)
        for ref in sorted(tags)[:-1]:  # more than one tag: all but the last go by name, checked each time
            if self.stopping():
                return steps.stopped()
            problem = await self._untag(cand, ref, steps)
            if problem is not None:
                return steps.outcome(*problem)
            if steps.gone:  # its other tags went elsewhere meanwhile: that untag was the last reference
                return outcome_of(cand, "deleted", untagged=steps.untagged)
        for hold in holds:  # left by an interrupted run: with it, the DELETE by ID would meet two tags
            problem = await self._drop_ref(cand, hold, steps)
            if problem is not None:
                return steps.outcome(*problem)
            if steps.gone:
                return outcome_of(cand, "deleted", untagged=steps.untagged)
        return await self._delete_by_id(cand, steps)

    async def _delete_by_id(self, cand: Candidate, steps: _Steps) -> Outcome:
        await self.audit.intent(self.run, cand, cand.image_id)
        try:
            answer = await self.engine.remove_image(cand.image_id)
        except EngineConflict as exc:
            return steps.outcome("in_use" if _in_use(exc) else "conflict", f"409 from the engine: {exc}")
        except EngineNotFound as exc:
            return steps.outcome("not_found", f"404 from the engine: {exc}")
        except EngineUnavailable as exc:
            await self.checks.ambiguous(cand, steps, exc)
        except EngineError as exc:
            return await self.checks.gone_or_raise(cand, steps, cand.image_id, exc)
        steps.untagged.extend(_untagged(answer))
        if _deleted(answer, cand.image_id):
            return outcome_of(cand, "deleted", untagged=steps.untagged)
        return steps.outcome("conflict", f"the engine did not delete the image: {answer!r}")

    async def _delete_held(self, cand: Candidate, steps: _Steps, digests: list[str], holds: list[str]) -> Outcome:
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
        repository, tag = hold_reference(self.run.run_id, cand.image_id)
        hold = f"{repository}:{tag}"
        await self.audit.intent(self.run, cand, hold, hold=True)
        try:
            await self.engine.tag_image(cand.image_id, repository, tag)
        except EngineNotFound as exc:
            return steps.outcome("not_found", f"404 from the engine: {exc}")
        except EngineUnavailable as exc:  # nothing was deleted: whether the hold exists is for the next run
            raise RunAborted(f"engine unreachable while adding the hold reference {hold}: {exc}") from exc
        except EngineError as exc:
            return await self.checks.gone_or_raise(cand, steps, hold, exc)
        for ref in [*digests, *holds]:  # a few at most: no stop check, the hold would stay behind
            problem = await self._drop_ref(cand, ref, steps)
            if problem is not None:
                return steps.outcome(*problem)
            if steps.gone:  # the hold went meanwhile (someone removed it): that was the last reference
                return outcome_of(cand, "deleted", untagged=steps.untagged)
        try:  # the hold intent line announced this DELETE too
            answer = await self.engine.remove_image(hold)
        except EngineConflict as exc:  # a container came: the hold stays its name (only force removes it)
            reason: SkipReason = "in_use" if _in_use(exc) else "conflict"
            return steps.outcome(reason, f"409 from the engine: {exc}; {hold} stays on the image")
        except EngineNotFound as exc:
            return steps.outcome("not_found", f"404 from the engine for {hold}: {exc}")
        except EngineUnavailable as exc:
            await self.checks.ambiguous(cand, steps, exc, hold)
        except EngineError as exc:
            return await self.checks.gone_or_raise(cand, steps, hold, exc)
        steps.untagged.extend(r for r in _untagged(answer) if not is_hold(r))
        if _deleted(answer, cand.image_id):
            return outcome_of(cand, "deleted", untagged=steps.untagged)
        gained = await self.checks.references_now(cand.image_id)
        detail = f"gained a reference during its DELETE ({gained}): the engine removed only {hold}; the image stays"
        return steps.outcome("conflict", detail)

    async def _delete_name(self, cand: Candidate, ref: str, steps: _Steps) -> list[dict[str, Any]] | Problem | None:
        """The intent line, then DELETE `ref` by name: the engine's answer, or why not, or None when the
        name was gone already."""
        await self.audit.intent(self.run, cand, ref)
        try:
            return await self.engine.remove_image(ref)
        except EngineNotFound:
            if not is_hold(ref):
                steps.missing.append(ref)
            return None
        except EngineConflict as exc:
            return "conflict", f"409 from the engine on {ref}: {exc}"
        except EngineUnavailable as exc:
            await self.checks.ambiguous(cand, steps, exc, ref)
        except EngineError as exc:
            outcome = await self.checks.gone_or_raise(cand, steps, ref, exc)
            return outcome.skip_reason or "not_found", outcome.detail

    async def _drop_ref(self, cand: Candidate, ref: str, steps: _Steps) -> Problem | None:
        """Untag a reference no one can move (a digest, a hold) while a hold keeps the image: no re-check."""
        answer = await self._delete_name(cand, ref, steps)
        if answer is None or isinstance(answer, tuple):
            return answer
        steps.untagged.extend(r for r in _untagged(answer) if not is_hold(r) and r not in steps.untagged)
        if _deleted(answer, cand.image_id):  # not held (a tagged image's leftover hold was its last name)
            steps.gone = True
        return None

    async def _untag_only(self, cand: Candidate, steps: _Steps) -> Outcome | None:
        """keep_last: old tags of an image that keeps others go by name, re-checked right before each."""
        for ref in cand.references:
            if self.stopping():
                return steps.stopped()
            problem = await self._untag(cand, ref, steps)
            if problem is not None:
                return steps.outcome(*problem)
        if steps.gone:
            return outcome_of(cand, "deleted", untagged=steps.untagged)
        if steps.untagged:
            return outcome_of(cand, "untagged", untagged=steps.untagged)
        return outcome_of(cand, "skipped", "not_found", f"already gone: {', '.join(steps.missing)}")

    async def _untag(self, cand: Candidate, ref: str, steps: _Steps) -> Problem | None:
        """Untag `ref` if it still names the candidate, the image gained no tag and no container uses it.

        The engine has no atomic "untag this name only if it points to this ID": between the re-inspect
        and the DELETE a re-tag can still redirect the name. The answer is checked afterwards and what the
        engine really deleted is recorded.
        """
        users = await self.checks.users(cand.image_id)
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
        answer = await self._delete_name(cand, ref, steps)
        if answer is None or isinstance(answer, tuple):
            return answer
        steps.untagged.append(ref)
        deleted = _deleted_ids(answer)
        if cand.image_id in deleted:
            steps.gone = True
        elif deleted:  # the name moved to another image between our inspect and the DELETE
            other = deleted[0]
            detail = f"{ref} was re-tagged onto {other} just before its DELETE: the engine untagged and deleted it"
            self.run.images_deleted += 1  # never report fewer deletions than happened
            await self.audit.record(
                self.run,
                Outcome(
                    other, (ref,), 0, "total", f"re-tag race while untagging {cand.image_id}", "deleted", detail=detail
                ),
            )
            steps.untagged.remove(ref)
            return "conflict", f"{ref} moved to {other} before its DELETE, which deleted {other}: see its line"
        return None


class Aftermath:
    """The engine asked again: after a DELETE went wrong, and for what the checks before a DELETE need."""

    def __init__(self, deleter: Deleter) -> None:
        self.deleter = deleter

    async def ambiguous(self, cand: Candidate, steps: _Steps, exc: EngineError, ref: str | None = None) -> NoReturn:
        """A DELETE without an answer may still have been done: look, record what is known, end the run.

        An image still there is `unknown`, not skipped: the engine goes on with a DELETE whose client gave
        up, so it may finish it any moment now. `on_unknown` hears of it once its line is on disk.
        """
        run = self.deleter.run
        target = ref or cand.image_id
        try:
            gone = await self.absent(cand.image_id)
            if not gone and ref is not None and await self.absent(ref):
                steps.untagged.append(ref)
        except EngineError:
            detail = f"DELETE {target} got no answer ({exc}) and the engine cannot be asked whether it was done"
            await self._unknown(cand, outcome_of(cand, "unknown", detail=detail, untagged=steps.untagged))
            raise RunAborted(f"engine unreachable during DELETE {target}: {exc}") from exc
        if gone:
            run.images_deleted += 1
            if cand.size_basis == "unique":
                run.reclaimed_bytes += cand.size
            detail = f"DELETE {target} got no answer ({exc}); the image is gone"
            await self.deleter.audit.record(run, outcome_of(cand, "deleted", detail=detail, untagged=steps.untagged))
        else:
            detail = f"DELETE {target} got no answer ({exc}); the image is still there, the engine may still delete it"
            await self._unknown(cand, outcome_of(cand, "unknown", detail=detail, untagged=steps.untagged))
        raise RunAborted(f"DELETE {target} got no answer: {exc}") from exc

    async def _unknown(self, cand: Candidate, outcome: Outcome) -> None:
        await self.deleter.audit.record(self.deleter.run, outcome)
        self.deleter.on_unknown(self.deleter.run, cand, outcome)

    async def gone_or_raise(self, cand: Candidate, steps: _Steps, target: str, exc: EngineError) -> Outcome:
        """An unexpected engine error for a call on the image: if the image is gone, that is the outcome.

        Two DELETEs of one image racing (a run and someone's `docker rmi`) make dockerd answer 500
        "unrecognized image ID" to one of them about half the time. Which client deleted it is unknown,
        so it is not counted as ours (nor its bytes); the run goes on. An image still there with an answer
        asking for force (Podman 4.3's "by ID with more than one tag … please force removal") is a
        refusal, as a 409 would be.
        """
        if await self.absent(cand.image_id):
            detail = f"gone; another client deleted it concurrently ({target} answered: {exc})"
            return steps.outcome("not_found", detail)
        if "force" in str(exc).lower():  # Podman refuses an ID with two tags so, not with a 409
            return steps.outcome("conflict", f"the engine refused it: {exc}")
        raise exc

    async def absent(self, name: str) -> bool:
        try:
            await self.deleter.engine.inspect_image(name, lane="delete")
        except EngineNotFound:
            return True
        return False

    async def references_now(self, image_id: str) -> str:
        """The image's references now, for the audit line of an image that stayed (best effort)."""
        try:
            current = await self.deleter.engine.inspect_image(image_id, lane="delete")
        except EngineError as exc:
            return f"cannot inspect it: {exc}"
        refs = sorted(_tags(current)) + _digests(current)
        return ", ".join(refs) or "none left"

    async def users(self, image_id: str) -> list[str]:
        """Containers (any state) using the image now: the engine's 409 comes too late for untags."""
        containers = apishapes.parse_containers(await self.deleter.engine.list_containers(lane="delete"))
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

    def changed(self, inspect: dict[str, Any]) -> Problem | None:
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
        return outcome_of(self.cand, "untagged", detail=STOPPED, untagged=self.untagged)

    def outcome(self, reason: SkipReason, detail: str) -> Outcome:
        """Stopped part-way: untagged if something went, else skipped."""
        return outcome_of(self.cand, "untagged" if self.untagged else "skipped", reason, detail, self.untagged)


def _protected(inspect: dict[str, Any], protect: ProtectConfig) -> Problem | None:
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
