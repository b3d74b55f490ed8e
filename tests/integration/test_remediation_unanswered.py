"""A DELETE that times out in the exporter and that the engine carries out afterwards, on a private engine.

tests/harness/faultproxy.py holds the exporter's DELETE past `docker.timeout`: the exporter gives up, finds
the image still there and records `unknown`; then the proxy lets the DELETE go on and the engine does it, as
an engine does with a DELETE whose client went away. The exporter learns it from the engine's `delete`
event (or its next poll) and writes the `deleted` line under the same run_id.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness.audit import read_audit
from tests.harness.dockerd import PrivateDockerd, short_workdir
from tests.harness.engines import engine_store
from tests.harness.exporter import ExporterProcess
from tests.harness.faultproxy import FaultProxy
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images

pytestmark = pytest.mark.engine

TOKEN = "unanswered-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def exporter_config(tmp_path: Path) -> dict[str, Any]:
    return {
        "docker": {"timeout": "2s"},
        "state": {"path": str(tmp_path / "state.json")},
        # no timer poll during the test; the poll a run asks for starts 3 s after it (the test holds it)
        "poll": {"interval": "10m", "disk_usage_interval": "10m", "debounce": "3s"},
        "remediation": {
            "enabled": True,
            "auth": {"bearer_token": TOKEN},
            "audit_log": str(tmp_path / "audit.jsonl"),
            "actions": {"clean": {"type": "prune_dangling", "min_age": "0s"}},
        },
    }


def events_live(exp: ExporterProcess) -> bool:
    return "live: changes are applied as they happen" in exp.get("/")


def present(dockerd: PrivateDockerd) -> set[str]:
    return {i["Id"] for i in dockerd.get_json("/images/json?all=1")}


def test_a_delete_the_engine_finishes_after_the_timeout_is_recorded_unknown_then_deleted(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    (image_id,) = load_images(
        dockerd, [ImageSpec(tags=[], layers=[Layer.random(64 * 1024, "unanswered")], created=old)]
    )
    with FaultProxy(dockerd.socket, short_workdir("die-unans-") / "p.sock") as proxy:
        exp = exporter_factory(proxy.host, exporter_config(tmp_path))
        exp.wait_for(lambda: events_live(exp), what="the event stream live")
        hold = proxy.hold("DELETE", r"^/images/")

        status, body = exp.request("POST", "/api/v1/actions/clean?dry_run=false", headers=AUTH, timeout=60)
        assert status == 200, body
        run = json.loads(body)
        assert hold.arrived.is_set() and hold.target == f"/images/{image_id}"
        assert run["result"] == "failure" and run["images_deleted"] == 0
        assert [(o["id"], o["result"]) for o in run["outcomes"]] == [(image_id, "unknown")]
        (line,) = [r for r in read_audit(tmp_path / "audit.jsonl") if r["event"] == "image"]
        assert line["result"] == "unknown" and line["skip_reason"] is None
        assert image_id in present(dockerd)  # held: not done yet

        # the poll the run asks for lists the image still there, then waits here (holding the poller) until
        # the engine has carried out the DELETE: the engine's `delete` event is applied after that poll
        listing = proxy.hold("GET", r"^/containers/json")
        assert listing.arrived.wait(30), "the poll after the run never listed containers"
        hold.release()  # the engine now carries out the DELETE the exporter gave up on
        exp.wait_for(lambda: image_id not in present(dockerd), what="the engine deleting the image")
        listing.release()

        def confirmed() -> list[dict[str, Any]]:
            records = read_audit(tmp_path / "audit.jsonl")
            return [r for r in records if r["event"] == "image" and r["result"] == "deleted"]

        (done,) = exp.wait_for(confirmed, what="the deleted line")
        assert done["run_id"] == run["run_id"] and done["image_id"] == image_id
        if engine_store(dockerd) == "containerd":  # its events re-list: the poll they ask for shows it
            assert done["confirmed_by"] == "poll"
        else:
            assert done["confirmed_by"] == "event"
        assert read_audit(tmp_path / "audit.jsonl")[-1] == done  # appended after the run's end
        assert exp.sample("docker_remediation_images_deleted_total", {"action": "clean"}) == 1
        (summary,) = json.loads(exp.request("GET", "/api/v1/actions", headers=AUTH)[1])["runs"]
        assert summary["images_deleted"] == 1 and summary["confirmed_later"] == 1
