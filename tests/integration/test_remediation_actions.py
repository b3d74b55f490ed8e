"""Every remediation action against a private engine with generated images: exactly what goes, what stays.

Runs on every engine of the matrix (`DIE_ENGINE`); expected values come from the engine under test (names
as it lists them, IDs as it lists them, sizes as it reports them), never from a per-engine table.

Each test builds its own small image set (actions delete, so nothing is shared) in two phases:

1. "old" images are loaded, pushed to the private registry where the engine lists them without a repo
   digest (so they are not local-only; `pushed=False` leaves one local-only where the engine allows
   that at all), pinned by a stopped container (`in_use`), and then the test waits until the engine's
   own clock marks (Created, LastTagTime) are `MIN_AGE` old: on the containerd store LastTagTime is the
   load time, so a freshly loaded image is young there.
2. the harness starts (first poll, event stream followed), then the "young" images (created now) are
   loaded and the `retag`s are made: LastTagTime on dockerd, and the tag event the exporter sees on every
   engine (Podman keeps no LastTagTime), make those images young.

The service runs in-process on a real Engine, Poller and EventFollower; `RecordingEngine` only records
the calls that write, then makes them for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import Config, parse_config
from exporter.engine.apishapes import normalize_id, parse_time
from exporter.engine.client import Engine
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.executor import hold_reference
from exporter.remediation.runs import Run
from exporter.remediation.service import RemediationService
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.events import EventFollower
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.harness.audit import read_audit
from tests.harness.dockerd import PrivateDockerd
from tests.harness.images import ImageSpec, Layer, create_container, load_images
from tests.harness.registry import PrivateRegistry

KIB = 1024
MIB = 1024 * KIB
DAY = 86400.0
#: min_age of every action here: long enough for the young phase to stay young until the plan, short
#: enough to wait for on the containerd store, whose LastTagTime is the load time.
MIN_AGE = "10s"
MIN_AGE_SECONDS = 10.0


class RecordingEngine(Engine):
    """The real engine facade, remembering every call that can delete something."""

    def __init__(self, host: str) -> None:
        super().__init__(host, timeout=60)
        self.writes: list[tuple[str, Any]] = []

    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        self.writes.append(("remove_image", ref))
        return await super().remove_image(ref)

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        self.writes.append(("tag_image", f"{repository}:{tag}"))
        await super().tag_image(image_id, repository, tag)

    async def prune_images(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("prune_images", dict(filters)))
        return await super().prune_images(filters)

    async def prune_builds(self, keep_storage: int | None, filters: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("prune_builds", (keep_storage, dict(filters))))
        return await super().prune_builds(keep_storage, filters)


def hold_of(run_id: str, image_id: str) -> str:
    """The hold reference the executor gives an image without tags before deleting it."""
    return ":".join(hold_reference(run_id, image_id))


def is_podman(engine: PrivateDockerd) -> bool:
    """What the engine says it is (`/version` components), not what the test asked for."""
    version = engine.get_json("/version")
    names = [str(c.get("Name", "")) for c in version.get("Components") or []]
    return any("podman" in n.lower() for n in names) or "podman" in str(version.get("Platform", {})).lower()


def engine_sizes(engine: PrivateDockerd) -> dict[str, tuple[int, str]]:
    """Per listed image ID: what deleting it alone frees, as the engine reports it, and the basis.

    `Size - SharedSize` from `/system/df` ("unique"); Podman reports SharedSize 0 even for shared layers,
    so there only the total `Size` is known ("total", an upper bound).
    """
    if is_podman(engine):
        return {img["Id"]: (int(img["Size"]), "total") for img in engine.get_json("/images/json?all=1")}
    sizes: dict[str, tuple[int, str]] = {}
    for img in engine.get_json("/system/df").get("Images") or []:
        shared = max(int(img.get("SharedSize") or 0), 0)
        sizes[normalize_id(img["Id"])] = (max(int(img["Size"]) - shared, 0), "unique")
    return sizes


def age_reference(engine: PrivateDockerd, image_id: str) -> float:
    """The latest of the engine's own Created and LastTagTime for the image."""
    data = engine.get_json(f"/images/{image_id}/json")
    marks = [parse_time(data.get("Created")), parse_time((data.get("Metadata") or {}).get("LastTagTime"))]
    return max(m for m in marks if m is not None)


