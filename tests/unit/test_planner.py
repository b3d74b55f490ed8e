"""The planner on hand-built snapshots: every exclusion rule, ordering and reason, without an engine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from exporter.config import ActionConfig, ProtectConfig, make_action
from exporter.core.snapshot import DigestRef, Filesystem, Image, ImageRef, Snapshot
from exporter.engine import apishapes
from exporter.remediation.planner import make_plan, maturing

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"

NOW = 1_700_000_000.0
DAY = 86400.0
PROTECT = ProtectConfig(
    references=("*:production", "registry.example.com/base/*"), labels=("keep=true", "pinned"), local_only=True
)


def img(
    name: str,
    refs: Sequence[str] = (),
    *,
    age: float = 10 * DAY,
    size: int = 1000,
    shared: int | None = 0,
    containers: int = 0,
    labels: dict[str, str] | None = None,
    pushed: bool = True,
    last_tag: float | None = None,
    arrived: float | None = None,
    last_used: float | None = None,
) -> Image:
    parsed = tuple(r for r in (ImageRef.parse(t) for t in refs) if r is not None)
    return Image(
        id=f"sha256:{name:0<64}"[:71],
        refs=parsed,
        digests=tuple(f"{r.repository}@sha256:{'d' * 64}" for r in parsed) if pushed else (),
        created=NOW - age,
        size=size,
        shared_size=shared,
        labels=MappingProxyType(labels or {}),
        containers=containers,
        last_tag_time=last_tag,
        arrived=arrived,
        last_used=last_used,
    )


def snap(*images: Image, fs: Filesystem | None = None) -> Snapshot:
    return Snapshot(
        taken_at=NOW, engine=None, images=images, filesystem=fs, by_id=MappingProxyType({i.id: i for i in images})
    )


def action(kind: str, **kw: object) -> ActionConfig:
    return make_action("a", type=kind, **kw)


def test_prune_unused_applies_every_exclusion_and_names_the_rule():
    images = [
        img("a1", ["app:1"]),
        img("a2", ["app:2"], containers=1),
        img("a3", ["app:production", "app:3"]),
        img("a4", ["registry.example.com/base/os:12"]),
        img("a5", ["app:5"], labels={"keep": "true"}),
        img("a6", ["app:6"], labels={"pinned": "anything"}),
        img("a7", ["app:7"], pushed=False),
        img("a8", ["app:8"], age=30 * 60),
        img("a9", ["app:9"], last_tag=NOW - 60),  # re-tagged a minute ago
        img("b1", ["app:10"], arrived=NOW - 120),  # pulled two minutes ago (old image, new here)
        img("b2", [], age=2 * DAY),
        img("b3", [], age=2 * DAY, labels={"keep": "true"}),
    ]
    plan = make_plan(snap(*images), action("prune_unused", min_age="1h"), PROTECT, NOW)
    assert [c.image_id[7:9] for c in plan.candidates] == ["b2", "a1"]  # dangling first, then oldest
    reasons = {s.image_id[7:9]: s.reason for s in plan.skipped}
    assert reasons == {
        "a2": "in_use",
        "a3": "protected_reference",
        "a4": "protected_reference",
        "a5": "protected_label",
        "a6": "protected_label",
        "a7": "local_only",
        "a8": "too_young",
        "a9": "too_young",
        "b1": "too_young",
        "b3": "protected_label",
    }
    detail = {s.image_id[7:9]: s.detail for s in plan.skipped}
    assert "'*:production'" in detail["a3"]
    assert "min_age 1h" in detail["b1"]
    assert plan.candidates[1].references == ("app:1", f"app@sha256:{'d' * 64}")  # tags, then digest references
    assert plan.candidates[1].known_references == ("app:1",)
    assert plan.candidates[0].references == ()  # dangling: deleted by ID


def test_local_only_can_be_switched_off_and_never_applies_to_dangling_or_prune_dangling():
    images = [img("a1", ["app:1"], pushed=False), img("a2", [], pushed=False)]
    off = ProtectConfig(local_only=False)
    assert {c.image_id[7:9] for c in make_plan(snap(*images), action("prune_unused"), off, NOW).candidates} == {
        "a1",
        "a2",
    }
    on = make_plan(snap(*images), action("prune_unused"), ProtectConfig(local_only=True), NOW)
    assert [c.image_id[7:9] for c in on.candidates] == ["a2"]
    assert on.to_json()["local_only"] == {"enabled": True, "kept_images": 1, "kept_bytes": 1000}
    assert make_plan(snap(*images), action("prune_unused"), off, NOW).to_json()["local_only"] == {
        "enabled": False,
        "kept_images": 0,
        "kept_bytes": 0,
    }
    assert not ProtectConfig().local_only  # off by default: a build host's own builds are cleaned
    dangling = make_plan(snap(*images), action("prune_dangling"), ProtectConfig(local_only=True), NOW)
    assert [c.image_id[7:9] for c in dangling.candidates] == ["a2"]
    assert dangling.skipped == ()  # the tagged image is not selected by prune_dangling at all


def test_keep_last_ranks_per_repository_and_untags_only_old_references():
    images = [
        img("n1", ["app:9"], age=1 * DAY),
        img("n2", ["app:8"], age=2 * DAY),
        img("n3", ["app:7", "other:x"], age=3 * DAY),  # other:x is the only tag of repo other
        img("o1", ["app:6", "mirror:6"], age=4 * DAY),  # mirror:6 kept: only app:6 is untagged
        img("o2", ["app:5", "app:5.0"], age=5 * DAY),  # both old: the image goes
        img("o3", ["app:4"], age=6 * DAY, containers=1),
        img("o4", ["app:3", "app:production"], age=7 * DAY),
    ]
    plan = make_plan(snap(*images), action("keep_last", keep=3, min_age="1h"), PROTECT, NOW)
    by_id = {c.image_id[7:9]: c for c in plan.candidates}
    assert set(by_id) == {"o1", "o2"}
    assert by_id["o1"].references == ("app:6",)
    assert by_id["o1"].removes_image is False
    assert "untag only" in by_id["o1"].reason
    assert by_id["o2"].references == ("app:5", "app:5.0")
    assert by_id["o2"].removes_image is True
    assert plan.estimated_bytes == 1000  # only o2 frees anything
    # seven versions of app (o2's two tags are one version), o2 is the 5th newest
    assert by_id["o2"].reason == "version 5 of 7 in app, keep 3; tags 5, 5.0"
    assert {s.image_id[7:9]: s.reason for s in plan.skipped} == {"o3": "in_use", "o4": "protected_reference"}
    assert set(plan.skipped[1].references) == {"app:3", "app:production"}
    assert "other: version 1 of 1, keep 3; tags x" in plan.kept


def test_keep_last_aliases_on_the_newest_build_take_no_place_and_ties_go_by_last_tag_time():
    """Issue 12 #2: `latest`/`stable` on the newest build are that version, not versions of their own."""
    images = [
        img("v4", ["app:1.4", "app:latest", "app:stable"], age=1 * DAY),
        img("v3", ["app:1.3"], age=2 * DAY),
        img("v2", ["app:1.2"], age=3 * DAY, last_tag=NOW - 2 * DAY),  # same build time, tagged later: newer
        img("v1", ["app:1.1"], age=3 * DAY),
    ]
    plan = make_plan(snap(*images), action("keep_last", keep=3), PROTECT, NOW)
    assert [(c.image_id[7:9], c.references, c.removes_image) for c in plan.candidates] == [("v1", ("app:1.1",), True)]
    assert plan.candidates[0].reason == "version 4 of 4 in app, keep 3; tags 1.1"
    assert plan.kept == (
        "app: version 1 of 4, keep 3; tags 1.4, latest, stable",
        "app: version 2 of 4, keep 3; tags 1.3",
        "app: version 3 of 4, keep 3; tags 1.2",
    )


