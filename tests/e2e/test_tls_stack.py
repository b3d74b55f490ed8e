"""HTTPS with client certificates between the real programs: Debian's Prometheus 2.42 scrapes the exporter
and Debian's Alertmanager 0.25 delivers to its webhook, both presenting a client certificate; a scrape job
without one is refused. Go's TLS stack on one side, Python's on the other: the interoperability is the test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.harness.certs import client_context, issue, make_ca
from tests.harness.dockerd import PrivateDockerd
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.promstack import PrivateAlertmanager, PrivatePrometheus, alert_remediation, webhook_receiver_config
from tests.harness.state import write_saved_state

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

TOKEN = "tls-token-0123456789"


def test_prometheus_and_alertmanager_speak_mtls_to_the_exporter(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    ca = make_ca(pki, "ca")
    server = issue(ca, pki, "exporter")
    client = issue(ca, pki, "prometheus", client=True)
    old = datetime.now(UTC) - timedelta(days=3)
    dangling = set(load_images(dockerd, [ImageSpec(layers=[Layer.random(32 * 1024, "tls-d")], created=old)]))

    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {
                "tls_server_config": {
                    "cert_file": str(server.cert),
                    "key_file": str(server.key),
                    "client_auth_type": "RequireAndVerifyClientCert",
                    "client_ca_file": str(ca.cert),
                }
            }
        )
    )
    token_file, remediation = alert_remediation(tmp_path, TOKEN)
    write_saved_state(tmp_path / "state.json", dockerd)  # the images above were here before
    exp = exporter_factory(
        dockerd,
        {"state": {"path": str(tmp_path / "state.json")}, "remediation": remediation},
        extra_args=["--web.config.file", str(web)],
        client_tls=client_context(ca, client),
    )
    tls = {"ca_file": str(ca.cert), "cert_file": str(client.cert), "key_file": str(client.key)}
    no_cert_job = {
        "job_name": "no-client-cert",
        "scheme": "https",
        "tls_config": {"ca_file": str(ca.cert)},
        "static_configs": [{"targets": [exp.address]}],
    }
    prom = PrivatePrometheus(tmp_path / "prom", [exp.address], tls_config=tls, extra_jobs=[no_cert_job])
    am = PrivateAlertmanager(
        tmp_path / "am", webhook_receiver_config(f"{exp.url}/webhook/alertmanager", token_file, tls_config=tls)
    )
    prom.start()
    am.start()
    try:
        prom.wait_scraped()
        assert prom.query('docker_up{job="docker-image-exporter"} == 1')
        prom.wait_for(
            lambda: prom.query('up{job="no-client-cert"} == 0'), timeout=30, what="the job without a certificate down"
        )
        assert not prom.query('docker_up{job="no-client-cert"}')

        am.post_alerts([{"labels": {"alertname": "DockerDanglingImages", "instance": exp.address}}])
        exp.wait_for(
            lambda: not dangling & {i["Id"] for i in dockerd.get_json("/images/json?all=1")},
            timeout=60,
            what="the dangling image deleted by the alert's run",
        )
        assert (exp.sample("docker_webhook_requests_total", {"code": "200"}) or 0) >= 1  # reached over mTLS
    finally:
        am.stop()
        prom.stop()