def wait_until_older(engine: PrivateDockerd, ids: Sequence[str], seconds: float) -> None:
    """Sleep until every image is `seconds` old by the engine's marks (only the containerd store waits)."""
    if not ids:
        return
    newest = max(age_reference(engine, i) for i in ids)
    delay = newest + seconds + 0.5 - time.time()
    if delay > 0:
        time.sleep(delay)


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
    young: bool = False  # created now and loaded after the harness started
    retag: str | None = None  # `docker tag` it to this once the harness runs: LastTagTime / tag event = now


@dataclass
class World:
    engine: PrivateDockerd
    registry: PrivateRegistry | None
    images: Sequence[Img]
    ids: dict[str, str] = field(default_factory=dict)
    refs: dict[str, list[str]] = field(default_factory=dict)
    digests: dict[str, list[str]] = field(default_factory=dict)
    sizes: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"{self.registry.address}/" if self.registry else "local/"

    def load(self, images: Sequence[Img], created_now: bool) -> None:
        now = datetime.now(UTC).replace(microsecond=0)
        specs = [
            ImageSpec(
                tags=[self.prefix + t for t in img.tags],
                layers=[Layer.random(img.size, f"{img.key}-{time.time_ns()}")],
                created=now if created_now else now - img.age,
                labels=dict(img.labels),
            )
            for img in images
        ]
        self.ids.update(zip((i.key for i in images), load_images(self.engine, specs), strict=True))
        listed = {img["Id"]: img for img in self.engine.get_json("/images/json?all=1")}
        for img in images:
            has_digest = bool(listed[self.ids[img.key]].get("RepoDigests"))
            # pushing is only how a classic-store image gets a repo digest; others list one already
            if img.pushed and self.registry is not None and img.tags and not has_digest:
                for tag in img.tags:
                    self.engine.cli("push", self.prefix + tag)
            if img.in_use:
                create_container(self.engine, self.ids[img.key], name=f"uses-{img.key}")

    async def arrive(self, h: Harness) -> None:
        """Phase 2, while the harness follows events: young images arrive, retags happen."""
        young = [i for i in self.images if i.young]
        tagged_at = time.time()
        self.load(young, created_now=True)
        retagged = [i for i in self.images if i.retag]
        for img in retagged:
            self.engine.cli("tag", self.ids[img.key], self.prefix + str(img.retag))
        # the exporter learns of a re-tag from the engine's tag event (Podman keeps no LastTagTime)
        deadline = time.monotonic() + 20
        pending = {self.ids[i.key] for i in retagged}
        while pending and time.monotonic() < deadline:
            pending = {i for i in pending if h.history.arrived.get(i, 0.0) < tagged_at - 1}
            await asyncio.sleep(0.1)
        assert not pending, f"no tag event seen for {pending}"
        self.refresh()

    def refresh(self) -> None:
        """Names, digests and sizes as the engine lists them now."""
        listed = {img["Id"]: img for img in self.engine.get_json("/images/json?all=1")}
        sizes = engine_sizes(self.engine)
        for key, image_id in self.ids.items():
            img = listed[image_id]
            self.refs[key] = sorted(t for t in img.get("RepoTags") or [] if "<none>" not in t)
            self.digests[key] = list(img.get("RepoDigests") or [])
            self.sizes[key] = sizes[image_id]

    def local_only(self, key: str) -> bool:
        """Tagged with no repo digest: only then can `protect.local_only` protect it on this engine."""
        return bool(self.refs[key]) and not self.digests[key]

    def name(self, key: str, tag: str) -> str:
        """The engine's name for `repo:tag` of this image (as it lists it)."""
        (found,) = [r for r in self.refs[key] if r == tag or r.endswith("/" + tag)]
        return found

    def size(self, key: str) -> int:
        return self.sizes[key][0]

    def basis(self, key: str) -> str:
        return self.sizes[key][1]

    def reclaimable(self, keys: Sequence[str] | set[str]) -> int:
        """What the run reports as reclaimed for deleting `keys`: unique sizes only (Podman: none known)."""
        return sum(self.size(k) for k in keys if self.basis(k) == "unique")

    def present(self) -> set[str]:
        """Keys of the generated images still in the engine."""
        have = {img["Id"] for img in self.engine.get_json("/images/json?all=1")}
        return {key for key, image_id in self.ids.items() if image_id in have}

    def tags_of(self, key: str) -> set[str]:
        data = self.engine.get_json(f"/images/{self.ids[key]}/json")
        return set(data.get("RepoTags") or [])


