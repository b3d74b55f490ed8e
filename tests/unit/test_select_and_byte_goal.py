"""An action's `select` (which images it may take) and free_space's byte goal (`target_avail_bytes`): the
config rules, the planner, and the executor's goal checks on the in-memory engine."""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import ConfigError, ProtectConfig, SelectConfig, make_action, parse_config
from exporter.core.snapshot import Filesystem, Image
from exporter.remediation.planner import make_plan, maturing
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_executor import OLD, Harness, act
from tests.unit.test_planner import DAY, NOW, img, snap

NO_PROTECTION = ProtectConfig()
CI = {"references": ["ci/*", "*:pr-*"], "labels": ["team=ci"]}


def problems(**fields: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        make_action("a", **fields)
    return str(caught.value)


# -- config --------------------------------------------------------------------------------------------------
def test_free_space_needs_a_ratio_or_a_byte_goal_or_both() -> None:
    assert "remediation.actions.a.target_avail_ratio: is required (or target_avail_bytes" in problems(type="free_space")
    only_bytes = make_action("a", type="free_space", target_avail_bytes="5GB")
    assert (only_bytes.target_avail_ratio, only_bytes.target_avail_bytes) == (None, 5_000_000_000)  # type: ignore[union-attr]
    both = make_action("a", type="free_space", target_avail_bytes="2GiB", target_avail_ratio=0.2)
    assert (both.target_avail_ratio, both.target_avail_bytes) == (0.2, 2 << 30)  # type: ignore[union-attr]
    assert "remediation.actions.a.target_avail_bytes" in problems(type="free_space", target_avail_bytes="lots")
    assert "remediation.actions.a.target_avail_bytes" in problems(type="free_space", target_avail_bytes="2EB")


def test_select_is_checked_like_protect() -> None:
    assert "remediation.actions.a.select.refs: unknown key" in problems(type="prune_unused", select={"refs": ["x"]})
    assert "remediation.actions.a.select.references[0]: 'ci /*'" in problems(
        type="prune_unused", select={"references": ["ci /*"]}
    )
    assert "remediation.actions.a.select.labels[0]: 'team = ci'" in problems(
        type="prune_unused", select={"labels": ["team = ci"]}
    )
    assert "remediation.actions.a.select: selects no image" in problems(type="prune_unused", select={})
    assert "remediation.actions.a.select: unknown key" in problems(type="build_cache", select={"labels": ["x"]})
    assert "remediation.actions.a.select.references: prune_dangling takes untagged images" in problems(
        type="prune_dangling", select={"references": ["ci/*"]}
    )
    labels_only = make_action("a", type="prune_dangling", select={"labels": ["team=ci"]})
    assert labels_only.select == SelectConfig(labels=("team=ci",))  # type: ignore[union-attr]


def test_a_missing_goal_and_a_dangling_reference_select_are_reported_with_the_other_errors() -> None:
    actions: dict[str, dict[str, Any]] = {
        "disk": {"type": "free_space", "min_age": "soon"},
        "dangling": {"type": "prune_dangling", "max_deletions": 0, "select": {"references": ["ci/*"]}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config({"remediation": {"actions": actions}})
    assert [p.split(":")[0] for p in caught.value.problems[:2]] == [
        "remediation.actions.disk.min_age",
        "remediation.actions.dangling.max_deletions",
    ]
    assert caught.value.problems[2:] == [
        "remediation.actions.disk.target_avail_ratio: is required (or target_avail_bytes, or both)",
        "remediation.actions.dangling.select.references: prune_dangling takes untagged images, which have no "
        "reference to match: use select.labels",
    ]
    valid_otherwise = {"disk": {"type": "free_space"}, "dangling": {**actions["dangling"], "max_deletions": 5}}
    with pytest.raises(ConfigError) as caught:
        parse_config({"remediation": {"actions": valid_otherwise}})
    assert len(caught.value.problems) == 2  # the model's own check and the document's say it once


# -- planner: select -------------------------------------------------------------------------------------------
def test_select_takes_an_image_matching_any_glob_or_any_label_and_counts_the_others() -> None:
    images = [
        img("c1", ["ci/app:1"]),
        img("c2", ["web:pr-17"]),
        img("c3", ["web:2"], labels={"team": "ci"}),
        img("c4", ["web:3"], labels={"team": "web"}),
        img("c5", ["prod/app:1"]),
        img("c6", [], labels={"team": "ci"}),  # untagged: only the label rule can select it
        img("c7", []),
    ]
    plan = make_plan(snap(*images), make_action("a", type="prune_unused", select=CI), NO_PROTECTION, NOW)
    assert sorted(c.image_id[7:9] for c in plan.candidates) == ["c1", "c2", "c3", "c6"]
    assert plan.skipped == () and plan.not_selected == 3
    assert "3 images not selected by this action's select" in plan.notes
    data = plan.to_json()
    assert data["select"] == {"references": ["ci/*", "*:pr-*"], "labels": ["team=ci"], "not_selected": 3}
    everything = make_plan(snap(*images), make_action("a", type="prune_unused"), NO_PROTECTION, NOW)
    assert len(everything.candidates) == 7 and "select" not in everything.to_json() and everything.notes == ()


def test_protection_and_the_other_rules_win_over_select() -> None:
    images = [
        img("p1", ["ci/app:production"]),
        img("p2", ["ci/app:2"], labels={"keep": "true"}),
        img("p3", ["ci/app:3"], containers=1),
        img("p4", ["ci/app:4"], age=60),
        img("p5", ["ci/app:5"]),
    ]
    protect = ProtectConfig(references=("*:production",), labels=("keep=true",))
    for kind in ("prune_unused", "free_space"):
        extra = {"target_avail_ratio": 0.9} if kind == "free_space" else {}
        plan = make_plan(
            snap(*images, fs=Filesystem("/x", 10_000, 0)),
            make_action("a", type=kind, select={"references": ["ci/*"]}, **extra),
            protect,
            NOW,
        )
        assert [c.image_id[7:9] for c in plan.candidates] == ["p5"]
        assert [s.reason for s in plan.skipped] == ["protected_reference", "protected_label", "in_use", "too_young"]


def test_prune_dangling_selects_by_label() -> None:
    images = [img("d1", [], labels={"team": "ci"}), img("d2", []), img("t1", ["ci/app:1"], labels={"team": "ci"})]
    plan = make_plan(
        snap(*images), make_action("a", type="prune_dangling", select={"labels": ["team=ci"]}), NO_PROTECTION, NOW
    )
    assert [c.image_id[7:9] for c in plan.candidates] == ["d1"] and plan.not_selected == 1


def test_keep_last_ranks_every_version_and_deletes_only_selected_ones() -> None:
    images = [
        img("a1", ["ci/app:1"], age=3 * DAY),
        img("a2", ["ci/app:2"], age=2 * DAY, labels={"team": "web"}),
        img("a3", ["ci/app:3"], age=DAY),
        img("w1", ["web:1"], age=3 * DAY),
        img("w2", ["web:2"], age=2 * DAY),
    ]
    rule = {"references": ["ci/*"]}
    plan = make_plan(snap(*images), make_action("a", type="keep_last", keep=1, select=rule), NO_PROTECTION, NOW)
    assert [c.image_id[7:9] for c in plan.candidates] == ["a1", "a2"]
    assert plan.not_selected == 2 and "2 images not selected by this action's select" in plan.notes
    by_label = {"labels": ["team=web"]}
    plan = make_plan(snap(*images), make_action("a", type="keep_last", keep=1, select=by_label), NO_PROTECTION, NOW)
    assert [c.image_id[7:9] for c in plan.candidates] == ["a2"]  # a3 is still the newest version of ci/app


def test_maturing_lists_only_selected_images() -> None:
    images = [img("y1", ["ci/app:1"], age=60), img("y2", ["web:1"], age=60)]
    found = maturing(snap(*images), make_action("a", type="prune_unused", select=CI), NO_PROTECTION, NOW)
    assert found is not None and [i.id[7:9] for i, _ in found.images] == ["y1"]


# -- planner: the byte goal --------------------------------------------------------------------------------------
def test_a_byte_goal_plans_the_bytes_missing_and_says_so_when_out_of_reach() -> None:
    images = [img("t1", ["a:1"], size=2_000), img("t2", ["a:2"], size=1_000)]
    fs = Filesystem("/var/lib/docker", size=10_000, avail=1_000)
    short = make_plan(
        snap(*images, fs=fs), make_action("a", type="free_space", target_avail_bytes=5_000), NO_PROTECTION, NOW
    )
    data = short.to_json()
    assert (data["needed_bytes"], data["freeable_bytes"], data["reachable"]) == (4_000, 3_000, False)
    assert (data["target_avail_ratio"], data["target_avail_bytes"]) == (None, 5_000)
    assert short.notes == (
        "at plan time: can free at most 3000 of the 4000 bytes needed to reach target_avail_bytes 5000",
    )
    met = make_plan(
        snap(*images, fs=fs), make_action("a", type="free_space", target_avail_bytes=1_000), NO_PROTECTION, NOW
    )
    assert met.goal_met and met.candidates == () and met.to_json()["goal_met_at_plan_time"] is True


def test_with_both_goals_the_stricter_one_counts() -> None:
    images = [img("t1", ["a:1"], size=2_000)]
    fs = Filesystem("/x", size=10_000, avail=1_000)
    by_bytes = make_action("a", type="free_space", target_avail_ratio=0.2, target_avail_bytes=4_000)
    by_ratio = make_action("a", type="free_space", target_avail_ratio=0.5, target_avail_bytes=2_000)
    assert make_plan(snap(*images, fs=fs), by_bytes, NO_PROTECTION, NOW).needed_bytes == 3_000
    plan = make_plan(snap(*images, fs=fs), by_ratio, NO_PROTECTION, NOW)
    assert plan.needed_bytes == 4_000
    assert plan.notes[0].endswith("to reach target_avail_ratio 0.5 and target_avail_bytes 2000")
    ratio_met_only = Filesystem("/x", size=10_000, avail=2_500)
    assert not make_plan(snap(*images, fs=ratio_met_only), by_bytes, NO_PROTECTION, NOW).goal_met


# -- executor --------------------------------------------------------------------------------------------------
async def test_a_byte_goal_stops_deleting_once_met_in_a_run_and_a_dry_run(tmp_path: Path) -> None:
    engine = FakeEngine()
    for n in range(5):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, lambda path: Filesystem(path, 10_000, 100 * len(engine.removals)), in_flight=1)
    goal = act("free_space", target_avail_bytes=250)
    dry = await h.run(goal, dry_run=True, plan=h.plan(goal, Filesystem("/", 10_000, 0)))
    assert [o.result for o in dry.outcomes] == ["would_delete"] * 3 and dry.goal_met is True
    assert dry.shortfall_bytes(goal) == 0  # type: ignore[arg-type]
    run = await h.run(goal, plan=h.plan(goal, Filesystem("/", 10_000, 0)))
    assert run.result == "success" and run.goal_met is True and run.images_deleted == 3
    assert run.filesystem_after == Filesystem("/", 10_000, 300) and len(engine.images) == 2


async def test_a_run_that_falls_short_of_the_byte_goal_reports_the_bytes_missing(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine, lambda path: Filesystem(path, 10_000, 100 * len(engine.removals)))
    goal = act("free_space", target_avail_bytes=1_000)
    run = await h.run(goal, plan=h.plan(goal, Filesystem("/", 10_000, 0)))
    assert run.result == "partial" and run.goal_met is False and run.shortfall_bytes(goal) == 900  # type: ignore[arg-type]


async def test_the_run_start_line_names_the_select_rules_and_what_they_left_out(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.add("ci", ("ci/app:1",), arrived=OLD)
    engine.add("web", ("web:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    run = await h.run(act("prune_unused", select=SelectConfig(references=("ci/*",))))
    assert run.images_deleted == 1 and [sorted(i.tags) for i in engine.images.values()] == [["web:1"]]
    start = h.audit()[0]
    assert start["event"] == "run_start"
    assert start["select"] == {"references": ["ci/*"], "labels": [], "not_selected": 1}
    (tmp_path / "all").mkdir()
    everything = Harness(tmp_path / "all", engine)
    await everything.run(act("prune_unused"), dry_run=True)
    assert "select" not in everything.audit()[0]


# -- property ----------------------------------------------------------------------------------------------------
REPOS = ("ci/app", "ci/tool", "web", "prod/app")
TAGS = ("1", "2", "pr-3", "production", "latest")


@st.composite
def images(draw: st.DrawFn) -> list[Image]:
    """Up to 12 images; a tag names one image, so a later image loses the tags an earlier one has."""
    found: list[Image] = []
    seen: set[str] = set()
    for n in range(draw(st.integers(0, 12))):
        refs = draw(st.lists(st.sampled_from([f"{r}:{t}" for r in REPOS for t in TAGS]), max_size=3, unique=True))
        own = [ref for ref in refs if ref not in seen]
        seen.update(own)
        labels = draw(st.dictionaries(st.sampled_from(["team", "keep"]), st.sampled_from(["ci", "web", "true"])))
        found.append(
            img(
                f"i{n:02d}",  # fixed width: `img` pads the name into the ID, so i1 and i10 would collide
                own,
                age=draw(st.sampled_from([60.0, 2 * DAY, 30 * DAY])),
                containers=draw(st.integers(0, 1)),
                labels=labels,
                pushed=draw(st.booleans()),
            )
        )
    return found


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    images(),
    st.sampled_from(["prune_unused", "prune_dangling", "keep_last", "free_space"]),
    st.lists(st.sampled_from(["ci/*", "*:pr-*", "web:*", "*"]), max_size=2),
    st.lists(st.sampled_from(["team=ci", "team", "keep=true"]), max_size=2),
)
def test_a_plan_never_takes_an_image_its_select_does_not_match_nor_a_protected_one(
    found: list[Image], kind: str, globs: list[str], labels: list[str]
) -> None:
    if kind == "prune_dangling":
        globs = []
    if not globs and not labels:
        labels = ["team=ci"]
    extra: dict[str, Any] = {"keep": 1} if kind == "keep_last" else {}
    if kind == "free_space":
        extra["target_avail_bytes"] = 10**9
    action = make_action("a", type=kind, select={"references": globs, "labels": labels}, **extra)
    protect = ProtectConfig(references=("*:production",), labels=("keep=true",))
    plan = make_plan(snap(*found, fs=Filesystem("/x", 10**9, 0)), action, protect, NOW)
    by_id = {i.id: i for i in found}
    for cand in plan.candidates:
        image = by_id[cand.image_id]
        names = [str(r) for r in image.references]
        matched = any(fnmatchcase(n, g) for n in names for g in globs) or any(
            label_holds(image.labels, rule) for rule in labels
        )
        assert matched, (cand, globs, labels)
        assert not any(fnmatchcase(n, "*:production") for n in names) and image.labels.get("keep") != "true"
        assert image.containers == 0 and NOW - image.created >= action.min_age


def label_holds(labels: Any, rule: str) -> bool:
    key, sep, value = rule.partition("=")
    return key in labels and (not sep or labels[key] == value)
