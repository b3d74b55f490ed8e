"""Property: the optimized planner makes exactly the plans of the straightforward one it replaced.

`planner_reference.py` is the planner as first written (a string, a sort and a parse wherever convenient);
`exporter.remediation.planner` computes the same plans with each image's references, ages and clock step
worked out once, globs compiled once and no per-image sort. Over random snapshots (shared tags and
repositories, digests, equal build times, pending tag times, clock offsets, containers, labels) and every
image action with random select, protect, min_age and keep, both give equal plans field for field:
candidates, their order, references and reasons, skips, kept versions and notes.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ProtectConfig, SelectConfig
from exporter.core import clocks
from exporter.core.snapshot import Filesystem, Image, ImageRef, Snapshot
from exporter.remediation import planner
from tests.unit import planner_reference as reference
from tests.unit.actions import action_of

NOW = 1_800_000_000.0
DAY = 86400.0
REPOS = ["app", "base/os", "reg:5000/team/api", "tool"]
TAGS = ["1", "2", "latest", "pr-7"]
DIGESTS = ["sha256:" + c * 64 for c in "abc"]
LABELS = [{}, {"keep": "yes"}, {"team": "ci"}, {"keep": "no", "team": "web"}]
TIMES = [NOW - 90 * DAY, NOW - 3 * DAY, NOW - 2 * 3600, NOW - 59, NOW + 30]

image_st = st.builds(
    lambda i, refs, digests, created, tagged, used, arrived, containers, labels, seen, pending: dict(
        i=i,
        refs=refs,
        digests=digests,
        created=created,
        tagged=tagged,
        used=used,
        arrived=arrived,
        containers=containers,
        labels=labels,
        seen=seen,
        pending=pending,
    ),
    st.integers(0, 10**6),
    st.lists(st.tuples(st.sampled_from(REPOS), st.sampled_from(TAGS)), max_size=4),
    st.lists(st.sampled_from(DIGESTS), max_size=2, unique=True),
    st.sampled_from(TIMES),
    st.none() | st.sampled_from(TIMES),
    st.none() | st.sampled_from(TIMES),
    st.none() | st.sampled_from(TIMES),
    st.sampled_from([0, 0, 0, 1]),
    st.sampled_from(LABELS),
    st.none() | st.sampled_from([-7200.0, 0.0, 3600.0]),
    st.sampled_from([False, False, False, True]),
)


def build_image(spec: dict[str, Any], repo_of_digest: str) -> Image:
    return Image(
        id=f"sha256:{spec['i']:064x}",
        refs=tuple(ImageRef(r, t) for r, t in spec["refs"]),
        digests=tuple(f"{repo_of_digest}@{d}" for d in spec["digests"]),
        created=spec["created"],
        size=1000 + spec["i"] % 7,
        shared_size=None if spec["i"] % 5 == 0 else spec["i"] % 300,
        labels=MappingProxyType(spec["labels"]),
        containers=spec["containers"],
        last_tag_time=spec["tagged"],
        last_used=spec["used"],
        arrived=spec["arrived"],
        seen_offset=spec["seen"],
        tag_time_pending=spec["pending"],
    )


snapshot_st = st.lists(image_st, max_size=14, unique_by=lambda s: s["i"]).flatmap(
    lambda specs: st.builds(
        lambda repos: tuple(build_image(s, r) for s, r in zip(specs, repos, strict=True)),
        st.lists(st.sampled_from(REPOS), min_size=len(specs), max_size=len(specs)),
    )
)
select_st = st.none() | st.builds(
    lambda refs, labels: SelectConfig.model_construct(references=tuple(refs), labels=tuple(labels)),
    st.lists(st.sampled_from(["app*", "*:pr-*", "base/*", "*@sha256:*"]), max_size=2),
    st.lists(st.sampled_from(["team=ci", "keep"]), max_size=1),
)
protect_st = st.builds(
    lambda refs, labels, local_only: ProtectConfig.model_construct(
        references=tuple(refs), labels=tuple(labels), local_only=local_only
    ),
    st.lists(st.sampled_from(["tool:*", "*:latest", "reg:5000/*", "app@*", "*:1"]), max_size=3),
    st.lists(st.sampled_from(["keep=yes", "team"]), max_size=1),
    st.booleans(),
)
action_st = st.builds(
    lambda kind, min_age, keep, select, ratio, goal: action_of(
        kind,
        min_age=min_age,
        keep=keep,
        select=select,
        target_avail_ratio=ratio,
        target_avail_bytes=goal,
        max_deletions=1000,
    ),
    st.sampled_from(["prune_dangling", "prune_unused", "keep_last", "free_space"]),
    st.sampled_from([0.0, 3600.0, 7 * DAY]),
    st.integers(0, 3),
    select_st,
    st.sampled_from([None, 0.5, 0.99]),
    st.sampled_from([None, 5000]),
)
filesystem_st = st.none() | st.builds(Filesystem, st.just("/"), st.just(100_000), st.sampled_from([0, 40_000, 99_999]))


def plan_fields(plan: Any) -> dict[str, Any]:
    return dataclasses.asdict(plan)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wall clock 1800 s ahead of the boot clock, so images seen at offsets below that count a step."""
    monkeypatch.setattr(clocks, "CLOCK", clocks.Clock(wall=lambda: NOW, boot=lambda: NOW - 1800.0))


@settings(max_examples=400, deadline=None)
@given(images=snapshot_st, action=action_st, protect=protect_st, fs=filesystem_st)
def test_the_optimized_planner_makes_the_reference_plans(
    images: tuple[Image, ...], action: Any, protect: ProtectConfig, fs: Filesystem | None
) -> None:
    if action.type == "free_space" and action.target_avail_ratio is None and action.target_avail_bytes is None:
        action = action.model_copy(update={"target_avail_ratio": 0.5})
    snapshot = Snapshot(NOW, None, images, filesystem=fs, by_id=MappingProxyType({i.id: i for i in images}))
    got = planner.make_plan(snapshot, action, protect, NOW)
    want = reference.make_plan(snapshot, action, protect, NOW)
    assert plan_fields(got) == plan_fields(want)


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(min_value=-1e3, max_value=4e9, allow_nan=False)
    | st.integers(0, 10**8).map(float)
    | st.sampled_from([0.0, 0.49, 0.5, 59.5, 60.0, 3600.0, 86400.0 * 8, 31_536_000.0 + 3600])
)
def test_rough_durations_read_as_before(seconds: float) -> None:
    assert planner._rough(seconds) == reference._rough(seconds)
