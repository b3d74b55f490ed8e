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
