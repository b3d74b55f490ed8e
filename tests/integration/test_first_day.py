"""The first day on a real host: fourteen builds of an app, all first seen at the exporter's first start.

Every image "arrives" when the exporter first sees it, so on a new install all of them share one arrival
time. That time guards `min_age`; the order of a `free_space` run must still follow the builds (oldest
first), and its reasons must say both when an image was built and since when the exporter has known it.

The state file is the one a first start six minutes ago leaves behind (every image present, all arriving
at that start): `min_age: 5m` is then met for them, not for a build loaded since. On the containerd store a
load sets LastTagTime, so there the builds are young for min_age after their load (docs/remediation.md,
Engines): min_age is 10s and the test waits for it; their load order is their build order here.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.engine.apishapes import normalize_id
from exporter.engine.client import Engine
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.service import RemediationService
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.history import STATE_VERSION, ImageHistory
from exporter.state.poller import Poller
from tests.harness.audit import read_audit
from tests.harness.dockerd import PrivateDockerd
from tests.harness.engines import engine_store
from tests.harness.images import ImageSpec, Layer, create_container, load_images
from tests.integration.test_remediation_actions import image_lines, wait_until_older

VERSIONS = 14
FIRST_START_AGO = 6 * 60.0


def _load_builds(engine: PrivateDockerd, versions: range) -> dict[int, str]:
    """`big/app:<v>` built `30 - v` days ago, oldest loaded first (the containerd store's LastTagTime is the
    load time: loading in build order keeps its tag order the build order)."""
    now = datetime.now(UTC).replace(microsecond=0)
    specs = [
        ImageSpec(
            tags=[f"big/app:{v}"],
            layers=[Layer.random(32 * 1024, f"big-app-{v}-{time.time_ns()}")],
            created=now - timedelta(days=30 - v),
        )
        for v in versions
    ]
    return dict(zip(versions, load_images(engine, specs), strict=True))


def _first_start_state(path: Path, engine: PrivateDockerd, started: float) -> None:
    """The state file the exporter's first start at `started` wrote: every image present arrived then."""
    present = sorted(normalize_id(i["Id"]) for i in engine.get_json("/images/json?all=1"))
    path.write_text(
        json.dumps(
            {
                "version": STATE_VERSION,
                "saved_at": started,
                "present": present,
                "last_used": {},
                "arrived": dict.fromkeys(present, started),
            }
        )
    )


