"""Stopped-container removal: selection rules, the re-check before each DELETE, and a property test over
random container sets and engine moves between our calls (a container started, restarted, stopped again)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ProtectConfig
from exporter.engine.client import EngineConflict, EngineNotFound, EngineUnavailable
from exporter.remediation.containers import (
    PRUNABLE_STATES,
    ContainerPlan,
    RemovalAborted,
    parse_inspect,
    remove,
    select,
)

NOW = 1_800_000_000.0
STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
BUSY = ("running", "paused", "restarting")


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def inspect(cid: str, state: str, finished: float | None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "Id": cid,
        "Name": f"/{cid}",
        "Image": f"sha256:{'a' * 64}",
        "State": {"Status": state, "FinishedAt": stamp(finished) if finished else "0001-01-01T00:00:00Z"},
        "Config": {"Labels": labels or {}},
    }


class FakeEngine:
    """Containers as inspect shows them; DELETE without force refuses running/paused/restarting (409)."""

    def __init__(self, containers: dict[str, dict[str, Any]]) -> None:
        self.containers = containers
        self.removed: list[tuple[str, str]] = []  # (id, state when removed)
        self.moves: list[tuple[str, str]] = []  # (after "inspect"/"intent", container id -> what happens)
        self.log: list[str] = []

    def _move(self, when: str, cid: str) -> None:
        for at, what in list(self.moves):
            if at == f"{when}:{cid}":
                self.moves.remove((at, what))
                c = self.containers[cid]
                if what == "start":
                    c["State"]["Status"] = "running"
                elif what == "restart":  # started and stopped again: a new FinishedAt
                    c["State"] = {"Status": "exited", "FinishedAt": stamp(NOW + 1)}

    async def inspect_container_now(self, container_id: str) -> dict[str, Any]:
        if container_id not in self.containers:
            raise EngineNotFound("No such container")
        answer = {**self.containers[container_id], "State": dict(self.containers[container_id]["State"])}
        self._move("inspect", container_id)
        return answer

    async def remove_container(self, container_id: str) -> None:
        self.log.append(f"delete {container_id}")
        if container_id not in self.containers:
            raise EngineNotFound("No such container")
        state = self.containers[container_id]["State"]["Status"]
        if state in BUSY:
            raise EngineConflict(f"cannot remove container: container is {state}: stop the container first")
        self.removed.append((container_id, state))
        del self.containers[container_id]


def plan_of(
    engine: FakeEngine, protect: ProtectConfig, *, min_age: float = 3600, max_deletions: int = 100
) -> ContainerPlan:
    parsed = [parse_inspect(c) for c in engine.containers.values()]
    return select(parsed, min_age=min_age, max_deletions=max_deletions, protect=protect, now=NOW)


async def run(engine: FakeEngine, plan: ContainerPlan, protect: ProtectConfig, dry_run: bool = False) -> Any:
    async def audit(event: str, fields: dict[str, Any]) -> None:
        engine.log.append(f"{event} {fields['container_id']}")
        engine._move(event, fields["container_id"])  # the engine moves on while the intent is written

    return await remove(engine, plan, audit=audit, protect_now=lambda: protect, dry_run=dry_run)


def test_selects_only_old_exited_and_dead_unprotected_oldest_first_bounded() -> None:
    engine = FakeEngine(
        {
            "old-exited": inspect("old-exited", "exited", NOW - 7200),
            "older-dead": inspect("older-dead", "dead", NOW - 9000),
            "young": inspect("young", "exited", NOW - 60),
            "created": inspect("created", "created", None),
            "running": inspect("running", "running", NOW - 9999),
            "paused": inspect("paused", "paused", NOW - 9999),
            "restarting": inspect("restarting", "restarting", NOW - 9999),
            "kept": inspect("kept", "exited", NOW - 9999, {"keep": "yes"}),
            "third": inspect("third", "exited", NOW - 4000),
        }
    )
    plan = plan_of(engine, ProtectConfig(labels=("keep",)), max_deletions=2)
    assert [c.id for c in plan.candidates] == ["older-dead", "old-exited"]
    assert {(c.id, reason) for c, reason, _ in plan.skipped} == {
        ("kept", "protected_label"),
        ("young", "too_young"),
        ("third", "max_deletions"),
    }


async def test_removes_after_an_intent_and_skips_what_changed_since_the_plan() -> None:
    engine = FakeEngine({n: inspect(n, "exited", NOW - 7200) for n in ("a", "b", "c", "d", "e")})
    engine.containers["e"]["Config"]["Labels"] = {"pin": "1"}  # protected by the config in force now
    plan = plan_of(engine, ProtectConfig())
    engine.containers["b"]["State"]["Status"] = "running"  # started after the plan: the re-check sees it
    engine.moves = [("inspect:c", "start"), ("inspect:d", "restart")]  # started between re-check and DELETE
    outcomes = await run(engine, plan, ProtectConfig(labels=("pin",)))
    got = {o.id: (o.result, o.skip_reason) for o in outcomes}
    assert got == {
        "a": ("deleted", None),
        "b": ("skipped", "not_stopped"),
        "c": ("skipped", "conflict"),  # the engine's 409: never forced
        "d": ("deleted", None),  # ran again and stopped again after our re-check: it is stopped, so it goes
        "e": ("skipped", "protected_label"),
    }
    assert engine.log[:2] == ["intent a", "delete a"]
    assert [cid for cid, _ in engine.removed] == ["a", "d"]


async def test_a_container_that_ran_again_before_the_recheck_is_kept() -> None:
    engine = FakeEngine({"a": inspect("a", "exited", NOW - 7200)})
    plan = plan_of(engine, ProtectConfig())
    engine.containers["a"]["State"]["FinishedAt"] = stamp(NOW - 5)
    (outcome,) = await run(engine, plan, ProtectConfig())
    assert (outcome.result, outcome.skip_reason) == ("skipped", "restarted")
    assert engine.removed == [] and engine.log == []


async def test_dry_run_and_an_unwritable_intent_delete_nothing() -> None:
    engine = FakeEngine({"a": inspect("a", "exited", NOW - 7200)})
    plan = plan_of(engine, ProtectConfig())
    assert [o.result for o in await run(engine, plan, ProtectConfig(), dry_run=True)] == ["would_delete"]

    async def failing(event: str, fields: dict[str, Any]) -> None:
        raise OSError("disk full")

    with pytest.raises(RemovalAborted, match="intent"):
        await remove(engine, plan, audit=failing, protect_now=ProtectConfig, dry_run=False)
    assert engine.removed == [] and "a" in engine.containers


async def test_gone_before_the_delete_is_not_found() -> None:
    engine = FakeEngine({"a": inspect("a", "exited", NOW - 7200)})
    plan = plan_of(engine, ProtectConfig())
    del engine.containers["a"]
    (outcome,) = await run(engine, plan, ProtectConfig())
    assert outcome.result == "not_found"


containers_st = st.lists(
    st.tuples(
        st.sampled_from(STATES),
        st.integers(min_value=0, max_value=20_000),  # finished this many seconds ago (0: never)
        st.booleans(),  # protected by label
    ),
    max_size=12,
)
moves_st = st.lists(
    st.tuples(st.sampled_from(("inspect", "intent")), st.integers(0, 11), st.sampled_from(("start", "restart"))),
    max_size=6,
)


@settings(max_examples=200, deadline=None)
@given(containers_st, moves_st, st.integers(1, 5))
async def test_never_removes_a_busy_or_protected_container(
    specs: list[tuple[str, int, bool]], moves: list[tuple[str, int, str]], max_deletions: int
) -> None:
    engine = FakeEngine(
        {
            f"c{i}": inspect(f"c{i}", state, NOW - ago if ago else None, {"keep": "1"} if protected else {})
            for i, (state, ago, protected) in enumerate(specs)
        }
    )
    eligible_at_plan = {
        cid
        for cid, c in engine.containers.items()
        if c["State"]["Status"] in PRUNABLE_STATES
        and not c["Config"]["Labels"]
        and parse_inspect(c).finished_at
        and NOW - (parse_inspect(c).finished_at or NOW) >= 3600
    }
    protect = ProtectConfig(labels=("keep",))
    plan = plan_of(engine, protect, max_deletions=max_deletions)
    engine.moves = [(f"{when}:c{i}", what) for when, i, what in moves]
    await run(engine, plan, protect)
    removed = [cid for cid, _ in engine.removed]
    assert len(removed) <= max_deletions
    assert set(removed) <= eligible_at_plan
    assert all(state in PRUNABLE_STATES for _, state in engine.removed)  # never running, paused, restarting
    for cid in removed:  # every DELETE that removed something came right after its intent
        i = engine.log.index(f"delete {cid}")
        assert i > 0 and engine.log[i - 1] == f"intent {cid}"


class Silent(FakeEngine):
    """A DELETE that gets no answer: the engine may still carry it out."""

    async def remove_container(self, container_id: str) -> None:
        self.log.append(f"delete {container_id}")
        raise EngineUnavailable("engine did not answer within 35s")


async def test_a_delete_without_an_answer_is_unknown_and_ends_the_run() -> None:
    engine = Silent({n: inspect(n, "exited", NOW - 7200 - i) for i, n in enumerate(("a", "b"))})
    plan = plan_of(engine, ProtectConfig())
    with pytest.raises(RemovalAborted) as aborted:
        await run(engine, plan, ProtectConfig())
    assert [(o.id, o.result) for o in aborted.value.done] == [("b", "unknown")]  # oldest first; "a" not tried
    assert engine.log == ["intent b", "delete b"]


async def test_stops_before_the_next_container_on_shutdown() -> None:
    engine = FakeEngine({n: inspect(n, "exited", NOW - 7200 - i) for i, n in enumerate(("a", "b"))})
    plan = plan_of(engine, ProtectConfig())

    async def audit(event: str, fields: dict[str, Any]) -> None:
        engine.log.append(f"{event} {fields['container_id']}")

    done = await remove(
        engine, plan, audit=audit, protect_now=ProtectConfig, dry_run=False, stopping=lambda: bool(engine.removed)
    )
    assert [o.id for o in done] == ["b"] and "a" in engine.containers
