"""Deletion plans: snapshot + action + protection rules + now -> which images go, which stay, and why.

Pure on purpose (no engine, no clock, no files): every safety rule can be tested from a hand-built
snapshot, and the same plan is what dry runs show, what the executor follows and what the audit log cites.

Rules every image action shares (checked in this order, the first that applies is the skip reason):
in use by any container, running or stopped (`in_use`); a reference matching a protected glob
(`protected_reference`, protects the whole image; tags and `repo@sha256:…` digest references alike); a protected label (`protected_label`); tagged but never
pushed or pulled (`local_only`, only when `protect.local_only` is on, for tagged images only); younger than
`min_age` counted from `Image.age_reference` (`too_young`). Every image plan reports what `local_only` kept.

An action's `select` comes before all of them: an image it does not match is not the action's to consider,
and a plan only counts such images (`not_selected`) rather than listing each. An image is selected when any of
its references (tags and digest references) matches a `select.references` glob or a label matches a
`select.labels` rule; an untagged image has no reference, so only label rules can select it.

`min_age` and the order are different questions. The age reference includes the arrival time (when the
exporter first saw the image), a safety floor: on a first start every image "arrives" at once. The order
(`order_time`) is what is known of use and age: the last use, else the later of last tag and build
(`Created`), so on a new install the oldest builds still go first. Reasons say both, and a `too_young` skip says from
when the image is deletable.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Literal, get_args

from exporter.config import (
    ActionConfig,
    BuildCacheAction,
    FreeSpaceAction,
    ImageActionBase,
    KeepLastAction,
    ProtectConfig,
    SelectConfig,
)
from exporter.core import clocks, offloop
from exporter.core.snapshot import DigestRef, Filesystem, Image, ImageRef, Snapshot
from exporter.core.units import format_duration
from exporter.remediation.records import record_json

SkipReason = Literal[
    "in_use",
    "protected_reference",
    "protected_label",
    "local_only",
    "too_young",
    "conflict",
    "not_found",
    "max_deletions",
    "not_stopped",
    "restarted",
    "trash",
]
SKIP_REASONS: tuple[SkipReason, ...] = get_args(SkipReason)
#: What each skip reason means, for the `reason` of a skipped image's outcome and audit line.
SKIP_SUMMARIES: dict[SkipReason, str] = {
    "in_use": "kept: in use by a container",
    "protected_reference": "kept: a reference matches protect.references",
    "protected_label": "kept: a label matches protect.labels",
    "local_only": "kept: local-only (protect.local_only)",
    "too_young": "kept: younger than min_age",
    "conflict": "kept: the engine refused (conflict)",
    "not_found": "already gone",
    "max_deletions": "kept: max_deletions reached",
    "not_stopped": "kept: the container is no longer stopped",
    "restarted": "kept: the container ran again since the plan",
    "trash": "kept: could not be saved to the trash (no known registry copy)",
}
SizeBasis = Literal["unique", "total"]
_UNIQUE: SizeBasis = "unique"
_TOTAL: SizeBasis = "total"


@dataclass(frozen=True, slots=True)  # slots: a plan holds one per image, and they are made at that rate
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
    repo_digests: tuple[str, ...] = ()
    created: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = record_json(self)
        data["restore"] = restore_hint(self.image_id, self.repo_digests, self.known_references)
        return data


def restore_hint(image_id: str, repo_digests: Sequence[str], tags: Sequence[str]) -> str:
    """How a deleted image could be brought back, in words a person can act on.

    A repo digest is where the engine last pulled or pushed the image; the registry may have dropped it
    since, and on the containerd store and Podman every image lists one, so it names a place to try, not a
    proven copy. With none, no registry copy is known.
    """
    if not repo_digests:
        return f"no copy known: {image_id} is gone for good once deleted"
    pulled = repo_digests[0]
    lines = [f"docker pull {pulled}", *(f"docker tag {pulled} {t}" for t in tags)]
    return " && ".join(lines)


@dataclass(frozen=True)
class Skip:
    """An image the action selected but must not touch, and the rule that says so."""

    image_id: str
    references: tuple[str, ...]
    size: int
    size_basis: SizeBasis
    reason: SkipReason
    detail: str

    @property
    def summary(self) -> str:
        """The skip in words (`kept: in use by a container`); `detail` says the specifics."""
        return SKIP_SUMMARIES[self.reason]

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
    #: free_space: the byte goal, beside or instead of `target_avail_ratio` (both given: both must hold).
    target_avail_bytes: int | None = None
    #: The action's `select` (None: every image) and how many images it left out of this plan.
    select: SelectConfig | None = None
    not_selected: int = 0

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
            f"to reach {self.goal_text}"
        )

    @property
    def goal_text(self) -> str:
        """free_space: the goal in the config's words (both keys when both are given)."""
        parts = [] if self.target_avail_ratio is None else [f"target_avail_ratio {self.target_avail_ratio}"]
        if self.target_avail_bytes is not None:
            parts.append(f"target_avail_bytes {self.target_avail_bytes}")
        return " and ".join(parts)

    @property
    def not_selected_note(self) -> str | None:
        """How many images `select` left out (they are counted, not listed), else None."""
        if self.select is None or not self.not_selected:
            return None
        return f"{self.not_selected} images not selected by this action's select"

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
        if self.select is not None:
            data["select"] = {**self.select.describe(), "not_selected": self.not_selected}
        if self.type == "free_space":
            data["target_avail_ratio"] = self.target_avail_ratio
            if self.target_avail_bytes is not None:
                data["target_avail_bytes"] = self.target_avail_bytes
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


