"""Deletion plans: snapshot + action + protection rules + now -> which images go, which stay, and why.

Pure on purpose (no engine, no clock, no files): every safety rule can be tested from a hand-built
snapshot, and the same plan is what dry runs show, what the executor follows and what the audit log cites.

Rules every image action shares (checked in this order, the first that applies is the skip reason):
in use by any container, running or stopped (`in_use`); a reference matching a protected glob
(`protected_reference`, protects the whole image; tags and `repo@sha256:…` digest references alike); a protected label (`protected_label`); tagged but never
pushed or pulled (`local_only`, only when `protect.local_only` is on, for tagged images only); younger than
`min_age` counted from `Image.age_reference` (`too_young`). Every image plan reports what `local_only` kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, get_args

from exporter.config import ActionConfig, BuildCacheAction, FreeSpaceAction, KeepLastAction, ProtectConfig
from exporter.remediation.records import record_json
from exporter.snapshot import DigestRef, Filesystem, Image, ImageRef, Snapshot
from exporter.units import format_duration

SkipReason = Literal[
    "in_use",
    "protected_reference",
    "protected_label",
    "local_only",
    "too_young",
    "conflict",
    "not_found",
    "max_deletions",
]
SKIP_REASONS: tuple[SkipReason, ...] = get_args(SkipReason)
SizeBasis = Literal["unique", "total"]


@dataclass(frozen=True)
class Candidate:
    """One image to delete (through a hold reference when it has no tag) or to untag (`references`, one DELETE each, in order).

    `removes_image` is False when the image keeps other tags (keep_last untagging one repository's old tag):
    then deleting frees nothing and `size` does not count towards the estimate. `known_references` are
    every tag the image had when planned: a tag beyond them at DELETE time means someone wants the image.
    """

    image_id: str
    references: tuple[str, ...]
    size: int
    size_basis: SizeBasis
    reason: str
    removes_image: bool = True
    known_references: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


@dataclass(frozen=True)
class Skip:
    """An image the action selected but must not touch, and the rule that says so."""

    image_id: str
    references: tuple[str, ...]
    size: int
    size_basis: SizeBasis
    reason: SkipReason
    detail: str

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


@dataclass(frozen=True)
class Plan:
    """What one run intends; `candidates` are in execution order."""

    action: str
    type: str
    now: float
    candidates: tuple[Candidate, ...] = ()
    skipped: tuple[Skip, ...] = ()
    kept: tuple[str, ...] = ()
    target_avail_ratio: float | None = None
    filesystem: Filesystem | None = None
    goal_met: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    #: `protect.local_only` as this plan applied it (its effect is summed from `skipped`).
    local_only_enabled: bool = False
    #: free_space: bytes to free to reach the target at plan time (None for other actions or when met).
    needed_bytes: int | None = None

    @cached_property
    def estimated_bytes(self) -> int:
        """Bytes the candidates free if all go (unique sizes; untag-only candidates count 0); summed once."""
        return sum(c.size for c in self.candidates if c.removes_image)

    @property
    def local_only_kept(self) -> tuple[int, int]:
        """Images and bytes `protect.local_only` kept in this plan: what the rule costs, made visible."""
        held = [s for s in self.skipped if s.reason == "local_only"]
        return len(held), sum(s.size for s in held)

    @property
    def reachable(self) -> bool:
        """free_space: whether deleting every candidate could reach the target (always True elsewhere)."""
        return self.needed_bytes is None or self.estimated_bytes >= self.needed_bytes

    @property
    def unreachable_note(self) -> str | None:
        """The up-front warning of a free_space plan that cannot reach its target, else None."""
        if self.reachable or self.needed_bytes is None:
            return None
        return (
            f"at plan time: can free at most {self.estimated_bytes} of the {self.needed_bytes} bytes needed "
            f"to reach target_avail_ratio {self.target_avail_ratio}"
        )

    def totals(self) -> dict[str, int]:
        """How many entries each list of the plan has (`plan_skipped`: the plan's own exclusions)."""
        return {"candidates": len(self.candidates), "plan_skipped": len(self.skipped), "kept": len(self.kept)}

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        """The plan as JSON with each list cut to its first `limit` entries (None: all); `totals` counts all."""
        totals = self.totals()
        data: dict[str, Any] = {
            "action": self.action,
            "type": self.type,
            "candidates": [c.to_json() for c in self.candidates[:limit]],
            "skipped": [s.to_json() for s in self.skipped[:limit]],
            "totals": {"candidates": totals["candidates"], "skipped": totals["plan_skipped"], "kept": totals["kept"]},
            "estimated_bytes": self.estimated_bytes,
            "size_note": "size is the image's unique size (what deleting it frees) when the engine computed "
            "shared sizes (size_basis=unique), else its total size (size_basis=total, an upper bound)",
        }
        if self.kept:
            data["kept"] = list(self.kept[:limit])
        if self.type != "build_cache":
            images, size = self.local_only_kept
            data["local_only"] = {"enabled": self.local_only_enabled, "kept_images": images, "kept_bytes": size}
        if self.target_avail_ratio is not None:
            data["target_avail_ratio"] = self.target_avail_ratio
            data["goal_met_at_plan_time"] = self.goal_met
            if self.filesystem is not None:
                data["filesystem"] = {
                    "path": self.filesystem.path,
                    "size": self.filesystem.size,
                    "avail": self.filesystem.avail,
                    "avail_ratio": round(self.filesystem.avail_ratio, 6),
                }
            if self.needed_bytes is not None:
                data["needed_bytes"] = self.needed_bytes
                data["freeable_bytes"] = self.estimated_bytes
                data["reachable"] = self.reachable
        if self.notes:
            data["notes"] = list(self.notes)
        return data


def image_size(image: Image) -> tuple[int, SizeBasis]:
    """What deleting the image frees: its unique size when known, else its total size (an upper bound)."""
    unique = image.unique_size
    if unique is not None:
        return unique, "unique"
    return image.size, "total"


def _ago(seconds: float) -> str:
    return format_duration(max(seconds, 0.0))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def exclusion(image: Image, action: ActionConfig, protect: ProtectConfig, now: float) -> tuple[SkipReason, str] | None:
    """The first safety rule that forbids touching `image` for this action, with a human detail."""
    return _exclusion(image, image.references, image.age_reference, action, protect, now)


def _exclusion(
    image: Image,
    references: Iterable[ImageRef | DigestRef],
    age_reference: float,
    action: ActionConfig,
    protect: ProtectConfig,
    now: float,
) -> tuple[SkipReason, str] | None:
    """`exclusion` with the image's references and age reference already worked out (a plan needs them twice)."""
    if image.containers > 0:
        return "in_use", f"used by {image.containers} container(s) (running or stopped)"
    if protect.references:
        for ref in references:
            rule = protect.reference_rule(str(ref))
            if rule is not None:
                return "protected_reference", f"{ref} matches protect.references {rule!r}"
    if protect.labels and image.labels:
        rule = protect.label_rule(image.labels)
        if rule is not None:
            return "protected_label", f"label matches protect.labels {rule!r}"
    if protect.local_only and image.local_only and action.type in ("keep_last", "prune_unused", "free_space"):
        return "local_only", "tagged but has no repo digest (built or loaded here, exists nowhere else)"
    age = now - age_reference
    if age < action.min_age:
        return "too_young", f"{_ago(age)} old, min_age {format_duration(action.min_age)}"
    return None


def _skip(image: Image, refs: Iterable[ImageRef | DigestRef | str], reason: SkipReason, detail: str) -> Skip:
    size, basis = image_size(image)
    return Skip(image.id, tuple(str(r) for r in refs), size, basis, reason, detail)


def _candidate(
    image: Image, refs: Iterable[ImageRef | DigestRef | str], reason: str, removes_image: bool = True
) -> Candidate:
    size, basis = image_size(image)
    known = tuple(str(r) for r in image.refs)
    return Candidate(image.id, tuple(str(r) for r in refs), size, basis, reason, removes_image, known)


@dataclass(frozen=True, slots=True)
class _Eligible:
    """An image no rule excludes, with what planning it needs worked out once (at 10k images, recomputing
    references and ages per use was most of a plan's time)."""

    image: Image
    references: tuple[str, ...]  # tags first, then digest references
    age_reference: float
    dangling: bool

    def candidate(self, reason: str) -> Candidate:
        """Deletes the whole image: every reference (through a hold reference when it has no tag)."""
        image = self.image
        size, basis = image_size(image)
        known = self.references[: len(image.refs)]
        return Candidate(image.id, self.references, size, basis, reason, True, known)


def _whole_images(
    images: Iterable[Image], action: ActionConfig, protect: ProtectConfig, now: float
) -> tuple[list[_Eligible], list[Skip]]:
    """The images an action deleting whole images may take, and the skips; one pass, each image read once."""
    eligible: list[_Eligible] = []
    skipped: list[Skip] = []
    for image in images:
        references: tuple[ImageRef | DigestRef, ...] = (
            (*image.refs, *image.digest_refs) if image.digests else image.refs
        )
        age_reference = image.age_reference
        excluded = _exclusion(image, references, age_reference, action, protect, now)
        if excluded is not None:
            skipped.append(_skip(image, references, *excluded))
            continue
        eligible.append(_Eligible(image, tuple(str(r) for r in references), age_reference, not references))
    return eligible, skipped


def _whole_image_reason(e: _Eligible, now: float) -> str:
    kind = "dangling" if e.dangling else "unused" if e.image.refs else "unused, pinned by digest only"
    return f"{kind}, {_ago(now - e.age_reference)} old"


def plan_prune_dangling(snapshot: Snapshot, action: ActionConfig, protect: ProtectConfig, now: float) -> Plan:
    """Untagged images no container uses, older than min_age, without a protected label."""
    eligible, skipped = _whole_images(snapshot.dangling, action, protect, now)
    eligible.sort(key=lambda e: (e.age_reference, e.image.id))  # oldest first
    candidates = tuple(e.candidate(_whole_image_reason(e, now)) for e in eligible)
    return Plan(action.name, action.type, now, candidates, tuple(skipped))


def plan_prune_unused(snapshot: Snapshot, action: ActionConfig, protect: ProtectConfig, now: float) -> Plan:
    """Every image no container uses (tagged or not), older than min_age and unprotected."""
    eligible, skipped = _whole_images(snapshot.images, action, protect, now)
    eligible.sort(key=lambda e: (not e.dangling, e.age_reference, e.image.id))
    candidates = tuple(e.candidate(_whole_image_reason(e, now)) for e in eligible)
    return Plan(action.name, action.type, now, candidates, tuple(skipped))


def plan_free_space(snapshot: Snapshot, action: FreeSpaceAction, protect: ProtectConfig, now: float) -> Plan:
    """Dangling first, then least recently used; the executor stops once the filesystem goal is met."""
    fs = snapshot.filesystem
    target = action.target_avail_ratio
    if fs is None:
        return Plan(
            action.name,
            action.type,
            now,
            target_avail_ratio=target,
            notes=("the data-root filesystem could not be read (filesystem.path): nothing can be measured",),
        )
    if fs.avail_ratio >= target:
        return Plan(action.name, action.type, now, target_avail_ratio=target, filesystem=fs, goal_met=True)
    eligible, skipped = _whole_images(snapshot.images, action, protect, now)

    def lru(e: _Eligible) -> tuple[bool, float, str]:
        last_used = e.image.last_used
        return (not e.dangling, e.age_reference if last_used is None else last_used, e.image.id)

    eligible.sort(key=lru)
    candidates: list[Candidate] = []
    tagged_rank = 0
    for e in eligible:
        if e.dangling:
            candidates.append(e.candidate(_whole_image_reason(e, now)))
            continue
        tagged_rank += 1
        last_used = e.image.last_used
        if last_used is not None:
            why = f"unused for {_ago(now - last_used)} (LRU rank {tagged_rank})"
        else:
            why = f"never seen used, {_ago(now - e.age_reference)} old (LRU rank {tagged_rank})"
        candidates.append(e.candidate(why))
    plan = Plan(
        action.name,
        action.type,
        now,
        tuple(candidates),
        tuple(skipped),
        target_avail_ratio=target,
        filesystem=fs,
        needed_bytes=max(math.ceil(target * fs.size) - fs.avail, 0),
    )
    note = plan.unreachable_note
    return replace(plan, notes=(note,)) if note else plan


def _versions_newest_first(entries: Iterable[tuple[Image, list[ImageRef]]]) -> list[tuple[Image, list[ImageRef]]]:
    """Newest version first: latest `Created` (when it was built), then latest `LastTagTime`, then image ID.

    `Created` is the one time every engine keeps for every image and that a re-tag or a pull cannot move:
    an alias (`latest`) added to an old build later does not make it a newer version.
    """
    return sorted(entries, key=lambda e: (e[0].created, e[0].last_tag_time or 0.0, e[0].id), reverse=True)


def plan_keep_last(snapshot: Snapshot, action: KeepLastAction, protect: ProtectConfig, now: float) -> Plan:
    """Per repository keep the `keep` newest *versions* (images), with every tag they carry there.

    A version is an image, not a tag: `latest` and `stable` on the newest build are that build, so they
    take no place of their own. Every version counts in the ranking, protected, in-use or young ones too:
    the `keep` newest always stay, and an old version kept by a rule (a rollback still running 1.2) stays
    in addition without pushing a newer one out. Each older version loses all its tags in that repository:
    the image is deleted when no other repository keeps it, untagged otherwise.
    """
    by_repo: dict[str, dict[str, tuple[Image, list[ImageRef]]]] = {}
    for image in snapshot.images:
        for ref in image.refs:
            by_repo.setdefault(ref.repository, {}).setdefault(image.id, (image, []))[1].append(ref)
    old_refs: dict[str, list[ImageRef]] = {}
    why: dict[str, list[str]] = {}
    kept: list[str] = []
    images: dict[str, Image] = {}
    for repo, entries in sorted(by_repo.items()):
        ordered = _versions_newest_first(entries.values())
        total = len(ordered)
        for rank, (image, refs) in enumerate(ordered, start=1):
            tags = ", ".join(sorted(r.tag for r in refs))
            if rank <= action.keep:
                kept.append(f"{repo}: version {rank} of {total}, keep {action.keep}; tags {tags}")
                continue
            images[image.id] = image
            old_refs.setdefault(image.id, []).extend(refs)
            why.setdefault(image.id, []).append(f"version {rank} of {total} in {repo}, keep {action.keep}; tags {tags}")
    candidates: list[tuple[Image, Candidate]] = []
    skipped: list[Skip] = []
    for image_id, refs in old_refs.items():
        image = images[image_id]
        refs.sort()
        excluded = _exclusion(image, image.references, image.age_reference, action, protect, now)
        if excluded is not None:
            skipped.append(_skip(image, refs, *excluded))
            continue
        removes = set(refs) == set(image.refs)
        reason = " | ".join(why[image_id])
        if not removes:
            reason += " (untag only: the image is a kept version elsewhere or keeps other tags)"
        candidates.append((image, _candidate(image, refs, reason, removes)))
    ordered_candidates = sorted(candidates, key=lambda p: (p[0].created, p[0].id))  # oldest first
    skipped.sort(key=lambda s: s.image_id)
    return Plan(action.name, action.type, now, tuple(c for _, c in ordered_candidates), tuple(skipped), tuple(kept))


def plan_build_cache(snapshot: Snapshot, action: BuildCacheAction, protect: ProtectConfig, now: float) -> Plan:
    """Build cache has no per-image candidates: the engine prunes it (keep-storage, until=min_age)."""
    notes = [f"POST /build/prune until={format_duration(action.min_age)}"]
    if action.keep_storage:
        notes.append(f"keep-storage={action.keep_storage}")
    if snapshot.engine is not None and snapshot.engine.podman:
        notes.append("Podman 4.3 has no POST /build/prune (404): a real run fails and prunes nothing")
    du = snapshot.disk_usage
    if du is not None and du.build_cache is not None:
        notes.append(f"build cache reclaimable at last /system/df: {du.build_cache.reclaimable} bytes")
    return Plan(action.name, action.type, now, notes=tuple(notes))


def make_plan(snapshot: Snapshot, action: ActionConfig, protect: ProtectConfig, now: float) -> Plan:
    """The plan for `action` on `snapshot` at time `now`."""
    if isinstance(action, BuildCacheAction):
        return plan_build_cache(snapshot, action, protect, now)
    if isinstance(action, FreeSpaceAction):
        plan = plan_free_space(snapshot, action, protect, now)
    elif isinstance(action, KeepLastAction):
        plan = plan_keep_last(snapshot, action, protect, now)
    elif action.type == "prune_unused":
        plan = plan_prune_unused(snapshot, action, protect, now)
    else:
        plan = plan_prune_dangling(snapshot, action, protect, now)
    return replace(plan, local_only_enabled=protect.local_only)
