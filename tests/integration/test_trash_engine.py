"""The trash on a real engine: images with no registry copy are saved before their deletion and come back.

Locally generated images (never pushed: no registry holds them) are deleted by a manual `prune_unused` run
with `remediation.trash` on; each deletion is preceded by a `trash` audit line naming the archive, and the
restore (CLI and API) loads it and re-creates every tag: the image ID and tags are compared with what the
engine listed before the run. A trash on a nearly full filesystem (a small tmpfs) saves nothing, so
nothing is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from exporter.web.remediation import RemediationEndpoints
from tests.harness.dockerd import PrivateDockerd, short_workdir
from tests.harness.faultproxy import FaultProxy
from tests.harness.fixtures import LoopFactory
from tests.integration import test_remediation_actions as actions
from tests.integration.test_remediation_actions import MIB, MIN_AGE, Harness, Img, build_world, remediation_config
from tests.integration.test_restore_engine import cli_restore, present, tags

pytestmark = pytest.mark.engine

make_harness = actions.make_harness  # the fixture, shared with the action tests

AUTH = {"Authorization": "Bearer t0ken"}
UNPROTECTED = {"references": [], "labels": [], "local_only": False}


def trash_config(tmp_path: Path, trash: Path, max_bytes: str = "1GiB") -> Any:
    return remediation_config(
        tmp_path,
        {"unused": {"type": "prune_unused", "min_age": MIN_AGE}},
        "/",
        protect=UNPROTECTED,
        trash={"path": str(trash), "max_bytes": max_bytes, "keep_for": "1d"},
    )


def size_of(path: Path) -> int:
    return path.stat().st_size


def fill(path: Path, size: int) -> None:
    path.write_bytes(b"\0" * size)


def lines_of(h: Harness, run_id: str, event: str) -> list[dict[str, Any]]:
    return [x for x in h.audit() if x["run_id"] == run_id and x["event"] == event]


async def test_local_images_go_to_the_trash_and_come_back_with_their_id_and_every_tag(
    dockerd: PrivateDockerd, tmp_path: Path, make_harness: Any, aiohttp_client: Any
) -> None:
    trash = tmp_path / "trash"
    world = build_world(
        dockerd,
        None,
        [
            Img("solo", ["solo:1", "solo:2"], size=2 * MIB, pushed=False),
            Img("lone", ["lone:1"], size=MIB, pushed=False),
            Img("keeper", ["keeper:1"], pushed=False, in_use=True),
        ],
    )
    before = {k: (world.ids[k], tags(dockerd, world.ids[k])) for k in ("solo", "lone")}
    h: Harness = await make_harness(dockerd, trash_config(tmp_path, trash))

    run = await h.run("unused")

    assert run.result == "success", run.to_json()
    assert present(dockerd) & {world.ids["solo"], world.ids["lone"]} == set()
    saved = {x["image_id"]: x for x in lines_of(h, run.run_id, "trash")}
    assert set(saved) == {world.ids["solo"], world.ids["lone"]}
    audit = h.audit()
    for image_id, line in saved.items():
        archive = Path(line["file"])
        assert archive.parent == trash and size_of(archive) == line["bytes"] > 0
        # the save is on disk before the first DELETE of that image is announced
        first_intent = next(i for i, x in enumerate(audit) if x["event"] == "intent" and x["image_id"] == image_id)
        assert audit.index(line) < first_intent
    assert h.sample("docker_remediation_trash_images", {}) == 2
    assert h.sample("docker_remediation_trash_bytes", {}) == sum(x["bytes"] for x in saved.values())
    assert h.sample("docker_remediation_trash_max_bytes", {}) == 1 << 30

    code, done = cli_restore(dockerd, h.audit_path, run.run_id, "--image", world.ids["solo"])
    assert code == 0, done
    ((image_id, result, loaded),) = [(d["image_id"], d["result"], d["loaded"]) for d in done]
    assert (image_id, result, loaded) == (world.ids["solo"], "restored", saved[world.ids["solo"]]["file"])
    assert world.ids["solo"] in present(dockerd)
    assert tags(dockerd, world.ids["solo"]) == before["solo"][1]

    app = web.Application()
    app.router.add_routes(RemediationEndpoints(h.service).routes())
    client = await aiohttp_client(app)
    shown = await (await client.get(f"/api/v1/runs/{run.run_id}", headers=AUTH)).json()
    listed = {d["id"]: d for d in shown["deleted"]}
    assert listed[world.ids["lone"]]["restorable"] is True
    assert listed[world.ids["lone"]]["commands"].startswith(f"docker load -i {saved[world.ids['lone']]['file']}")
    answer = await client.post(f"/api/v1/runs/{run.run_id}/restore", params={"image": world.ids["lone"]}, headers=AUTH)
    assert answer.status == 200
    (lone,) = (await answer.json())["images"]
    assert lone["result"] == "restored", lone
    assert world.ids["lone"] in present(dockerd)
    assert tags(dockerd, world.ids["lone"]) == before["lone"][1]


@contextlib.contextmanager
def small_filesystem(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `where` (the test runs as root, as the private engines need)."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_full_trash_filesystem_saves_nothing_so_nothing_is_deleted(
    dockerd: PrivateDockerd, tmp_path: Path, make_harness: Any
) -> None:
    world = build_world(dockerd, None, [Img("big", ["big:1"], size=2 * MIB, pushed=False)])
    with small_filesystem(tmp_path / "small", "4m") as small:
        fill(small / "filler", 3 * MIB)  # less room left than the image needs
        h: Harness = await make_harness(dockerd, trash_config(tmp_path, small / "trash"))

        run = await h.run("unused")

        assert world.ids["big"] in present(dockerd)
        assert run.plan is not None
        assert any("filesystem is low" in n for n in run.plan.notes), run.plan.notes
        assert h.engine.writes == [], h.engine.writes  # not one DELETE (nor a hold tag) was sent
        (outcome,) = [o for o in run.outcomes if o.image_id == world.ids["big"]]
        assert (outcome.result, outcome.skip_reason) == ("skipped", "trash"), outcome
        assert "low" in outcome.detail
        assert not [x for x in h.audit() if x["event"] == "intent"]
        assert os.listdir(small / "trash") == [], "nothing (not even a partial archive) stays"


def fill_up(path: Path) -> None:
    """Write until the filesystem refuses a single block more (as root: the reserved blocks too)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        for chunk in (MIB, 4096):
            while True:
                try:
                    os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
        os.fsync(fd)
    finally:
        os.close(fd)