async def test_free_space_on_a_first_day_deletes_the_oldest_builds_first(dockerd, loop_fs_factory, tmp_path):
    ids = _load_builds(dockerd, range(VERSIONS + 1))
    create_container(dockerd, ids[0], name="still-on-v0")  # the oldest build, pinned by a stopped container
    containerd_store = engine_store(dockerd) == "containerd"
    min_age = "5m"
    if containerd_store:  # a load sets LastTagTime there: the builds are young until min_age after their load
        min_age = "10s"
        wait_until_older(dockerd, list(ids.values()), 10.0)
    state = tmp_path / "state.json"
    first_start = time.time() - FIRST_START_AGO
    _first_start_state(state, dockerd, first_start)
    late = _load_builds(dockerd, range(VERSIONS + 1, VERSIONS + 2))  # loaded since: arrives at the next poll
    # a small ext4 (5 % reserved): never 99.9 % free, so the goal stays unmet and the order shows in full
    fs = loop_fs_factory(16)
    disk = {"type": "free_space", "min_age": min_age, "target_avail_ratio": 0.999}
    config = parse_config(
        {
            "filesystem": {"path": str(fs.mountpoint)},
            "state": {"path": str(state)},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": "t0ken"},
                "audit_log": str(tmp_path / "audit.jsonl"),
                "protect": {"local_only": False},
                "actions": {"plan": disk, "disk": {**disk, "max_deletions": 2}},
            },
        }
    )
    engine = Engine(dockerd.host, timeout=60)
    history = ImageHistory(str(state))
    history.load()
    poller = Poller(engine, config, history, PollMetrics(CollectorRegistry()))
    disk_usage = DiskUsageRefresher(engine, poller, config.poll, poller.metrics)
    service = RemediationService(config.remediation, engine, poller, CollectorRegistry(), disk_usage=disk_usage)
    await service.start()
    try:
        await poller.poll_once()
        assert history.arrived[ids[1]] == first_start and history.arrived[late[VERSIONS + 1]] > first_start

        dry_begun = service.begin("plan", "manual", (), True)
        assert dry_begun is not None
        dry = await service.run_to_completion(dry_begun)
        assert dry.plan is not None
        oldest_first = [ids[v] for v in range(1, VERSIONS + 1)]
        assert [c.image_id for c in dry.plan.candidates] == oldest_first
        # the dry run projects the goal with the engine's sizes: as many as those say, in plan order
        would = [o for o in dry.outcomes if o.result == "would_delete"]
        assert would and [o.image_id for o in would] == oldest_first[: len(would)]
        if containerd_store:  # LastTagTime (the load) is later than the first start: it is what counts
            assert would[0].reason.startswith("built 4w1d ago, tagged "), would[0].reason
        else:
            assert "built 4w1d ago, never seen used; here since " in would[0].reason, would[0].reason
            assert "first seen by the exporter" in would[0].reason
        skipped = {s.image_id: s for s in dry.plan.skipped}
        assert {i: s.reason for i, s in skipped.items()} == {ids[0]: "in_use", late[VERSIONS + 1]: "too_young"}
        young = skipped[late[VERSIONS + 1]].detail
        assert f"first seen by the exporter), min_age {min_age}: deletable from " in young, young
        outcomes = {o.image_id: o for o in dry.outcomes if o.result == "skipped"}
        assert outcomes[ids[0]].reason == "kept: in use by a container", outcomes[ids[0]]
        assert outcomes[late[VERSIONS + 1]].reason == "kept: younger than min_age"

        begun = service.begin("disk", "manual", (), False)
        assert begun is not None
        run = await service.run_to_completion(begun)
        # the two oldest go (up to 8 deletions run at once, so they may finish in either order)
        deleted = [o.image_id for o in run.outcomes if o.result == "deleted"]
        assert len(deleted) == 2 and set(deleted) == {ids[1], ids[2]}
        present = {i["Id"] for i in dockerd.get_json("/images/json?all=1")}
        assert ids[1] not in present and ids[2] not in present and ids[3] in present
        lines = image_lines(read_audit(tmp_path / "audit.jsonl"), run)
        assert "(LRU rank 1)" in lines[ids[1]]["reason"] and "built 4w1d ago" in lines[ids[1]]["reason"]
    finally:
        await service.stop()
        engine.close()


def test_a_first_start_says_when_the_images_become_deletable(dockerd, exporter_factory, tmp_path):
    """The exporter process on a new install: the landing page and the plan preview say from when."""
    ids = _load_builds(dockerd, range(1, 4))
    before = time.time()
    exp = exporter_factory(
        dockerd,
        {
            "state": {"path": str(tmp_path / "state.json")},  # no file yet: a first start
            "filesystem": {"path": str(tmp_path)},
            "remediation": {
                "enabled": True,
                "dry_run": True,
                "auth": {"bearer_token": "t0ken"},
                "audit_log": str(tmp_path / "audit.jsonl"),
                "actions": {"old": {"type": "prune_unused", "min_age": "1h"}},
            },
        },
    )
    after = time.time()
    page = exp.get("/")
    (item,) = re.findall(r'<li data-action="old" data-images="3" data-bytes="[0-9]+" data-first="([0-9.e+]+)">', page)
    assert before + 3600 - 1 <= float(item) <= after + 3600, (before, item, after)
    assert "become deletable within the next min_age (1h): the first at " in page

    status, body = exp.request("POST", "/api/v1/actions/old?dry_run=true", headers={"Authorization": "Bearer t0ken"})
    assert status == 200, body
    plan = json.loads(body)["plan"]
    assert plan["candidates"] == []
    skipped = {s["id"]: s for s in plan["skipped"]}
    assert set(skipped) == set(ids.values()) and {s["reason"] for s in skipped.values()} == {"too_young"}
    detail = skipped[ids[1]]["detail"]
    assert "first seen by the exporter), min_age 1h: deletable from " in detail, detail
