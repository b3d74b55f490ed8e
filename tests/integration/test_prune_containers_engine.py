"""Stopped-container removal on a real engine: real exited containers, a real restart between the plan and
the DELETE, and the engine's own 409 for a container started between our re-check and the DELETE."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from exporter.config import ProtectConfig
from exporter.engine.client import Engine, EngineNotFound
from exporter.remediation.containers import parse_inspect, remove, select
from tests.harness.dockerd import PrivateDockerd
from tests.harness.images import ImageSpec, Layer, load_images
from tests.integration import test_remediation_actions as actions
from tests.integration.test_remediation_actions import remediation_config

make_harness = actions.make_harness  # the fixture, shared with the action tests

pytestmark = pytest.mark.engine


def exited(dockerd: PrivateDockerd, name: str, labels: tuple[str, ...] = ()) -> str:
    """A container that ran and ended: started, killed, waited for."""
    args = [arg for label in labels for arg in ("--label", label)]
    cid = dockerd.cli("create", "--network", "none", "--name", name, *args, "stopper:1").stdout.decode().strip()
    dockerd.cli("start", cid)
    dockerd.cli("kill", cid)
    dockerd.cli("wait", cid)
    return cid


class StartsOne(Engine):
    """Starts one container right after our re-check of it answered: the window only the engine's 409 closes."""

    def __init__(self, host: str, dockerd: PrivateDockerd, victim: str) -> None:
        super().__init__(host)
        self.dockerd = dockerd
        self.victim = victim

    async def inspect_container_now(self, container_id: str) -> dict[str, Any]:
        answer = await super().inspect_container_now(container_id)
        if container_id == self.victim:
            self.victim = ""
            self.dockerd.cli("start", container_id)
        return answer


async def test_removes_exited_containers_and_never_one_restarted_during_its_removal(dockerd: PrivateDockerd) -> None:
    load_images(dockerd, [ImageSpec(tags=["stopper:1"], layers=[Layer.pause()], cmd=["/pause"])])
    plain = exited(dockerd, "plain")
    again = exited(dockerd, "again")
    racer = exited(dockerd, "racer")
    kept = exited(dockerd, "kept", ("keep=1",))
    created = dockerd.cli("create", "--network", "none", "stopper:1").stdout.decode().strip()
    engine = StartsOne(dockerd.host, dockerd, "")
    try:
        stopped = [parse_inspect(await engine.inspect_container_now(c)) for c in (plain, again, racer, kept, created)]
        assert {c.state for c in stopped} == {"exited", "created"}
        plan = select(stopped, min_age=0, max_deletions=10, protect=ProtectConfig(labels=("keep",)), now=time.time())
        assert {c.id for c in plan.candidates} == {plain, again, racer}  # never the created or the protected one
        dockerd.cli("start", again)  # ran again after the plan, and stopped again: someone uses it
        dockerd.cli("kill", again)
        dockerd.cli("wait", again)
        lines: list[tuple[str, dict[str, Any]]] = []
        engine.victim = racer  # armed now: the plan's own inspects above went through untouched

        async def audit(event: str, fields: dict[str, Any]) -> None:
            lines.append((event, fields))

        outcomes = await remove(
            engine, plan, audit=audit, protect_now=lambda: ProtectConfig(labels=("keep",)), dry_run=False
        )
        got = {o.id: (o.result, o.skip_reason) for o in outcomes}
        assert got == {plain: ("deleted", None), again: ("skipped", "restarted"), racer: ("skipped", "conflict")}
        assert [f["container_id"] for e, f in lines if e == "intent"] == [plain, racer]
        with pytest.raises(EngineNotFound):
            await engine.inspect_container_now(plain)
        for survivor in (again, racer, kept, created):
            await engine.inspect_container_now(survivor)
        assert parse_inspect(await engine.inspect_container_now(racer)).state == "running"  # the engine refused
    finally:
        dockerd.cli("kill", racer, check=False)
        engine.close()


async def test_prune_containers_action_dry_run_then_real_audited(
    dockerd: PrivateDockerd, tmp_path: Path, make_harness: Any
) -> None:
    load_images(dockerd, [ImageSpec(tags=["stopper:1"], layers=[Layer.pause()], cmd=["/pause"])])
    gone = exited(dockerd, "litter")
    kept = exited(dockerd, "pinned", ("keep=true",))  # protect.labels of remediation_config
    running = dockerd.cli("create", "--network", "none", "--name", "busy", "stopper:1").stdout.decode().strip()
    dockerd.cli("start", running)
    config = remediation_config(tmp_path, {"containers": {"type": "prune_containers", "min_age": "0s"}}, "/")
    h = await make_harness(dockerd, config)
    try:
        dry = await h.run("containers", dry_run=True)
        assert dry.result == "dry_run", dry.to_json()
        assert {(o.references, o.result, o.skip_reason) for o in dry.outcomes} == {
            (("litter",), "would_delete", None),
            (("pinned",), "skipped", "protected_label"),
        }
        assert [line["event"] for line in h.audit() if line["run_id"] == dry.run_id] == [
            "run_start",
            "dry_run_summary",
            "run_end",
        ]
        for cid in (gone, kept, running):
            await h.engine.inspect_container_now(cid)  # a dry run removes nothing

        run = await h.run("containers")
        assert run.result == "success", run.to_json()
        with pytest.raises(EngineNotFound):
            await h.engine.inspect_container_now(gone)
        await h.engine.inspect_container_now(kept)
        assert parse_inspect(await h.engine.inspect_container_now(running)).state == "running"
        lines = [line for line in h.audit() if line["run_id"] == run.run_id]
        events = [(line["event"], line.get("container_id") or line.get("name")) for line in lines]
        # the intent is on disk before the DELETE; the outcome line follows it
        assert events.index(("intent", gone)) < events.index(("container", gone))
        assert {line["name"]: line["result"] for line in lines if line["event"] == "container"} == {
            "litter": "deleted",
            "pinned": "skipped",
        }
    finally:
        dockerd.cli("kill", running, check=False)
