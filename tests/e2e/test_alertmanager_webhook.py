"""Debian's real Alertmanager (0.25) on loopback posting to the exporter's webhook with a bearer token
read from `credentials_file`: the first notification runs the action once; Alertmanager's repeats and
re-sends inside the cooldown run nothing (they are acknowledged, so Alertmanager records no failures).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.promstack import PrivateAlertmanager, alert_remediation, webhook_receiver_config
from tests.harness.state import write_saved_state
from tests.integration.test_remediation_actions import wait_until_older

pytestmark = pytest.mark.e2e("prometheus-alertmanager")

TOKEN = "e2e-bearer-token"


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[PrivateAlertmanager] = []

    def factory(webhook_url: str, token_file: Path) -> PrivateAlertmanager:
        config = webhook_receiver_config(
            webhook_url, token_file, group_by=("alertname",), group_interval="2s", repeat_interval="3s"
        )
        am = PrivateAlertmanager(tmp_path / f"am-{len(made)}", config)
        made.append(am)
        am.start()
        return am

    yield factory
    for am in made:
        am.stop()


def fire(am: PrivateAlertmanager, **labels: str) -> None:
    """An alert as Prometheus posts it."""
    am.post_alerts([{"labels": labels, "annotations": {"summary": "e2e"}}])


def load_dangling(engine: PrivateDockerd, count: int, tag: str) -> set[str]:
    now = datetime.now(UTC).replace(microsecond=0)
    specs = [
        ImageSpec(layers=[Layer.random(16 * 1024, f"{tag}-{i}-{time.time_ns()}")], created=now - timedelta(days=2))
        for i in range(count)
    ]
    return set(load_images(engine, specs))


def present(engine: PrivateDockerd) -> set[str]:
    return {img["Id"] for img in engine.get_json("/images/json?all=1")}


def runs(exp: ExporterProcess) -> list[dict[str, Any]]:
    status, body = exp.request("GET", "/api/v1/actions", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    result: list[dict[str, Any]] = json.loads(body)["runs"]
    return result


def test_alertmanager_triggers_one_run_and_repeats_inside_cooldown_none(
    dockerd, exporter_factory, alertmanager_factory, tmp_path
):
    first = load_dangling(dockerd, 2, "first")
    token_file, remediation = alert_remediation(tmp_path, TOKEN, action="clean-dangling", cooldown="10m")
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(
        dockerd,
        {"state": {"path": str(tmp_path / "state.json")}, "poll": {"interval": "10m"}, "remediation": remediation},
    )
    am = alertmanager_factory(f"{exp.url}/webhook/alertmanager", token_file)

    fire(am, alertname="DockerDanglingImages", severity="warning", instance="node-1")
    exp.wait_for(lambda: runs(exp) and runs(exp)[0]["finished_at"], timeout=30, what="the first run")
    assert [r["trigger"] for r in runs(exp)] == ["alert"]
    assert runs(exp)[0]["result"] == "success"
    assert not present(dockerd) & first

    # new dangling images a second run would delete; then Alertmanager repeats and re-sends (a new alert in
    # the group changes it) inside the 10m cooldown
    second = load_dangling(dockerd, 2, "second")
    fire(am, alertname="DockerDanglingImages", severity="critical", instance="node-1")
    exp.wait_for(
        lambda: (exp.sample("docker_webhook_alerts_total", {"status": "firing", "outcome": "cooldown"}) or 0) >= 3,
        timeout=60,
        what="at least two more deliveries answered as cooldown",
    )
    assert len(runs(exp)) == 1
    assert present(dockerd) >= second
    assert exp.sample("docker_webhook_alerts_total", {"status": "firing", "outcome": "routed"}) == 1
    assert exp.sample("docker_webhook_requests_total", {"code": "401"}) == 0
    notifications = am.metric("alertmanager_notifications_total", {"integration": "webhook"})
    failed = am.metric("alertmanager_notifications_failed_total", {"integration": "webhook"})
    assert notifications >= 3 and failed == 0


def image_tags(engine: PrivateDockerd, image_id: str) -> set[str]:
    """The image's tags (the containerd store also lists a digest name there: not a tag)."""
    listed = engine.get_json(f"/images/{image_id}/json").get("RepoTags") or []
    return {t for t in listed if "@" not in t and "<none>" not in t}


