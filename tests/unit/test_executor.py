"""The executor against the in-memory engine: results, and every race issue 10 reported, replayed exactly.

Each race test moves the engine at one precise call (`FakeEngine.before`), which a real engine cannot be made
to do on demand; the engine-backed versions live in tests/integration/test_remediation_races.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import ActionConfig, ActionType, ProtectConfig
from exporter.core.snapshot import Filesystem, Image, Snapshot
from exporter.engine.apishapes import HOLD_REPOSITORY, parse_refs
from exporter.engine.apishapes import is_hold_reference as is_hold
from exporter.engine.client import DELETE_LANE_THREADS, EngineError
from exporter.remediation import audit as audit_module
from exporter.remediation.audit import AuditLog
from exporter.remediation.executor import Executor
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Plan, make_plan
from exporter.remediation.runs import SUMMARY_LIST_LIMIT, Run
from tests.harness.audit import read_audit
from tests.unit.actions import action_of
from tests.unit.fake_engine import FakeEngine

NOW = 1_700_000_000.0
DAY = 86400.0
OLD = NOW - 10 * DAY
PROTECT = ProtectConfig(references=("base/*",), local_only=False)


def snapshot_of(engine: FakeEngine, fs: Filesystem | None = None) -> Snapshot:
    """What a poll of the fake engine would give the planner (every image 100 bytes, nothing shared)."""
    in_use: dict[str, int] = {}
    for iid in engine.containers.values():
        in_use[iid] = in_use.get(iid, 0) + 1
    images = tuple(
        Image(
            id=i.id,
            refs=parse_refs(sorted(i.tags)),  # as a poll parses them: hold references are not tags
            digests=tuple(sorted(i.digests)),
            created=i.arrived,
            size=100,
            shared_size=0,
            labels=MappingProxyType({}),
            containers=in_use.get(i.id, 0),
            arrived=i.arrived,
        )
        for i in engine.images.values()
    )
    return Snapshot(NOW, None, images, filesystem=fs, by_id=MappingProxyType({i.id: i for i in images}))


class Harness:
    def __init__(
        self,
        tmp_path: Path,
        engine: FakeEngine,
        read_fs: Callable[[str], Filesystem] | None = None,
        in_flight: int = DELETE_LANE_THREADS,
    ) -> None:
        self.engine = engine
        self.audit_path = tmp_path / "audit.jsonl"
        self.executor = Executor(
            engine,
            AuditLog(str(self.audit_path)),
            RemediationMetrics(CollectorRegistry(), ["a"]),
            read_fs or (lambda path: Filesystem(path, 1000, 0)),
            in_flight,
        )

    def plan(self, action: ActionConfig, fs: Filesystem | None = None) -> Plan:
        return make_plan(snapshot_of(self.engine, fs), action, PROTECT, NOW)

    async def run(self, action: ActionConfig, dry_run: bool = False, plan: Plan | None = None) -> Run:
        run = Run(action.name, action.type, "manual", dry_run)
        await self.executor.execute(run, plan or self.plan(action), action)
        return run

    def audit(self) -> list[dict[str, Any]]:
        return read_audit(self.audit_path)


def act(kind: ActionType, **kw: Any) -> ActionConfig:
    return action_of(kind, min_age=3600.0, **kw)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


# -- results ----------------------------------------------------------------------------------------------
async def test_dry_run_describes_the_plan_and_sends_no_delete(tmp_path: Path, engine: FakeEngine) -> None:
    for n in range(3):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD)
    h = Harness(tmp_path, engine)
    run = await h.run(act("prune_unused"), dry_run=True)
    assert run.result == "dry_run"
    assert [o.result for o in run.outcomes] == ["would_delete"] * 3
    assert not any(call == "remove_image" for call, _ in engine.calls)
    assert len(engine.images) == 3
    records = h.audit()  # one summary line, not a line per image: a 10k dry run writes three lines
    assert [r["event"] for r in records] == ["run_start", "dry_run_summary", "run_end"]
    assert records[1]["counts"] == {"would_delete": 3} and records[1]["would_delete_bytes"] == 300


async def test_max_deletions_stops_and_names_the_rest(tmp_path: Path, engine: FakeEngine) -> None:
    for n in range(5):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine)
    run = await h.run(act("prune_unused", max_deletions=2))
    assert run.result == "partial" and run.images_deleted == 2 and run.reclaimed_bytes == 200
    assert [o.result for o in run.outcomes] == ["deleted", "deleted", "skipped", "skipped", "skipped"]
    assert {o.skip_reason for o in run.outcomes[2:]} == {"max_deletions"}
    assert len(engine.images) == 3


async def test_free_space_stops_when_the_goal_is_met(tmp_path: Path, engine: FakeEngine) -> None:
    for n in range(4):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    removed_before = len(engine.removals)
    h = Harness(tmp_path, engine, lambda path: Filesystem(path, 1000, 100 * (len(engine.removals) - removed_before)))
    plan = h.plan(act("free_space", target_avail_ratio=0.2), Filesystem("/", 1000, 0))
    run = await h.run(act("free_space", target_avail_ratio=0.2), plan=plan)
    assert run.result == "success" and run.goal_met is True and run.images_deleted == 2
    assert run.filesystem_after == Filesystem("/", 1000, 200)
    assert len(engine.images) == 2


async def test_the_goal_already_met_deletes_nothing(tmp_path: Path, engine: FakeEngine) -> None:
    engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    plan = h.plan(act("free_space", target_avail_ratio=0.2), Filesystem("/", 1000, 500))
    run = await h.run(act("free_space", target_avail_ratio=0.2), plan=plan)
    assert run.result == "success" and run.goal_met is True and engine.removals == []


async def test_every_delete_has_an_intent_line_before_it(tmp_path: Path, engine: FakeEngine) -> None:
    old = engine.add("old", ("app:1", "app:2"), arrived=OLD)
    h = Harness(tmp_path, engine)
    seen: list[int] = []
    engine.before = lambda call, arg: seen.append(len(h.audit())) if call == "remove_image" else None
    run = await h.run(act("prune_unused"))
    assert run.images_deleted == 1
    records = h.audit()
    intents = [r for r in records if r["event"] == "intent"]
    assert [r["target"] for r in intents] == ["app:1", old]  # extra tag by name, then the image by ID
    for count, intent in zip(seen, intents, strict=True):
        assert records[count - 1] == intent  # the last line on disk when the DELETE went out


# -- #3: a tag moved between the re-inspect and the DELETE ------------------------------------------------
async def test_a_tag_moved_before_the_delete_never_touches_the_newcomer(tmp_path: Path, engine: FakeEngine) -> None:
    old = engine.add("old", ("base/app:1",), arrived=OLD)
    engine.images[old].tags = {"app:1"}  # planned under an unprotected name
    h = Harness(tmp_path, engine)
    plan = h.plan(act("prune_unused"))
    newcomer = ""

    def move_tag(call: str, arg: str) -> None:
        nonlocal newcomer
        if call == "remove_image" and not newcomer:
            newcomer = engine.pull("new", "app:1", NOW)  # a fresh pull takes the name at the last moment

    engine.before = move_tag
    run = await h.run(act("prune_unused"), plan=plan)
    assert newcomer in engine.images and engine.images[newcomer].tags == {"app:1"}
    assert [r.image_id for r in engine.removals] == [old]  # the old image, now dangling, went by ID
    (line,) = [r for r in h.audit() if r["event"] == "image"]
    assert line["image_id"] == old and line["result"] == "deleted"
    assert run.images_deleted == 1


async def test_an_untag_redirected_by_a_late_re_tag_is_audited_under_the_image_it_hit(
    tmp_path: Path, engine: FakeEngine
) -> None:
    """keep_last must untag by name; the window left open is reported truthfully (docs/remediation.md)."""
    for n in range(1, 4):
        engine.add(f"v{n}", (f"app:{n}",), arrived=OLD + n)
    engine.images[engine.tag_owner("app:1").id].tags.add("other:latest")  # type: ignore[union-attr]
    h = Harness(tmp_path, engine)
    plan = h.plan(act("keep_last", keep=2))
    (cand,) = plan.candidates
    assert cand.references == ("app:1",) and not cand.removes_image
    newcomer = ""

    def re_tag(call: str, arg: str) -> None:
        nonlocal newcomer
        if call == "remove_image" and arg == "app:1" and not newcomer:
            newcomer = engine.pull("new", "app:1", NOW)

    engine.before = re_tag
    run = await h.run(act("keep_last", keep=2), plan=plan)
    assert [r.image_id for r in engine.removals] == [newcomer]  # the engine did it; we cannot prevent it
    assert run.images_deleted == 1  # ... but we never report fewer deletions than happened
    lines = [r for r in h.audit() if r["event"] == "image"]
    assert [(r["image_id"], r["result"]) for r in lines] == [(newcomer, "deleted"), (cand.image_id, "skipped")]
    assert "re-tagged onto" in lines[0]["detail"]


# -- #4: deletions without an audit line -----------------------------------------------------------------
class _OsWith:
    """The `os` module as audit.py sees it, with one function replaced."""

    def __init__(self, fsync: Callable[[int], None]) -> None:
        self.fsync = fsync

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


class DiskFull:
    """fsync answers ENOSPC from the `fail_from`-th audit line on: the real AuditLog code path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_from: int) -> None:
        self.count = 0
        self.fail_from = fail_from
        real = os.fsync

        def fsync(fd: int) -> None:
            self.count += 1
            if self.count >= self.fail_from:
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)

        monkeypatch.setattr(audit_module, "os", _OsWith(fsync))


