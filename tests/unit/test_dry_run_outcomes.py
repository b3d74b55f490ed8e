"""Property: a dry run lists exactly the outcomes of asking `goal_met` after every candidate.

`executor._described` finds the free_space goal once (the fewest available bytes that meet it) and then
compares one number per candidate; these tests hold it to the straightforward loop it stands for, over
random goals (ratio, bytes, both), filesystems (an empty one too), candidate sizes (untag-only ones that free
nothing among them) and `max_deletions`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ActionConfig, FreeSpaceAction
from exporter.core.snapshot import Filesystem
from exporter.remediation import planner
from exporter.remediation.executor import _described, _goal_avail
from exporter.remediation.planner import Candidate, Plan, goal_met
from exporter.remediation.runs import SUMMARY_LIST_LIMIT, Outcome, Run, outcome_of
from tests.unit.actions import action_of


def straightforward(plan: Plan, action: ActionConfig) -> tuple[list[Outcome], bool]:
    """What a dry run lists, asking `goal_met` after each candidate."""
    fs = plan.filesystem if isinstance(action, FreeSpaceAction) else None
    projected_avail = fs.avail if fs else 0
    outcomes: list[Outcome] = []
    for index, cand in enumerate(plan.candidates):
        if index >= action.max_deletions:
            detail = f"max_deletions {action.max_deletions} reached"
            outcomes.extend(outcome_of(rest, "skipped", "max_deletions", detail) for rest in plan.candidates[index:])
            return outcomes, False
        outcomes.append(outcome_of(cand, "would_delete"))
        if fs is not None:
            projected_avail += cand.size if cand.removes_image else 0
            if goal_met(action, fs.size, projected_avail):
                return outcomes, True
    return outcomes, False


def candidate(n: int, size: int, removes: bool) -> Candidate:
    return Candidate(f"sha256:{n:064x}", (f"app:{n}",), size, "unique", f"old {n}", removes, (f"app:{n}",), (), 1.0)


ratios = st.none() | st.floats(0.0, 1.0) | st.sampled_from([0.1, 0.3, 0.5, 0.9, 0.99, 1.0])
sizes = st.integers(0, 10**4) | st.integers(0, 10**13) | st.sampled_from([0, 1, 3, 7, 10**12 + 1])


@settings(max_examples=1500, deadline=None)
@given(
    ratio=ratios,
    goal_bytes=st.none() | st.integers(0, 10**4) | st.integers(0, 10**13),
    fs_size=sizes,
    avail_share=st.floats(0.0, 1.0),
    items=st.lists(st.tuples(sizes, st.booleans()), max_size=12),
    max_deletions=st.integers(1, 14),
    kind=st.sampled_from(["free_space", "free_space", "prune_unused"]),
)
def test_dry_run_outcomes_are_those_of_asking_goal_met_each_time(
    ratio: float | None,
    goal_bytes: int | None,
    fs_size: int,
    avail_share: float,
    items: list[tuple[int, bool]],
    max_deletions: int,
    kind: str,
) -> None:
    if ratio is None and goal_bytes is None:
        ratio = 0.5
    action = action_of(
        kind, target_avail_ratio=ratio, target_avail_bytes=goal_bytes, max_deletions=max_deletions, min_age=0.0
    )
    fs = Filesystem("/", fs_size, int(fs_size * avail_share))
    cands = tuple(candidate(n, size, removes) for n, (size, removes) in enumerate(items))
    plan = Plan("a", kind, 0.0, cands, filesystem=fs)
    got, got_met = _described(plan, action)
    want, want_met = straightforward(plan, action)
    assert got_met == want_met
    assert [dataclasses.astuple(o) for o in got] == [dataclasses.astuple(o) for o in want]


@settings(max_examples=1500, deadline=None)
@given(ratio=ratios, goal_bytes=st.none() | st.integers(0, 10**13), fs_size=sizes, avail=sizes, most=sizes)
def test_the_goal_is_the_fewest_available_bytes_that_meet_it(
    ratio: float | None, goal_bytes: int | None, fs_size: int, avail: int, most: int
) -> None:
    if ratio is None and goal_bytes is None:
        ratio = 0.5
    action = action_of("free_space", target_avail_ratio=ratio, target_avail_bytes=goal_bytes)
    fs = Filesystem("/", fs_size, avail)
    goal = _goal_avail(action, fs, most)
    if goal is None:
        assert not goal_met(action, fs_size, avail + most)
        return
    assert avail <= goal <= avail + most
    assert goal_met(action, fs_size, goal)
    assert goal == avail or not goal_met(action, fs_size, goal - 1)


def test_a_planned_candidate_is_the_candidate_of_its_fields() -> None:
    fields: tuple[Any, ...] = (
        "sha256:" + "a" * 64,
        ("app:1", "app:2"),
        5,
        "unique",
        "old",
        False,
        ("app:1",),
        ("app@sha256:x",),
        2.0,
    )
    made = planner._planned(*fields)
    built = Candidate(*fields)
    assert made == built and hash(made) == hash(built) and dataclasses.astuple(made) == fields
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.reason = "changed"  # type: ignore[misc]


def grouped_answer(run: Run, limit: int | None) -> dict[str, Any]:
    """A run's answer lists and totals, grouping every outcome (what `Run.to_json` gives from its counts)."""
    groups: dict[str, list[Outcome]] = {"deleted": [], "would_delete": [], "skipped": []}
    for o in run.outcomes:
        kind: str = "deleted" if o.result in ("deleted", "untagged") else o.result
        if kind in groups:
            groups[kind].append(o)
    data: dict[str, Any] = {kind: [o.to_json() for o in items[:limit]] for kind, items in groups.items()}
    data["totals"] = {kind: len(items) for kind, items in groups.items()}
    return data


