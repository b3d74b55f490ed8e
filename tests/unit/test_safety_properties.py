"""Property: whatever the snapshot, policy and engine changes between plan and DELETE, nothing unsafe goes.

Over random images (tags, digests, dangling, age, containers), policies (action type, min_age, protect
globs, keep) and changes interleaved with the executor's own engine calls (a container created, a tag
moved, an image re-pulled under an existing tag, a new tag on an old image, another client's `docker rmi`
winning a race with ours, logrotate moving the audit log away), planner + executor never make the engine delete an image that is in use,
protected or younger than min_age *at the moment of that DELETE*, never one that gained a reference since
the plan, never one that was not planned, never send a DELETE (or add a hold reference) without its audit
intent line already on disk, and never end a run as a failure because another client deleted an image.

Where changes may land: at every engine call the executor makes, including the final DELETE of a hold
reference (the engine's reference counting is the guard there) and the DELETE by image ID itself for a new
container or a new tag (the engine's 409 is the guard there). Nothing lands between an untag's first
check (its container list) and its DELETE by name, and nothing else between a by-ID candidate's last
check and its DELETE (a re-tag of its own tag, or a swap of its only tag for another): those windows are
ones no engine API closes (docs/remediation.md, "What remains"), and test_executor.py shows they are
audited truthfully. With several deletions in flight
(`in_flight` 4), the other candidates' calls fall inside such windows, so the same rule is kept per window:
a window opens at the inspect of a target and closes at its DELETE or its outcome line (with one in
flight the rule above is exactly the sequential one).
"""

from __future__ import annotations

import asyncio
import fnmatch
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.config import ActionType, ProtectConfig
from exporter.core.snapshot import Filesystem
from exporter.engine.apishapes import is_hold_reference as is_hold
from exporter.remediation.planner import make_plan
from tests.harness.audit import read_audit
from tests.unit.actions import action_of
from tests.unit.fake_engine import FakeEngine
from tests.unit.test_executor import NOW, Harness, snapshot_of

TAGS = ["app:1", "app:2", "app:3", "base/os:1", "base/os:2", "tool:latest"]
PROTECT_GLOBS = ["base/*", "*:2", "tool:*"]
HOUR = 3600.0


@dataclass(frozen=True)
class Change:
    at: int  # the executor's n-th engine call
    kind: str  # container | move | repull | tag | rmi (another client's, racing ours: 500) | rmi404 | rotate
    image: int
    tag: str


images_st = st.lists(
    st.tuples(
        st.sets(st.sampled_from(TAGS), max_size=3),
        st.sampled_from([10 * 86400.0, 2 * HOUR, 60.0]),  # age: old, older than 1h, young
        st.booleans(),  # used by a container
    ),
    min_size=1,
    max_size=6,
)
policy_st = st.tuples(
    st.sampled_from(["prune_dangling", "prune_unused", "keep_last", "free_space"]),
    st.sampled_from([0.0, HOUR]),
    st.sets(st.sampled_from(PROTECT_GLOBS), max_size=2),
    st.integers(min_value=0, max_value=2),
)
changes_st = st.lists(
    st.builds(
        Change,
        st.integers(min_value=0, max_value=12),
        st.sampled_from(["container", "move", "repull", "tag", "rmi", "rmi404", "rotate"]),
        st.integers(min_value=0, max_value=5),
        st.sampled_from(TAGS),
    ),
    max_size=6,
)


def scene(images: list[tuple[set[str], float, bool]]) -> tuple[FakeEngine, list[str]]:
    engine = FakeEngine()
    ids = []
    taken: set[str] = set()
    for n, (tags, age, used) in enumerate(images):
        own = tuple(sorted(tags - taken))
        taken |= set(own)
        repos = [t.split(":")[0] for t in own] or (["pulled"] if n % 2 else [])  # odd and untagged: digest only
        iid = engine.add(f"img{n}", own, arrived=NOW - age, digests=tuple(f"{r}@sha256:{n:064x}" for r in repos))
        ids.append(iid)
        if used:
            engine.create_container(iid)
    return engine, ids


