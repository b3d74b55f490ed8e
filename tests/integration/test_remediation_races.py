"""The executor against a real engine at the exact moments that used to go wrong (issue 10, #3 and #6).

The race is made deterministic by tests/harness/faultproxy.py: the exporter's DELETE is held in the proxy
(it has not reached the engine), the test re-tags on the engine directly, then the DELETE goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import ActionType, ProtectConfig, parse_config
from exporter.engine.client import Engine
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.audit import AuditLog
from exporter.remediation.executor import Executor
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Plan, make_plan
from exporter.remediation.runs import Run
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller, read_filesystem
from tests.harness.audit import read_audit
from tests.harness.dockerd import PrivateDockerd, short_workdir
from tests.harness.engines import engine_store
from tests.harness.faultproxy import FaultProxy
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.registry import PrivateRegistry
from tests.harness.state import write_saved_state
from tests.unit.actions import action_of

pytestmark = pytest.mark.engine

KIB = 1024
PROTECT = ProtectConfig(labels=("keep=true",), local_only=False)


@dataclass
class Rig:
    engine: Engine
    executor: Executor
    poller: Poller
    audit_path: Path

    async def plan(
        self, kind: ActionType, only: set[str], protect: ProtectConfig = PROTECT, min_age: float = 0.0
    ) -> Plan:
        """A plan on a fresh poll, limited to this test's images."""
        snapshot = await self.poller.poll_once()
        assert snapshot is not None and self.poller.store.up, self.poller.store.last_error
        action = action_of(kind, name=kind, min_age=min_age)
        plan = make_plan(snapshot, action, protect, snapshot.taken_at)
        return replace(
            plan,
            candidates=tuple(c for c in plan.candidates if c.image_id in only),
            skipped=tuple(s for s in plan.skipped if s.image_id in only),
        )

    async def run(self, plan: Plan) -> Run:
        run = Run(plan.action, plan.type, "manual", False)
        await self.executor.execute(run, plan, action_of(plan.type, name=plan.action, min_age=0.0))
        return run

    def audit(self) -> list[dict[str, Any]]:
        return read_audit(self.audit_path)


@contextlib.asynccontextmanager
async def rig(host: str, tmp_path: Path, history: ImageHistory | None = None) -> AsyncIterator[Rig]:
    engine = Engine(host, timeout=60)
    config = parse_config({"filesystem": {"path": str(tmp_path)}})
    registry = CollectorRegistry()
    poller = Poller(engine, config, history or ImageHistory(None), PollMetrics(registry))
    audit_path = tmp_path / "audit.jsonl"
    executor = Executor(engine, AuditLog(str(audit_path)), RemediationMetrics(registry, []), read_filesystem)
    try:
        yield Rig(engine, executor, poller, audit_path)
    finally:
        executor.audit.close()
        engine.close()


def spec(tag: str | None, seed: str, **kw: Any) -> ImageSpec:
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    return ImageSpec(tags=[tag] if tag else [], layers=[Layer.random(64 * KIB, seed)], created=old, **kw)


def tags_of(dockerd: PrivateDockerd, image_id: str) -> list[str]:
    """Tags as docker names them (Podman adds the registry it resolved a short name to: docker.io/, localhost/)."""
    tags = dockerd.get_json(f"/images/{image_id}/json").get("RepoTags") or []
    return sorted(t.removeprefix("docker.io/").removeprefix("localhost/") for t in tags)


def present(dockerd: PrivateDockerd) -> set[str]:
    return {i["Id"] for i in dockerd.get_json("/images/json?all=1")}


