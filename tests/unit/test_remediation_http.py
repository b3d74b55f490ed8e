"""HTTP hardening of the endpoints that can delete (issue 10 #8, #11, #15; issue 12 #3).

A browser on another site must not be able to trigger a run (content types, Origin), a typo in a query
parameter must not turn a preview into a deletion, and no client mistake may become a 500, a traceback, or
a credential in the log. Every refusal is also checked to have started nothing.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import exporter.web.remediation
from exporter.remediation.alerts import parse_envelope
from exporter.remediation.service import RemediationService
from exporter.web.remediation import RemediationEndpoints
from tests.unit.webhook_support import (
    BEARER,
    JSON,
    TOKEN,
    AppFactory,
    RecordedEngine,
    alert,
    app_factory_for,
    body,
    build_app,
    requests_total,
)

NOTHING_TO_DELETE = {"free-disk": {"type": "prune_dangling", "min_age": "3650d"}}
AUTH_ONLY = {"Authorization": f"Bearer {TOKEN}"}
DESTRUCTIVE = (
    ("/webhook/alertmanager", "POST"),
    ("/api/v1/actions/free-disk", "POST"),
    ("/api/v1/runs/0123456789abcdef/restore", "POST"),
)


@pytest.fixture
def app_factory(tmp_path: Path, aiohttp_client: Any) -> AppFactory:
    return app_factory_for(tmp_path, aiohttp_client)


async def ready_app(app_factory: AppFactory) -> Any:
    """An app whose engine answers (recorded payloads), so anything let through would really start a run."""
    client, service, clock = await app_factory(RecordedEngine(), actions=NOTHING_TO_DELETE)
    await service.poller.poll_once()
    assert service.poller.store.up
    return client, service, clock


def nothing_started(service: RemediationService) -> bool:
    """No claim, no cooldown, no recorded run (manual runs are recorded before they answer)."""
    return service.last_started == {} and not service.executor.is_running("free-disk") and len(service.history) == 0


# ------------------------------------------------------------------------------------- CSRF (#8)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", "text/plain; charset=utf-8"],
)
@pytest.mark.parametrize(("path", "method"), DESTRUCTIVE)
async def test_form_and_text_content_types_get_415_and_start_nothing(app_factory, content_type, path, method):
    client, service, _ = await ready_app(app_factory)
    headers = {**AUTH_ONLY, "Content-Type": content_type}
    resp = await client.request(method, path, data=body(alert()), headers=headers)
    assert resp.status == 415
    assert "application/json" in (await resp.json())["error"]
    resp = await client.request(method, path, headers=headers)  # a form type is refused even without a body
    assert resp.status == 415
    assert requests_total(service, 415) == 2
    assert nothing_started(service)


@pytest.mark.parametrize("headers", [AUTH_ONLY, {**AUTH_ONLY, "Content-Type": "application/octet-stream"}])
async def test_a_body_without_a_json_content_type_gets_415(app_factory, headers):
    client, service, _ = await ready_app(app_factory)
    for path, method in DESTRUCTIVE:
        resp = await client.request(method, path, data=body(alert()), headers=headers)
        assert resp.status == 415
    assert nothing_started(service)


async def test_json_with_a_charset_and_an_empty_manual_run_are_accepted(app_factory):
    client, _, _ = await ready_app(app_factory)
    resp = await client.post("/api/v1/actions/free-disk?dry_run=true", headers=AUTH_ONLY)  # no body, no type
    assert resp.status == 200
    assert (await resp.json())["result"] == "dry_run"
    headers = {**AUTH_ONLY, "Content-Type": "application/json; charset=utf-8"}
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers=headers)
    assert resp.status == 200
    assert (await resp.json())["alerts"][0]["outcome"] == "routed"


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://127.0.0.1"])
@pytest.mark.parametrize(("path", "method"), DESTRUCTIVE)
async def test_a_foreign_origin_gets_403_and_starts_nothing(app_factory, origin, path, method):
    client, service, _ = await ready_app(app_factory)
    resp = await client.request(method, path, data=body(alert()), headers={**BEARER, "Origin": origin})
    assert resp.status == 403
    assert origin in (await resp.json())["error"]
    assert requests_total(service, 403) == 1
    assert nothing_started(service)


async def test_the_exporters_own_origin_is_accepted(app_factory):
    client, _, _ = await ready_app(app_factory)
    own = f"http://{client.server.host}:{client.server.port}"
    resp = await client.post("/webhook/alertmanager", data=body(alert()), headers={**BEARER, "Origin": own})
    assert resp.status == 200


# ------------------------------------------------------------------------------ strict parameters


@pytest.mark.parametrize(
    ("path", "named"),
    [
        ("/api/v1/actions/free-disk?dryrun=true", "'dryrun'"),
        ("/api/v1/actions/free-disk?dry_run=true&force=1", "'force'"),
        ("/api/v1/actions/free-disk?dry_run=true&dry_run=false", "'dry_run'"),
        ("/api/v1/actions/free-disk?dry_run=", "dry_run"),
        ("/api/v1/actions/free-disk?dry_run=maybe", "'maybe'"),
        ("/api/v1/actions/free-disk?dry_run=True%20please", "dry_run"),
        ("/webhook/alertmanager?dry_run=true", "'dry_run'"),
        ("/webhook/alertmanager?token=x", "'token'"),
    ],
)
async def test_unknown_repeated_or_unclear_parameters_get_400_naming_them(app_factory, path, named):
    client, service, _ = await ready_app(app_factory)
    resp = await client.post(path, data=body(alert()), headers=BEARER)
    assert resp.status == 400
    assert named in (await resp.json())["error"]
    assert nothing_started(service)


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE", " true "])
async def test_clear_true_values_make_a_preview(app_factory, value):
    client, service, _ = await ready_app(app_factory)
    resp = await client.post(f"/api/v1/actions/free-disk?dry_run={value}", headers=AUTH_ONLY)
    assert resp.status == 200
    assert (await resp.json())["dry_run"] is True
    assert service.last_started == {}


async def test_an_unclear_dry_run_value_is_answered_with_every_accepted_one(app_factory):
    client, service, _ = await ready_app(app_factory)
    resp = await client.post("/api/v1/actions/free-disk?dry_run=on", headers=AUTH_ONLY)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "dry_run must be one of true, 1, yes (a preview) or false, 0, no (a real run), got 'on'" in error
    assert nothing_started(service)


# --------------------------------------------------------------------- client errors stay 4xx (#11)


async def raw_request(client: Any, request: bytes) -> bytes:
    """Send bytes as they are (aiohttp's client would refuse to send most of these)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def post(path: str, headers: dict[str, bytes], payload: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: exporter", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert bad == [], [r.getMessage() for r in bad]


async def test_a_non_utf8_authorization_header_is_401_not_500(app_factory, caplog):
    client, service, _ = await ready_app(app_factory)
    payload = body(alert())
    headers = {"Authorization": b"Bearer \xff\xfe" + TOKEN.encode(), "Content-Type": b"application/json"}
    headers["Content-Length"] = str(len(payload)).encode()
    with caplog.at_level(logging.DEBUG):
        answer = await raw_request(client, post("/webhook/alertmanager", headers, payload))
    assert status_of(answer) == 401
    assert requests_total(service, 500) == 0
    no_tracebacks(caplog)
    assert nothing_started(service)


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"alerts": [' * 20_000,
        b'{"version": "4", "alerts": [], "n": ' + b"7" * 5000 + b"}",
    ],
    ids=["nested-50k", "nested-unclosed", "int-5000-digits"],
)
async def test_absurd_json_is_400_not_500(app_factory, caplog, payload):
    client, _, _ = await app_factory(max_body_bytes=1 << 20)
    with caplog.at_level(logging.DEBUG):
        resp = await client.post("/webhook/alertmanager", data=payload, headers=BEARER)
    assert resp.status == 400
    assert "JSON" in (await resp.json())["error"]
    no_tracebacks(caplog)


