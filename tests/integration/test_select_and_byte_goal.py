"""An action's `select` and free_space's `target_avail_bytes` against a private engine with generated images.

Built on the action tests' harness (tests/integration/test_remediation_actions.py): the images are pushed to
the private registry, so the engine lists them as `127.0.0.1:<port>/<repository>:<tag>` and the globs here
start with `*/`.
"""

from __future__ import annotations

from datetime import timedelta

from tests.integration import test_remediation_actions as actions
from tests.integration.test_remediation_actions import (
    MIB,
    MIN_AGE,
    Img,
    age_reference,
    build_world,
    image_lines,
    remediation_config,
    setup,
)

make_harness = actions.make_harness  # the fixture, shared with the action tests

CI_SELECT = {"references": ["*/ci/*", "*:pr-*"], "labels": ["team=ci"]}
SELECT_SET = [
    Img("ci", ["ci/app:1"]),
    Img("pr", ["web:pr-3"]),
    Img("team", ["web:team"], labels={"team": "ci"}),
    Img("ci_prod", ["ci/app:production"]),  # selected, and protected: protection wins
    Img("other", ["web:1"]),
    Img("dangling_ci", [], timedelta(days=3), labels={"team": "ci"}),  # no reference: selected by its label
    Img("dangling", [], timedelta(days=3)),
]


async def test_select_deletes_only_matching_images_and_protection_still_wins(dockerd, registry, tmp_path, make_harness):
    config = remediation_config(
        tmp_path, {"ci": {"type": "prune_unused", "min_age": MIN_AGE, "select": CI_SELECT}}, "/"
    )
    world, h = await setup(make_harness, dockerd, registry, SELECT_SET, config)
    going = {"ci", "pr", "team", "dangling_ci"}

    dry = await h.run("ci", dry_run=True)
    assert h.engine.writes == []
    assert {o.image_id for o in dry.outcomes if o.result == "would_delete"} == {world.ids[k] for k in going}
    plan = dry.to_json()["plan"]
    assert plan["select"] == {**{k: list(v) for k, v in CI_SELECT.items()}, "not_selected": 2}
    assert "2 images not selected by this action's select" in plan["notes"]

    run = await h.run("ci")
    assert run.result == "success", run.to_json()
    assert world.present() == set(world.ids) - going
    lines = image_lines(h.audit(), run)
    assert lines[world.ids["ci_prod"]]["skip_reason"] == "protected_reference"
    assert world.ids["other"] not in lines and world.ids["dangling"] not in lines  # counted, not listed
    (start,) = [r for r in h.audit() if r["run_id"] == run.run_id and r["event"] == "run_start"]
    assert start["select"]["not_selected"] == 2 and start["select"]["references"] == CI_SELECT["references"]


async def test_a_byte_goal_deletes_until_that_many_bytes_are_available(
    dockerd_factory, loop_fs_factory, registry, tmp_path, make_harness
):
    fs = loop_fs_factory(200)
    engine = dockerd_factory(data_root=fs.mountpoint / "docker")
    world = build_world(
        engine,
        registry,
        [Img(k, [f"f:{k}"], timedelta(days=d), size=4 * MIB) for k, d in (("a", 20), ("b", 5), ("c", 10))],
    )
    lru = sorted(world.ids, key=lambda k: (age_reference(engine, world.ids[k]), world.ids[k]))
    disk = {"type": "free_space", "min_age": MIN_AGE}

    # 1) one byte more than available now: the least recently used image goes, and nothing else
    goal = fs.avail_bytes() + 1
    config = remediation_config(tmp_path, {"disk": {**disk, "target_avail_bytes": goal}}, str(fs.mountpoint))
    h = await make_harness(engine, config)
    run = await h.run("disk")
    assert run.result == "success" and run.goal_met is True, run.to_json()
    assert world.present() == set(lru[1:])
    assert fs.avail_bytes() >= goal
    assert h.sample("docker_remediation_last_run_shortfall_bytes", {"action": "disk"}) == 0
    await h.service.stop()

    # 2) more bytes than the filesystem has, from the one image select takes: said up front, that image goes,
    # the other stays, and the shortfall is what is still missing
    goal = fs.size_bytes() + 1
    selected = {"references": [f"*/f:{lru[1]}"]}
    config = remediation_config(
        tmp_path,
        {"disk": {**disk, "target_avail_bytes": goal, "target_avail_ratio": 0.01, "select": selected}},
        str(fs.mountpoint),
    )
    h = await make_harness(engine, config)
    run = await h.run("disk")
    assert run.result == "partial" and run.goal_met is False, run.to_json()
    assert world.present() == {lru[2]}
    notes = run.to_json()["plan"]["notes"]
    assert any("to reach target_avail_ratio 0.01 and target_avail_bytes" in n for n in notes), notes
    assert "1 images not selected by this action's select" in notes
    assert run.filesystem_after is not None
    missing = goal - run.filesystem_after.avail
    assert h.sample("docker_remediation_last_run_shortfall_bytes", {"action": "disk"}) == missing > 0