def build_world(engine: PrivateDockerd, registry: PrivateRegistry | None, images: Sequence[Img]) -> World:
    """Phase 1: load the old images and wait until they are MIN_AGE old by the engine's own marks."""
    world = World(engine, registry, images)
    old = [i for i in images if not i.young]
    world.load(old, created_now=False)
    wait_until_older(engine, [world.ids[i.key] for i in old], MIN_AGE_SECONDS)
    world.refresh()
    return world


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
        return read_audit(self.audit_path)

    async def events_open(self, within: float = 40) -> None:
        """Wait until the event stream is subscribed: from then on no event is missed.

        Also needed before teardown after an engine restart: a follower still reconnecting when it is
        cancelled would open its stream afterwards and block its thread: EventFollower.run cannot cancel a connect in progress.
        """
        deadline = time.monotonic() + within
        while self.engine._stream is None:
            assert time.monotonic() < deadline, "the event stream did not open"
            await asyncio.sleep(0.05)

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
    made: list[tuple[Harness, asyncio.Task[None]]] = []

    async def factory(engine: PrivateDockerd, config: Config, used: Mapping[str, float] | None = None) -> Harness:
        real = RecordingEngine(engine.host)
        registry = CollectorRegistry()
        history = ImageHistory(None)
        for image_id, when in (used or {}).items():
            history.mark_used(image_id, when)
        poller = Poller(real, config, history, PollMetrics(registry))
        refresher = DiskUsageRefresher(real, poller, config.poll, poller.metrics)
        service = RemediationService(config.remediation, real, poller, registry, disk_usage=refresher)
        await service.start()
        # a saved state from before the harness: what is here now is proven present (not "arrived")
        history.observe((normalize_id(i["Id"]) for i in engine.get_json("/images/json?all=1")), 0.0)
        await poller.poll_once()
        follower = asyncio.create_task(EventFollower(real, poller, history, poller.metrics).run())
        h = Harness(service, real, poller, history, registry, Path(config.remediation.audit_log))
        await h.events_open()
        made.append((h, follower))
        return h

    yield factory
    for h, follower in made:
        await h.service.stop()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        h.engine.close()


async def setup(
    make_harness: Any,
    engine: PrivateDockerd,
    registry: PrivateRegistry | None,
    images: Sequence[Img],
    config: Config,
) -> tuple[World, Harness]:
    """Both phases: old images, the harness, then young images and re-tags while it watches."""
    world = build_world(engine, registry, images)
    h = await make_harness(engine, config)
    await world.arrive(h)
    return world, h


def image_lines(audit: list[dict[str, Any]], run: Run) -> dict[str, dict[str, Any]]:
    """Audit lines of one run per image ID."""
    return {r["image_id"]: r for r in audit if r["run_id"] == run.run_id and r["event"] == "image"}


# ------------------------------------------------------------------------------------------------ keep_last