async def test_a_trash_filesystem_that_fills_during_the_save_cuts_it_short_so_nothing_is_deleted(
    dockerd: PrivateDockerd, loop_fs_factory: LoopFactory, tmp_path: Path, make_harness: Any
) -> None:
    """The room check passes, then another writer fills the loop filesystem before the archive arrives: the
    write fails (ENOSPC), the partial archive goes, and the image is not deleted."""
    world = build_world(dockerd, None, [Img("big", ["big:1"], size=4 * MIB, pushed=False)])
    fs = loop_fs_factory(64)
    trash = fs.mountpoint / "trash"
    trash.mkdir()
    # the proxy holds the save's GET between the exporter's room check and the engine's answer
    with FaultProxy(dockerd.socket, short_workdir("die-trashfull-") / "p.sock") as proxy:
        engine = SimpleNamespace(host=proxy.host, get_json=dockerd.get_json)
        h: Harness = await make_harness(engine, trash_config(tmp_path, trash))
        held = proxy.hold("GET", r"^/images/[^/]+/get")
        running = asyncio.create_task(h.run("unused"))
        assert await asyncio.to_thread(held.arrived.wait, 60), "the save never asked the engine"
        await asyncio.to_thread(fill_up, fs.mountpoint / "filler")
        assert fs.avail_bytes() < MIB
        held.release()
        run = await asyncio.wait_for(running, 120)

    assert world.ids["big"] in present(dockerd)
    assert h.engine.writes == [], h.engine.writes  # not one DELETE (nor a hold tag) was sent
    outcomes = [o for o in run.outcomes if o.image_id == world.ids["big"]]
    assert len(outcomes) == 1, run.to_json()
    assert (outcomes[0].result, outcomes[0].skip_reason) == ("skipped", "trash"), outcomes[0]
    assert "No space left on device" in outcomes[0].detail, outcomes[0].detail
    assert not [x for x in h.audit() if x["event"] in ("intent", "trash")]
    assert os.listdir(trash) == [], "nothing (not even a partial archive) stays"
    assert h.sample("docker_remediation_trash_images", {}) == 0