def _rough(seconds: float) -> str:
    """The two largest units of a duration (`28d3h`, `5m54s`): enough for a reason, exact times are in the data.

    The same text as the first two units of `format_duration`, computed directly by comparisons: plans write
    one or two per image, and the general formatter is costly at that rate.
    """
    rest = round(seconds)
    if rest >= 86_400:
        if rest >= 31_536_000:
            top, rest = divmod(rest, 31_536_000)
            unit = "y"
        elif rest >= 604_800:
            top, rest = divmod(rest, 604_800)
            unit = "w"
        else:
            top, rest = divmod(rest, 86_400)
            unit = "d"
    elif rest >= 3600:
        top, rest = divmod(rest, 3600)
        unit = "h"
    elif rest >= 60:
        top, rest = divmod(rest, 60)
        unit = "m"
    else:
        return f"{rest}s" if rest > 0 else "0s"
    # the second unit: the largest smaller one the rest fills (it is below the first unit's size)
    if rest >= 3600:
        if rest >= 604_800:
            return f"{top}{unit}{rest // 604_800}w"
        if rest >= 86_400:
            return f"{top}{unit}{rest // 86_400}d"
        return f"{top}{unit}{rest // 3600}h"
    if rest >= 60:
        return f"{top}{unit}{rest // 60}m"
    return f"{top}{unit}{rest}s" if rest > 0 else f"{top}{unit}"


@functools.lru_cache(maxsize=4096)
def utc(timestamp: float) -> str:
    """A timestamp as the UTC time an operator reads in a reason (`2026-12-07 14:05:00 UTC`).

    Cached: on a first start every image shares one arrival time, and a plan writes it for each of them."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))
    except (OverflowError, OSError, ValueError):
        return repr(timestamp)


def order_time(image: Image) -> float:
    """When the image was last known to matter: its last use, else the later of its last tag and its build.

    The order of every action that deletes oldest or least recently used first: `Image.age_reference`
    without the arrival time, which only says when the exporter first saw the image (on a first start,
    every image at once); it guards `min_age` but says nothing about which build is older. Infinitely recent
    while the last tag time is still being read, like `Image.age_reference`.
    """
    if image.last_used is not None:
        return image.last_used
    if image.tag_time_pending:
        return math.inf
    return image.created if image.last_tag_time is None else max(image.created, image.last_tag_time)


def deletable_from(image: Image, min_age: float) -> float | None:
    """When `min_age` stops protecting the image; None while its last tag time is still being read.

    A forward step of the wall clock since the image was first seen is not age: it moves the date on too."""
    reference = image.age_reference
    return None if math.isinf(reference) else reference + clocks.CLOCK.forward_step(image.seen_offset) + min_age


def _story(image: Image, now: float) -> str:
    """What is known of the image's age and use (`built 28d ago, tagged 2d ago, never seen used`), and, when the
    exporter's first sighting is what counts for min_age, since when it is here."""
    created, tagged, used, arrived = image.created, image.last_tag_time, image.last_used, image.arrived
    # each part on its own, the text built once
    retagged = f", tagged {_rough(now - tagged)} ago" if tagged is not None and tagged > created else ""
    use = ", never seen used" if used is None else f", last used {_rough(now - used)} ago"
    since = _here_since(arrived, now) if arrived is not None and arrived > max(created, tagged or 0.0) else ""
    return f"built {_rough(now - created)} ago{retagged}{use}{since}"


