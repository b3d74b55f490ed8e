"""Debian's real Alertmanager (0.25) on loopback posting to the exporter's webhook with a bearer token
read from `credentials_file`: the first notification runs the action once; Alertmanager's repeats and
re-sends inside the cooldown run nothing (they are acknowledged, so Alertmanager records no failures).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.dockerd import PrivateDockerd, find_program, free_port, isolated_env
from tests.harness.exporter import ExporterProcess, find_sample
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.state import write_saved_state

pytestmark = pytest.mark.e2e("prometheus-alertmanager")

TOKEN = "e2e-bearer-token"


class Alertmanager:
    """`prometheus-alertmanager` with a private config and storage, no clustering, on a free port."""

    def __init__(self, workdir: Path, webhook_url: str, token_file: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "alertmanager.yml"
        self.log = workdir / "alertmanager.log"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "route": {
                        "receiver": "docker",
                        "group_by": ["alertname"],
                        "group_wait": "1s",
                        "group_interval": "2s",
                        "repeat_interval": "3s",
                    },
                    "receivers": [
                        {
                            "name": "docker",
                            "webhook_configs": [
                                {
                                    "url": webhook_url,
                                    "send_resolved": True,
                                    "http_config": {
                                        "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
                                    },
                                }
                            ],
                        }
                    ],
                }
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        program = find_program("prometheus-alertmanager")
        assert program is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    program,
                    f"--config.file={self.config}",
                    f"--storage.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=isolated_env(),
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "alertmanager not ready"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def fire(self, **labels: str) -> None:
        """POST an alert to Alertmanager's v2 API, as Prometheus does."""
        body = json.dumps([{"labels": labels, "annotations": {"summary": "e2e"}}]).encode()
        req = urllib.request.Request(
            f"{self.url}/api/v2/alerts", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def metric(self, name: str, labels: dict[str, str]) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as resp:
            return find_sample(resp.read().decode(), name, labels) or 0.0


@pytest.fixture
def alertmanager_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Alertmanager] = []

    def factory(webhook_url: str, token_file: Path) -> Alertmanager:
        am = Alertmanager(tmp_path, webhook_url, token_file)
        made.append(am)
        am.start()
        return am

    yield factory
    for am in made:
        am.stop()


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
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(
        dockerd,
        {
            "state": {"path": str(tmp_path / "state.json")},
            "poll": {"interval": "10m"},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token_file": str(token_file)},
                "audit_log": str(tmp_path / "audit.jsonl"),
                "actions": {"clean-dangling": {"type": "prune_dangling", "min_age": "1h"}},
                "routes": [
                    {"matchers": ['alertname="DockerDanglingImages"'], "action": "clean-dangling", "cooldown": "10m"}
                ],
            },
        },
    )
    am = alertmanager_factory(f"{exp.url}/webhook/alertmanager", token_file)

    am.fire(alertname="DockerDanglingImages", severity="warning", instance="node-1")
    exp.wait_for(lambda: runs(exp) and runs(exp)[0]["finished_at"], timeout=30, what="the first run")
    assert [r["trigger"] for r in runs(exp)] == ["alert"]
    assert runs(exp)[0]["result"] == "success"
    assert not present(dockerd) & first

    # new dangling images a second run would delete; then Alertmanager repeats and re-sends (a new alert in
    # the group changes it) inside the 10m cooldown
    second = load_dangling(dockerd, 2, "second")
    am.fire(alertname="DockerDanglingImages", severity="critical", instance="node-1")
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
