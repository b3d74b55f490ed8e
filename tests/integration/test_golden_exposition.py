"""A golden file pins the exposition's shape: names, HELP, TYPE, label sets and stable values.

Images come from a scenario with a fixed clock, so IDs, sizes and created times are reproducible; values
that depend on the moment (timestamps, durations, filesystem sizes, versions) are masked, and the process_*
and python_* families of the exporter process are left out. Regenerate with
`UPDATE_GOLDEN=1 pytest tests/integration/test_golden_exposition.py` and review the diff.

Each engine of the matrix has its own file (`DIE_ENGINE=sid-containerd` -> `metrics-sid-containerd.prom`):
the containerd store lists manifest digests as IDs and other sizes, and sets `LastTagTime` to the load time
(masked); Podman names short references `localhost/...` and has no shared sizes or layer bytes.

What is pure in this path (the engine's answers parsed, built into a snapshot and rendered) is pinned without
an engine in `make unit`: tests/unit/test_golden_recorded.py renders each recording of tests/fixtures/api and
checks that its families and label sets appear here too. This test proves real engines still answer so.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import load_scenario, scenario_basic

pytestmark = pytest.mark.engine

_ENGINE = os.environ.get("DIE_ENGINE", "").strip() or "bookworm"
# Other engines give other IDs and sizes (the containerd store), so each engine of the matrix has its own file.
GOLDEN = (
    Path(__file__).resolve().parents[1]
    / "golden"
    / ("metrics.prom" if _ENGINE == "bookworm" else f"metrics-{_ENGINE}.prom")
)
FIXED_NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
VOLATILE_VALUES = re.compile(
    r"^(docker_exporter_(snapshot|disk_usage|config_last_reload_success)_timestamp_seconds|"
    r"docker_exporter_.*duration_seconds|"
    r"docker_exporter_polls_total|docker_filesystem_\w+|docker_image_last_(used|tag)_timestamp_seconds|"
    r"docker_build_cache_\w+)\b"
)
VOLATILE_LABELS = re.compile(
    r'(version|api_version|python_version|revision|build_date|storage_driver|os|arch|path)="[^"]*"'
)
# The client library's process_* and python_* families describe the exporter process, not the engine.
RUNTIME_FAMILIES = re.compile(r"^(# (HELP|TYPE) )?(process|python)_")


def normalise(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if RUNTIME_FAMILIES.match(line):
            continue
        if not line.startswith("#"):
            line = VOLATILE_LABELS.sub(lambda m: f'{m.group(1)}="*"', line)
            if VOLATILE_VALUES.match(line):
                line = line.rsplit(" ", 1)[0] + " *"
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_exposition_matches_golden(dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path) -> None:
    load_scenario(dockerd, scenario_basic(now=FIXED_NOW))
    exp = exporter_factory(
        dockerd,
        {
            "poll": {"interval": "10m"},
            "filesystem": {"path": str(dockerd.data_root)},
            "state": {"path": str(tmp_path / "s.json")},
        },
    )
    # the df timestamp, not docker_images_disk_usage_bytes: that series is absent on Podman (unknown there)
    exp.wait_for(lambda: exp.sample("docker_exporter_disk_usage_timestamp_seconds") is not None, what="df data")
    actual = normalise(exp.metrics_text())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(actual)
    assert GOLDEN.exists(), "no golden file yet: run with UPDATE_GOLDEN=1"
    assert actual == GOLDEN.read_text(), "exposition changed: review, then UPDATE_GOLDEN=1 to accept"