async def test_a_tag_moved_while_the_delete_is_held_never_deletes_the_newcomer(
    dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    """#3: old app:1 is planned; a protected newcomer takes app:1 just before the DELETE reaches the engine.

    Before the fix the DELETE named `race/app:1` and deleted the newcomer (its only tag); by image ID it
    can only ever delete the old image, which the move left dangling.
    """
    old_id, new_id = load_images(
        dockerd,
        [spec("race/app:1", "race-old"), spec("race/new:1", "race-new", labels={"keep": "true"})],
    )
    workdir = short_workdir("die-proxy-")
    with FaultProxy(dockerd.socket, workdir / "p.sock") as proxy:
        async with rig(proxy.host, tmp_path) as r:
            plan = await r.plan("prune_unused", {old_id, new_id})
            assert [c.image_id for c in plan.candidates] == [old_id]
            hold = proxy.hold("DELETE", r"^/images/")
            running = asyncio.create_task(r.run(plan))
            assert await asyncio.to_thread(hold.arrived.wait, 60), "the DELETE never came"
            # another client, straight to the engine: the newcomer takes the name, keeps nothing else
            await asyncio.to_thread(dockerd.cli, "tag", "race/new:1", "race/app:1")
            await asyncio.to_thread(dockerd.cli, "rmi", "race/new:1")
            hold.release()
            run = await asyncio.wait_for(running, 60)
    assert hold.target == f"/images/{old_id}"
    assert new_id in present(dockerd) and tags_of(dockerd, new_id) == ["race/app:1"]
    assert old_id not in present(dockerd)
    assert run.images_deleted == 1 and run.result == "success"
    lines = {x["image_id"]: x for x in r.audit() if x["event"] == "image"}
    assert lines[old_id]["result"] == "deleted"
    assert lines[new_id]["result"] == "skipped" and lines[new_id]["skip_reason"] == "protected_label"
    intents = [x for x in r.audit() if x["event"] == "intent"]
    assert [x["target"] for x in intents] == [old_id]


async def test_an_image_pulled_by_digest_is_kept_by_prune_dangling_and_protected_by_reference(
    dockerd: PrivateDockerd, registry: PrivateRegistry, tmp_path: Path
) -> None:
    """#6: push, remove the tag, pull by digest: a named image, not dangling; a glob on its repo protects it."""
    ref = registry.ref("base/os:1")
    (image_id,) = load_images(dockerd, [spec(ref, "digest-base")])
    dockerd.cli("push", ref)
    pinned = registry.pinned("base/os", "1")
    dockerd.cli("rmi", ref)
    assert image_id not in present(dockerd)
    dockerd.cli("pull", pinned)
    listed = next(i for i in dockerd.get_json("/images/json?all=1") if i["Id"] == image_id)
    # no tag: dangling to docker (the containerd store lists the digest name among RepoTags; it is not a tag)
    assert not [t for t in listed.get("RepoTags") or [] if "<none>" not in t and "@" not in t]

    async with rig(dockerd.host, tmp_path) as r:
        plan = await r.plan("prune_dangling", {image_id})
        assert plan.candidates == ()
        run = await r.run(plan)
        assert run.images_deleted == 0
        protect = ProtectConfig(references=(f"{registry.address}/base/*",), local_only=False)
        unused = await r.plan("prune_unused", {image_id}, protect)
    assert image_id in present(dockerd)
    (skip,) = unused.skipped
    assert skip.reason == "protected_reference" and skip.references == (pinned,)
    assert unused.to_json()["skipped"][0]["references"] == [pinned]


@pytest.mark.parametrize("state", ["corrupt", "missing", "proves-present"])
async def test_images_that_arrived_while_the_exporter_was_down_are_young(
    dockerd: PrivateDockerd, tmp_path: Path, state: str
) -> None:
    """#2: two old images pulled while the exporter was down (classic store: no LastTagTime from a pull).

    Only a state file proving them present before makes them old; a corrupt or missing one must not.
    """
    ids = load_images(dockerd, [spec(None, "down-1"), spec(None, "down-2")])
    path = tmp_path / "state.json"
    if state == "corrupt":
        path.write_text("{not json")
    elif state == "proves-present":
        write_saved_state(path, dockerd)
    history = ImageHistory(str(path))
    history.load()
    async with rig(dockerd.host, tmp_path, history) as r:
        plan = await r.plan("prune_dangling", set(ids), min_age=3600.0)
        run = await r.run(plan)
    if state == "proves-present" and engine_store(dockerd) != "containerd":
        assert sorted(c.image_id for c in plan.candidates) == sorted(ids)
    else:  # the containerd store sets LastTagTime on load: that alone proves the arrival, state or not
        assert plan.candidates == () and {s.reason for s in plan.skipped} == {"too_young"}
        assert run.images_deleted == 0 and set(ids) <= present(dockerd)
