"""An alert arriving while the engine hangs is not lost (issue 10 #10), on a real exporter and engine.

The private dockerd is frozen with SIGSTOP (a hung engine, on demand) right after the exporter accepted
the alert: the run cannot poll, times out and fails. Before the fix the run kept the cooldown it claimed
and every redelivery was answered 200 `cooldown` for ten minutes while nothing had been deleted; now the
failed run gives the cooldown back and the redelivery, once the engine answers again, runs and deletes.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.fixtures import ExporterFactory
from tests.harness.state import write_saved_state
from tests.integration.test_webhook_engine import BEARER, config, image_ids, load_dangling, runs, webhook_body

# subject: the webhook under a hung engine (fault proxy); the engine does not matter, so one engine (make test) is enough
pytestmark = [pytest.mark.engine, pytest.mark.engine_agnostic]


def test_an_alert_during_an_engine_hang_is_run_on_redelivery(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    ids = load_dangling(dockerd, 1)
    settings = config(tmp_path)
    settings["docker"] = {"timeout": "2s"}
    settings["poll"] = {"interval": "1s"}
    write_saved_state(tmp_path / "state.json", dockerd)  # the image above was here before (not "just arrived")
    exp = exporter_factory(dockerd, settings)
    exp.wait_for(lambda: exp.sample("docker_up") == 1, what="engine up")
    assert dockerd._proc is not None
    pid = dockerd._proc.pid

    os.kill(pid, signal.SIGSTOP)
    try:
        # the exporter still believes the engine is up until a poll times out: deliver in that window
        status, body = exp.request("POST", "/webhook/alertmanager", body=webhook_body(), headers=BEARER)
        assert status == 200, body  # (a 503 here would mean the poller noticed first: Alertmanager retries)
        assert json.loads(body)["alerts"][0]["outcome"] == "routed"
        exp.wait_for(lambda: runs(exp) and runs(exp)[0]["result"] == "failure", timeout=60, what="run failed")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert set(ids) <= image_ids(dockerd)

    exp.wait_for(lambda: exp.sample("docker_up") == 1, timeout=60, what="engine up again")
    status, body = exp.request("POST", "/webhook/alertmanager", body=webhook_body(), headers=BEARER)
    assert status == 200, body
    assert json.loads(body)["alerts"][0]["outcome"] == "routed"  # not "cooldown"
    exp.wait_for(lambda: len(runs(exp)) == 2 and runs(exp)[0]["result"] == "success", timeout=60, what="run")
    assert not set(ids) & image_ids(dockerd)  # the run deletes before it is recorded
