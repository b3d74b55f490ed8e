"""Webhook and actions API over HTTP: auth, limits, validation, routing, once-only acceptance.

Nothing here may reach an engine: the engine is a stand-in whose reads fail as an unreachable engine does
and whose writes fail the test. Deletion through the webhook is tested against a real engine in
tests/integration/test_webhook_engine.py.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from exporter.remediation.alerts import parse_envelope
from exporter.web.remediation import authorized
from tests.unit.webhook_support import (
    BEARER,
    JSON,
    TOKEN,
    AppFactory,
    RecordedEngine,
    alert,
    alerts_total,
    app_factory_for,
    body,
    make_config,
    requests_total,
)


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


# --------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": "Basic " + base64.b64encode(b"am:wrong").decode()},
        {"Authorization": "Basic !!!notbase64"},
    ],
)
async def test_missing_or_wrong_credentials_get_401_with_a_challenge(app_factory, headers):
    client, service, _ = await app_factory()
    for path, method in (
        ("/webhook/alertmanager", "POST"),
        ("/api/v1/actions", "GET"),
        ("/api/v1/actions/free-disk", "POST"),
    ):
        resp = await client.request(method, path, data=body(alert()), headers=headers)
        assert resp.status == 401
        challenges = resp.headers.getall("WWW-Authenticate")
        assert any(c.startswith("Bearer") for c in challenges) and any(c.startswith("Basic") for c in challenges)
    assert requests_total(service, 401) == 3
    assert len(service.history) == 0 and service.last_started == {}


async def test_token_in_query_string_is_not_accepted(app_factory):
    client, _, _ = await app_factory()
    for query in (f"?token={TOKEN}", f"?access_token={TOKEN}", f"?bearer_token={TOKEN}"):
        resp = await client.post("/webhook/alertmanager" + query, data=body(alert(status="resolved")))
        assert resp.status == 401


async def test_basic_auth_and_bearer_both_work(app_factory):
    client, _, _ = await app_factory()
    basic = {"Authorization": "Basic " + base64.b64encode(b"am:pw").decode(), **JSON}
    for headers in (BEARER, basic):
        resp = await client.post("/webhook/alertmanager", data=body(alert(status="resolved")), headers=headers)
        assert resp.status == 200


def test_authorized_is_strict():
    config = make_config(Path("/tmp")).remediation.auth
    assert authorized(f"Bearer {TOKEN}", config)
    assert authorized(f"bearer {TOKEN}", config)  # the scheme is case-insensitive (RFC 7235)
    assert not authorized(f"Bearer {TOKEN.upper()}", config)
    assert not authorized("Basic " + base64.b64encode(b"am:pw:extra").decode(), config)
    assert not authorized("Basic " + base64.b64encode(b"ampw").decode(), config)
    assert not authorized(None, config)


# --------------------------------------------------------------------------------------------- bodies


async def test_oversized_bodies_get_413_and_are_counted(app_factory):
    client, service, _ = await app_factory()
    big = body(*[alert(n=str(i)) for i in range(200)])
    assert len(big) > 4096
    resp = await client.post("/webhook/alertmanager", data=big, headers=BEARER)
    assert resp.status == 413

    async def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    resp = await client.post("/webhook/alertmanager", data=chunks(), headers=BEARER)
    assert resp.status == 413
    assert requests_total(service, 413) == 2
    assert alerts_total(service, "firing", "routed") == 0


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"not json", 400),
        (b"\xff\xfe", 400),
        (b"[]", 422),
        (b'{"version": "4"}', 422),
        (b'{"alerts": {}}', 422),
        (b'{"alerts": ["x"]}', 422),
        (b'{"alerts": [{"status": "firing"}]}', 422),
        (b'{"alerts": [{"status": "firing", "labels": {}}]}', 422),
        (b'{"alerts": [{"status": "firing", "labels": {"a": 1}}]}', 422),
        (b'{"alerts": [{"status": "burning", "labels": {"a": "b"}}]}', 422),
        (b'{"version": "3", "alerts": []}', 422),
        (b'{"receiver": 7, "alerts": []}', 422),
    ],
)
async def test_bodies_that_can_never_succeed(app_factory, payload, status):
    client, service, _ = await app_factory()
    resp = await client.post("/webhook/alertmanager", data=payload, headers=BEARER)
    assert resp.status == status
    assert (await resp.json())["status"] == "error"
    assert requests_total(service, status) == 1
    assert not service.executor.is_running("free-disk")


def test_parse_envelope_fills_a_missing_fingerprint_stably():
    one = parse_envelope(b'{"alerts": [{"status": "firing", "labels": {"b": "2", "a": "1"}}]}')
    two = parse_envelope(b'{"alerts": [{"status": "firing", "labels": {"a": "1", "b": "2"}}]}')
    assert one.alerts[0].fingerprint == two.alerts[0].fingerprint


# --------------------------------------------------------------------------------------------- routing


async def test_resolved_unrouted_and_out_of_scope_alerts_are_acknowledged_not_run(app_factory):
    client, service, _ = await app_factory()
    payload = body(
        alert(status="resolved"),
        alert(alertname="SomethingElse"),
        alert(host="node-2"),
    )
    resp = await client.post("/webhook/alertmanager", data=payload, headers=BEARER)
    assert resp.status == 200
    answer = await resp.json()
    assert [a["outcome"] for a in answer["alerts"]] == ["unrouted", "unrouted", "out_of_scope"]
    assert answer["runs_started"] == []
    assert alerts_total(service, "resolved", "unrouted") == 1
    assert alerts_total(service, "firing", "unrouted") == 1
    assert alerts_total(service, "firing", "out_of_scope") == 1
    assert service.last_started == {}


async def test_routed_alert_while_engine_unreachable_is_503_and_claims_nothing(app_factory):
    client, service, _ = await app_factory()
    assert service.poller.store.up is False
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers=BEARER)
    assert resp.status == 503
    assert service.last_started == {}
    assert requests_total(service, 503) == 1
    resp = await client.post("/api/v1/actions/free-disk?dry_run=true", headers=BEARER)
    assert resp.status == 503


# Nothing old enough to delete: runs on the recorded engine plan no candidates and end in success.
NOTHING_TO_DELETE = {"free-disk": {"type": "prune_dangling", "min_age": "3650d"}}


async def test_one_run_then_cooldown_then_again(app_factory):
    """A successful run starts the cooldown; inside it deliveries say how long is left, after it one runs again."""
    client, service, clock = await app_factory(RecordedEngine(), actions=NOTHING_TO_DELETE)
    await service.poller.poll_once()
    resp = await client.post("/webhook/alertmanager", data=body(alert(), alert(severity="x")), headers=BEARER)
    assert resp.status == 200
    answer = await resp.json()
    assert len(answer["runs_started"]) == 1
    assert [a["outcome"] for a in answer["alerts"]] == ["routed", "routed"]
    await service.stop()  # waits for the background run
    run = service.history[0]
    assert run["trigger"] == "alert" and sorted(run["alert_fingerprints"]) == sorted(
        a["fingerprint"] for a in answer["alerts"]
    )
    assert run["result"] == "success" and run["candidates"] == 0

    clock.now += 599
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers=BEARER)
    cooling = (await resp.json())["alerts"][0]
    assert cooling["outcome"] == "cooldown"
    assert cooling["cooldown_remaining_seconds"] == 1.0
    clock.now += 2
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers=BEARER)
    assert (await resp.json())["alerts"][0]["outcome"] == "routed"
    assert alerts_total(service, "firing", "cooldown") == 1
    assert alerts_total(service, "firing", "routed") == 3


async def test_alert_for_a_running_action_is_deduplicated(app_factory):
    client, service, _ = await app_factory()
    service.poller.store.set_up(True)
    assert service.executor.try_begin("free-disk")  # a run in progress
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers=BEARER)
    assert resp.status == 200
    assert (await resp.json())["alerts"][0]["outcome"] == "deduplicated"
    resp = await client.post("/api/v1/actions/free-disk", headers=BEARER)
    assert resp.status == 409
    service.executor.end("free-disk")


async def test_actions_api_codes(app_factory):
    client, service, _ = await app_factory()
    service.poller.store.set_up(True)
    assert (await client.post("/api/v1/actions/nope", headers=BEARER)).status == 404
    assert (await client.post("/api/v1/actions/free-disk?dry_run=maybe", headers=BEARER)).status == 400
    resp = await client.get("/api/v1/actions", headers=BEARER)
    assert resp.status == 200
    listing = await resp.json()
    assert [a["name"] for a in listing["actions"]] == ["free-disk"]
    assert listing["runs"] == []