def test_keep_last_counts_young_and_protected_tags_among_the_newest():
    images = [
        img("y1", ["app:3"], age=60),  # too young, but still one of the 2 newest
        img("p1", ["app:2"], age=2 * DAY, labels={"keep": "true"}),
        img("o1", ["app:1"], age=3 * DAY),
    ]
    plan = make_plan(snap(*images), action("keep_last", keep=2), PROTECT, NOW)
    assert [c.image_id[7:9] for c in plan.candidates] == ["o1"]
    assert plan.skipped == ()


def test_free_space_plan_says_when_its_candidates_cannot_reach_the_target():
    fs = Filesystem("/var/lib/docker", size=10_000, avail=1_000)
    images = [img("t1", ["a:1"], size=2_000), img("t2", ["a:2"], size=1_000)]
    short = make_plan(snap(*images, fs=fs), action("free_space", target_avail_ratio=0.5), PROTECT, NOW)
    data = short.to_json()
    assert (data["needed_bytes"], data["freeable_bytes"], data["reachable"]) == (4_000, 3_000, False)
    assert short.unreachable_note is not None and "can free at most 3000 of the 4000 bytes needed" in (
        short.unreachable_note
    )
    assert short.notes == (short.unreachable_note,)
    enough = make_plan(snap(*images, fs=fs), action("free_space", target_avail_ratio=0.3), PROTECT, NOW)
    assert (enough.to_json()["reachable"], enough.unreachable_note, enough.notes) == (True, None, ())