def test_an_alert_run_saves_to_the_trash_and_its_deletions_come_back_by_the_api(
    dockerd, exporter_factory, alertmanager_factory, tmp_path
):
    """Alertmanager fires, the routed run saves each local image to the trash before deleting it, and
    `POST /api/v1/runs/{id}/restore` loads them back with the same ID and every tag."""
    now = datetime.now(UTC).replace(microsecond=0)
    specs = {
        "build": ImageSpec(
            tags=["local/build:1", "local/build:latest"],
            layers=[Layer.random(512 * 1024, f"build-{time.time_ns()}")],
            created=now - timedelta(days=2),
        ),
        "tool": ImageSpec(
            tags=["local/tool:2"],
            layers=[Layer.random(256 * 1024, f"tool-{time.time_ns()}")],
            created=now - timedelta(days=2),
        ),
    }
    ids = dict(zip(specs, load_images(dockerd, list(specs.values())), strict=True))
    # the containerd store stamps a load as the last tag time: wait until min_age holds by the engine's marks
    wait_until_older(dockerd, list(ids.values()), 10)
    before = {key: image_tags(dockerd, image_id) for key, image_id in ids.items()}
    assert all(before.values()), before
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    write_saved_state(tmp_path / "state.json", dockerd)
    trash = tmp_path / "trash"
    audit = tmp_path / "audit.jsonl"
    exp = exporter_factory(
        dockerd,
        {
            "state": {"path": str(tmp_path / "state.json")},
            "poll": {"interval": "10m"},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token_file": str(token_file)},
                "audit_log": str(audit),
                # local images are what the trash is for: nothing protects them here
                "protect": {"references": [], "labels": [], "local_only": False},
                "trash": {"path": str(trash), "max_bytes": "1GiB", "keep_for": "1d"},
                "actions": {"clean-unused": {"type": "prune_unused", "min_age": "10s"}},
                "routes": [
                    {"matchers": ['alertname="DockerImagesUnused"'], "action": "clean-unused", "cooldown": "10m"}
                ],
            },
        },
    )
    am = alertmanager_factory(f"{exp.url}/webhook/alertmanager", token_file)

    fire(am, alertname="DockerImagesUnused", severity="warning", instance="node-1")
    exp.wait_for(lambda: runs(exp) and runs(exp)[0]["finished_at"], timeout=60, what="the alert's run")
    (run,) = runs(exp)
    assert (run["trigger"], run["result"]) == ("alert", "success"), run
    assert not present(dockerd) & set(ids.values())
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    saved = {x["image_id"]: x["file"] for x in lines if x["event"] == "trash" and x["run_id"] == run["run_id"]}
    assert set(saved) == set(ids.values())
    assert all(Path(f).parent == trash and Path(f).stat().st_size > 0 for f in saved.values())
    assert exp.sample("docker_remediation_trash_images") == 2

    headers = {"Authorization": f"Bearer {TOKEN}"}
    status, body = exp.request("GET", f"/api/v1/runs/{run['run_id']}", headers=headers)
    assert status == 200
    listed = {d["id"]: d for d in json.loads(body)["deleted"]}
    assert {i: (d["restorable"], d["trash"]) for i, d in listed.items()} == {i: (True, saved[i]) for i in ids.values()}

    status, body = exp.request("POST", f"/api/v1/runs/{run['run_id']}/restore", headers=headers)
    assert status == 200, body
    answers = {a["id"]: a for a in json.loads(body)["images"]}
    assert {i: (a["result"], a["loaded"]) for i, a in answers.items()} == {
        i: ("restored", saved[i]) for i in ids.values()
    }
    for key, image_id in ids.items():
        assert image_id in present(dockerd)
        assert image_tags(dockerd, image_id) == before[key]
    assert exp.sample("docker_remediation_restored_images_total", {"result": "restored"}) == 2
    restores = [x for x in audit.read_text().splitlines() if '"event": "restore"' in x or '"event":"restore"' in x]
    assert len(restores) == 2