@functools.lru_cache(maxsize=256)
def _here_since(arrived: float, now: float) -> str:
    """The arrival part of `_story`; cached: on a first start every image shares one arrival time, and a plan
    has one `now`, so a plan writes the same text for each of them."""
    return f"; here since {utc(arrived)} ({_rough(now - arrived)} ago, first seen by the exporter)"


def exclusion(image: Image, action: ActionConfig, protect: ProtectConfig, now: float) -> tuple[SkipReason, str] | None:
    """The first safety rule that forbids touching `image` for this action, with a human detail."""
    step = clocks.CLOCK.forward_step(image.seen_offset)
    return _exclusion(image, image.references, image.age_reference, step, action, protect, now)


def _exclusion(
    image: Image,
    references: Iterable[ImageRef | DigestRef],
    age_reference: float,
    step: float,
    action: ActionConfig,
    protect: ProtectConfig,
    now: float,
) -> tuple[SkipReason, str] | None:
    """`exclusion` with the image's references, age reference and the wall clock's forward step since it was
    first seen (a clock step is not age) already worked out: a plan reads the clock once, not per image."""
    held = _held(image, references, action, protect)
    if held is not None:
        return held
    if now - age_reference - step < action.min_age:
        return "too_young", _too_young(image, age_reference, step, action.min_age, now)
    return None


class _Rules:
    """The rules of one plan, read once (the clock's offset, the compiled protection globs), for each image.

    Most images break no rule: a quick test that can only err towards "maybe" (each rule's precondition,
    inlined) clears them, and `_exclusion` itself decides every image it does not clear, so skips and their
    details are exactly `_exclusion`'s.
    """

    __slots__ = ("action", "labels", "local_only", "min_age", "now", "offset", "protect", "protected")

    def __init__(self, action: ActionConfig, protect: ProtectConfig, now: float) -> None:
        self.action, self.protect, self.now = action, protect, now
        self.offset = clocks.CLOCK.offset()
        self.protected = _any_glob(protect.references)
        self.labels = bool(protect.labels)
        self.local_only = protect.local_only and action.type in ("keep_last", "prune_unused", "free_space")
        self.min_age = action.min_age

    def excluded(
        self, image: Image, references: tuple[ImageRef | DigestRef, ...], names: tuple[str, ...]
    ) -> tuple[SkipReason, str] | None:
        """`exclusion(image, ...)`, given the image's references and the same as text."""
        # Image.age_reference and Clock.forward_step, inlined (the same comparisons, so the same floats)
        if image.tag_time_pending:
            age_reference = math.inf
        else:
            age_reference = image.created
            tagged, arrived = image.last_tag_time, image.arrived
            if tagged is not None and tagged > age_reference:
                age_reference = tagged
            if arrived is not None and arrived > age_reference:
                age_reference = arrived
        seen = image.seen_offset
        step = 0.0 if seen is None else max(0.0, self.offset - seen)
        maybe = image.containers > 0
        protected = self.protected
        if protected is not None and not maybe:
            for name in names:
                if protected(name):
                    maybe = True
                    break
        if (
            maybe
            or (self.labels and image.labels)
            or (self.local_only and image.refs and not image.digests)
            or self.now - age_reference - step < self.min_age
        ):
            return _exclusion(image, references, age_reference, step, self.action, self.protect, self.now)
        return None


