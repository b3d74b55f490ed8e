"""`--web.config.file`: the exporter process serving HTTPS, verifying client certificates, adding the
configured headers, and picking up rotated certificate files without a restart.

No engine is needed (the exporter serves `/-/healthy` and `/metrics` with `docker_up 0` while its engine is
down), so these run against a dead socket and are not part of the engine matrix.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.certs import KeyPair, client_context, issue, make_ca
from tests.harness.exporter import ExporterProcess, check_web_config
from tests.harness.fixtures import ExporterFactory
from tests.harness.ports import free_port


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, KeyPair]:
    ca = make_ca(tmp_path, "test-ca")
    other = make_ca(tmp_path, "other-ca")
    return {
        "ca": ca,
        "server": issue(ca, tmp_path, "server"),
        "client": issue(ca, tmp_path, "client", client=True),
        "stranger": issue(other, tmp_path, "stranger", client=True),
        "other": other,
    }


def _start(factory: ExporterFactory, tmp_path: Path, web: dict[str, Any], client: ssl.SSLContext) -> ExporterProcess:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(web))
    dead = f"unix:///tmp/die-dead-{free_port()}.sock"
    return factory(
        dead,
        {"state": {"path": str(tmp_path / "s.json")}},
        extra_args=["--web.config.file", str(path)],
        ready=False,
        client_tls=client,
    )


def _peer_der(address: str, ca: KeyPair) -> bytes:
    """The certificate the exporter presents to a new connection right now."""
    host, port = address.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_https_serves_metrics_with_headers_and_refuses_plain_http(
    exporter_factory: ExporterFactory, tmp_path: Path, pki: dict[str, KeyPair]
) -> None:
    web = {
        "tls_server_config": {"cert_file": str(pki["server"].cert), "key_file": str(pki["server"].key)},
        "http_server_config": {"headers": {"X-Frame-Options": "deny", "Strict-Transport-Security": "max-age=60"}},
    }
    exp = _start(exporter_factory, tmp_path, web, client_context(pki["ca"]))
    request = urllib.request.Request(exp.url + "/metrics")
    with urllib.request.urlopen(request, timeout=10, context=client_context(pki["ca"])) as resp:
        body = resp.read().decode()
        assert resp.headers["X-Frame-Options"] == "deny"
        assert resp.headers["Strict-Transport-Security"] == "max-age=60"
    assert "docker_up 0.0" in body
    with pytest.raises(urllib.error.HTTPError) as missing:  # headers on errors too
        urllib.request.urlopen(exp.url + "/does-not-exist", timeout=10, context=client_context(pki["ca"]))
    assert missing.value.code == 404 and missing.value.headers["X-Frame-Options"] == "deny"
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://{exp.address}/metrics", timeout=5).read()
    # a client that does not trust the exporter's CA is refused by its own verification
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(exp.url + "/metrics", timeout=5, context=client_context(pki["other"]))
    assert "https://" in exp.logs()


def test_client_certificates_are_required_and_verified(
    exporter_factory: ExporterFactory, tmp_path: Path, pki: dict[str, KeyPair]
) -> None:
    web = {
        "tls_server_config": {
            "cert_file": str(pki["server"].cert),
            "key_file": str(pki["server"].key),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": str(pki["ca"].cert),
            "min_version": "TLS13",
        }
    }
    good = client_context(pki["ca"], pki["client"])
    exp = _start(exporter_factory, tmp_path, web, good)
    assert exp.request("GET", "/metrics")[0] == 200
    for who, context in (
        ("no certificate", client_context(pki["ca"])),
        ("a certificate from another CA", client_context(pki["ca"], pki["stranger"])),
    ):
        with (
            # TLS 1.3: the client learns of the refusal as an alert or as a closed connection
            pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)),
            urllib.request.urlopen(exp.url + "/metrics", timeout=5, context=context) as resp,
        ):
            resp.read()
            pytest.fail(f"{who} was served")
    old = client_context(pki["ca"], pki["client"])
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(exp.url + "/metrics", timeout=5, context=old).read()


def test_rotated_certificate_is_served_without_restart_and_a_bad_one_is_not(
    exporter_factory: ExporterFactory, tmp_path: Path, pki: dict[str, KeyPair]
) -> None:
    live = KeyPair(tmp_path / "live.crt", tmp_path / "live.key")
    live.cert.write_bytes(pki["server"].cert.read_bytes())
    live.key.write_bytes(pki["server"].key.read_bytes())
    web = {"tls_server_config": {"cert_file": str(live.cert), "key_file": str(live.key)}}
    exp = _start(exporter_factory, tmp_path, web, client_context(pki["ca"]))
    first = _peer_der(exp.address, pki["ca"])
    pid = exp.pid

    renewed = issue(pki["ca"], tmp_path, "server-renewed")
    live.key.write_bytes(renewed.key.read_bytes())
    live.cert.write_bytes(renewed.cert.read_bytes())
    future = time.time() + 5  # mtime must differ even on coarse-timestamp filesystems
    for path in (live.cert, live.key):
        os.utime(path, (future, future))
    exp.wait_for(lambda: _peer_der(exp.address, pki["ca"]) != first, timeout=10, what="the renewed certificate")
    second = _peer_der(exp.address, pki["ca"])
    assert second == _der_of(renewed.cert)
    assert exp.pid == pid and exp.running
    assert "reloaded" in exp.logs()

    live.cert.write_text("not a certificate\n")  # half-written rotation: keep serving the last good one
    later = future + 5
    os.utime(live.cert, (later, later))
    exp.wait_for(  # each new connection is what makes the exporter look at the files
        lambda: _peer_der(exp.address, pki["ca"]) and "keeping the previous TLS certificate" in exp.logs(),
        timeout=10,
        what="the refusal",
    )
    assert _peer_der(exp.address, pki["ca"]) == second
    assert exp.request("GET", "/-/healthy")[0] == 200


def _der_of(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@pytest.mark.parametrize(
    ("web", "named"),
    [
        ({"tls_server_config": {"cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key"}}, "cert_file"),
        ({"basic_auth_users": {"prom": "$2y$10$x"}}, "basic_auth_users"),
        ({"tls_server_config": {"cert_file": "CERT", "key_file": "OTHERKEY"}}, "cert_file/key_file"),
    ],
)
def test_bad_web_config_stops_startup_naming_the_key(
    tmp_path: Path, pki: dict[str, KeyPair], web: dict[str, Any], named: str
) -> None:
    text = yaml.safe_dump(web).replace("CERT", str(pki["server"].cert)).replace("OTHERKEY", str(pki["client"].key))
    path = tmp_path / "web.yml"
    path.write_text(text)
    result = check_web_config(path)
    assert result.returncode == 1, result.stdout
    assert named in result.stderr


def _remediation(tmp_path: Path, name: str, relay: dict[str, Any] | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {
        "enabled": True,
        "auth": {"bearer_token": "t"},
        "audit_log": str(tmp_path / f"{name}-audit.jsonl"),
        "actions": {"clean": {"type": "prune_dangling"}},
        "routes": [{"matchers": ['alertname="DockerDanglingImagesPiling"'], "action": "clean"}],
    }
    if relay is not None:
        section["relay"] = {"enabled": True, "self_names": ["a"], "timeout": "5s", **relay}
    return {"state": {"path": str(tmp_path / f"{name}.json")}, "remediation": section}


def test_relay_reaches_an_https_peer_with_its_client_certificate(
    exporter_factory: ExporterFactory, tmp_path: Path, pki: dict[str, KeyPair]
) -> None:
    """Fleet mode across hosts: exporter A relays an alert about B to B's HTTPS webhook, presenting the
    client certificate B requires. Both engines are down, so B's answer is its own 503: proof that the
    request crossed TLS and reached B's handler. Without the client certificate B refuses the handshake."""
    web = tmp_path / "b-web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": str(pki["server"].cert),
                    "key_file": str(pki["server"].key),
                    "client_auth_type": "RequireAndVerifyClientCert",
                    "client_ca_file": str(pki["ca"].cert),
                }
            }
        )
    )
    dead = f"unix:///tmp/die-dead-{free_port()}.sock"
    b = exporter_factory(
        dead,
        _remediation(tmp_path, "b"),
        extra_args=["--web.config.file", str(web)],
        ready=False,
        client_tls=client_context(pki["ca"], pki["client"]),
    )
    peers = {"b": f"{b.url}/webhook/alertmanager"}
    with_cert = {
        "peers": peers,
        "tls_config": {
            "ca_file": str(pki["ca"].cert),
            "cert_file": str(pki["client"].cert),
            "key_file": str(pki["client"].key),
        },
    }
    a = exporter_factory(dead, _remediation(tmp_path, "a", with_cert), ready=False)
    alert = {"status": "firing", "labels": {"alertname": "DockerDanglingImagesPiling", "instance": "b"}}
    body = json.dumps({"version": "4", "status": "firing", "receiver": "r", "groupKey": "{}", "alerts": [alert]})
    headers = {"Authorization": "Bearer t", "Content-Type": "application/json"}

    status, answer = a.request("POST", "/webhook/alertmanager", body.encode(), headers)
    relayed = json.loads(answer)["relayed"][0]
    assert status == 502 and relayed.get("status") == 503, answer  # B's own "engine unreachable"
    assert "engine" in b.logs() and b.sample("docker_webhook_requests_total", {"code": "503"}) == 1

    ca_only = {"peers": peers, "tls_config": {"ca_file": str(pki["ca"].cert)}}
    a2 = exporter_factory(dead, _remediation(tmp_path, "a2", ca_only), ready=False)
    status, answer = a2.request("POST", "/webhook/alertmanager", body.encode(), headers)
    relayed = json.loads(answer)["relayed"][0]
    assert status == 502 and relayed["status"] is None and relayed["error"], answer
    assert b.sample("docker_webhook_requests_total", {"code": "503"}) == 1  # B's handler never saw it