@settings(max_examples=500, deadline=None)
@given(
    results=st.lists(st.sampled_from(["deleted", "untagged", "skipped", "would_delete", "unknown"]), max_size=30),
    limit=st.none() | st.integers(0, 8),
)
def test_an_answer_lists_the_first_outcomes_of_each_kind_and_counts_all(results: list[Any], limit: int | None) -> None:
    run = Run("a", "prune_unused", "manual", False)
    run.outcomes.extend(outcome_of(candidate(n, 10, True), result) for n, result in enumerate(results))
    answer = run.to_json(limit)
    want = grouped_answer(run, limit)
    for kind in ("deleted", "would_delete", "skipped"):
        assert answer[kind] == want[kind]
        assert answer["totals"][kind] == want["totals"][kind]
    assert answer["totals"]["outcomes"] == len(results)
    assert answer["truncated"] == (limit is not None and any(n > limit for n in answer["totals"].values()))


def summed_up(run: Run) -> dict[str, Any]:
    """A summary's counts, skips, bytes and first outcomes, one outcome at a time (what `Run.summary` gives)."""
    counts: dict[str, int] = {}
    skipped: dict[str, int] = {}
    would_bytes = 0
    first: dict[str, list[Outcome]] = {"deleted": [], "would_delete": []}
    for o in run.outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
        if o.result == "skipped":
            key = o.skip_reason or "error"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        if o.result in ("deleted", "untagged"):
            listed = first["deleted"]
        elif o.result == "would_delete":
            would_bytes += o.size
            listed = first["would_delete"]
        else:
            continue
        if len(listed) < SUMMARY_LIST_LIMIT:
            listed.append(o)
    return {
        "counts": counts,
        "skipped_by_reason": skipped,
        "would_delete_bytes": would_bytes,
        "deleted": [o.to_json() for o in first["deleted"]],
        "would_delete": [o.to_json() for o in first["would_delete"]],
    }


@settings(max_examples=300, deadline=None)
@given(
    items=st.lists(
        st.tuples(
            st.sampled_from(["deleted", "untagged", "skipped", "would_delete", "unknown"]),
            st.none() | st.sampled_from(["in_use", "conflict", "max_deletions"]),
            st.integers(0, 10**12),
        ),
        max_size=60,
    )
)
def test_a_summary_counts_every_outcome_and_lists_the_first(items: list[Any]) -> None:
    run = Run("a", "prune_unused", "manual", False)
    run.outcomes.extend(
        outcome_of(candidate(n, size, True), result, reason) for n, (result, reason, size) in enumerate(items)
    )
    summary = run.summary()
    for key, value in summed_up(run).items():
        assert summary[key] == value, key
        if isinstance(value, dict):
            assert list(summary[key]) == list(value), key  # the same order, so the same bytes
