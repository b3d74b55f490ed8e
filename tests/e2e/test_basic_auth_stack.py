"""`basic_auth_users` between the real programs: Debian's Prometheus 2.42 scrapes with `basic_auth` (Go's
client, the exporter-toolkit file format's home) and a job without credentials is down; Debian's Alertmanager
0.25 reaches the webhook with its bearer token alone, through the gate that guards every other path.

No engine: the exporter serves `docker_up 0` against a dead socket, which is all a scrape needs to succeed,
and its webhook, once the token is accepted, answers 503 (retry later) rather than 200.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.harness.dockerd import remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess
from tests.harness.ports import free_port
from tests.harness.promstack import PrivateAlertmanager, PrivatePrometheus, alert_remediation, webhook_receiver_config
from tests.integration.test_web_basic_auth import PROM, PROM_HASH, PROM_PASSWORD, TOKEN

pytestmark = [pytest.mark.e2e]


def test_prometheus_scrapes_with_basic_auth_and_alertmanager_with_its_token(tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": PROM_HASH}}))
    token_file, remediation = alert_remediation(tmp_path, TOKEN)
    workdir = short_workdir("die-bauth-e2e-")
    exp = ExporterProcess(
        workdir,
        f"unix:///tmp/die-dead-{free_port()}.sock",
        {"state": {"path": str(tmp_path / "state.json")}, "remediation": remediation},
        extra_args=["--web.config.file", str(web)],
        authorization=PROM,
    )
    with_credentials = {
        "job_name": "with-credentials",
        "basic_auth": {"username": "prometheus", "password": PROM_PASSWORD},
        "static_configs": [{"targets": [exp.address]}],
    }
    prom = PrivatePrometheus(tmp_path / "prom", [exp.address], job="no-credentials", extra_jobs=[with_credentials])
    am = PrivateAlertmanager(tmp_path / "am", webhook_receiver_config(f"{exp.url}/webhook/alertmanager", token_file))
    try:
        exp.start()
        prom.start()
        am.start()
        prom.wait_for(
            lambda: prom.query('docker_up{job="with-credentials"} == 0'),
            timeout=30,
            what="a scrape with basic auth (the engine is down: docker_up 0)",
        )
        prom.wait_for(
            lambda: prom.query('up{job="no-credentials"} == 0'), timeout=30, what="the job without credentials down"
        )
        assert not prom.query('docker_up{job="no-credentials"}')

        am.post_alerts([{"labels": {"alertname": "DockerDanglingImages", "instance": exp.address}}])
        codes = exp.wait_for(
            lambda: {labels["code"] for labels, value in exp.samples("docker_webhook_requests_total") if value},
            timeout=60,
            what="the webhook reached by Alertmanager",
        )
        # The webhook checks its token first and counts a refusal as 401; past it, with the engine down, it asks
        # for a retry (503). Either gate refusing the bearer token would show as 401.
        assert codes == {"503"}, codes
    finally:
        am.stop()
        prom.stop()
        exp.stop()
        remove_workdir(workdir)
