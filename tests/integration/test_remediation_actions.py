"""Every remediation action against a private engine with generated images: exactly what goes, what stays.

Each test builds its own small image set (actions delete, so nothing is shared): images pushed to the
private registry have repo digests (not local-only); `pushed=False` leaves a tagged image local-only; a
stopped container pins an image as in use; a `docker tag` right before the run makes an old image young
(LastTagTime). The service runs in-process on a real Engine and Poller; `RecordingEngine` only records the
calls that write, then makes them for real.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import Config, parse_config
from exporter.engine import Engine
from exporter.history import ImageHistory
from exporter.poller import Poller
from exporter.remediation.audit import read_audit_log
from exporter.remediation.executor import Run
from exporter.remediation.service import RemediationService
from exporter.selfmetrics import PollMetrics
from tests.harness.dockerd import PrivateDockerd
from tests.harness.images import ImageSpec, Layer, create_container, load_images
from tests.harness.registry import PrivateRegistry

KIB = 1024
MIB = 1024 * KIB
DAY = 86400.0


class RecordingEngine(Engine):
    """The real engine facade, remembering every call that can delete something."""

    def __init__(self, host: str) -> None:
        super().__init__(host, timeout=60)
        self.writes: list[tuple[str, Any]] = []

    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        self.writes.append(("remove_image", ref))
        return await super().remove_image(ref)

    async def prune_images(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("prune_images", dict(filters)))
        return await super().prune_images(filters)

    async def prune_builds(self, keep_storage: int | None, filters: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("prune_builds", (keep_storage, dict(filters))))
        return await super().prune_builds(keep_storage, filters)


@dataclass
class Img:
    """One generated image and what to do with it after loading."""

    key: str
    tags: Sequence[str] = ()  # repository:tag below the registry address ("app:1" -> 127.0.0.1:P/app:1)
    age: timedelta = timedelta(days=10)
    size: int = 64 * KIB
    labels: Mapping[str, str] = field(default_factory=dict)
    pushed: bool = True
    in_use: bool = False
    retag: str | None = None  # `docker tag` it to this after loading: LastTagTime = now


@dataclass
class World:
    engine: PrivateDockerd
    registry: PrivateRegistry | None
    ids: dict[str, str]
    refs: dict[str, list[str]]

    def present(self) -> set[str]:
        """Keys of the generated images still in the engine."""
        have = {img["Id"] for img in self.engine.get_json("/images/json?all=1")}
        return {key for key, image_id in self.ids.items() if image_id in have}

    def tags_of(self, key: str) -> set[str]:
        data = self.engine.get_json(f"/images/{self.ids[key]}/json")
        return set(data.get("RepoTags") or [])


def build_world(engine: PrivateDockerd, registry: PrivateRegistry | None, images: Sequence[Img]) -> World:
    now = datetime.now(UTC).replace(microsecond=0)
    prefix = f"{registry.address}/" if registry else "local/"
    specs = [
        ImageSpec(
            tags=[prefix + t for t in img.tags],
            layers=[Layer.random(img.size, f"{img.key}-{time.time_ns()}")],
            created=now - img.age,
            labels=dict(img.labels),
        )
        for img in images
    ]
    ids = dict(zip((i.key for i in images), load_images(engine, specs), strict=True))
    refs = {img.key: [prefix + t for t in img.tags] for img in images}
    for img in images:
        if img.pushed and registry is not None:
            for ref in refs[img.key]:
                engine.cli("push", ref)
        if img.in_use:
            create_container(engine, ids[img.key], name=f"uses-{img.key}")
        if img.retag:
            engine.cli("tag", ids[img.key], prefix + img.retag)
            refs[img.key].append(prefix + img.retag)
    return World(engine, registry, ids, refs)


@dataclass
class Harness:
    service: RemediationService
    engine: RecordingEngine
    poller: Poller
    history: ImageHistory
    registry: CollectorRegistry
    audit_path: Path

    async def run(self, action: str, dry_run: bool = False) -> Run:
        run = self.service.begin(action, "manual", (), dry_run)
        assert run is not None
        return await self.service.run_to_completion(run)

    def audit(self) -> list[dict[str, Any]]:
        return read_audit_log(self.audit_path)

    def sample(self, name: str, labels: Mapping[str, str]) -> float | None:
        return self.registry.get_sample_value(name, dict(labels))


def remediation_config(tmp_path: Path, actions: Mapping[str, Any], fs_path: str, **extra: Any) -> Config:
    return parse_config(
        {
            "filesystem": {"path": fs_path},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": "t0ken"},
                "audit_log": str(tmp_path / "audit.jsonl"),
                "protect": {"references": ["*:production"], "labels": ["keep=true"], "local_only": True},
                "actions": dict(actions),
                **extra,
            },
        }
    )


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Harness] = []

    async def factory(engine: PrivateDockerd, config: Config, used: Mapping[str, float] | None = None) -> Harness:
        real = RecordingEngine(engine.host)
        registry = CollectorRegistry()
        history = ImageHistory(None)
        for image_id, when in (used or {}).items():
            history.mark_used(image_id, when)
        poller = Poller(real, config, history, PollMetrics(registry))
        service = RemediationService(config.remediation, real, poller, registry)
        await service.start()
        h = Harness(service, real, poller, history, registry, Path(config.remediation.audit_log))
        made.append(h)
        return h

    yield factory
    for h in made:
        await h.service.stop()
        h.engine.close()


def image_lines(audit: list[dict[str, Any]], run: Run) -> dict[str, dict[str, Any]]:
    """Audit lines of one run per image ID."""
    return {r["image_id"]: r for r in audit if r["run_id"] == run.run_id and r["event"] == "image"}


# ------------------------------------------------------------------------------------------------ keep_last


async def test_keep_last_untags_only_old_unprotected_tags(dockerd, registry, tmp_path, make_harness):
    world = build_world(
        dockerd,
        registry,
        [
            Img("v9", ["app:9"], timedelta(days=1)),
            Img("v8", ["app:8"], timedelta(days=2)),
            Img("v7", ["app:7"], timedelta(days=3)),
            Img("v6", ["app:6"], timedelta(days=4)),  # 4th newest: goes
            Img("v5", ["app:5"], timedelta(days=5), in_use=True),
            Img("v4", ["app:4"], timedelta(days=6), labels={"keep": "true"}),
            Img("v3", ["app:3", "app:production"], timedelta(days=7)),
            Img("v2", ["app:2"], timedelta(days=8), pushed=False),
            Img("v1", ["app:1"], timedelta(days=9), retag="other:fresh"),
            Img("v0", ["app:0", "mirror:0"], timedelta(days=10)),  # untag app:0 only; mirror:0 keeps it
            Img("lib2", ["lib:2"], timedelta(days=20)),
            Img("lib1", ["lib:1"], timedelta(days=30)),
            Img("dangling", [], timedelta(days=30)),
        ],
    )
    config = remediation_config(tmp_path, {"keep3": {"type": "keep_last", "keep": 3, "min_age": "1h"}}, "/")
    h = await make_harness(dockerd, config)

    run = await h.run("keep3")

    assert run.result == "success", run.to_json()
    assert world.present() == set(world.ids) - {"v6"}
    prefix = f"{registry.address}/"
    assert world.tags_of("v0") == {prefix + "mirror:0"}
    assert world.tags_of("v3") == {prefix + "app:3", prefix + "app:production"}
    # exactly two DELETEs, both by reference, never by ID
    assert sorted(ref for call, ref in h.engine.writes if call == "remove_image") == [
        prefix + "app:0",
        prefix + "app:6",
    ]
    lines = image_lines(h.audit(), run)
    assert lines[world.ids["v6"]]["result"] == "deleted"
    assert lines[world.ids["v6"]]["references"] == [prefix + "app:6"]
    assert "4th newest of 11 in repo" in lines[world.ids["v6"]]["reason"]
    assert lines[world.ids["v0"]]["result"] == "untagged"
    expected_skips = {
        "v5": "in_use",
        "v4": "protected_label",
        "v3": "protected_reference",
        "v2": "local_only",
        "v1": "too_young",
    }
    assert {k: lines[world.ids[k]]["skip_reason"] for k in expected_skips} == expected_skips
    assert set(lines) == {world.ids[k] for k in ("v6", "v0", *expected_skips)}
    assert h.sample("docker_remediation_images_deleted_total", {"action": "keep3"}) == 1
    assert h.sample("docker_remediation_skipped_images_total", {"action": "keep3", "reason": "too_young"}) == 1
    assert h.sample("docker_remediation_runs_total", {"action": "keep3", "trigger": "manual", "result": "success"}) == 1
    # unique size of v6 (its one 64 KiB layer), as the engine's /system/df computed it
    assert run.reclaimed_bytes == 64 * KIB


# ------------------------------------------------------------------------------------------------ prune_unused

UNUSED_SET = [
    Img("old", ["u:old"]),
    Img("multi", ["u:a", "v:b"]),  # two repositories: untagged tag by tag, then gone
    Img("used", ["u:used"], in_use=True),
    Img("label", ["u:label"], labels={"keep": "true"}),
    Img("prod", ["u:production"]),
    Img("local", ["u:local"], pushed=False),
    Img("young", ["u:young"], timedelta(minutes=10)),
    Img("retagged", ["u:retagged"], retag="u:retagged-now"),
    Img("dangling_old", [], timedelta(days=3)),
    Img("dangling_young", [], timedelta(minutes=10)),
    Img("dangling_label", [], timedelta(days=3), labels={"keep": "true"}),
    Img("dangling_used", [], timedelta(days=3), in_use=True),
]


async def test_prune_unused_dry_run_then_real(dockerd, registry, tmp_path, make_harness):
    world = build_world(dockerd, registry, UNUSED_SET)
    config = remediation_config(tmp_path, {"unused": {"type": "prune_unused", "min_age": "1h"}}, "/")
    h = await make_harness(dockerd, config)
    going = {"old", "multi", "dangling_old"}

    dry = await h.run("unused", dry_run=True)
    assert dry.result == "dry_run"
    assert h.engine.writes == []
    assert world.present() == set(world.ids)
    would = {o.image_id for o in dry.outcomes if o.result == "would_delete"}
    assert would == {world.ids[k] for k in going}
    assert dry.to_json()["estimated_bytes"] == 3 * 64 * KIB
    assert all(o.size_basis == "unique" for o in dry.outcomes)

    run = await h.run("unused")
    assert run.result == "success", run.to_json()
    assert world.present() == set(world.ids) - going
    assert run.images_deleted == 3
    assert run.reclaimed_bytes == 3 * 64 * KIB
    deletes = [ref for call, ref in h.engine.writes if call == "remove_image"]
    assert sorted(deletes) == sorted([*world.refs["old"], *world.refs["multi"], world.ids["dangling_old"]])
    lines = image_lines(h.audit(), run)
    skips = {key: lines[world.ids[key]]["skip_reason"] for key in set(world.ids) - going}
    assert skips == {
        "used": "in_use",
        "label": "protected_label",
        "prod": "protected_reference",
        "local": "local_only",
        "young": "too_young",
        "retagged": "too_young",
        "dangling_young": "too_young",
        "dangling_label": "protected_label",
        "dangling_used": "in_use",
    }
    for key in going:
        line = lines[world.ids[key]]
        assert line["result"] == "deleted"
        assert line["trigger"] == "manual"
        assert line["size"] == 64 * KIB and line["size_basis"] == "unique"
    # each audit line is a complete JSON record; the run is bracketed by start and end lines
    events = [r["event"] for r in h.audit() if r["run_id"] == run.run_id]
    assert events[0] == "run_start" and events[-1] == "run_end" and events.count("image") == len(UNUSED_SET)


# ------------------------------------------------------------------------------------------------ prune_dangling


async def test_prune_dangling_only_touches_old_unpinned_untagged_images(dockerd, registry, tmp_path, make_harness):
    world = build_world(dockerd, registry, UNUSED_SET)
    config = remediation_config(
        tmp_path, {"dangling": {"type": "prune_dangling", "min_age": "1h", "max_deletions": 5}}, "/"
    )
    h = await make_harness(dockerd, config)

    run = await h.run("dangling")

    assert run.result == "success", run.to_json()
    assert world.present() == set(world.ids) - {"dangling_old"}
    assert h.engine.writes == [("remove_image", world.ids["dangling_old"])]
    lines = image_lines(h.audit(), run)
    assert {k: lines[world.ids[k]]["skip_reason"] for k in ("dangling_young", "dangling_label", "dangling_used")} == {
        "dangling_young": "too_young",
        "dangling_label": "protected_label",
        "dangling_used": "in_use",
    }
    assert len(lines) == 4  # tagged images are not this action's business: no lines for them


async def test_max_deletions_stops_the_run_and_says_so(dockerd, tmp_path, make_harness):
    world = build_world(dockerd, None, [Img(f"d{i}", [], timedelta(days=10 - i)) for i in range(4)])
    config = remediation_config(tmp_path, {"two": {"type": "prune_dangling", "min_age": "1h", "max_deletions": 2}}, "/")
    h = await make_harness(dockerd, config)

    run = await h.run("two")

    assert run.result == "partial"
    assert world.present() == {"d2", "d3"}  # oldest first: d0 (10 days), d1 (9 days) went
    lines = image_lines(h.audit(), run)
    assert {k for k in world.ids if lines[world.ids[k]].get("skip_reason") == "max_deletions"} == {"d2", "d3"}
    assert h.sample("docker_remediation_skipped_images_total", {"action": "two", "reason": "max_deletions"}) == 2


# ------------------------------------------------------------------------------------------------ free_space


async def test_free_space_deletes_dangling_then_lru_until_the_goal(
    dockerd_factory, loop_fs_factory, registry, tmp_path, make_harness
):
    fs = loop_fs_factory(200)
    engine = dockerd_factory(data_root=fs.mountpoint / "docker")
    size = 4 * MIB
    world = build_world(
        engine,
        registry,
        [
            Img("dangling", [], timedelta(days=5), size=size),
            Img("a", ["f:a"], timedelta(days=20), size=size),  # used 1 day ago
            Img("b", ["f:b"], timedelta(days=5), size=size),  # never used: recency = created
            Img("c", ["f:c"], timedelta(days=10), size=size),  # used 2 days ago
            Img("d", ["f:d"], timedelta(days=30), size=size),  # used 1 hour ago
            Img("used", ["f:used"], timedelta(days=40), size=size, in_use=True),
            Img("local", ["f:local"], timedelta(days=40), size=size, pushed=False),
        ],
    )
    now = time.time()
    used = {world.ids["a"]: now - DAY, world.ids["c"]: now - 2 * DAY, world.ids["d"]: now - 3600}
    total = fs.size_bytes()

    # 1) max_deletions 1: only the dangling image goes (dangling first), goal not met -> partial
    unreachable = 0.99
    config = remediation_config(
        tmp_path,
        {"disk": {"type": "free_space", "target_avail_ratio": unreachable, "min_age": "1h", "max_deletions": 1}},
        str(fs.mountpoint),
    )
    h = await make_harness(engine, config, used)
    run = await h.run("disk")
    assert run.result == "partial"
    assert world.present() == set(world.ids) - {"dangling"}
    await h.service.stop()

    # 2) a goal that needs exactly two more images (4 MiB each): b (least recently used), then c
    avail = fs.avail_bytes()
    target = (avail + 1.5 * size) / total
    config = remediation_config(
        tmp_path,
        {"disk": {"type": "free_space", "target_avail_ratio": round(target, 6), "min_age": "1h"}},
        str(fs.mountpoint),
    )
    h = await make_harness(engine, config, used)
    dry = await h.run("disk", dry_run=True)
    assert [o.image_id for o in dry.outcomes if o.result == "would_delete"] == [world.ids["b"], world.ids["c"]]
    run = await h.run("disk")
    assert run.result == "success", run.to_json()
    assert run.goal_met is True
    assert world.present() == {"a", "d", "used", "local"}
    assert [o.image_id for o in run.outcomes if o.result == "deleted"] == [world.ids["b"], world.ids["c"]]
    assert fs.avail_bytes() / total >= target
    lines = image_lines(h.audit(), run)
    assert "LRU rank 1" in lines[world.ids["b"]]["reason"] and "LRU rank 2" in lines[world.ids["c"]]["reason"]
    assert lines[world.ids["used"]]["skip_reason"] == "in_use"
    assert lines[world.ids["local"]]["skip_reason"] == "local_only"
    await h.service.stop()

    # 3) the goal is already met: success, nothing deleted
    config = remediation_config(
        tmp_path, {"disk": {"type": "free_space", "target_avail_ratio": 0.01, "min_age": "1h"}}, str(fs.mountpoint)
    )
    h = await make_harness(engine, config, used)
    writes_before = len(h.engine.writes)
    run = await h.run("disk")
    assert run.result == "success" and run.goal_met is True
    assert len(h.engine.writes) == writes_before == 0
    assert world.present() == {"a", "d", "used", "local"}


# ------------------------------------------------------------------------------------------------ build_cache


async def test_build_cache_prunes_through_the_engine_and_dry_run_does_not(dockerd, tmp_path, make_harness):
    config = remediation_config(
        tmp_path, {"builder": {"type": "build_cache", "min_age": "24h", "keep_storage": "5GB"}}, "/"
    )
    h = await make_harness(dockerd, config)

    dry = await h.run("builder", dry_run=True)
    assert dry.result == "dry_run"
    assert h.engine.writes == []

    run = await h.run("builder")
    assert run.result == "success", run.to_json()
    assert h.engine.writes == [("prune_builds", (5_000_000_000, {"until": "86400s"}))]
    assert run.reclaimed_bytes == 0  # a fresh engine has no build cache
    assert (
        h.sample("docker_remediation_runs_total", {"action": "builder", "trigger": "manual", "result": "success"}) == 1
    )


async def test_engine_gone_mid_plan_fails_the_run_and_deletes_nothing(dockerd, tmp_path, make_harness):
    world = build_world(dockerd, None, [Img("d", [], timedelta(days=3))])
    config = remediation_config(tmp_path, {"dangling": {"type": "prune_dangling", "min_age": "1h"}}, "/")
    h = await make_harness(dockerd, config)
    dockerd.stop()

    run = await h.run("dangling")

    assert run.result == "failure"
    assert "unreachable" in run.detail
    assert h.engine.writes == []
    assert (
        h.sample("docker_remediation_runs_total", {"action": "dangling", "trigger": "manual", "result": "failure"}) == 1
    )
    dockerd.start()
    assert world.present() == {"d"}