async def test_content_encoding_gzip_on_a_plain_body_is_400(app_factory, caplog):
    client, service, _ = await ready_app(app_factory)
    with caplog.at_level(logging.DEBUG):
        resp = await client.post(
            "/webhook/alertmanager", data=body(alert()), headers={**BEARER, "Content-Encoding": "gzip"}
        )
    assert resp.status == 400
    assert requests_total(service, 500) == 0
    no_tracebacks(caplog)
    assert nothing_started(service)


async def test_a_truncated_body_is_a_client_error_without_a_traceback(tmp_path, caplog, monkeypatch):
    """Served as `run_app` serves it (aiohttp's test server cancels handlers on a hang-up; run_app does not)."""
    entered, left = asyncio.Event(), asyncio.Event()
    webhook = RemediationEndpoints.webhook

    async def entering(self: RemediationEndpoints, request: web.Request) -> web.Response:
        entered.set()
        try:
            return await webhook(self, request)
        finally:
            left.set()  # the guard counts the answer right after, without an await in between

    monkeypatch.setattr(RemediationEndpoints, "webhook", entering)
    app, service, _ = build_app(tmp_path, RecordedEngine(), actions=NOTHING_TO_DELETE)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await service.poller.poll_once()
        port = runner.addresses[0][1]
        headers = {**{k: v.encode() for k, v in BEARER.items()}, "Content-Length": b"5000"}
        with caplog.at_level(logging.DEBUG):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(post("/webhook/alertmanager", headers, body(alert())[:100]))
            await writer.drain()
            await entered.wait()  # the handler is reading the body: now hang up
            writer.close()
            await writer.wait_closed()
            await left.wait()
    finally:
        await runner.cleanup()
    assert requests_total(service, 400) == 1
    assert requests_total(service, 500) == 0
    no_tracebacks(caplog)
    assert nothing_started(service)


