"""SIGTERM ends the exporter cleanly whatever its event stream is doing (connected, or reconnecting
while the engine restarts): no thread may keep the process alive."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.fixtures import ExporterFactory

# subject: shutdown; the engine does not matter, so one engine (make test) is enough
pytestmark = [pytest.mark.engine, pytest.mark.engine_agnostic]


@pytest.mark.parametrize("moment", ["connected", "engine_down", "engine_restarting"])
def test_sigterm_exits_cleanly(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path, moment: str
) -> None:
    exp = exporter_factory(dockerd, {"poll": {"interval": "1s"}, "state": {"path": str(tmp_path / "s.json")}})
    if moment != "connected":
        dockerd.kill()
        exp.wait_for(lambda: exp.sample("docker_up") == 0, timeout=15, what="docker_up 0")
    if moment == "engine_restarting":
        dockerd.start()
    code = exp.stop(timeout=20)  # SIGTERM, SIGKILL only if it is still alive after 20 s
    assert code == 0, f"exporter did not exit cleanly on SIGTERM (code {code}):\n{exp.logs(30)}"
    said = [line for line in exp.logs().splitlines() if "shutting down" in line or "stopped" in line]
    assert len(said) == 2 and "shutting down" in said[0] and "stopped" in said[1], exp.logs(30)
