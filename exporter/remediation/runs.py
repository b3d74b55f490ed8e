"""The record of a run: what triggered it, its plan, what happened to each image, and how it ended.

Kept apart from the executor (which fills it in) and the service (which starts it), so the HTTP layer, the
history and the metrics can read a run without depending on how it is executed.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Literal

from exporter.config import FreeSpaceAction
from exporter.core.snapshot import Filesystem
from exporter.remediation.planner import Candidate, Plan, Skip, SkipReason, restore_hint
from exporter.remediation.records import record_json

_RESULT = attrgetter("result")
SUMMARY_LIST_LIMIT = 20  # images listed per kind in a history summary; the counts cover the rest
#: Entries per list in a manual run's answer unless the request says otherwise (`?limit=`); totals cover the rest.
ANSWER_LIST_LIMIT = 100
#: The most a request may ask to list: the bound of `max_deletions`, so every candidate a run may act on fits.
ANSWER_LIST_MAX = 100_000

Trigger = Literal["alert", "schedule", "manual"]
RunResultKind = Literal["success", "partial", "failure", "dry_run"]
OutcomeKind = Literal["deleted", "untagged", "skipped", "would_delete", "unknown"]


@dataclass(slots=True)  # slots: a dry run holds one per candidate, and they are made at that rate
class Outcome:
    """What happened to one candidate or skipped image in one run (also its audit line)."""

    image_id: str | None
    references: tuple[str, ...]
    size: int
    size_basis: str
    reason: str
    result: OutcomeKind
    skip_reason: SkipReason | None = None
    detail: str = ""
    untagged: tuple[str, ...] = ()
    #: What a restore needs (see exporter/remediation/restore.py): every tag the image had when planned,
    #: every repo digest it listed, and its build time. Empty for build cache and re-tag race lines.
    tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    created: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = record_json(self, omit_empty=("skip_reason", "detail", "untagged", "tags", "repo_digests", "created"))
        if self.result in ("deleted", "would_delete") and self.image_id:
            data["restore"] = restore_hint(self.image_id, self.repo_digests, self.tags)
        return data


def outcome_of(
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


def would_delete(candidate: Candidate) -> Outcome:
    """`outcome_of(candidate, "would_delete")`, the outcome a dry run lists for each candidate it reaches."""
    return Outcome(
        candidate.image_id,
        candidate.references,
        candidate.size,
        candidate.size_basis,
        candidate.reason,
        "would_delete",
        None,
        "",
        (),
        candidate.known_references,
        candidate.repo_digests,
        candidate.created,
    )


def tally(outcomes: list[Outcome]) -> tuple[dict[str, int], dict[str, int], int]:
    """Outcomes by result, skips by reason (`error` when none is given), and the bytes of those that would be
    deleted; each dict in the order its keys first occur. Runs over every outcome when a run ends: counted in
    C where it can be (a Counter over the results), and the rest only when there is any."""
    counts = dict(Counter(map(_RESULT, outcomes)))
    skipped: dict[str, int] = {}
    if "skipped" in counts:
        skipped = dict(Counter([o.skip_reason or "error" for o in outcomes if o.result == "skipped"]))
    would_bytes = sum([o.size for o in outcomes if o.result == "would_delete"]) if "would_delete" in counts else 0
    return counts, skipped, would_bytes


@dataclass
class Run:
    """One run of one action: its trigger, plan, outcomes and result; JSON for the API and history."""

    action: str
    type: str
    trigger: Trigger
    dry_run: bool
    fingerprints: tuple[str, ...] = ()
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: RunResultKind | None = None
    detail: str = ""
    plan: Plan | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    reclaimed_bytes: int = 0
    images_deleted: int = 0
    goal_met: bool | None = None
    filesystem_after: Filesystem | None = None

    @property
    def trigger_ref(self) -> list[str] | str:
        """What the audit log names as the trigger: alert fingerprints, or `schedule` / `manual`."""
        return list(self.fingerprints) if self.trigger == "alert" else self.trigger

    def shortfall_bytes(self, action: FreeSpaceAction | None) -> int | None:
        """Bytes still missing to reach a free-space goal when the run ended (0: met, or not free_space).

        After deletions the last statvfs counts; a dry run projects from the plan's filesystem plus the
        candidates it would have deleted. None when the filesystem was never read (e.g. engine unreachable).
        """
        if action is None or self.goal_met:
            return 0
        fs = self.filesystem_after or (self.plan.filesystem if self.plan else None)
        if fs is None or self.plan is None:
            return None
        avail = fs.avail
        if self.dry_run:
            would = sum(1 for o in self.outcomes if o.result == "would_delete")
            avail += sum(c.size for c in self.plan.candidates[:would] if c.removes_image)
        return action.shortfall(fs.size, avail)

    def summary(self) -> dict[str, Any]:
        """The bounded form kept in history: counts and the first SUMMARY_LIST_LIMIT images of each kind.

        Bounded because history keeps it for the exporter's lifetime: a dry run over every image must not
        keep an entry per image (the full lists are in the run's own API answer and, for deletions, the audit log).
        """
        outcomes = self.outcomes
        counts, skipped, would_bytes = tally(outcomes)
        first: dict[str, list[Outcome]] = {"deleted": [], "would_delete": []}
        wanted = {
            "deleted": min(counts.get("deleted", 0) + counts.get("untagged", 0), SUMMARY_LIST_LIMIT),
            "would_delete": min(counts.get("would_delete", 0), SUMMARY_LIST_LIMIT),
        }
        missing = sum(wanted.values())
        for o in outcomes:  # only as far as the first ones of each kind reach
            if not missing:
                break
            kind = "deleted" if o.result in ("deleted", "untagged") else o.result
            listed = first.get(kind)
            if listed is not None and len(listed) < wanted[kind]:
                listed.append(o)
                missing -= 1
        data: dict[str, Any] = {
            "run_id": self.run_id,
            "action": self.action,
            "type": self.type,
            "trigger": self.trigger,
            "alert_fingerprints": list(self.fingerprints),
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "detail": self.detail,
            "candidates": len(self.plan.candidates) if self.plan else 0,
            "estimated_bytes": self.plan.estimated_bytes if self.plan else 0,
            "deleted": [o.to_json() for o in first["deleted"]],
            "would_delete": [o.to_json() for o in first["would_delete"]],
            "counts": counts,
            "skipped_by_reason": skipped,
            "images_deleted": self.images_deleted,
            "reclaimed_bytes": self.reclaimed_bytes,
            "would_delete_bytes": would_bytes,
        }
        if self.goal_met is not None:
            data["goal_met"] = self.goal_met
        if self.filesystem_after is not None:
            fs = self.filesystem_after
            data["filesystem_after"] = {"avail": fs.avail, "size": fs.size, "avail_ratio": round(fs.avail_ratio, 6)}
        return data

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        """A manual run's answer: the summary plus the plan and the outcomes, each list cut to its first
        `limit` entries (None: all). `totals` always counts every entry and `truncated` says whether any list
        was cut, so a bounded answer hides nothing: the counts and bytes are those of the whole run.
        """
        data = self.summary()
        counts = data["counts"]
        totals = {
            "deleted": counts.get("deleted", 0) + counts.get("untagged", 0),
            "would_delete": counts.get("would_delete", 0),
            "skipped": counts.get("skipped", 0),
        }
        groups: dict[str, list[Outcome]] = {kind: [] for kind in totals}
        wanted = {kind: n if limit is None else min(n, limit) for kind, n in totals.items()}
        missing = sum(wanted.values())
        for o in self.outcomes:  # only as far as the listed ones reach: the summary has counted them all
            if not missing:
                break
            kind: str = "deleted" if o.result in ("deleted", "untagged") else o.result
            listed = groups.get(kind)
            if listed is not None and len(listed) < wanted[kind]:
                listed.append(o)
                missing -= 1
        for kind, items in groups.items():
            data[kind] = [o.to_json() for o in items]
        data["outcomes"] = [o.to_json() for o in self.outcomes[:limit]]
        data["plan"] = self.plan.to_json(limit) if self.plan else None
        totals["outcomes"] = len(self.outcomes)
        if self.plan is not None:
            totals.update(self.plan.totals())
        data["totals"] = totals
        data["limit"] = limit
        data["truncated"] = limit is not None and any(n > limit for n in totals.values())
        return data
