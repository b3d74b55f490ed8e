"""Undoing a run: images deleted by a real run come back from the private registry, by the CLI and the API.

The images are pushed to the loopback registry and pulled back (so they carry the repo digest it serves),
deleted by a manual `prune_unused` run, then restored: the image ID that comes back and its tags are compared
with what the engine listed before the run, and a tag that names another image by then is only moved by force.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from exporter.web.remediation import RemediationEndpoints
from tests.harness.audit import read_audit
from tests.harness.dockerd import PrivateDockerd
from tests.harness.registry import PrivateRegistry
from tests.integration import test_remediation_actions as actions
from tests.integration.test_remediation_actions import (
    MIN_AGE,
    MIN_AGE_SECONDS,
    Harness,
    Img,
    World,
    build_world,
    image_lines,
    remediation_config,
    wait_until_older,
)

make_harness = actions.make_harness  # the fixture, shared with the action tests

AUTH = {"Authorization": "Bearer t0ken"}


def tags(engine: PrivateDockerd, image_id: str) -> set[str]:
    """The image's tags (the containerd store also lists a digest name there: not a tag)."""
    listed = engine.get_json(f"/images/{image_id}/json").get("RepoTags") or []
    return {t for t in listed if "@" not in t and "<none>" not in t}


def present(engine: PrivateDockerd) -> set[str]:
    return {img["Id"] for img in engine.get_json("/images/json?all=1")}


def cli_restore(engine: PrivateDockerd, audit: Path, run_id: str, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    """`docker-image-exporter restore` against the private engine (never the machine's default socket)."""
    command = [sys.executable, "-m", "exporter", "restore", "--audit-log", str(audit), "--run", run_id]
    done = subprocess.run(
        [*command, "--docker.host", engine.host, *extra],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert not done.stderr.strip() or done.returncode != 0, done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def pull_back(engine: PrivateDockerd, world: World, key: str) -> None:
    """Push every tag of the image, remove it, pull it back: its repo digests are then the ones the registry
    serves. A loaded image's digest on the containerd store and Podman proves no copy, and Podman's push
    recompresses the layers, so the manifest it pushed has another digest than the one it lists."""
    refs = [world.prefix + t for img in world.images if img.key == key for t in img.tags]
    for ref in refs:
        engine.cli("push", ref)
    engine.cli("rmi", *refs)
    for ref in refs:
        engine.cli("pull", ref)
    assert engine.get_json(f"/images/{refs[0]}/json")["Id"] == world.ids[key]


async def test_restore_brings_a_runs_deleted_images_back_by_cli_and_api(
    dockerd: PrivateDockerd, registry: PrivateRegistry, tmp_path: Path, make_harness: Any, aiohttp_client: Any
) -> None:
    config = remediation_config(tmp_path, {"unused": {"type": "prune_unused", "min_age": MIN_AGE}}, "/")
    world = build_world(
        dockerd,
        registry,
        [Img("app", ["app:1", "app:stable"]), Img("web", ["web:1"]), Img("keeper", ["keeper:1"], in_use=True)],
    )
    for key in ("app", "web"):
        pull_back(dockerd, world, key)
    # the containerd store stamps a pull as the last tag time: wait until min_age holds again
    wait_until_older(dockerd, [world.ids["app"], world.ids["web"]], MIN_AGE_SECONDS)
    world.refresh()
    before = {k: (world.ids[k], tags(dockerd, world.ids[k]), sorted(world.digests[k])) for k in ("app", "web")}
    assert all(digests for _, _, digests in before.values()), before
    h: Harness = await make_harness(dockerd, config)

    run = await h.run("unused")

    assert run.result == "success", run.to_json()
    assert present(dockerd) & {world.ids["app"], world.ids["web"]} == set()
    lines = image_lines(h.audit(), run)
    for key in ("app", "web"):
        line = lines[world.ids[key]]
        assert line["result"] == "deleted"
        assert set(line["tags"]) == before[key][1] and sorted(line["repo_digests"]) == before[key][2]
        assert isinstance(line["created"], float)
    # someone tags another image as web:1 after the run: the restore must not take the name back silently
    dockerd.cli("tag", world.ids["keeper"], world.prefix + "web:1")

    code, dry = cli_restore(dockerd, h.audit_path, run.run_id, "--dry-run")
    assert code == 0 and {d["image_id"]: d["result"] for d in dry} == {
        world.ids["app"]: "would_restore",
        world.ids["web"]: "would_restore",
    }
    assert present(dockerd) & {world.ids["app"], world.ids["web"]} == set()

    code, done = cli_restore(dockerd, h.audit_path, run.run_id, "--image", world.ids["app"])
    assert code == 0, done
    assert [(d["image_id"], d["result"]) for d in done] == [(world.ids["app"], "restored")]
    assert world.ids["app"] in present(dockerd)
    assert tags(dockerd, world.ids["app"]) == before["app"][1]

    app = web.Application()
    app.router.add_routes(RemediationEndpoints(h.service).routes())
    client = await aiohttp_client(app)
    shown = await client.get(f"/api/v1/runs/{run.run_id}", headers=AUTH)
    assert shown.status == 200
    listed = {d["id"]: d for d in (await shown.json())["deleted"]}
    assert listed[world.ids["web"]]["restorable"] is True
    assert listed[world.ids["web"]]["commands"].startswith(f"docker pull {before['web'][2][0]}")
    url = f"/api/v1/runs/{run.run_id}/restore"
    assert (await client.post(url, params={"dryrun": "true"}, headers=AUTH)).status == 400

    answer = await client.post(url, params={"image": world.ids["web"]}, headers=AUTH)
    assert answer.status == 200
    (web_result,) = (await answer.json())["images"]
    assert web_result["result"] == "restored" and web_result["conflicts"] == {
        world.prefix + "web:1": world.ids["keeper"]
    }
    assert world.ids["web"] in present(dockerd) and tags(dockerd, world.ids["web"]) == set()
    assert world.prefix + "web:1" in tags(dockerd, world.ids["keeper"])

    forced = await client.post(url, params={"image": world.ids["web"], "force": "true"}, headers=AUTH)
    (web_result,) = (await forced.json())["images"]
    assert web_result["result"] == "present" and web_result["tagged"] == [world.prefix + "web:1"]
    assert tags(dockerd, world.ids["web"]) == before["web"][1]
    assert world.prefix + "web:1" not in tags(dockerd, world.ids["keeper"])

    restores = [x for x in read_audit(h.audit_path) if x["event"] == "restore"]
    assert [(x["trigger"], x["dry_run"], x["result"]) for x in restores] == [
        ("cli", True, "would_restore"),
        ("cli", True, "would_restore"),
        ("cli", False, "restored"),
        ("api", False, "restored"),
        ("api", False, "present"),
    ]
    assert h.sample("docker_remediation_restored_images_total", {"result": "restored"}) == 1
    assert h.sample("docker_remediation_restored_images_total", {"result": "present"}) == 1