async def test_keep_last_untags_only_old_unprotected_tags(dockerd, registry, tmp_path, make_harness):
    config = remediation_config(tmp_path, {"keep3": {"type": "keep_last", "keep": 3, "min_age": MIN_AGE}}, "/")
    world, h = await setup(
        make_harness,
        dockerd,
        registry,
        [
            Img("v9", ["app:9"], timedelta(days=1)),
            Img("v8", ["app:8"], timedelta(days=2)),
            Img("v7", ["app:7"], timedelta(days=3)),
            Img("v6", ["app:6"], timedelta(days=4)),  # 4th newest version: goes
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
        config,
    )
    # local_only can only protect where the engine lists the image without a repo digest (classic store);
    # the containerd store and Podman give every image one, so there v2 is an ordinary old tag and goes
    v2_protected = world.local_only("v2")
    deleted = {"v6"} if v2_protected else {"v6", "v2"}

    run = await h.run("keep3")

    assert run.result == "success", run.to_json()
    assert world.present() == set(world.ids) - deleted
    assert world.tags_of("v0") == {world.name("v0", "mirror:0")}
    assert world.tags_of("v3") == {world.name("v3", "app:3"), world.name("v3", "app:production")}
    # untagging a tag of an image that stays goes by reference; an image whose only tag goes, by ID
    expected_deletes = [world.name("v0", "app:0"), *(world.ids[k] for k in deleted)]
    assert sorted(ref for call, ref in h.engine.writes if call == "remove_image") == sorted(expected_deletes)
    assert all(call == "remove_image" for call, _ in h.engine.writes)
    lines = image_lines(h.audit(), run)
    assert lines[world.ids["v6"]]["result"] == "deleted"
    assert lines[world.ids["v6"]]["references"] == [world.name("v6", "app:6")]
    assert "version 4 of 10 in " in lines[world.ids["v6"]]["reason"]
    assert lines[world.ids["v0"]]["result"] == "untagged"
    expected_skips = {
        "v5": "in_use",
        "v4": "protected_label",
        "v3": "protected_reference",
        "v1": "too_young",
    }
    if v2_protected:
        expected_skips["v2"] = "local_only"
    else:
        assert lines[world.ids["v2"]]["result"] == "deleted"
        assert "version 8 of 10 in " in lines[world.ids["v2"]]["reason"]
    assert {k: lines[world.ids[k]]["skip_reason"] for k in expected_skips} == expected_skips
    assert set(lines) == {world.ids[k] for k in ("v6", "v0", "v2", *expected_skips)}
    assert h.sample("docker_remediation_images_deleted_total", {"action": "keep3"}) == len(deleted)
    assert h.sample("docker_remediation_skipped_images_total", {"action": "keep3", "reason": "too_young"}) == 1
    assert h.sample("docker_remediation_runs_total", {"action": "keep3", "trigger": "manual", "result": "success"}) == 1
    # unique sizes of what went, as the engine's /system/df computed them (none known on Podman)
    assert run.reclaimed_bytes == world.reclaimable(deleted)


async def test_local_only_protects_exactly_where_the_engine_lists_no_repo_digest(
    dockerd, tmp_path, make_harness, caplog
):
    """protect.local_only on every engine: protects never-pushed images where that is knowable, and where
    the engine gives every image a repo digest (containerd store, Podman) it protects nothing and the
    exporter says so in its log."""
    config = remediation_config(tmp_path, {"unused": {"type": "prune_unused", "min_age": MIN_AGE}}, "/")
    world, h = await setup(
        make_harness,
        dockerd,
        None,
        [Img("built", ["built:1"], pushed=False), Img("pinned", ["built:production"])],
        config,
    )

    with caplog.at_level("WARNING", logger="exporter.remediation.service"):
        run = await h.run("unused")

    assert run.result == "success", run.to_json()
    lines = image_lines(h.audit(), run)
    warned = [r.getMessage() for r in caplog.records if "protect.local_only protects nothing" in r.getMessage()]
    if world.local_only("built"):
        assert lines[world.ids["built"]]["skip_reason"] == "local_only"
        assert world.present() == {"built", "pinned"}
        assert warned == []
    else:
        assert world.digests["built"], "the engine lists a repo digest for an image never pushed"
        assert lines[world.ids["built"]]["result"] == "deleted"
        assert world.present() == {"pinned"}
        assert len(warned) == 1
    # whatever the engine, protection by reference holds
    assert lines[world.ids["pinned"]]["skip_reason"] == "protected_reference"


# ------------------------------------------------------------------------------------------------ prune_unused

UNUSED_SET = [
    Img("old", ["u:old"]),
    Img("multi", ["u:a", "v:b"]),  # two repositories: one tag untagged by name, then the image by ID
    Img("used", ["u:used"], in_use=True),
    Img("label", ["u:label"], labels={"keep": "true"}),
    Img("prod", ["u:production"]),
    Img("local", ["u:local"], pushed=False),
    Img("young", ["u:young"], young=True),
    Img("retagged", ["u:retagged"], retag="u:retagged-now"),
    Img("dangling_old", [], timedelta(days=3)),
    Img("dangling_young", [], young=True),
    Img("dangling_label", [], timedelta(days=3), labels={"keep": "true"}),
    Img("dangling_used", [], timedelta(days=3), in_use=True),
]


async def test_prune_unused_dry_run_then_real(dockerd, registry, tmp_path, make_harness):
    config = remediation_config(tmp_path, {"unused": {"type": "prune_unused", "min_age": MIN_AGE}}, "/")
    world, h = await setup(make_harness, dockerd, registry, UNUSED_SET, config)
    going = {"old", "multi", "dangling_old"} | (set() if world.local_only("local") else {"local"})

    dry = await h.run("unused", dry_run=True)
    assert dry.result == "dry_run"
    assert h.engine.writes == []
    assert world.present() == set(world.ids)
    would = {o.image_id for o in dry.outcomes if o.result == "would_delete"}
    assert would == {world.ids[k] for k in going}
    assert dry.to_json()["estimated_bytes"] == sum(world.size(k) for k in going)
    assert {o.image_id: o.size_basis for o in dry.outcomes} == {world.ids[k]: world.basis(k) for k in world.ids}

    run = await h.run("unused")
    assert run.result == "success", run.to_json()
    assert world.present() == set(world.ids) - going
    assert run.images_deleted == len(going)
    assert run.reclaimed_bytes == world.reclaimable(going)
    deletes = [ref for call, ref in h.engine.writes if call == "remove_image" and "@" not in ref]
    # a tagged image goes by ID (the engine refuses an ID that gained a tag or a container); extra tags
    # first; an image without tags by the name of its hold reference (its digest references first)
    extra_tags = [ref for k in going for ref in world.refs[k][:-1]]
    last = [world.ids[k] if world.refs[k] else hold_of(run.run_id, world.ids[k]) for k in going]
    assert sorted(deletes) == sorted([*extra_tags, *last])
    lines = image_lines(h.audit(), run)
    skips = {key: lines[world.ids[key]]["skip_reason"] for key in set(world.ids) - going}
    expected = {
        "used": "in_use",
        "label": "protected_label",
        "prod": "protected_reference",
        "young": "too_young",
        "retagged": "too_young",
        "dangling_young": "too_young",
        "dangling_label": "protected_label",
        "dangling_used": "in_use",
    }
    if "local" not in going:
        expected["local"] = "local_only"
    assert skips == expected
    for key in going:
        line = lines[world.ids[key]]
        assert line["result"] == "deleted"
        assert line["trigger"] == "manual"
        assert line["size"] == world.size(key) and line["size_basis"] == world.basis(key)
    # each audit line is a complete JSON record; the run is bracketed by start and end lines
    events = [r["event"] for r in h.audit() if r["run_id"] == run.run_id]
    assert events[0] == "run_start" and events[-1] == "run_end" and events.count("image") == len(UNUSED_SET)


# ------------------------------------------------------------------------------------------------ prune_dangling


async def test_prune_dangling_only_touches_old_unpinned_untagged_images(dockerd, registry, tmp_path, make_harness):
    config = remediation_config(
        tmp_path, {"dangling": {"type": "prune_dangling", "min_age": MIN_AGE, "max_deletions": 5}}, "/"
    )
    world, h = await setup(make_harness, dockerd, registry, UNUSED_SET, config)

    run = await h.run("dangling")

    assert run.result == "success", run.to_json()
    assert world.present() == set(world.ids) - {"dangling_old"}
    hold = hold_of(run.run_id, world.ids["dangling_old"])
    assert [w for w in h.engine.writes if "@" not in w[1]] == [("tag_image", hold), ("remove_image", hold)]
    lines = image_lines(h.audit(), run)
    assert {k: lines[world.ids[k]]["skip_reason"] for k in ("dangling_young", "dangling_label", "dangling_used")} == {
        "dangling_young": "too_young",
        "dangling_label": "protected_label",
        "dangling_used": "in_use",
    }
    assert len(lines) == 4  # tagged images are not this action's business: no lines for them


async def test_max_deletions_stops_the_run_and_says_so(dockerd, tmp_path, make_harness):
    config = remediation_config(
        tmp_path, {"two": {"type": "prune_dangling", "min_age": MIN_AGE, "max_deletions": 2}}, "/"
    )
    world, h = await setup(
        make_harness, dockerd, None, [Img(f"d{i}", [], timedelta(days=10 - i)) for i in range(4)], config
    )
    # oldest first by the age reference: Created on most engines, the load time on the containerd store
    by_age = sorted(world.ids, key=lambda k: (age_reference(dockerd, world.ids[k]), world.ids[k]))

    run = await h.run("two")

    assert run.result == "partial"
    assert world.present() == set(by_age[2:])
    lines = image_lines(h.audit(), run)
    assert {k for k in world.ids if lines[world.ids[k]].get("skip_reason") == "max_deletions"} == set(by_age[2:])
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
            Img("b", ["f:b"], timedelta(days=5), size=size),  # never used: recency = its age reference
            Img("c", ["f:c"], timedelta(days=10), size=size),  # used 2 days ago
            Img("d", ["f:d"], timedelta(days=30), size=size),  # used 1 hour ago
            Img("used", ["f:used"], timedelta(days=40), size=size, in_use=True),
            Img("local", ["f:local"], timedelta(days=40), size=size, pushed=False),
        ],
    )
    now = time.time()
    used = {world.ids["a"]: now - DAY, world.ids["c"]: now - 2 * DAY, world.ids["d"]: now - 3600}
    total = fs.size_bytes()
    disk = {"type": "free_space", "min_age": MIN_AGE}

    # 1) max_deletions 1: only the dangling image goes (dangling first), goal not met -> partial
    config = remediation_config(
        tmp_path, {"disk": {**disk, "target_avail_ratio": 0.99, "max_deletions": 1}}, str(fs.mountpoint)
    )
    h = await make_harness(engine, config, used)
    before = fs.avail_bytes()
    run = await h.run("disk")
    assert run.result == "partial"
    assert world.present() == set(world.ids) - {"dangling"}
    freed_one = fs.avail_bytes() - before  # what deleting one such image frees on this engine's store
    assert freed_one > 0
    await h.service.stop()

    # 2) a goal that needs 1.5 images' worth: the two least recently used eligible images go, in LRU order.
    # Recency: last use, else the age reference (Created, or the load time on the containerd store).
    eligible = [k for k in ("a", "b", "c", "d", "local") if k != "local" or not world.local_only("local")]
    lru = sorted(eligible, key=lambda k: (used.get(world.ids[k], age_reference(engine, world.ids[k])), world.ids[k]))
    avail = fs.avail_bytes()
    target = round((avail + 1.5 * freed_one) / total, 6)
    config = remediation_config(tmp_path, {"disk": {**disk, "target_avail_ratio": target}}, str(fs.mountpoint))
    h = await make_harness(engine, config, used)
    # the dry run projects with the engine's sizes: as many LRU images as those say reach the goal
    projected, expected_dry = avail, []
    for key in lru:
        expected_dry.append(world.ids[key])
        projected += world.size(key)
        if projected / total >= target:
            break
    dry = await h.run("disk", dry_run=True)
    assert [o.image_id for o in dry.outcomes if o.result == "would_delete"] == expected_dry
    run = await h.run("disk")
    assert run.result == "success", run.to_json()
    assert run.goal_met is True
    gone = lru[:2]
    assert world.present() == set(world.ids) - {"dangling", *gone}
    assert [o.image_id for o in run.outcomes if o.result == "deleted"] == [world.ids[k] for k in gone]
    assert fs.avail_bytes() / total >= target
    lines = image_lines(h.audit(), run)
    assert "LRU rank 1" in lines[world.ids[gone[0]]]["reason"] and "LRU rank 2" in lines[world.ids[gone[1]]]["reason"]
    assert lines[world.ids["used"]]["skip_reason"] == "in_use"
    if world.local_only("local"):
        assert lines[world.ids["local"]]["skip_reason"] == "local_only"
    await h.service.stop()

    # 3) the goal is already met: success, nothing deleted
    config = remediation_config(tmp_path, {"disk": {**disk, "target_avail_ratio": 0.01}}, str(fs.mountpoint))
    h = await make_harness(engine, config, used)
    writes_before = len(h.engine.writes)
    run = await h.run("disk")
    assert run.result == "success" and run.goal_met is True
    assert len(h.engine.writes) == writes_before == 0
    assert world.present() == set(world.ids) - {"dangling", *gone}


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
    assert h.engine.writes == [("prune_builds", (5_000_000_000, {"until": "86400s"}))]
    if is_podman(dockerd):
        # Podman 4.3 has no build-cache endpoint (404): the run fails, saying so, and prunes nothing
        assert dry.plan is not None and any("/build/prune" in n for n in dry.plan.notes)
        assert run.result == "failure", run.to_json()
        assert "not supported by this engine" in run.detail and "/build/prune" in run.detail and "404" in run.detail
        assert run.reclaimed_bytes == 0
        end = [r for r in h.audit() if r["run_id"] == run.run_id and r["event"] == "run_end"]
        assert end and end[0]["result"] == "failure" and "/build/prune" in end[0]["detail"]
    else:
        assert run.result == "success", run.to_json()
        assert run.reclaimed_bytes == 0  # a fresh engine has no build cache
    result = run.result
    assert h.sample("docker_remediation_runs_total", {"action": "builder", "trigger": "manual", "result": result}) == 1


async def test_engine_gone_mid_plan_fails_the_run_and_deletes_nothing(dockerd, tmp_path, make_harness):
    config = remediation_config(tmp_path, {"dangling": {"type": "prune_dangling", "min_age": MIN_AGE}}, "/")
    world, h = await setup(make_harness, dockerd, None, [Img("d", [], timedelta(days=3))], config)
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
    await h.events_open()  # the follower reconnects to the restarted engine before the harness stops
