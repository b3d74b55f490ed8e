"""What changes under a run in progress, on a private engine: a DELETE that times out in the exporter and
that the engine carries out afterwards, and protections a reload adds.

tests/harness/faultproxy.py holds the exporter's DELETE past `docker.timeout`: the exporter gives up, finds
the image still there and records `unknown`; then the proxy lets the DELETE go on and the engine does it, as
an engine does with a DELETE whose client went away. The exporter learns it from the engine's `delete`
event (or its next poll) and writes the `deleted` line under the same run_id.

Protections added mid-run are checked against the engine's own inspect answers (`RepoTags`, `Config.Labels`):
the proxy holds the run's first DELETE while the protections change.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import ProtectConfig, parse_config
from exporter.engine.client import Engine
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.audit import AuditLog
from exporter.remediation.executor import Executor, hold_reference
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import make_plan
from exporter.remediation.runs import Run
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller, read_filesystem
from tests.harness.audit import read_audit
from tests.harness.dockerd import PrivateDockerd, short_workdir
from tests.harness.engines import engine_store
from tests.harness.exporter import ExporterProcess
from tests.harness.faultproxy import FaultProxy
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images
from tests.unit.actions import action_of

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
        # a dangling image's last DELETE is of its hold reference
        assert hold.arrived.is_set() and hold.target == "/images/{}:{}".format(*hold_reference(run["run_id"], image_id))
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


async def test_protections_added_while_a_run_is_in_progress_protect_its_remaining_images(
    dockerd: PrivateDockerd, tmp_path: Path
) -> None:
    """A dangling image goes first (its DELETE held); meanwhile protections grow (a reference glob and a
    label rule, as a reload would add them): the two images after it are skipped, each for its rule."""
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=10)
    first, by_ref, by_label = load_images(
        dockerd,
        [
            ImageSpec(tags=[], layers=[Layer.random(64 * 1024, "mid-first")], created=old),
            ImageSpec(tags=["mid/app:2"], layers=[Layer.random(64 * 1024, "mid-ref")], created=old),
            ImageSpec(
                tags=["other/app:3"],
                layers=[Layer.random(64 * 1024, "mid-label")],
                created=old,
                labels={"keep": "later"},
            ),
        ],
    )
    ours = {first, by_ref, by_label}
    protect_now = ProtectConfig(local_only=False)
    with FaultProxy(dockerd.socket, short_workdir("die-grow-") / "p.sock") as proxy:
        engine = Engine(proxy.host, timeout=60)
        config = parse_config({"filesystem": {"path": str(tmp_path)}})
        registry = CollectorRegistry()
        poller = Poller(engine, config, ImageHistory(None), PollMetrics(registry))
        audit = AuditLog(str(tmp_path / "audit.jsonl"))
        executor = Executor(
            engine, audit, RemediationMetrics(registry, []), read_filesystem, 1, protect_now=lambda: protect_now
        )
        try:
            snapshot = await poller.poll_once()
            assert snapshot is not None and poller.store.up, poller.store.last_error
            action = action_of("prune_unused", name="prune_unused", min_age=0.0)
            plan = make_plan(snapshot, action, protect_now, snapshot.taken_at)
            candidates = [c.image_id for c in plan.candidates if c.image_id in ours]
            assert candidates[0] == first and set(candidates) == ours
            plan = replace(plan, candidates=tuple(c for c in plan.candidates if c.image_id in ours), skipped=())
            hold = proxy.hold("DELETE", r"^/images/")
            run = Run(plan.action, plan.type, "manual", False)
            running = asyncio.create_task(executor.execute(run, plan, action))
            assert await asyncio.to_thread(hold.arrived.wait, 60), "the DELETE never came"
            protect_now = ProtectConfig(references=("mid/*",), labels=("keep=later",), local_only=False)
            hold.release()
            await asyncio.wait_for(running, 60)
        finally:
            audit.close()
            engine.close()
    held = "{}:{}".format(*hold_reference(run.run_id, first))  # the first is dangling: its hold goes last
    assert hold.target == f"/images/{held}"
    results = {o.image_id: (o.result, o.skip_reason) for o in run.outcomes}
    assert results == {
        first: ("deleted", None),
        by_ref: ("skipped", "protected_reference"),
        by_label: ("skipped", "protected_label"),
    }
    assert present(dockerd) >= {by_ref, by_label} and first not in present(dockerd)
    assert [r["target"] for r in read_audit(tmp_path / "audit.jsonl") if r["event"] == "intent"] == [held]