def test_free_space_orders_dangling_then_least_recently_used():
    fs = Filesystem("/var/lib/docker", size=1000, avail=100)
    images = [
        img("t1", ["a:1"], age=20 * DAY, last_used=NOW - DAY),
        img("t2", ["a:2"], age=5 * DAY),  # never used: recency = 5 days ago
        img("t3", ["a:3"], age=30 * DAY, last_used=NOW - 3600),
        img("d1", [], age=DAY),
        img("t4", ["a:4"], age=40 * DAY, containers=1),
    ]
    plan = make_plan(snap(*images, fs=fs), action("free_space", target_avail_ratio=0.5), PROTECT, NOW)
    assert [c.image_id[7:9] for c in plan.candidates] == ["d1", "t2", "t1", "t3"]
    assert "LRU rank 1" in plan.candidates[1].reason and "never seen used" in plan.candidates[1].reason
    assert "last used 1d ago (LRU rank 2)" in plan.candidates[2].reason
    assert [s.reason for s in plan.skipped] == ["in_use"]
    assert plan.goal_met is False


def test_on_a_first_start_every_ordered_action_takes_the_oldest_builds_first():
    """Every image arrived at once (the exporter's first sighting): the order follows the builds, not the IDs."""
    fs = Filesystem("/var/lib/docker", size=1000, avail=100)
    arrived = NOW - 6 * 60
    # IDs in the reverse order of the builds, so an order that falls back to the ID is visibly wrong
    images = [img(f"{99 - v:02d}", [f"big/app:{v}"], age=(30 - v) * DAY, arrived=arrived) for v in range(1, 15)]
    dangling = [img(f"d{v}", [], age=(30 - v) * DAY, arrived=arrived) for v in (3, 1, 2)]
    oldest_first = [f"big/app:{v}" for v in range(1, 15)]
    for kind, extra in (("free_space", {"target_avail_ratio": 0.5}), ("prune_unused", {})):
        plan = make_plan(snap(*images, *dangling, fs=fs), action(kind, min_age="5m", **extra), PROTECT, NOW)
        tagged = [c for c in plan.candidates if c.references]
        assert [c.references[0] for c in tagged] == oldest_first, kind
        assert [c.image_id[7:9] for c in plan.candidates[:3]] == ["d1", "d2", "d3"], kind
        first = tagged[0].reason
        assert "built 4w1d ago, never seen used; here since 2023-11-14 22:07:20 UTC" in first, first
        assert "6m ago, first seen by the exporter" in first
    plan = make_plan(snap(*dangling), action("prune_dangling", min_age="5m"), PROTECT, NOW)
    assert [c.image_id[7:9] for c in plan.candidates] == ["d1", "d2", "d3"]