@functools.lru_cache(maxsize=64)
def _any_glob(patterns: tuple[str, ...]) -> Callable[[str], object] | None:
    """One compiled pattern matching what any of the globs matches (None for no globs): most references match
    none, and one regex answers that at once instead of one `fnmatchcase` per glob."""
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def selected(image: Image, references: Iterable[ImageRef | DigestRef | str], select: SelectConfig | None) -> bool:
    """Whether an action's `select` takes the image: any reference matches a glob or a label matches a rule."""
    if select is None:
        return True
    match = _any_glob(select.references)
    if match is not None and any(match(str(ref)) for ref in references):
        return True
    return bool(select.labels and image.labels and select.label_rule(image.labels) is not None)


def action_select(action: ActionConfig) -> SelectConfig | None:
    """The action's `select` rules; None for actions on other things than images, and where it has none."""
    return action.select if isinstance(action, ImageActionBase) else None


def _held(
    image: Image, references: Iterable[ImageRef | DigestRef], action: ActionConfig, protect: ProtectConfig
) -> tuple[SkipReason, str] | None:
    """The rules before `min_age`: use and protection, whatever the image's age."""
    if image.containers > 0:
        return "in_use", f"used by {image.containers} container(s) (running or stopped)"
    match = _any_glob(protect.references)
    if match is not None:
        for ref in references:
            text = str(ref)
            if match(text):  # the first glob that matches is the one the detail names
                return "protected_reference", f"{ref} matches protect.references {protect.reference_rule(text)!r}"
    if protect.labels and image.labels:
        rule = protect.label_rule(image.labels)
        if rule is not None:
            return "protected_label", f"label matches protect.labels {rule!r}"
    if protect.local_only and image.local_only and action.type in ("keep_last", "prune_unused", "free_space"):
        return "local_only", "tagged but has no repo digest (built or loaded here, exists nowhere else)"
    return None


def _too_young(image: Image, age_reference: float, step: float, min_age: float, now: float) -> str:
    """Why min_age holds the image and until when: which time counts (build, tag or arrival) and the UTC time;
    `step`, a forward step of the wall clock since the image was first seen, counts as no age."""
    if math.isinf(age_reference):
        return f"last tag time not read yet: held until it is known, min_age {format_duration(min_age)}"
    if image.arrived is not None and age_reference == image.arrived:
        since = f"here since {utc(age_reference)}, first seen by the exporter"
    elif image.last_tag_time is not None and age_reference == image.last_tag_time:
        since = f"tagged {utc(age_reference)}"
    else:
        since = f"built {utc(age_reference)}"
    until = age_reference + step + min_age
    stepped = f", the wall clock stepped {_rough(step)} forward since" if step > 0 else ""
    return (
        f"{_ago(now - age_reference - step)} old ({since}{stepped}), min_age {format_duration(min_age)}: "
        f"deletable from {utc(until)} (in {_rough(until - now)})"
    )


def _references(image: Image) -> tuple[ImageRef | DigestRef, ...]:
    """`Image.references`, without parsing digests the image does not have (most images have none or one)."""
    return (*image.refs, *image.digest_refs) if image.digests else image.refs


def _names(image: Image, references: tuple[ImageRef | DigestRef, ...]) -> tuple[str, ...]:
    """The references as text; most images have one tag and no digest, written here without a call of
    `ImageRef.__str__` (the same text)."""
    refs = image.refs
    if len(refs) == 1 and not image.digests:
        ref = refs[0]
        return (f"{ref.repository}:{ref.tag}",)
    return tuple(map(str, references))


def _skip(image: Image, refs: Iterable[ImageRef | DigestRef | str], reason: SkipReason, detail: str) -> Skip:
    size, basis = image_size(image)
    return Skip(image.id, tuple(map(str, refs)), size, basis, reason, detail)


def _candidate(
    image: Image, refs: Iterable[ImageRef | DigestRef | str], reason: str, removes_image: bool = True
) -> Candidate:
    size, basis = image_size(image)
    known = tuple(map(str, image.refs))
    return Candidate(
        image.id, tuple(map(str, refs)), size, basis, reason, removes_image, known, image.digests, image.created
    )