def audit_records(path: Path) -> list[dict[str, Any]]:
    """Every line of the audit log, rotated files (`.1`, `.2`, … oldest last, as logrotate numbers them)
    first: a rotation moves lines, it never loses them."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [r for f in [*rotated, path] if f.exists() for r in read_audit(f)]


def rotate(path: Path) -> None:
    """logrotate's `create` mode: the file is renamed away (the writer must notice) and a new one created."""
    for older in sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:])):
        older.rename(path.with_name(f"{path.name}.{int(older.suffix[1:]) + 1}"))
    if path.exists():
        path.rename(path.with_name(path.name + ".1"))
    path.touch()


def protected(tags: frozenset[str], globs: set[str]) -> bool:
    return any(fnmatch.fnmatchcase(t, g) for t in tags for g in globs)


DANGLING = [(set[str](), 10 * 86400.0, False)]
DIGEST_ONLY = [(set[str](), 10 * 86400.0, False), (set[str](), 10 * 86400.0, False)]  # the second: digest only
PRUNE = ("prune_dangling", 0.0, set[str](), 0)


# the races random draws rarely hit: a tag gained 0 -> 1 (dangling, digest only) at the final DELETE's call
# (or the one before), and another client's `docker rmi` winning at it (500, 404)
@example(DANGLING, PRUNE, [Change(1, "tag", 0, "app:1")], 1)
@example(DANGLING, PRUNE, [Change(2, "tag", 0, "app:1")], 1)
@example(DIGEST_ONLY, ("prune_unused", 0.0, set[str](), 0), [Change(1, "tag", 1, "app:1")], 1)
@example(DIGEST_ONLY, ("prune_unused", 0.0, set[str](), 0), [Change(3, "move", 1, "app:1")], 1)
@example(DANGLING, PRUNE, [Change(1, "rmi", 0, "app:1")], 1)
@example(DANGLING, PRUNE, [Change(2, "rmi", 0, "app:1")], 1)
@example(DANGLING, PRUNE, [Change(1, "rmi404", 0, "app:1")], 1)
@example([({"app:1"}, 10 * 86400.0, False)], ("prune_unused", 0.0, set[str](), 0), [Change(1, "rmi", 0, "app:1")], 1)
@example(DIGEST_ONLY, ("prune_unused", 0.0, set[str](), 0), [Change(1, "rotate", 0, ""), Change(3, "rotate", 0, "")], 4)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(images_st, policy_st, changes_st, st.sampled_from([1, 4]))
def test_nothing_unsafe_is_ever_deleted(
    images: list[tuple[set[str], float, bool]],
    policy: tuple[str, float, set[str], int],
    changes: list[Change],
    in_flight: int,
) -> None:
    kind, min_age, globs, keep = policy
    engine, ids = scene(images)
    action = action_of(_action_type(kind), min_age=min_age, keep=keep, target_avail_ratio=0.99)
    protect = ProtectConfig(references=tuple(sorted(globs)), local_only=False)
    with tempfile.TemporaryDirectory() as tmp:
        harness = Harness(Path(tmp), engine, in_flight=in_flight)
        plan = make_plan(snapshot_of(engine, Filesystem("/", 1000, 0)), action, protect, NOW)
        planned = {c.image_id for c in plan.candidates}
        refs_at_plan = {i.id: i.refs() for i in engine.images.values()}
        pending = sorted(changes, key=lambda c: c.at)
        calls = 0
        intents_missing: list[str] = []
        sent: Counter[str] = Counter()
        windows: set[str] = set()  # targets inspected whose DELETE has not been sent nor their outcome written

        def before(call: str, arg: str) -> None:
            nonlocal calls
            records = audit_records(harness.audit_path)
            if call == "remove_image":
                intents = Counter(r["target"] for r in records if r["event"] == "intent")
                if intents[arg] <= sent[arg]:  # every DELETE needs an intent of its own on disk
                    intents_missing.append(arg)
                sent[arg] += 1
            if call == "tag_image" and not any(r.get("hold") and r["target"] == arg for r in records):
                intents_missing.append(arg)
            finished = {r["image_id"] for r in records if r["event"] == "image"}
            finished |= {ref for r in records if r["event"] == "image" for ref in r["references"]}
            windows.difference_update(finished)
            by_id = arg.startswith("sha256:")
            unmovable = is_hold(arg) or "@" in arg  # a hold or a digest: no re-tag redirects its DELETE
            while pending and pending[0].at <= calls:
                guarded_by_id = by_id and pending[0].kind in ("container", "tag", "rmi", "rmi404")
                if call == "remove_image" and not (unmovable or guarded_by_id):
                    break  # the untag-by-name window: the next change lands at the next call
                if call == "inspect_image" and not by_id and pending[0].kind == "container":
                    break  # an untag's name check comes after its container check: inside the same window
                if pending[0].kind != "container" and windows and in_flight > 1:
                    break  # inside another candidate's check-to-DELETE window: it lands at a later call
                change = pending.pop(0)
                if change.kind == "rotate":
                    rotate(harness.audit_path)
                else:
                    _apply(engine, ids, change)
            if call == "inspect_image":
                if not arg.startswith("sha256:"):
                    windows.clear()  # an untag by name runs alone: the others in flight have ended
                windows.add(arg)
            if call == "remove_image":
                windows.discard(arg)
            calls += 1

        engine.before = before
        asyncio.run(harness.run(action, plan=plan))
        records = audit_records(harness.audit_path)
        if any(c.kind == "rotate" for c in changes if c not in pending):
            assert read_audit(harness.audit_path)[-1]["event"] == "run_end"  # the writer follows to the new file

    assert intents_missing == []
    # an image that must stay keeps its tags too (its digests and our hold go while a hold keeps it)
    for untag in (u for u in engine.untagged if "@" not in u.target and not is_hold(u.target)):
        assert untag.image_id in planned, f"untagged an image that was never planned: {untag}"
        assert not untag.in_use, f"untagged an image in use: {untag}"
        assert not protected(untag.tags_before, globs), f"untagged a protected image: {untag}"
        assert NOW - untag.arrived >= min_age, f"untagged an image younger than min_age: {untag}"
    for removal in engine.removals:
        assert removal.image_id in planned, f"deleted an image that was never planned: {removal}"
        assert not removal.in_use, f"deleted an image in use: {removal}"
        assert not protected(removal.tags_before, globs), f"deleted a protected image: {removal}"
        assert NOW - removal.arrived >= min_age, f"deleted an image younger than min_age: {removal}"
        gained = {r for r in removal.refs_before if not is_hold(r)} - refs_at_plan[removal.image_id]
        assert not gained, f"deleted an image that gained a reference since the plan: {removal}"
    deleted_lines = {r["image_id"] for r in records if r["event"] == "image" and r["result"] == "deleted"}
    assert deleted_lines == {r.image_id for r in engine.removals}  # the audit names exactly what went
    assert records[-1]["event"] == "run_end" and records[-1]["images_deleted"] == len(engine.removals)
    assert records[-1]["result"] != "failure", records[-1]  # an image another client deleted is not a failure


def _action_type(kind: str) -> ActionType:
    assert kind in ("prune_dangling", "prune_unused", "keep_last", "free_space")
    return kind  # type: ignore[return-value]


def _apply(engine: FakeEngine, ids: list[str], change: Change) -> None:
    """What another client does to the engine at that moment."""
    live = [i for i in ids if i in engine.images]
    if not live:
        return
    target = live[change.image % len(live)]
    if change.kind == "container":
        engine.create_container(target)
    elif change.kind == "move":
        engine.tag(target, change.tag, NOW)  # `docker tag`: the name moves, LastTagTime is now
    elif change.kind in ("rmi", "rmi404"):
        engine.rmi_by_other(target, 500 if change.kind == "rmi" else 404)
    elif change.kind == "repull":
        ids.append(engine.pull(f"repull-{len(ids)}", change.tag, NOW))  # a new image takes the name
    else:
        fresh = f"{change.tag.split(':')[0]}:extra{len(ids)}"
        engine.tag(target, fresh, NOW)