def test_order_is_the_last_use_else_the_last_tag_or_build():
    fs = Filesystem("/var/lib/docker", size=1000, avail=100)
    images = [
        img("u1", ["a:1"], age=40 * DAY, last_used=NOW - 2 * DAY),  # old build, used two days ago
        img("u2", ["a:2"], age=30 * DAY, last_tag=NOW - 3 * DAY),  # re-tagged three days ago
        img("u3", ["a:3"], age=10 * DAY, arrived=NOW - 3600),  # pulled an hour ago: order by its build
        img("u4", ["a:4"], age=50 * DAY, last_used=NOW - 7 * DAY, last_tag=NOW - DAY),  # last use counts
    ]
    plan = make_plan(snap(*images, fs=fs), action("free_space", target_avail_ratio=0.5, min_age="30m"), PROTECT, NOW)
    assert [c.image_id[7:9] for c in plan.candidates] == ["u3", "u4", "u2", "u1"]
    assert plan.candidates[2].reason == "built 4w2d ago, tagged 3d ago, never seen used (LRU rank 3)"


def test_too_young_says_which_time_counts_and_from_when_the_image_is_deletable():
    images = [
        img("y1", ["a:1"], age=30 * DAY, arrived=NOW - 6 * 60),  # first seen six minutes ago
        img("y2", ["a:2"], age=30 * DAY, last_tag=NOW - 600),
        img("y3", ["a:3"], age=1800),
        replace(img("y4", ["a:4"]), tag_time_pending=True),
    ]
    plan = make_plan(snap(*images), action("prune_unused", min_age="1h"), PROTECT, NOW)
    detail = {s.image_id[7:9]: s.detail for s in plan.skipped}
    assert {s.reason for s in plan.skipped} == {"too_young"}
    assert detail["y1"] == (
        "6m old (here since 2023-11-14 22:07:20 UTC, first seen by the exporter), min_age 1h: "
        "deletable from 2023-11-14 23:07:20 UTC (in 54m)"
    )
    assert detail["y2"].startswith("10m old (tagged 2023-11-14 22:03:20 UTC), min_age 1h: deletable from 2023-11-14 ")
    assert detail["y3"].startswith("30m old (built 2023-11-14 21:43:20 UTC), min_age 1h: deletable from ")
    assert detail["y4"] == "last tag time not read yet: held until it is known, min_age 1h"


def test_maturing_counts_what_only_min_age_holds_back_by_the_actions_own_rules():
    fs = Filesystem("/var/lib/docker", size=1000, avail=900)  # free_space's goal is met: counted as if not
    arrived = NOW - 600
    images = [
        img("m1", ["app:1"], age=30 * DAY, arrived=arrived),  # an old version: held by min_age only
        img("m2", ["app:2"], age=20 * DAY, arrived=arrived + 60),  # the kept version for keep_last
        img("m3", ["app:0"], age=40 * DAY, arrived=arrived, containers=1),  # in use: never counted
        img("m4", ["app:9"], age=50 * DAY),  # known for long: deletable now, not maturing
        replace(img("m5", ["other:1"]), tag_time_pending=True),  # no date yet: left out
    ]
    snapshot = snap(*images, fs=fs)
    free = maturing(snapshot, action("free_space", target_avail_ratio=0.5, min_age="1h"), PROTECT, NOW)
    assert free is not None
    assert [(i.id[7:9], when) for i, when in free.images] == [("m1", arrived + 3600), ("m2", arrived + 3660)]
    assert free.size == 2000
    keep = maturing(snapshot, action("keep_last", keep=1, min_age="1h"), PROTECT, NOW)
    assert keep is not None and [i.id[7:9] for i, _ in keep.images] == ["m1"]  # app:2 is kept, app:0 in use
    assert maturing(snapshot, action("build_cache"), PROTECT, NOW) is None
    dangling = maturing(snapshot, action("prune_dangling", min_age="1h"), PROTECT, NOW)
    assert dangling is not None and dangling.images == ()