#: An image no rule excludes, as its own sort key: (has references, order time, image ID, position in the
#: snapshot), then the image and its references as text (tags first, then digest references), each worked
#: out once (recomputing references and ages per use would be most of a plan's time). The position makes
#: every key distinct, so sorting never compares images and keeps the snapshot's order among equal keys; a
#: plain tuple, as `list.sort` compares exact tuples fastest.
_Eligible = tuple[bool, float, str, int, Image, tuple[str, ...]]


def _whole_candidate(e: _Eligible, reason: str) -> Candidate:
    """Deletes the whole image: every reference (through a hold reference when it has no tag)."""
    image, references = e[4], e[5]
    shared = image.shared_size  # image_size, inlined
    size, basis = (image.size, _TOTAL) if shared is None else (max(image.size - shared, 0), _UNIQUE)
    known = references[: len(image.refs)]
    return _planned(image.id, references, size, basis, reason, True, known, image.digests, image.created)


_new = object.__new__
_slot = Candidate.__dict__  # each field's slot descriptor: its `__set__` sets the field, frozen or not
_set_image_id, _set_references, _set_size = (
    _slot["image_id"].__set__,
    _slot["references"].__set__,
    _slot["size"].__set__,
)
_set_size_basis, _set_reason = _slot["size_basis"].__set__, _slot["reason"].__set__
_set_removes_image, _set_known_references = _slot["removes_image"].__set__, _slot["known_references"].__set__
_set_repo_digests, _set_created = _slot["repo_digests"].__set__, _slot["created"].__set__


def _planned(
    image_id: str,
    references: tuple[str, ...],
    size: int,
    size_basis: SizeBasis,
    reason: str,
    removes_image: bool,
    known_references: tuple[str, ...],
    repo_digests: tuple[str, ...],
    created: float | None,
) -> Candidate:
    """`Candidate(...)` with every field given, made more cheaply: a frozen dataclass's `__init__` looks up
    `object.__setattr__` for each field, here each slot is set directly; a plan makes one per image."""
    candidate = _new(Candidate)
    _set_image_id(candidate, image_id)
    _set_references(candidate, references)
    _set_size(candidate, size)
    _set_size_basis(candidate, size_basis)
    _set_reason(candidate, reason)
    _set_removes_image(candidate, removes_image)
    _set_known_references(candidate, known_references)
    _set_repo_digests(candidate, repo_digests)
    _set_created(candidate, created)
    return candidate


def _whole_images(
    images: Iterable[Image], action: ActionConfig, protect: ProtectConfig, now: float
) -> tuple[list[_Eligible], list[Skip], int]:
    """The images an action deleting whole images may take, the skips, and how many `select` left out; one
    pass, each image read once."""
    eligible: list[_Eligible] = []
    skipped: list[Skip] = []
    select = action_select(action)
    not_selected = 0
    rules = _Rules(action, protect, now)
    inf = math.inf
    for position, image in enumerate(images):
        if not position & 63:
            offloop.checkpoint()  # scrapes first (see offloop.py)
        references: tuple[ImageRef | DigestRef, ...] = (
            (*image.refs, *image.digest_refs) if image.digests else image.refs
        )
        if select is not None and not selected(image, references, select):
            not_selected += 1
            continue
        names = _names(image, references)
        excluded = rules.excluded(image, references, names)
        if excluded is not None:
            skipped.append(_skip(image, names, *excluded))
            continue
        # order_time, inlined
        used = image.last_used
        if used is not None:
            order = used
        elif image.tag_time_pending:
            order = inf
        else:
            tagged = image.last_tag_time
            order = image.created if tagged is None or not tagged > image.created else tagged
        eligible.append((bool(names), order, image.id, position, image, names))
    return eligible, skipped, not_selected


def _dangling_then_oldest(eligible: list[_Eligible]) -> list[_Eligible]:
    """Sorted as their keys say: dangling first, then by order time, then image ID (sorted by time alone
    first: see `offloop.sorted_by`)."""
    dangling = [e for e in eligible if not e[0]]
    named = [e for e in eligible if e[0]]
    return offloop.sorted_by(dangling, 1, 2) + offloop.sorted_by(named, 1, 2)


