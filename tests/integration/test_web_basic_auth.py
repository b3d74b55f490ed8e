"""`basic_auth_users` in `--web.config.file`: the whole app behind the gate, and the remediation endpoints
behind their own credentials only.

No engine is needed (the exporter answers with `docker_up 0` while its engine is down), so the app runs
against a dead socket: in-process through aiohttp's test client, and once as the real `python -m exporter`.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from aiohttp.test_utils import TestClient

from exporter.app import create_app
from exporter.config import parse_config
from exporter.web import basicauth
from exporter.web.basicauth import BasicAuthGate
from exporter.web.webconfig import parse_web_config
from tests.harness.authflood import scrape_during_flood
from tests.harness.dockerd import remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess, check_web_config
from tests.harness.ports import free_port

TOKEN = "remediation-token-0123456789"
PROM_PASSWORD = "scrape-secret"
PROM_HASH = bcrypt.hashpw(PROM_PASSWORD.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)
DEAD = "unix:///nonexistent/basic-auth-tests.sock"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


PROM = basic("prometheus", PROM_PASSWORD)
BEARER = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}  # Alertmanager sends JSON


def remediation(tmp_path: Path) -> dict[str, Any]:
    return {
        "enabled": True,
        "auth": {"bearer_token": TOKEN},
        "audit_log": str(tmp_path / "audit.jsonl"),
        "actions": {"clean": {"type": "prune_dangling"}},
        "routes": [{"matchers": ['alertname="DockerDanglingImagesPiling"'], "action": "clean"}],
    }


def alertmanager_body() -> bytes:
    return json.dumps(
        {
            "version": "4",
            "status": "resolved",
            "receiver": "exporter",
            "groupKey": "{}:{}",
            "truncatedAlerts": 0,
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://am",
            "alerts": [],
        }
    ).encode()


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: Any) -> tuple[TestClient[Any, Any], BasicAuthGate]:
    config = parse_config({"state": {"path": None}, "remediation": remediation(tmp_path)})
    gate = BasicAuthGate({"prometheus": PROM_HASH})
    web_config = parse_web_config({"http_server_config": {"headers": {"X-Frame-Options": "deny"}}})
    app = create_app(config, docker_host=DEAD, web_config=web_config, basic_auth=gate, telemetry_path="/metrics")
    return await aiohttp_client(app), gate


@pytest.mark.parametrize("path", ["/", "/metrics", "/-/healthy", "/-/ready", "/no-such-page"])
async def test_every_path_needs_a_configured_user(
    client: tuple[TestClient[Any, Any], BasicAuthGate], path: str
) -> None:
    http, _gate = client
    for headers in ({}, basic("prometheus", "wrong"), basic("nobody", PROM_PASSWORD), BEARER):
        resp = await http.get(path, headers=headers)
        assert resp.status == 401, (path, headers)
        assert resp.headers["WWW-Authenticate"].startswith("Basic ")
        assert resp.headers["X-Frame-Options"] == "deny"  # the configured headers are on refusals too
        assert "docker_" not in await resp.text()
    resp = await http.get(path, headers=PROM)
    assert resp.status == (404 if path == "/no-such-page" else 503 if path == "/-/ready" else 200)


async def test_scrapes_pay_bcrypt_once(client: tuple[TestClient[Any, Any], BasicAuthGate]) -> None:
    http, gate = client
    for _ in range(5):
        resp = await http.get("/metrics", headers=PROM)
        assert resp.status == 200
        assert "docker_up 0.0" in await resp.text()
    assert gate.bcrypt_checks == 1


async def test_beyond_the_check_queue_a_request_gets_429_with_retry_after_and_remembered_users_pass(
    client: tuple[TestClient[Any, Any], BasicAuthGate], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, gate = client
    assert (await http.get("/metrics", headers=PROM)).status == 200  # verified and remembered
    monkeypatch.setattr(basicauth, "MAX_PENDING", 0)  # as if a flood filled the queue
    resp = await http.get("/metrics", headers=basic("prometheus", "guess"))
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "1"
    assert resp.headers["X-Frame-Options"] == "deny"
    assert "docker_" not in await resp.text()
    assert (await http.get("/metrics", headers=PROM)).status == 200
    assert gate.bcrypt_checks == 1


async def test_remediation_endpoints_take_their_own_credentials_only(
    client: tuple[TestClient[Any, Any], BasicAuthGate],
) -> None:
    """Alertmanager sends one Authorization header (its bearer token): the outer gate lets it through to the
    webhook, whose own check is the one that counts. A scrape user cannot trigger deletions."""
    http, gate = client
    body = alertmanager_body()
    resp = await http.post("/webhook/alertmanager", data=body, headers=BEARER)
    assert resp.status == 200, await resp.text()
    assert (await http.get("/api/v1/actions", headers=BEARER)).status == 200
    for headers in ({}, PROM):  # no credential, or the scrape user's: refused by remediation.auth itself
        resp = await http.post("/webhook/alertmanager", data=body, headers=headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        assert (await http.get("/api/v1/actions", headers=headers)).status == 401
        assert (await http.post("/api/v1/actions/clean", headers=headers)).status == 401
    assert gate.bcrypt_checks == 0  # none of these went through the gate
    # a remediation path with a method no remediation route has is not exempt: the gate answers first
    resp = await http.get("/webhook/alertmanager", headers=BEARER)
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Basic ")
    assert (await http.get("/webhook/alertmanager", headers=PROM)).status == 405


async def test_without_users_nothing_changes(tmp_path: Path, aiohttp_client: Any) -> None:
    config = parse_config({"state": {"path": None}})
    http = await aiohttp_client(create_app(config, docker_host=DEAD))
    assert (await http.get("/metrics")).status == 200
    assert (await http.get("/-/healthy")).status == 200


# ------------------------------------------------------------------------------------------ the real process


def test_the_exporter_process_serves_behind_basic_auth(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": PROM_HASH}}))
    workdir = short_workdir("die-bauth-")
    exp = ExporterProcess(
        workdir,
        f"unix:///tmp/die-dead-{free_port()}.sock",
        {"state": {"path": str(tmp_path / "s.json")}, "remediation": remediation(tmp_path)},
        extra_args=["--web.config.file", str(web)],
        authorization=PROM,
    )
    try:
        exp.start()  # healthy, seen with the credentials
        assert "docker_up 0.0" in exp.get("/metrics")
        for path in ("/metrics", "/-/healthy"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(exp.url + path, timeout=10)
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"].startswith("Basic ")
        status, _ = exp.request("POST", "/webhook/alertmanager", alertmanager_body(), headers=BEARER)
        assert status == 200
        assert 'msg="basic auth required on every path but the remediation endpoints" users=1' in exp.logs()
    finally:
        exp.stop()
        remove_workdir(workdir)


def test_a_bad_hash_stops_startup_naming_the_user(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": PROM_HASH, "grafana": "plain-password"}}))
    result = check_web_config(web)
    assert result.returncode == 1, result.stdout
    assert "basic_auth_users.grafana: is not a bcrypt hash" in result.stderr
    assert "plain-password" not in result.stderr


def test_a_wrong_password_flood_does_not_lock_out_a_verified_scraper(tmp_path: Path) -> None:
    """300 connections sending wrong passwords as fast as they are answered, against 256 connection slots and
    a bcrypt cost of 10 (the usual one). If every flood request waited in line for the one-at-a-time check,
    all slots would be busy: the scraper's idle kept-alive connection would be the one closed to admit a
    newcomer, its reconnects refused, and the flood's own 401s would take seconds."""
    web = tmp_path / "web.yml"
    cost10 = bcrypt.hashpw(PROM_PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": cost10}}))
    workdir = short_workdir("die-flood-")
    exp = ExporterProcess(
        workdir,
        f"unix:///tmp/die-dead-{free_port()}.sock",
        {"state": {"path": None}},
        extra_args=["--web.config.file", str(web), "--web.max-connections", "256"],
        authorization=PROM,
    )
    try:
        exp.start()  # its health checks carried the right password: verified and remembered from here on
        result = scrape_during_flood(
            exp.port,
            good=PROM["Authorization"],
            bad=basic("prometheus", "guess")["Authorization"],
            connections=300,
            seconds=6,
            interval=0.1,
            timeout=2.0,
        )
        print(json.dumps(result.as_dict()))  # the numbers, for `pytest -s`
        assert result.scrapes >= 15
        assert result.ratio >= 0.95, result.as_dict()  # answered 200 within 2 s each
        statuses = result.flood["statuses"]
        assert isinstance(statuses, dict) and set(statuses) <= {"401", "429"}, result.as_dict()
        assert statuses.get("429", 0) > statuses.get("401", 0)  # most refused without a bcrypt check
        answer_ms = result.flood["answer_ms"]
        assert isinstance(answer_ms, dict) and answer_ms["p50"] < 1500, result.as_dict()
        # the 429s are one warning line per 10 s, not one per request
        exp.wait_for(lambda: "basic auth answered" in exp.logs(), timeout=20, what="the 429 summary line")
        log = exp.logs()
        assert len(re.findall("basic auth answered", log)) == 1
        assert "Traceback" not in log
    finally:
        exp.stop()
        remove_workdir(workdir)
