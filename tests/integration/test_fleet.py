"""Fleet mode on two private engines with two exporters: an alert about host B posted to exporter A
prunes on B only; a relay to a dead peer answers 5xx (Alertmanager retries); a relayed delivery is
never relayed again."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess
from tests.harness.fixtures import EngineFactory, ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.ports import free_port
from tests.harness.state import write_saved_state

# subject: fleet relays; the engine does not matter, so one engine (make test) is enough
pytestmark = [pytest.mark.engine, pytest.mark.engine_agnostic]

TOKEN = "fleet-token"
MIN_AGE_SECONDS = 2
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def _timestamp(text: str) -> float:
    main, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{main}.{(frac + '000000')[:6]}+00:00").timestamp()


def dangling_images(engine: PrivateDockerd, host: str) -> list[str]:
    """Two untagged images built 10 days ago, old enough for `min_age` on every engine once returned.

    The containerd store sets `LastTagTime` to the load time (docs/engines.md), and the exporter counts
    an image as new since it was last tagged, so there a just-loaded image is seconds old whatever its
    `created`: wait until the engine's own times say the images are older than min_age.
    """
    old = datetime.now(UTC) - timedelta(days=10)
    specs = [ImageSpec(tags=[], layers=[Layer.random(64 * 1024, f"{host}-{n}")], created=old) for n in range(2)]
    ids = load_images(engine, specs)
    newest = 0.0
    for image_id in ids:
        inspect = engine.get_json(f"/images/{image_id}/json")
        for stamp in (inspect["Created"], (inspect.get("Metadata") or {}).get("LastTagTime") or ""):
            if stamp and not stamp.startswith("0001-"):
                newest = max(newest, _timestamp(stamp))
    time.sleep(max(0.0, newest + MIN_AGE_SECONDS + 0.5 - time.time()))
    return ids


def start_exporter(factory: ExporterFactory, engine: PrivateDockerd, tmp: Path, name: str) -> ExporterProcess:
    exp = factory(engine, None, start=False)
    write_saved_state(tmp / f"{name}-state.json", engine)  # the images loaded were here before
    exp.write_config(
        {
            "filesystem": {"path": str(engine.data_root)},
            "state": {"path": str(tmp / f"{name}-state.json")},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": TOKEN},
                "audit_log": str(tmp / f"{name}-audit.jsonl"),
                "actions": {"clean-dangling": {"type": "prune_dangling", "min_age": f"{MIN_AGE_SECONDS}s"}},
                "routes": [{"matchers": ['alertname="DockerDanglingImagesPiling"'], "action": "clean-dangling"}],
                "relay": {
                    "enabled": True,
                    "self_names": [exp.address],
                    "host_regex": r"127\.0\.0\.1:[0-9]{1,5}",  # the peers of this test; never any other host
                    "timeout": "3s",
                },
            },
        }
    )
    exp.start()
    exp.wait_ready()
    return exp


def delivery(instance: str) -> bytes:
    alert = {
        "status": "firing",
        "labels": {"alertname": "DockerDanglingImagesPiling", "instance": instance, "severity": "warning"},
        "annotations": {},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": f"fp-{instance}",
    }
    body: dict[str, Any] = {
        "version": "4",
        "status": "firing",
        "receiver": "exporters",
        "groupKey": '{}:{alertname="DockerDanglingImagesPiling"}',
        "truncatedAlerts": 0,
        "groupLabels": {},
        "commonLabels": alert["labels"],
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": [alert],
    }
    return json.dumps(body).encode()


def image_ids(engine: PrivateDockerd) -> set[str]:
    return {i["Id"] for i in engine.client().api.images()}


def runs(exp: ExporterProcess) -> float:
    return sum(v for labels, v in exp.samples("docker_remediation_runs_total") if labels["action"] == "clean-dangling")


def test_alert_for_b_posted_to_a_prunes_on_b_only(
    dockerd_factory: EngineFactory, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    engine_a, engine_b = dockerd_factory("host-a"), dockerd_factory("host-b")
    ids_a, ids_b = dangling_images(engine_a, "a"), dangling_images(engine_b, "b")
    exp_a = start_exporter(exporter_factory, engine_a, tmp_path, "a")
    exp_b = start_exporter(exporter_factory, engine_b, tmp_path, "b")

    status, body = exp_a.request("POST", "/webhook/alertmanager", delivery(exp_b.address), AUTH)
    assert status == 200, body
    answer = json.loads(body)
    assert [r["host"] for r in answer["relayed"]] == [exp_b.address] and answer["relayed"][0]["status"] == 200

    exp_b.wait_for(lambda: not set(ids_b) & image_ids(engine_b), timeout=30, what="B's dangling images gone")
    assert set(ids_a) <= image_ids(engine_a), "host A pruned an alert about host B"
    # B's run is counted when it ends, after its last DELETE (and its audit lines): not at the images' going
    exp_b.wait_for(lambda: runs(exp_b) == 1, timeout=30, what="B's run counted")
    assert runs(exp_a) == 0
    assert exp_a.sample("docker_webhook_alerts_total", {"status": "firing", "outcome": "relayed"}) == 1
    assert exp_a.sample("docker_webhook_relays_total", {"result": "ok"}) == 1
    assert exp_b.sample("docker_webhook_alerts_total", {"status": "firing", "outcome": "routed"}) == 1

    # an alert about A itself is acted on locally
    status, _ = exp_a.request("POST", "/webhook/alertmanager", delivery(exp_a.address), AUTH)
    assert status == 200
    exp_a.wait_for(lambda: not set(ids_a) & image_ids(engine_a), timeout=30, what="A's dangling images gone")


def test_relay_to_dead_peer_answers_5xx_and_relayed_is_never_relayed_again(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    ids = dangling_images(dockerd, "solo")
    exp = start_exporter(exporter_factory, dockerd, tmp_path, "solo")

    dead = f"127.0.0.1:{free_port()}"
    status, body = exp.request("POST", "/webhook/alertmanager", delivery(dead), AUTH)
    assert status == 502, body  # Alertmanager retries 5xx
    assert json.loads(body)["relayed"][0]["error"]
    assert exp.sample("docker_webhook_relays_total", {"result": "failed"}) == 1

    # a delivery that already took its hop is not relayed again, and not acted on here either
    other = f"127.0.0.1:{free_port()}"
    hop = {**AUTH, "X-Docker-Image-Exporter-Relayed-By": "127.0.0.1:1"}
    status, body = exp.request("POST", "/webhook/alertmanager", delivery(other), hop)
    assert status == 200, body
    answer = json.loads(body)
    assert "relayed" not in answer or not answer["relayed"]
    assert answer["alerts"][0]["outcome"] == "out_of_scope"
    assert exp.sample("docker_webhook_relays_total", {"result": "failed"}) == 1  # unchanged: no second hop
    assert runs(exp) == 0
    assert set(ids) <= image_ids(dockerd)

    # a label host_regex does not allow is never put into the URL (the token would travel with it)
    for label in ("evil.example/x?", "evil.example:80"):
        status, body = exp.request("POST", "/webhook/alertmanager", delivery(label), AUTH)
        assert status == 502 and "no peer allowed" in body.decode()