def _whole_image_reason(e: _Eligible, now: float) -> str:
    image = e[4]
    kind = "unused" if image.refs else "unused, pinned by digest only" if e[0] else "dangling"
    return f"{kind}, {_story(image, now)}"


def plan_prune_dangling(snapshot: Snapshot, action: ActionConfig, protect: ProtectConfig, now: float) -> Plan:
    """Untagged images no container uses, older than min_age, without a protected label."""
    eligible, skipped, not_selected = _whole_images(snapshot.dangling, action, protect, now)
    eligible = _dangling_then_oldest(eligible)  # none has references: oldest first
    candidates = tuple([_whole_candidate(e, _whole_image_reason(e, now)) for e in eligible])
    return Plan(action.name, action.type, now, candidates, tuple(skipped), not_selected=not_selected)


def plan_prune_unused(snapshot: Snapshot, action: ActionConfig, protect: ProtectConfig, now: float) -> Plan:
    """Every image no container uses (tagged or not), older than min_age and unprotected."""
    eligible, skipped, not_selected = _whole_images(snapshot.images, action, protect, now)
    eligible = _dangling_then_oldest(eligible)
    candidates = tuple([_whole_candidate(e, _whole_image_reason(e, now)) for e in eligible])
    return Plan(action.name, action.type, now, candidates, tuple(skipped), not_selected=not_selected)


def plan_free_space(snapshot: Snapshot, action: FreeSpaceAction, protect: ProtectConfig, now: float) -> Plan:
    """Dangling first, then least recently used; the executor stops once the filesystem goal is met."""
    fs = snapshot.filesystem
    ratio, goal_bytes = action.target_avail_ratio, action.target_avail_bytes
    if fs is None:
        return Plan(
            action.name,
            action.type,
            now,
            notes=("the data-root filesystem could not be read (filesystem.path): nothing can be measured",),
            target_avail_ratio=ratio,
            target_avail_bytes=goal_bytes,
        )
    needed = action.shortfall(fs.size, fs.avail)
    if needed == 0:
        return Plan(
            action.name,
            action.type,
            now,
            target_avail_ratio=ratio,
            target_avail_bytes=goal_bytes,
            filesystem=fs,
            goal_met=True,
        )
    eligible, skipped, not_selected = _whole_images(snapshot.images, action, protect, now)

    eligible = _dangling_then_oldest(eligible)  # then least recently used
    candidates: list[Candidate] = []
    tagged_rank = 0
    for e in eligible:
        if not len(candidates) & 63:
            offloop.checkpoint()  # scrapes first (see offloop.py)
        if not e[0]:
            candidates.append(_whole_candidate(e, _whole_image_reason(e, now)))
            continue
        tagged_rank += 1
        candidates.append(_whole_candidate(e, f"{_story(e[4], now)} (LRU rank {tagged_rank})"))
    plan = Plan(
        action.name,
        action.type,
        now,
        tuple(candidates),
        tuple(skipped),
        filesystem=fs,
        needed_bytes=needed,
        not_selected=not_selected,
        target_avail_ratio=ratio,
        target_avail_bytes=goal_bytes,
    )
    offloop.free_later(eligible)  # freed a slice at a time, not in one call as this returns (see offloop.py)
    note = plan.unreachable_note
    return replace(plan, notes=(note,)) if note else plan


def _newest_version_first(entry: tuple[Image, list[ImageRef]]) -> tuple[float, float, str]:
    """Newest version first (sorted in reverse): latest `Created` (when it was built), then latest
    `LastTagTime`, then image ID.

    `Created` is the one time every engine keeps for every image and that a re-tag or a pull cannot move:
    an alias (`latest`) added to an old build later does not make it a newer version.
    """
    image = entry[0]
    return image.created, image.last_tag_time or 0.0, image.id


def _ref_order(ref: ImageRef) -> tuple[str, str]:
    return ref.repository, ref.tag  # ImageRef's own order, without building a dataclass comparison per pair


