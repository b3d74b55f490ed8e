"""Issue 12 on a private engine: keep_last counts versions, last use from containers that stopped before
the exporter started, the protect.local_only default on a build host, free_space saying it cannot reach
its target.

Uses the in-process harness of `test_remediation_actions` (real Engine, Poller, EventFollower).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.config import Config, parse_config
from exporter.engine.apishapes import normalize_id, parse_time
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.harness.images import ImageSpec, Layer, load_images
from tests.integration import test_remediation_actions as actions
from tests.integration.test_remediation_actions import MIN_AGE, Img, RecordingEngine, image_lines, setup

make_harness = actions.make_harness  # the fixture, shared with the action tests

DAY = 86400.0


def config_with(tmp_path: Path, actions: Mapping[str, Any], protect: Mapping[str, Any] | None = None) -> Config:
    """Remediation on, the given actions; `protect` as given (None: every protection at its default)."""
    remediation: dict[str, Any] = {
        "enabled": True,
        "auth": {"bearer_token": "t0ken"},
        "audit_log": str(tmp_path / "audit.jsonl"),
        "actions": dict(actions),
    }
    if protect is not None:
        remediation["protect"] = dict(protect)
    return parse_config({"filesystem": {"path": "/"}, "remediation": remediation})


def versions(repo: str, count: int, newest_aliases: Sequence[str] = ()) -> list[Img]:
    """`count` builds of one repository, one a day apart; the newest also carries `newest_aliases`."""
    imgs = []
    for n in range(1, count + 1):
        tags = [f"{repo}:1.{n}"] + ([f"{repo}:{a}" for a in newest_aliases] if n == count else [])
        imgs.append(Img(f"v{n}", tags, timedelta(days=count + 1 - n)))
    return imgs


# ------------------------------------------------------------------------------------------------ keep_last


async def test_keep_5_with_latest_and_stable_aliases_keeps_five_versions_with_all_their_tags(
    dockerd, registry, tmp_path, make_harness
):
    """The aliases on the newest build are not versions of their own: 1.6 (5th newest version) stays."""
    config = config_with(tmp_path, {"keep5": {"type": "keep_last", "keep": 5, "min_age": MIN_AGE}})
    images = versions("myapp", 10, ("latest", "stable"))
    world, h = await setup(make_harness, dockerd, registry, images, config)

    run = await h.run("keep5")

    assert run.result == "success", run.to_json()
    assert world.present() == {"v6", "v7", "v8", "v9", "v10"}
    assert world.tags_of("v10") == {world.name("v10", t) for t in ("myapp:1.10", "myapp:latest", "myapp:stable")}
    lines = image_lines(h.audit(), run)
    assert set(lines) == {world.ids[f"v{n}"] for n in range(1, 6)}
    assert all(line["result"] == "deleted" for line in lines.values())
    assert "version 6 of 10 in " in lines[world.ids["v5"]]["reason"]
    assert lines[world.ids["v5"]]["reason"].endswith("myapp, keep 5; tags 1.5")
    plan = run.plan.to_json() if run.plan else {}
    repo = world.name("v10", "myapp:latest").rsplit(":", 1)[0]
    assert plan["kept"][0] == f"{repo}: version 1 of 10, keep 5; tags 1.10, latest, stable"
    assert plan["kept"][4] == f"{repo}: version 5 of 10, keep 5; tags 1.6"


async def test_keep_last_an_old_version_in_use_stays_and_takes_no_place_of_a_newer_one(
    dockerd, registry, tmp_path, make_harness
):
    """Rollback: 1.2 runs while 1.5 is the newest; keep 2 keeps 1.5 and 1.4, and 1.2 stays as in use."""
    config = config_with(tmp_path, {"keep2": {"type": "keep_last", "keep": 2, "min_age": MIN_AGE}})
    images = versions("svc", 5, ("latest",))
    images[1] = Img("v2", ["svc:1.2"], timedelta(days=4), in_use=True)
    world, h = await setup(make_harness, dockerd, registry, images, config)

    run = await h.run("keep2")

    assert run.result == "success", run.to_json()
    assert world.present() == {"v2", "v4", "v5"}
    lines = image_lines(h.audit(), run)
    assert lines[world.ids["v2"]]["skip_reason"] == "in_use"
    assert {world.ids["v1"], world.ids["v3"]} == {i for i, line in lines.items() if line["result"] == "deleted"}


# ------------------------------------------------------------------------------------------------ local_only


async def test_build_host_default_keep_last_cleans_local_builds_and_the_plan_counts_local_only(
    dockerd, tmp_path, make_harness
):
    """Locally loaded builds (no RepoDigests on the classic store) are cleaned by keep_last by default;
    with protect.local_only on, the plan says how many images and bytes the rule kept."""
    default = config_with(tmp_path, {"keep1": {"type": "keep_last", "keep": 1, "min_age": MIN_AGE}})
    assert not default.remediation.protect.local_only
    images = versions("built", 3)
    world, h = await setup(make_harness, dockerd, None, images, default)

    run = await h.run("keep1", dry_run=True)

    assert run.plan is not None
    plan = run.plan.to_json()
    going = {world.ids["v1"], world.ids["v2"]}
    assert {c["id"] for c in plan["candidates"]} == going
    assert plan["local_only"] == {"enabled": False, "kept_images": 0, "kept_bytes": 0}

    on = config_with(tmp_path, {"keep1": {"type": "keep_last", "keep": 1, "min_age": MIN_AGE}}, {"local_only": True})
    h.service.reconfigure(on.remediation)
    run = await h.run("keep1", dry_run=True)
    assert run.plan is not None
    plan = run.plan.to_json()
    if world.local_only("v1"):  # classic store: loaded images list no repo digest
        assert plan["candidates"] == []
        assert plan["local_only"]["kept_images"] == 2
        assert plan["local_only"]["kept_bytes"] == sum(
            s["size"] for s in plan["skipped"] if s["reason"] == "local_only"
        )
        assert plan["local_only"]["kept_bytes"] > 0
    else:  # containerd store / Podman: every image has a digest, the rule keeps nothing
        assert plan["local_only"]["kept_images"] == 0


# ------------------------------------------------------------------------------------------------ free_space


async def test_free_space_plan_says_up_front_it_cannot_reach_the_target(dockerd, tmp_path, make_harness):
    """A target no candidate set can reach ("/" to 100 % free): the plan names the most it can free."""
    config = config_with(
        tmp_path,
        {"fs": {"type": "free_space", "target_avail_ratio": 0.999999, "min_age": MIN_AGE}},
        {"local_only": False},
    )
    _, h = await setup(make_harness, dockerd, None, [Img("old", ["junk:1"])], config)

    run = await h.run("fs", dry_run=True)

    assert run.plan is not None
    plan = run.plan.to_json()
    assert plan["reachable"] is False
    assert plan["freeable_bytes"] == plan["estimated_bytes"] > 0
    assert plan["needed_bytes"] > plan["freeable_bytes"]
    assert run.detail is not None and "can free at most" in run.detail and "needed" in run.detail


# ------------------------------------------------------------------------------------------------ last use


class CountingEngine(RecordingEngine):
    def __init__(self, host: str) -> None:
        super().__init__(host)
        self.container_inspects: list[str] = []

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        self.container_inspects.append(container_id)
        return await super().inspect_container(container_id)


async def test_container_that_exited_before_the_exporter_started_gives_its_image_a_last_use(dockerd, tmp_path):
    (ran,) = load_images(dockerd, [ImageSpec(tags=["ran:1"], layers=[Layer.pause()], cmd=["/pause"])])
    (never,) = load_images(dockerd, [ImageSpec(tags=["never:1"], layers=[Layer.random(4096, f"n{time.time_ns()}")])])
    cid = dockerd.cli("create", "--network", "none", "ran:1").stdout.decode().strip()
    dockerd.cli("start", cid)
    dockerd.cli("kill", cid)
    dockerd.cli("wait", cid)
    finished = parse_time(dockerd.get_json(f"/containers/{cid}/json")["State"]["FinishedAt"])
    assert finished is not None and finished > 0

    engine = CountingEngine(dockerd.host)
    config = config_with(tmp_path, {})
    poller = Poller(engine, config, ImageHistory(str(tmp_path / "state.json")), PollMetrics(CollectorRegistry()))
    try:
        snapshot = await poller.poll_once()
        assert snapshot is not None
        assert snapshot.by_id[normalize_id(ran)].last_used == finished
        assert snapshot.by_id[normalize_id(never)].last_used is None
        await poller.poll_once()
        assert engine.container_inspects.count(cid) == 1  # read once per container, not every poll
        # run again, stop again: read once more after it stopped, so the later use counts
        dockerd.cli("start", cid)
        await poller.poll_once()
        dockerd.cli("kill", cid)
        dockerd.cli("wait", cid)
        again = parse_time(dockerd.get_json(f"/containers/{cid}/json")["State"]["FinishedAt"])
        assert again is not None and again > finished
        snapshot = await poller.poll_once()
        assert snapshot is not None and snapshot.by_id[normalize_id(ran)].last_used == again
        assert engine.container_inspects.count(cid) == 2
        # across a restart, with the container gone: the state file remembers
        dockerd.cli("rm", cid)
        history = ImageHistory(str(tmp_path / "state.json"))
        history.load()
        restarted = Poller(engine, config, history, PollMetrics(CollectorRegistry()))
        snapshot = await restarted.poll_once()
        assert snapshot is not None and snapshot.by_id[normalize_id(ran)].last_used == again
    finally:
        engine.close()