async def test_no_delete_without_its_intent_line(
    tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    DiskFull(monkeypatch, fail_from=2)  # run_start is written, the first intent is not
    run = await h.run(act("prune_unused"))
    assert engine.removals == [] and run.result == "failure" and run.images_deleted == 0
    assert "audit log" in run.detail


async def test_a_delete_whose_outcome_line_fails_is_still_counted(
    tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.add("old", ("app:1",), arrived=OLD)
    engine.add("older", ("app:0",), arrived=OLD - 1)
    h = Harness(tmp_path, engine, in_flight=1)  # one at a time: the second has not started when the write fails
    DiskFull(monkeypatch, fail_from=3)  # run_start, intent: written; the outcome line of the DELETE: not
    run = await h.run(act("prune_unused"))
    assert len(engine.removals) == 1  # the run stopped before the second image
    assert run.images_deleted == 1 and run.reclaimed_bytes == 100 and run.result == "failure"
    assert [o.result for o in run.outcomes] == ["deleted"]


async def test_no_delete_after_an_outcome_line_that_did_not_reach_the_disk(
    tmp_path: Path, engine: FakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcome lines are queued without waiting for their fsync; one that failed stops the next DELETE.

    The disk fails once (the outcome line's fsync) and works again for the next intent: only the check
    before each DELETE that every queued line made it to disk keeps the second image.
    """
    engine.add("old", ("app:1",), arrived=OLD)
    engine.add("older", ("app:0",), arrived=OLD - 1)
    h = Harness(tmp_path, engine, in_flight=1)
    fsyncs = 0
    real = os.fsync

    def fsync(fd: int) -> None:  # run_start, intent: written; the first outcome line: not; the rest: yes
        nonlocal fsyncs
        fsyncs += 1
        if fsyncs == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(audit_module, "os", _OsWith(fsync))
    run = await h.run(act("prune_unused"))
    assert fsyncs > 3  # the disk worked again after the failure
    assert len(engine.removals) == 1 and run.result == "failure" and "audit log" in run.detail
    assert run.images_deleted == 1 and [o.result for o in run.outcomes] == ["deleted"]


async def test_a_delete_that_timed_out_is_looked_up_and_counted(tmp_path: Path, engine: FakeEngine) -> None:
    old = engine.add("old", ("app:1",), arrived=OLD - 1)
    newer = engine.add("newer", ("app:2",), arrived=OLD)
    h = Harness(tmp_path, engine, in_flight=1)
    engine.timeout_on_delete = lambda ref: ref == old  # the engine did it; the answer never came
    run = await h.run(act("prune_unused"))
    assert old not in engine.images and newer in engine.images  # a slow engine ends the run
    assert run.images_deleted == 1 and run.reclaimed_bytes == 100 and run.result == "failure"
    line = next(r for r in h.audit() if r["event"] == "image" and r["image_id"] == old)
    assert line["result"] == "deleted" and "got no answer" in line["detail"]
    assert h.audit()[-1]["images_deleted"] == 1


async def test_a_timed_out_delete_the_engine_cannot_confirm_is_recorded_as_unknown(
    tmp_path: Path, engine: FakeEngine
) -> None:
    old = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    engine.timeout_on_delete = lambda ref: True

    def engine_gone(call: str, arg: str) -> None:
        if call == "inspect_image" and any(c == "remove_image" for c, _ in engine.calls):
            from exporter.engine.client import EngineUnavailable

            raise EngineUnavailable("connection refused")

    engine.before = engine_gone
    run = await h.run(act("prune_unused"))
    assert run.result == "failure" and old not in engine.images
    line = next(r for r in h.audit() if r["event"] == "image")
    assert line["result"] == "unknown" and line["image_id"] == old


# -- #5: an image that comes into use during a run keeps its tags -----------------------------------------
async def test_an_image_coming_into_use_keeps_all_its_tags(tmp_path: Path, engine: FakeEngine) -> None:
    old = engine.add("old", ("app:1", "app:2", "app:3"), arrived=OLD)
    h = Harness(tmp_path, engine)
    plan = h.plan(act("prune_unused"))
    engine.create_container(old)  # after planning, before the first DELETE
    run = await h.run(act("prune_unused"), plan=plan)
    assert engine.images[old].tags == {"app:1", "app:2", "app:3"}
    assert not any(call == "remove_image" for call, _ in engine.calls)
    assert run.outcomes[0].result == "skipped" and run.outcomes[0].skip_reason == "in_use"


async def test_an_image_tagged_after_planning_is_left_alone(tmp_path: Path, engine: FakeEngine) -> None:
    old = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    plan = h.plan(act("prune_unused"))
    engine.tag(old, "base/app:pinned", NOW)
    run = await h.run(act("prune_unused"), plan=plan)
    assert old in engine.images and run.outcomes[0].skip_reason == "conflict"


# -- #13: shutdown --------------------------------------------------------------------------------------
async def test_stopping_ends_the_run_before_the_next_delete(tmp_path: Path, engine: FakeEngine) -> None:
    for n in range(10):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, in_flight=1)

    def stop_after_first(call: str, arg: str) -> None:
        if call == "remove_image":
            h.executor.stop()

    engine.before = stop_after_first
    run = await h.run(act("prune_unused"))
    assert len(engine.removals) == 1 and run.images_deleted == 1
    assert run.result == "partial" and "shutting down" in run.detail
    assert h.audit()[-1]["event"] == "run_end" and h.audit()[-1]["images_deleted"] == 1


# -- #14: a few deletions in flight ------------------------------------------------------------------------
def _open_intents(records: list[dict[str, Any]]) -> list[str]:
    """Intent targets on disk whose image has no outcome line yet (DELETEs that may be in flight)."""
    finished = {r["image_id"] for r in records if r["event"] == "image"}
    return [r["target"] for r in records if r["event"] == "intent" and r["image_id"] not in finished]


async def test_deletions_go_in_flight_together_after_their_intents_share_an_fsync(
    tmp_path: Path, engine: FakeEngine
) -> None:
    for n in range(8):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, in_flight=4)
    on_disk_at_delete: list[list[str]] = []

    def look(call: str, arg: str) -> None:
        if call == "remove_image":
            on_disk_at_delete.append(_open_intents(h.audit()))

    engine.before = look
    run = await h.run(act("prune_unused"))
    assert run.result == "success" and run.images_deleted == 8 and engine.images == {}
    assert all(
        target in seen
        for (call, target), seen in zip(
            [c for c in engine.calls if c[0] == "remove_image"], on_disk_at_delete, strict=True
        )
    )
    assert max(len(seen) for seen in on_disk_at_delete) == 4  # four intents durable before the DELETEs
    lines = len(h.audit())
    assert h.executor.audit_writer.flushes < lines - 1  # 18 lines, shared fsyncs


async def test_stopping_with_deletions_in_flight_finishes_them_and_starts_none(
    tmp_path: Path, engine: FakeEngine
) -> None:
    for n in range(10):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, in_flight=4)

    def stop_at_first_delete(call: str, arg: str) -> None:
        if call == "remove_image":
            h.executor.stop()

    engine.before = stop_at_first_delete
    run = await h.run(act("prune_unused"))
    assert len(engine.removals) == run.images_deleted == 4 and len(engine.images) == 6
    assert run.result == "partial" and "shutting down" in run.detail
    deleted = {r["image_id"] for r in h.audit() if r["event"] == "image" and r["result"] == "deleted"}
    assert deleted == {r.image_id for r in engine.removals}  # every DELETE sent has its outcome line


async def test_max_deletions_counts_deletions_in_flight(tmp_path: Path, engine: FakeEngine) -> None:
    for n in range(9):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, in_flight=4)
    run = await h.run(act("prune_unused", max_deletions=3))
    assert len(engine.removals) == 3 and run.images_deleted == 3 and run.result == "partial"
    assert sum(1 for c, _ in engine.calls if c == "remove_image") == 3


async def test_free_space_starts_no_deletion_that_the_ones_in_flight_make_unneeded(
    tmp_path: Path, engine: FakeEngine
) -> None:
    for n in range(8):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    removed_before = len(engine.removals)
    h = Harness(
        tmp_path,
        engine,
        lambda path: Filesystem(path, 1000, 100 * (len(engine.removals) - removed_before)),
        in_flight=4,
    )
    plan = h.plan(act("free_space", target_avail_ratio=0.2), Filesystem("/", 1000, 0))
    run = await h.run(act("free_space", target_avail_ratio=0.2), plan=plan)
    assert run.goal_met and len(engine.removals) == 2  # 200 of 1000 bytes: two images, not four in flight


async def test_an_untag_by_name_runs_with_nothing_else_in_flight(tmp_path: Path, engine: FakeEngine) -> None:
    for n in range(6):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    multi = engine.add("multi", ("tool:1", "tool:2"), arrived=OLD - 1)  # first in the plan
    h = Harness(tmp_path, engine, in_flight=4)
    beside_untag: list[list[str]] = []

    def look(call: str, arg: str) -> None:
        if call == "remove_image" and not arg.startswith("sha256:"):
            beside_untag.append(_open_intents(h.audit()))

    engine.before = look
    run = await h.run(act("prune_unused"))
    assert run.images_deleted == 7 and multi not in engine.images
    assert beside_untag and all(len(open_) == 1 for open_ in beside_untag)


async def test_a_big_dry_run_keeps_a_bounded_summary_and_audits_three_lines(tmp_path: Path, engine: FakeEngine) -> None:
    for n in range(SUMMARY_LIST_LIMIT * 3):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine)
    run = await h.run(act("prune_unused"), dry_run=True)
    summary = run.summary()
    assert summary["counts"] == {"would_delete": SUMMARY_LIST_LIMIT * 3}
    assert len(summary["would_delete"]) == SUMMARY_LIST_LIMIT  # history keeps this form for 100 runs
    assert len(run.to_json()["would_delete"]) == SUMMARY_LIST_LIMIT * 3  # the run's own answer lists all
    assert len(h.audit()) == 3


async def test_a_cancelled_run_still_writes_the_outcome_of_every_delete_it_sent(
    tmp_path: Path, engine: FakeEngine
) -> None:
    for n in range(8):
        engine.add(f"old{n}", (f"app:{n}",), arrived=OLD + n)
    h = Harness(tmp_path, engine, in_flight=4)
    task = asyncio.create_task(h.run(act("prune_unused")))

    def cancel_at_first_delete(call: str, arg: str) -> None:
        if call == "remove_image":
            task.cancel()

    engine.before = cancel_at_first_delete
    with pytest.raises(asyncio.CancelledError):
        await task
    left = [t for t in asyncio.all_tasks() if "Executor._one" in repr(t.get_coro())]
    assert left == []  # the run ended only after the deletions in flight did
    assert 1 <= len(engine.removals) <= 4 and len(engine.images) == 8 - len(engine.removals)
    deleted = {r["image_id"] for r in h.audit() if r["event"] == "image" and r["result"] == "deleted"}
    assert deleted == {r.image_id for r in engine.removals}


async def test_a_single_tag_image_coming_into_use_is_refused_by_the_engine_and_skipped_as_in_use(
    tmp_path: Path, engine: FakeEngine
) -> None:
    old = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    plan = h.plan(act("prune_unused"))
    engine.create_container(old)  # no container list before a DELETE by ID: the engine's 409 is the check
    run = await h.run(act("prune_unused"), plan=plan)
    assert old in engine.images and engine.images[old].tags == {"app:1"} and engine.removals == []
    assert run.outcomes[0].result == "skipped" and run.outcomes[0].skip_reason == "in_use"
    assert run.result == "success"


# -- the 0 -> 1 tag race, concurrent `docker rmi`, stopping mid-untag -------------------------------------
def _at_final_delete(engine: FakeEngine, then: Callable[[], object]) -> None:
    """Run `then` once, just before the image's last DELETE (of its hold, or by ID) reaches the engine."""
    done = False

    def hook(call: str, arg: str) -> None:
        nonlocal done
        if call == "remove_image" and (is_hold(arg) or arg.startswith("sha256:")) and not done:
            done = True
            then()

    engine.before = hook


async def test_a_dangling_image_that_gains_a_tag_during_its_delete_stays(tmp_path: Path, engine: FakeEngine) -> None:
    """moby deletes by ID an image with one tag, tag and all: the final DELETE is of the hold, by name."""
    iid = engine.add("dangling", arrived=OLD)
    h = Harness(tmp_path, engine)
    _at_final_delete(engine, lambda: engine.tag(iid, "app:production", NOW))
    run = await h.run(act("prune_dangling"))
    assert iid in engine.images and engine.images[iid].tags == {"app:production"}  # the hold went, not the image
    assert engine.removals == [] and run.images_deleted == 0
    (outcome,) = run.outcomes
    assert outcome.result == "skipped" and outcome.skip_reason == "conflict"
    assert "app:production" in outcome.detail and "gained a reference" in outcome.detail
    (intent,) = [r for r in h.audit() if r["event"] == "intent"]
    assert intent["hold"] is True and intent["target"] == f"{HOLD_REPOSITORY}/{run.run_id}:{iid[7:19]}"


async def test_a_digest_only_image_that_gains_a_tag_during_its_delete_stays(tmp_path: Path, engine: FakeEngine) -> None:
    iid = engine.add("pulled", arrived=OLD, digests=("app@sha256:" + "d" * 64,))
    h = Harness(tmp_path, engine)
    _at_final_delete(engine, lambda: engine.tag(iid, "app:production", NOW))
    run = await h.run(act("prune_unused"))
    assert iid in engine.images and engine.images[iid].tags == {"app:production"}
    assert engine.removals == [] and run.outcomes[0].skip_reason == "conflict"


async def test_a_dangling_image_goes_with_its_hold_and_digests(tmp_path: Path, engine: FakeEngine) -> None:
    iid = engine.add("pulled", arrived=OLD, digests=("app@sha256:" + "d" * 64, "mirror/app@sha256:" + "d" * 64))
    h = Harness(tmp_path, engine)
    run = await h.run(act("prune_unused"))
    assert [r.image_id for r in engine.removals] == [iid] and run.images_deleted == 1 and run.result == "success"
    assert sorted(run.outcomes[0].untagged) == sorted(engine.untagged[i].target for i in range(2))
    assert not any(is_hold(t) for t in run.outcomes[0].untagged)  # the hold is ours, not the image's
    targets = [r["target"] for r in h.audit() if r["event"] == "intent"]
    assert is_hold(targets[0]) and sorted(targets[1:]) == sorted(engine.untagged[i].target for i in range(2))


@pytest.mark.parametrize("kind", ["prune_dangling", "prune_unused"])
async def test_a_hold_left_by_an_interrupted_run_goes_with_the_image(
    tmp_path: Path, engine: FakeEngine, kind: ActionType
) -> None:
    """A leftover hold is no tag: the image is still dangling to the planner, and the hold goes first."""
    dangling = engine.add("dangling", ("docker-image-exporter.hold/0123456789abcdef:aaaaaaaaaaaa",), arrived=OLD)
    tagged = engine.add("tagged", ("app:1", "docker-image-exporter.hold/0123456789abcdef:bbbbbbbbbbbb"), arrived=OLD)
    h = Harness(tmp_path, engine)
    run = await h.run(act(kind))
    expected = {dangling} if kind == "prune_dangling" else {dangling, tagged}
    assert {r.image_id for r in engine.removals} == expected and run.result == "success"
    assert all(not is_hold(t) for o in run.outcomes for t in o.untagged)
    assert all(o.references == () for o in run.outcomes if o.image_id == dangling)


async def test_a_container_at_the_final_delete_keeps_the_image(tmp_path: Path, engine: FakeEngine) -> None:
    iid = engine.add("dangling", arrived=OLD)
    h = Harness(tmp_path, engine)
    _at_final_delete(engine, lambda: engine.create_container(iid))
    run = await h.run(act("prune_dangling"))
    assert iid in engine.images and engine.removals == []
    assert run.outcomes[0].skip_reason == "in_use" and "stays on the image" in run.outcomes[0].detail


@pytest.mark.parametrize("status", [500, 404])
async def test_an_image_another_client_deleted_first_is_gone_not_a_failure(
    tmp_path: Path, engine: FakeEngine, status: int
) -> None:
    """dockerd answers the loser of two racing DELETEs 500 "unrecognized image ID" about half the time."""
    first = engine.add("first", ("app:1",), arrived=OLD)
    second = engine.add("second", ("app:2",), arrived=OLD + 1)
    h = Harness(tmp_path, engine, in_flight=1)

    def docker_rmi(call: str, arg: str) -> None:
        if call == "remove_image" and arg == first:
            assert engine.rmi_by_other(first, status)

    engine.before = docker_rmi
    run = await h.run(act("prune_unused"))
    assert run.result == "success" and [r.image_id for r in engine.removals] == [second]
    assert run.images_deleted == 1 and run.reclaimed_bytes == 100  # the other client's deletion is not ours
    gone = run.outcomes[0]
    assert gone.image_id == first and gone.result == "skipped" and gone.skip_reason == "not_found"
    if status == 500:
        assert "another client deleted it concurrently" in gone.detail


async def test_a_500_for_an_image_that_is_still_there_ends_the_run(tmp_path: Path, engine: FakeEngine) -> None:
    iid = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)

    async def broken(ref: str) -> list[dict[str, Any]]:
        raise EngineError("driver failed removing layer", 500)

    engine.remove_image = broken  # type: ignore[method-assign]
    run = await h.run(act("prune_unused"))
    assert iid in engine.images and run.result == "failure" and "driver failed" in run.detail


async def test_stopping_mid_untag_of_a_many_tag_image_ends_the_run(tmp_path: Path, engine: FakeEngine) -> None:
    iid = engine.add("many", tuple(f"app:{n:04d}" for n in range(3000)), arrived=OLD)
    h = Harness(tmp_path, engine)

    def stop_at_the_fifth_untag(call: str, arg: str) -> None:
        if call == "remove_image" and len(engine.untagged) == 4:
            h.executor.stop()

    engine.before = stop_at_the_fifth_untag
    run = await h.run(act("prune_unused"))
    assert len(engine.untagged) == 5 and iid in engine.images  # the DELETE under way ends, no other starts
    assert run.result == "partial" and "shutting down" in run.detail
    (outcome,) = run.outcomes
    assert outcome.result == "untagged" and len(outcome.untagged) == 5 and "shutting down" in outcome.detail
    assert h.audit()[-1]["event"] == "run_end"


async def test_podmans_refusal_of_an_id_with_two_tags_is_a_conflict(tmp_path: Path, engine: FakeEngine) -> None:
    """Podman 4.3 answers a DELETE by ID of an image that gained a tag with an error asking for force, not 409."""
    iid = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)

    async def podman(ref: str) -> list[dict[str, Any]]:
        engine.tag(iid, "app:production", NOW)
        raise EngineError(
            f'unable to delete image "{iid[7:]}" by ID with more than one tag ([app:1 app:production]): '
            "please force removal",
            500,
        )

    engine.remove_image = podman  # type: ignore[method-assign]
    run = await h.run(act("prune_unused"))
    assert iid in engine.images and run.result == "partial"
    assert run.outcomes[0].skip_reason == "conflict" and "please force removal" in run.outcomes[0].detail