def _tags(refs: list[ImageRef]) -> str:
    return refs[0].tag if len(refs) == 1 else ", ".join(sorted([r.tag for r in refs]))


def plan_keep_last(snapshot: Snapshot, action: KeepLastAction, protect: ProtectConfig, now: float) -> Plan:
    """Per repository keep the `keep` newest *versions* (images), with every tag they carry there.

    A version is an image, not a tag: `latest` and `stable` on the newest build are that build, so they
    take no place of their own. Every version counts in the ranking, protected, in-use or young ones too:
    the `keep` newest always stay, and an old version kept by a rule (a rollback still running 1.2) stays
    in addition without pushing a newer one out. Each older version loses all its tags in that repository:
    the image is deleted when no other repository keeps it, untagged otherwise.
    """
    by_repo: dict[str, dict[str, tuple[Image, list[ImageRef]]]] = {}
    for position, image in enumerate(snapshot.images):
        if not position & 63:
            offloop.checkpoint()  # scrapes first (see offloop.py)
        for ref in image.refs:
            entries = by_repo.get(ref.repository)
            if entries is None:
                entries = by_repo[ref.repository] = {}
            entry = entries.get(image.id)
            if entry is None:
                entries[image.id] = (image, [ref])
            else:
                entry[1].append(ref)
    old: dict[str, tuple[Image, list[ImageRef], list[str]]] = {}  # image ID: the image, its old tags, why
    kept: list[str] = []
    select = action.select
    keep = action.keep
    not_selected = 0
    if select is not None:  # every tagged image not selected, counted once whether or not it is an old version
        not_selected = sum(
            1 for image in snapshot.images if image.refs and not selected(image, _references(image), select)
        )
    for repo, entries in sorted(by_repo.items()):
        offloop.checkpoint()  # scrapes first (see offloop.py)
        # _newest_version_first as each entry's own sort key (image IDs are distinct: images never compared)
        versions = [(i.created, i.last_tag_time or 0.0, i.id, i, r) for i, r in entries.values()]
        versions = offloop.sorted_in_slices(versions)[::-1]  # newest first
        total = len(versions)
        for rank, (_, _, _, _, refs) in enumerate(versions[:keep], start=1):
            kept.append(f"{repo}: version {rank} of {total}, keep {keep}; tags {_tags(refs)}")
        in_repo = f" of {total} in {repo}, keep {keep}; tags "  # formatted once per repository
        for rank, (_, _, image_id, image, refs) in enumerate(versions[keep:], start=keep + 1):
            tag_text = refs[0].tag if len(refs) == 1 else _tags(refs)
            line = f"version {rank}{in_repo}{tag_text}"
            known = old.get(image_id)
            if known is None:  # this repository is done with `refs`: it may grow by another's old tags
                old[image_id] = (image, refs, [line])
            else:
                known[1].extend(refs)
                known[2].append(line)
    candidates: list[tuple[float, str, Candidate]] = []
    skipped: list[Skip] = []
    rules = _Rules(action, protect, now)
    for image_id, (image, refs, reasons) in old.items():
        if not len(candidates) & 63:
            offloop.checkpoint()  # scrapes first (see offloop.py)
        references: tuple[ImageRef | DigestRef, ...] = (  # _references, inlined
            (*image.refs, *image.digest_refs) if image.digests else image.refs
        )
        if select is not None and not selected(image, references, select):
            continue
        if len(refs) > 1:
            refs.sort(key=_ref_order)
        names = _names(image, references)
        excluded = rules.excluded(image, references, names)
        if excluded is not None:
            skipped.append(_skip(image, refs, *excluded))
            continue
        # refs are some of image.refs, each once: as many means all of them (duplicates: compare the sets)
        removes = len(refs) == len(image.refs) or set(refs) == set(image.refs)
        reason = reasons[0] if len(reasons) == 1 else " | ".join(reasons)
        if not removes:
            reason += " (untag only: the image is a kept version elsewhere or keeps other tags)"
        shared = image.shared_size  # image_size, inlined
        size, basis = (image.size, _TOTAL) if shared is None else (max(image.size - shared, 0), _UNIQUE)
        tagged = len(image.refs)
        tags = names[:tagged]  # references are the tags first
        names_of_refs = tags if len(refs) == tagged == 1 else tuple(map(str, refs))
        candidate = _planned(image_id, names_of_refs, size, basis, reason, removes, tags, image.digests, image.created)
        candidates.append((image.created, image_id, candidate))
    candidates = offloop.sorted_by(candidates, 0, 1)  # oldest first
    skipped.sort(key=lambda s: s.image_id)
    offloop.free_later(by_repo, old, candidates)  # freed a slice at a time, not in one call as this returns
    return Plan(
        action.name,
        action.type,
        now,
        tuple([c for _, _, c in candidates]),
        tuple(skipped),
        tuple(kept),
        not_selected=not_selected,
    )


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