def test_free_space_goal_already_met_or_unmeasurable_plans_nothing():
    images = [img("d1", [])]
    met = make_plan(
        snap(*images, fs=Filesystem("/x", 1000, 600)), action("free_space", target_avail_ratio=0.5), PROTECT, NOW
    )
    assert met.goal_met is True and met.candidates == ()
    blind = make_plan(snap(*images), action("free_space", target_avail_ratio=0.5), PROTECT, NOW)
    assert blind.candidates == () and blind.filesystem is None


def test_sizes_are_unique_when_known_and_say_so_otherwise():
    known = img("k1", [], size=1000, shared=400)
    unknown = img("u1", [], size=1000, shared=None)
    plan = make_plan(snap(known, unknown), action("prune_dangling"), PROTECT, NOW)
    sizes = {c.image_id[7:9]: (c.size, c.size_basis) for c in plan.candidates}
    assert sizes == {"k1": (600, "unique"), "u1": (1000, "total")}
    assert plan.to_json()["candidates"][0]["size_basis"] in ("unique", "total")


def _digest_pulled(repository: str, *, tags: Sequence[str] = ()) -> Image:
    """A recorded /images/json entry (bookworm's dangling one) re-shaped as pulled by digest."""
    raw = json.loads((FIXTURES / "bookworm" / "images.json").read_text())
    entry = dict(next(i for i in raw if i["RepoTags"] == ["<none>:<none>"]))
    entry["RepoTags"] = list(tags) or ["<none>:<none>"]
    entry["RepoDigests"] = [f"{repository}@sha256:{'e' * 64}"]
    entry["Created"] = int(NOW - 10 * DAY)
    return apishapes.parse_image(entry)


def test_an_image_pulled_by_digest_is_named_not_dangling():
    image = _digest_pulled("registry.example.com/base/x")
    assert not image.refs and not image.dangling
    assert [str(r) for r in image.references] == [f"registry.example.com/base/x@sha256:{'e' * 64}"]
    plan = make_plan(snap(image), action("prune_dangling", min_age="1h"), PROTECT, NOW)
    assert plan.candidates == () and plan.skipped == ()  # not a prune_dangling target at all


def test_protection_globs_match_digest_references_and_plans_name_them():
    protected = _digest_pulled("registry.example.com/base/x")
    other = replace(_digest_pulled("other/y"), id=f"sha256:{'f' * 64}")
    plan = make_plan(snap(protected, other), action("prune_unused", min_age="1h"), PROTECT, NOW)
    (skip,) = plan.skipped
    assert skip.reason == "protected_reference"
    assert (
        skip.detail
        == f"registry.example.com/base/x@sha256:{'e' * 64} matches protect.references 'registry.example.com/base/*'"
    )
    (cand,) = plan.candidates
    assert cand.references == (f"other/y@sha256:{'e' * 64}",)
    assert "pinned by digest only" in cand.reason
    assert plan.to_json()["candidates"][0]["references"] == [f"other/y@sha256:{'e' * 64}"]


def test_none_digests_and_malformed_ones_are_not_references():
    assert apishapes.parse_digests(["<none>@<none>", "app", "app@", "app@sha256:" + "a" * 64]) == (
        "app@sha256:" + "a" * 64,
    )
    assert DigestRef.parse("<none>@<none>") is None
    assert DigestRef.parse("host:5000/ns/app@sha256:ab") == DigestRef("host:5000/ns/app", "sha256:ab")
