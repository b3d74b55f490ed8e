"""The CRI removal protocol (remediation/crideletion.py) through the real CriEngine against a fake runtime that
answers with recorded containerd answers and removes as containerd does (in use or not, every reference).

Property: whatever the runtime pins, whichever image is the sandbox image, and whichever containers start using
images between the plan and the removals (landing before any of the executor's runtime calls, except inside
the one window the CRI cannot close: between the in-use re-check and its RemoveImage, with no runtime call in
between), planner + executor never remove a pinned image, the sandbox image, or an image a container uses,
never one that was not planned, never one without its intent line on disk; and every planned image that none
of these ever applied to does go.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.config import ProtectConfig
from exporter.core.snapshot import Filesystem, Snapshot
from exporter.engine import apishapes
from exporter.engine.cri.client import CriEngine
from exporter.remediation import crideletion
from exporter.remediation.audit import AuditLog
from exporter.remediation.crideletion import CANNOT_UNTAG
from exporter.remediation.executor import Executor
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Candidate, make_plan
from exporter.remediation.runs import Run
from tests.harness.audit import read_audit
from tests.harness.fakecri import FIXTURE, FakeCri, FakeState, fixture_for
from tests.unit.actions import action_of

IDS = sorted(FakeState.recorded().images)
NOW = 1_900_000_000.0  # after every recorded image's creation: min_age 0 keeps none young


async def snapshot_of(engine: CriEngine) -> Snapshot:
    """What a poll gives the planner: the poller's own parsers on the CRI backend's answers."""
    version, info, api = await engine.version_and_info()
    info_ = apishapes.parse_engine_info(version, info, api)
    images = apishapes.parse_images(await engine.list_images(), info_)
    containers = apishapes.parse_containers(await engine.list_containers())
    in_use: dict[str, int] = {}
    for c in containers:
        in_use[c.image_id] = in_use.get(c.image_id, 0) + 1
    images = [replace(i, containers=in_use.get(i.id, 0)) for i in images]
    return Snapshot(NOW, info_, tuple(images), containers, by_id=MappingProxyType({i.id: i for i in images}))


@dataclass
class Scene:
    pinned: set[int]
    used: set[int]
    sandbox: int | None
    #: (n-th runtime call during the run, image index): a container starts using that image then
    starts: list[tuple[int, int]]


scenes = st.builds(
    Scene,
    pinned=st.sets(st.integers(0, len(IDS) - 1), max_size=3),
    used=st.sets(st.integers(0, len(IDS) - 1), max_size=2),
    sandbox=st.one_of(st.none(), st.integers(0, len(IDS) - 1)),
    starts=st.lists(st.tuples(st.integers(0, 40), st.integers(0, len(IDS) - 1)), max_size=4),
)


def run_scene(
    scene: Scene, workdir: Path, action_type: str = "prune_unused", fixture: Path = FIXTURE
) -> dict[str, Any]:
    state = FakeState.recorded(fixture)
    ids = sorted(state.images)
    runtime_pinned = {i for i, image in state.images.items() if image.image.pinned}  # 1.7.3+: the sandbox image
    for k in scene.pinned:
        state.images[ids[k]].image.pinned = True
    for k in scene.used:
        state.containers[f"planned-{k}"] = ids[k]
    if scene.sandbox is not None:
        state.config["sandboxImage"] = sorted(state.images[ids[scene.sandbox]].image.repo_tags)[0]
    else:
        state.config["sandboxImage"] = "registry.k8s.io/pause:3.6"
    sandbox_id = state.resolve(state.config["sandboxImage"])
    ever_used = {ids[k] for k in scene.used}
    violations: list[str] = []
    removed: list[str] = []
    audit_path = workdir / "audit.jsonl"
    server = FakeCri(workdir, state)
    engine = CriEngine(server.endpoint, timeout=10)
    try:

        async def main() -> tuple[Run, set[str]]:
            snapshot = await snapshot_of(engine)
            plan = make_plan(snapshot, action_of(action_type, min_age=0.0), ProtectConfig(local_only=False), NOW)
            planned = {c.image_id for c in plan.candidates}
            calls = {"n": 0}
            last_call: dict[str, str] = {}

            def before(call: str, arg: str) -> None:
                n = calls["n"]
                calls["n"] += 1
                last_call["call"] = call
                if call == "RemoveImage":
                    return  # the window no CRI call closes: nothing lands between the re-check and the removal
                for at, k in scene.starts:
                    if at == n and ids[k] in state.images:
                        state.containers[f"started-{n}-{k}"] = ids[k]
                        ever_used.add(ids[k])

            def on_remove(image_id: str) -> None:
                removed.append(image_id)
                image = state.images[image_id].image
                if image.pinned:
                    violations.append(f"pinned {image_id} removed")
                if sandbox_id is not None and image_id == sandbox_id.image.id:
                    violations.append(f"sandbox image {image_id} removed")
                if image_id in state.containers.values():
                    violations.append(f"in-use {image_id} removed")
                if image_id not in planned:
                    violations.append(f"unplanned {image_id} removed")
                intents = [
                    r for r in read_audit(audit_path) if r.get("event") == "intent" and r["image_id"] == image_id
                ]
                if not intents:
                    violations.append(f"{image_id} removed without its intent line on disk")

            state.before, state.on_remove = before, on_remove
            executor = Executor(
                engine,
                AuditLog(str(audit_path)),
                RemediationMetrics(CollectorRegistry(), ["a"]),
                lambda path: Filesystem(path, 1000, 0),
                1,
            )
            run = Run("a", action_type, "manual", False)
            await executor.execute(run, plan, action_of(action_type, min_age=0.0))
            return run, planned

        run, planned = asyncio.run(main())
    finally:
        engine.close()
        server.stop()
    kept_pinned = {ids[k] for k in scene.pinned} | runtime_pinned
    never_kept = {i for i in planned if i not in ever_used and i not in kept_pinned} - (
        {sandbox_id.image.id} if sandbox_id is not None else set()
    )
    return {
        "violations": violations,
        "removed": removed,
        "never_kept": never_kept,
        "run": run,
    }


@pytest.mark.parametrize("fixture", [FIXTURE, fixture_for("1.7.24")], ids=["containerd-1.6.20", "containerd-1.7.24"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scene=scenes)
def test_never_removes_a_pinned_sandbox_or_in_use_image(fixture: Path, scene: Scene) -> None:
    """Over the answers of both containerd versions recorded (1.7.24 reports its sandbox image pinned)."""
    with tempfile.TemporaryDirectory(prefix="die-cri-") as tmp:
        result = run_scene(scene, Path(tmp), fixture=fixture)
    assert result["violations"] == []
    # and it is not safe by doing nothing: what nothing protected went
    assert result["never_kept"] <= set(result["removed"]), result["run"].outcomes


def test_the_kept_images_are_audited_with_the_rule_that_kept_them(tmp_path: Path) -> None:
    pause = IDS.index(FakeState.recorded().resolve("registry.k8s.io/pause:3.6").image.id)  # type: ignore[union-attr]
    pinned, used = (pause + 1) % len(IDS), (pause + 2) % len(IDS)
    result = run_scene(Scene(pinned={pinned}, used=set(), sandbox=None, starts=[(0, used)]), tmp_path)
    assert result["violations"] == []
    by_id = {o.image_id: o for o in result["run"].outcomes}
    assert (by_id[IDS[pause]].result, by_id[IDS[pause]].skip_reason) == ("skipped", "protected_reference")
    assert "pod sandbox image (registry.k8s.io/pause:3.6)" in by_id[IDS[pause]].detail
    assert (by_id[IDS[pinned]].result, by_id[IDS[pinned]].skip_reason) == ("skipped", "protected_label")
    assert (by_id[IDS[used]].result, by_id[IDS[used]].skip_reason) == ("skipped", "in_use")
    deleted = {i for i, o in by_id.items() if o.result == "deleted"}
    assert deleted == set(IDS) - {IDS[pause], IDS[pinned], IDS[used]}
    records = read_audit(tmp_path / "audit.jsonl")
    for image_id in deleted:  # intent first, then the outcome
        events = [r["event"] for r in records if r.get("image_id") == image_id]
        assert events == ["intent", "image"], events


def test_one_tag_alone_is_never_removed() -> None:
    """keep_last may plan to drop one tag of an image whose other tag stays: the CRI would take both."""
    cand = Candidate(IDS[0], ("docker.io/team/web:0.9",), 100, "total", "old", removes_image=False)
    calls: list[str] = []

    class Engine:
        async def inspect_image(self, ref: str, *, lane: Any = None) -> dict[str, Any]:
            calls.append("inspect")
            return {}

    async def intent() -> None:
        calls.append("intent")

    result = asyncio.run(crideletion.remove(Engine(), cand, lambda _: None, intent))  # type: ignore[arg-type]
    assert result == ("skipped", "conflict", CANNOT_UNTAG) and calls == []