@dataclass(frozen=True)
class Maturing:
    """Images only `min_age` holds back from an action now, and from when each becomes deletable."""

    action: str
    min_age: float
    #: (image, deletable from), soonest first
    images: tuple[tuple[Image, float], ...]

    @property
    def size(self) -> int:
        return sum(image_size(image)[0] for image, _ in self.images)


def maturing(snapshot: Snapshot, action: ActionConfig, protect: ProtectConfig, now: float) -> Maturing | None:
    """What becomes deletable for `action` within its `min_age` (None for build_cache).

    The images the action would consider if it ran now (for free_space: as if the disk were full, so the
    answer does not depend on today's usage), skipped for `too_young` and for nothing else. Images whose
    last tag time is not read yet have no date and are left out.
    """
    if isinstance(action, BuildCacheAction) or action.type == "prune_containers":
        return None
    if isinstance(action, KeepLastAction):
        by_id = snapshot.by_id or {i.id: i for i in snapshot.images}
        held = [by_id.get(s.image_id) for s in plan_keep_last(snapshot, action, protect, now).skipped]
        images: Iterable[Image] = [i for i in held if i is not None]
    elif action.type == "prune_dangling":
        images = snapshot.dangling
    else:
        images = snapshot.images
    found: list[tuple[Image, float]] = []
    for image in images:
        when = deletable_from(image, action.min_age)
        if (
            when is not None
            and when > now
            and selected(image, image.references, action_select(action))
            and _held(image, image.references, action, protect) is None
        ):
            found.append((image, when))
    found.sort(key=lambda pair: (pair[1], pair[0].id))
    return Maturing(action.name, action.min_age, tuple(found))


def goal_met(action: ActionConfig, size: int, avail: int) -> bool:
    """free_space: whether a filesystem of `size` bytes with `avail` available meets the action's goal (every
    goal it gives); the planner, the executor and dry runs ask this one question. False for other actions."""
    return isinstance(action, FreeSpaceAction) and action.shortfall(size, avail) == 0


def make_plan(snapshot: Snapshot, action: ActionConfig, protect: ProtectConfig, now: float) -> Plan:
    """The plan for `action` on `snapshot` at time `now`."""
    if isinstance(action, BuildCacheAction):
        return plan_build_cache(snapshot, action, protect, now)
    if action.type == "prune_containers":
        # FinishedAt is only in container inspect, which a pure plan cannot call: the executor selects the
        # containers when the run starts (exporter.remediation.containers), and its outcomes list them.
        note = "containers are selected when the run starts, from an inspect of each stopped container"
        return Plan(action.name, action.type, now, notes=(note,))
    if isinstance(action, FreeSpaceAction):
        plan = plan_free_space(snapshot, action, protect, now)
    elif isinstance(action, KeepLastAction):
        plan = plan_keep_last(snapshot, action, protect, now)
    elif action.type == "prune_unused":
        plan = plan_prune_unused(snapshot, action, protect, now)
    else:
        plan = plan_prune_dangling(snapshot, action, protect, now)
    plan = replace(plan, local_only_enabled=protect.local_only, select=action_select(action))
    not_selected = plan.not_selected_note
    return replace(plan, notes=(*plan.notes, not_selected)) if not_selected else plan
