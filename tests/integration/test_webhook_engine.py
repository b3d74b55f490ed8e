"""The webhook of a real exporter process on a private engine: what it refuses deletes nothing, what it
accepts runs once.

"Deletes nothing" is checked three ways: the images are still there, the engine's own event log has no
image delete/untag event, and the exporter recorded no run (runs are claimed synchronously while the
request is handled, so an empty run list means no run ever started).

Runs on every engine of the matrix (`DIE_ENGINE`); IDs, sizes and events are taken as the engine under
test reports them. The action's min_age is short (`MIN_AGE`) and each test waits until its images are that
old by the engine's own marks: on the containerd store LastTagTime is the load time.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from exporter.engine.apishapes import normalize_id, parse_time
from tests.harness.dockerd import PrivateDockerd, unix_http
from tests.harness.exporter import ExporterProcess
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.state import write_saved_state

TOKEN = "integration-token"
MIN_AGE = "10s"
MIN_AGE_SECONDS = 10.0
BEARER = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
FIRING = {
    "status": "firing",
    "labels": {"alertname": "DockerDanglingImages", "severity": "warning", "instance": "node-1"},
    "annotations": {},
    "startsAt": "2024-01-01T00:00:00Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus/graph",
    "fingerprint": "0123456789abcdef",
}


def webhook_body(*alerts: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": "firing",
            "receiver": "docker",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager",
            "alerts": list(alerts or [FIRING]),
        }
    ).encode()


def load_dangling(engine: PrivateDockerd, count: int) -> list[str]:
    """`count` untagged images created 3 days ago, returned once they are MIN_AGE old on this engine too."""
    now = datetime.now(UTC).replace(microsecond=0)
    specs = [
        ImageSpec(layers=[Layer.random(32 * 1024, f"dangling-{i}-{time.time_ns()}")], created=now - timedelta(days=3))
        for i in range(count)
    ]
    ids = load_images(engine, specs)
    newest = 0.0
    for image_id in ids:
        data = engine.get_json(f"/images/{image_id}/json")
        for mark in (data.get("Created"), (data.get("Metadata") or {}).get("LastTagTime")):
            newest = max(newest, parse_time(mark) or 0.0)
    delay = newest + MIN_AGE_SECONDS + 0.5 - time.time()
    if delay > 0:
        time.sleep(delay)
    return ids


def is_podman(engine: PrivateDockerd) -> bool:
    version = engine.get_json("/version")
    return any("podman" in str(c.get("Name", "")).lower() for c in version.get("Components") or [])


def expected_plan_bytes(engine: PrivateDockerd, ids: list[str]) -> int:
    """What the plan estimates for deleting `ids`, from the engine's own numbers: unique sizes
    (`Size - SharedSize` in /system/df), or on Podman, whose SharedSize is always 0, the total `Size`."""
    if is_podman(engine):
        listed = {img["Id"]: int(img["Size"]) for img in engine.get_json("/images/json?all=1")}
        return sum(listed[i] for i in ids)
    df = {normalize_id(img["Id"]): img for img in engine.get_json("/system/df").get("Images") or []}
    return sum(int(df[i]["Size"]) - max(int(df[i].get("SharedSize") or 0), 0) for i in ids)


def image_ids(engine: PrivateDockerd) -> set[str]:
    return {img["Id"] for img in engine.get_json("/images/json?all=1")}


def delete_events(engine: PrivateDockerd, since: float) -> list[dict[str, Any]]:
    """Image delete/untag events the engine logged since `since` (its own record of deletions)."""
    filters = urllib.parse.quote(json.dumps({"type": ["image"]}))
    status, raw = unix_http(
        engine.socket, "GET", f"/events?since={since:.0f}&until={time.time() + 1:.0f}&filters={filters}", timeout=30
    )
    assert status == 200
    events = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    return [e for e in events if e.get("Action") in ("delete", "untag")]


def deleted_ids(events: list[dict[str, Any]]) -> set[str]:
    """Image IDs named by `delete` events (Podman names them without `sha256:`; some name none)."""
    return {normalize_id(str((e.get("Actor") or {}).get("ID") or "")) for e in events if e.get("Action") == "delete"}


def config(tmp_path: Path, **remediation: Any) -> dict[str, Any]:
    return {
        "state": {"path": str(tmp_path / "state.json")},
        "poll": {"interval": "10m"},
        "remediation": {
            "enabled": True,
            "auth": {"bearer_token": TOKEN},
            "audit_log": str(tmp_path / "audit.jsonl"),
            "actions": {"clean-dangling": {"type": "prune_dangling", "min_age": MIN_AGE}},
            "routes": [
                {"matchers": ['alertname="DockerDanglingImages"'], "action": "clean-dangling", "cooldown": "10m"}
            ],
            **remediation,
        },
    }


def runs(exp: ExporterProcess) -> list[dict[str, Any]]:
    status, body = exp.request("GET", "/api/v1/actions", headers=BEARER)
    assert status == 200
    listing: list[dict[str, Any]] = json.loads(body)["runs"]
    return listing


async def test_refused_requests_delete_nothing_then_a_good_one_deletes(dockerd, exporter_factory, tmp_path):
    ids = load_dangling(dockerd, 2)
    since = time.time() - 1
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(dockerd, config(tmp_path))
    post = "/webhook/alertmanager"
    refused = [
        ({}, webhook_body(), 401),
        ({"Authorization": "Bearer wrong"}, webhook_body(), 401),
        (BEARER, b"{not json", 400),
        (BEARER, b'{"version": "4", "alerts": {"labels": {}}}', 422),
        (BEARER, b'{"version": "4", "alerts": [{"status": "firing", "labels": "alertname=x"}]}', 422),
        (BEARER, b'{"version": "4", "alerts": [{"status": "firing", "labels": {"alertname": 1}}]}', 422),
        (BEARER, b'{"version": "4", "alerts": [{"status": "firing"}]}', 422),
        (BEARER, webhook_body(*[dict(FIRING, annotations={"pad": "x" * 1000})] * 1100), 413),
    ]
    for headers, body, want in refused:
        status, _ = exp.request("POST", post, body=body, headers=headers)
        assert status == want, (headers, body[:80])
    status, _ = exp.request("POST", f"{post}?access_token={TOKEN}", body=webhook_body())
    assert status == 401
    assert runs(exp) == []
    assert image_ids(dockerd) >= set(ids)
    assert delete_events(dockerd, since) == []
    text = exp.metrics_text()
    assert exp.sample("docker_webhook_requests_total", {"code": "401"}) == 3
    assert exp.sample("docker_webhook_requests_total", {"code": "413"}) == 1
    assert exp.sample("docker_webhook_requests_total", {"code": "422"}) == 4
    assert "docker_remediation_images_deleted_total" in text

    # the same exporter does delete when asked properly: the refusals above were not for lack of ability
    status, answer = exp.request("POST", post, body=webhook_body(), headers=BEARER)
    assert status == 200, answer
    exp.wait_for(lambda: runs(exp) and runs(exp)[0]["result"] == "success", what="run finished")
    assert not image_ids(dockerd) & set(ids)
    assert deleted_ids(delete_events(dockerd, since)) >= set(ids)  # the engine's own record of the deletions


async def test_global_dry_run_wins_and_reports_what_it_would_delete(dockerd, exporter_factory, tmp_path):
    ids = load_dangling(dockerd, 2)
    since = time.time() - 1
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(dockerd, config(tmp_path, dry_run=True))

    status, _ = exp.request("POST", "/webhook/alertmanager", body=webhook_body(), headers=BEARER)
    assert status == 200
    exp.wait_for(lambda: runs(exp) and runs(exp)[0]["finished_at"], what="alert run finished")
    status, body = exp.request("POST", "/api/v1/actions/clean-dangling?dry_run=false", headers=BEARER)
    assert status == 200
    manual = json.loads(body)
    assert manual["dry_run"] is True and manual["result"] == "dry_run"
    assert {c["id"] for c in manual["would_delete"]} == set(ids)
    assert manual["estimated_bytes"] == expected_plan_bytes(dockerd, ids)
    assert [r["result"] for r in runs(exp)] == ["dry_run", "dry_run"]
    assert image_ids(dockerd) >= set(ids)
    assert delete_events(dockerd, since) == []
    assert (
        exp.sample(
            "docker_remediation_runs_total", {"action": "clean-dangling", "result": "dry_run", "trigger": "alert"}
        )
        == 1
    )


async def test_per_call_dry_run(dockerd, exporter_factory, tmp_path):
    ids = load_dangling(dockerd, 1)
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(dockerd, config(tmp_path))
    status, body = exp.request("POST", "/api/v1/actions/clean-dangling?dry_run=true", headers=BEARER)
    assert status == 200
    answer = json.loads(body)
    assert answer["result"] == "dry_run" and answer["plan"]["candidates"][0]["id"] == ids[0]
    assert image_ids(dockerd) >= set(ids)
    status, body = exp.request("POST", "/api/v1/actions/clean-dangling", headers=BEARER)
    assert status == 200 and json.loads(body)["result"] == "success"
    assert ids[0] not in image_ids(dockerd)


async def test_disabled_remediation_has_no_routes_and_never_deletes(dockerd, exporter_factory, tmp_path):
    ids = load_dangling(dockerd, 1)
    since = time.time() - 1
    cfg = config(tmp_path)
    cfg["remediation"]["enabled"] = False
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(dockerd, cfg)
    for method, path in (
        ("POST", "/webhook/alertmanager"),
        ("GET", "/api/v1/actions"),
        ("POST", "/api/v1/actions/clean-dangling"),
    ):
        status, _ = exp.request(method, path, body=webhook_body() if method == "POST" else None, headers=BEARER)
        assert status == 404, path
    assert exp.sample("docker_remediation_runs_total") is None
    assert image_ids(dockerd) >= set(ids)
    assert delete_events(dockerd, since) == []


async def test_fifty_concurrent_identical_posts_start_one_run(dockerd, exporter_factory, tmp_path):
    ids = load_dangling(dockerd, 3)
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(dockerd, config(tmp_path))
    body = webhook_body()
    latencies: list[float] = []

    async def post(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        start = time.monotonic()
        async with session.post(f"{exp.url}/webhook/alertmanager", data=body, headers=BEARER) as resp:
            answer = await resp.json()
            latencies.append(time.monotonic() - start)
            return resp.status, answer

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(post(session) for _ in range(50)))

    assert [status for status, _ in results] == [200] * 50
    outcomes = [answer["alerts"][0]["outcome"] for _, answer in results]
    assert outcomes.count("routed") == 1
    assert set(outcomes) - {"routed"} <= {"deduplicated", "cooldown"}
    exp.wait_for(lambda: runs(exp) and runs(exp)[0]["finished_at"], what="the run finished")
    assert len(runs(exp)) == 1
    assert runs(exp)[0]["images_deleted"] == 3
    assert not image_ids(dockerd) & set(ids)
    samples = {tuple(sorted(lbl.items())): v for lbl, v in exp.samples("docker_remediation_runs_total")}
    assert sum(samples.values()) == 1
    assert exp.sample("docker_webhook_alerts_total", {"status": "firing", "outcome": "routed"}) == 1
    print(
        f"50 concurrent posts: max latency {max(latencies) * 1000:.0f} ms, median {sorted(latencies)[25] * 1000:.0f} ms"
    )


async def test_engine_unreachable_answers_503_so_alertmanager_retries(exporter_factory, tmp_path):
    exp = exporter_factory("unix:///nonexistent/engine.sock", config(tmp_path), ready=False)
    status, body = exp.request("POST", "/webhook/alertmanager", body=webhook_body(), headers=BEARER)
    assert status == 503, body
    resolved = dict(FIRING, status="resolved")
    status, _ = exp.request("POST", "/webhook/alertmanager", body=webhook_body(resolved), headers=BEARER)
    assert status == 200  # nothing to run, nothing to retry
    assert runs(exp) == []
    assert exp.sample("docker_webhook_requests_total", {"code": "503"}) == 1