async def test_unauthenticated_requests_never_reach_the_body_parser(app_factory, monkeypatch):
    client, _, _ = await ready_app(app_factory)
    parsed: list[bytes] = []
    real = parse_envelope

    def spy(data: bytes) -> Any:
        parsed.append(data)
        return real(data)

    monkeypatch.setattr(exporter.web.remediation, "parse_envelope", spy)
    for headers in ({}, {"Authorization": "Bearer nope"}):
        resp = await client.post("/webhook/alertmanager", data=b"[" * 3000, headers={**JSON, **headers})
        assert resp.status == 401
    assert parsed == []
    resp = await client.post("/webhook/alertmanager", data=b"[" * 3000, headers=BEARER)
    assert resp.status == 400 and len(parsed) == 1


# ------------------------------------------------------------------------------- secrets (#15)


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer hunter2-" + TOKEN.encode(),
        b"Basic " + base64.b64encode(b"am:hunter2"),
        b"hunter2-token-without-scheme",
        b"Bearer\xffhunter2",
        b"Token: hunter2 hunter2",
    ],
)
async def test_a_refused_authorization_header_is_never_logged(app_factory, caplog, header):
    client, _, _ = await ready_app(app_factory)
    payload = body(alert())
    headers = {
        "Authorization": header,
        "Content-Type": b"application/json",
        "Content-Length": str(len(payload)).encode(),
    }
    with caplog.at_level(logging.DEBUG):
        answer = await raw_request(client, post("/webhook/alertmanager", headers, payload))
    assert status_of(answer) == 401
    logged = "\n".join(r.getMessage() + (str(r.exc_info) if r.exc_info else "") for r in caplog.records)
    assert "refused" in logged  # the refusal is logged ...
    assert "hunter2" not in logged  # ... without the credentials
    assert base64.b64encode(b"am:hunter2").decode() not in logged


async def test_the_runs_endpoints_need_auth_name_an_unknown_run_and_take_strict_parameters(app_factory, tmp_path):
    client, service, _ = await ready_app(app_factory)
    run_url = "/api/v1/runs/0123456789abcdef"
    assert (await client.get(run_url)).status == 401
    assert (await client.post(f"{run_url}/restore", headers=JSON)).status == 401
    resp = await client.get(run_url, headers=AUTH_ONLY)
    assert resp.status == 404 and "not in the audit log" in (await resp.json())["error"]
    resp = await client.post(f"{run_url}/restore", params={"force": "maybe"}, headers=BEARER)
    assert resp.status == 400 and "force must be one of" in (await resp.json())["error"]
    resp = await client.post(f"{run_url}/restore", params={"image": "abc"}, headers=BEARER)
    assert resp.status == 404
    assert service.metrics.restored.labels("restored")._value.get() == 0
