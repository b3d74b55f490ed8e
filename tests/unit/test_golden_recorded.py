"""Golden expositions from the recorded engine payloads: the exposition's shape per engine, without a dockerd.

Each engine recorded under tests/fixtures/api (scripts/record-api-payloads.py) is polled through the code that
handles a live engine's answers: the `Poller` (with `apishapes` and the `SnapshotBuilder`) reads the recorded
/version, /info, /images/json, /containers/json and image inspects, the `DiskUsageRefresher` reads
/system/df, and the snapshot collector's one render call (`SnapshotRenderer.render`) writes the exposition,
compared byte for byte with `tests/golden/recorded/<engine>.prom`. The clock is the recording's own time
(`recorded_at`), so every value comes from the payloads; only statvfs, which no payload holds, is a fixed
answer, and only the exporter's own build labels are masked. Regenerate with
`UPDATE_GOLDEN=1 pytest tests/unit/test_golden_recorded.py` and review the diff.

These goldens pin the snapshot collector's part: the exporter's own metrics (poll counters, durations,
remediation) and the process_* families do not come from the engine. The engine-backed golden test
(tests/integration/test_golden_exposition.py) still scrapes a real exporter on every engine of the matrix,
which proves real engines give these shapes; `test_every_recorded_family_is_in_the_engine_golden` holds the
two sets of files together.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.core.snapshot import Filesystem, Snapshot
from exporter.metrics.collector import SnapshotCollector
from exporter.metrics.render import SnapshotRenderer
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state import filesystem
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.history import ImageHistory
from exporter.state.poller import Poller
from tests.unit.recorded import RECORDED_ENGINES, RecordedEngine, load

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
RECORDED_GOLDEN = GOLDEN / "recorded"
# statvfs is the one read no payload holds: a fixed answer for the engine's data root keeps the family
FS_SIZE, FS_AVAIL = 64 * 2**30, 48 * 2**30
# the exporter's own build and the Python running it, not the engine
BUILD_LABELS = re.compile(r'\b(version|revision|build_date|python_version)="[^"]*"')
# the engine-backed golden of the same engine (tests/integration/test_golden_exposition.py's names)
ENGINE_GOLDEN = {
    "bookworm": "metrics.prom",
    "trixie": "metrics-trixie.prom",
    "trixie-containerd": "metrics-trixie-containerd.prom",
    "sid": "metrics-sid.prom",
    "sid-containerd": "metrics-sid-containerd.prom",
    "podman": "metrics-podman.prom",
}


class _Source:
    """The collector's source; `render` is handed the snapshot, so this is never read."""

    snapshot: Snapshot | None = None
    up = True


def golden_path(engine: str) -> Path:
    return RECORDED_GOLDEN / f"{engine}.prom"


def recorded_now(engine: str) -> float:
    """When the engine was recorded: the clock of the poll, so created, used and tag times read as they did."""
    return datetime.fromisoformat(str(load(engine, "index.json")["recorded_at"])).timestamp()


async def exposition(engine: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The snapshot collector's text exposition after one poll and one /system/df of the recorded `engine`."""
    now = recorded_now(engine)
    monkeypatch.setattr(filesystem, "read_filesystem", lambda path: Filesystem(path, FS_SIZE, FS_AVAIL))
    recorded = RecordedEngine(engine)
    config = parse_config({})
    metrics = PollMetrics(CollectorRegistry())
    poller = Poller(recorded, config, ImageHistory(None), metrics, clock=lambda: now)
    assert await poller.poll_once() is not None and poller.store.up, poller.store.last_error
    snapshot = await DiskUsageRefresher(recorded, poller, config.poll, metrics, clock=lambda: now).refresh_now()
    assert snapshot is not None and snapshot.disk_usage is not None
    assert snapshot.pending_inspects == 0, "every LastTagTime inspect answered"
    text = SnapshotRenderer(SnapshotCollector(_Source(), config.metrics)).render(snapshot, "text").decode()
    return "".join(
        BUILD_LABELS.sub(lambda m: f'{m.group(1)}="*"', line) if line.startswith("docker_exporter_build_info") else line
        for line in text.splitlines(keepends=True)
    )


@pytest.mark.parametrize("engine", RECORDED_ENGINES)
async def test_exposition_of_the_recorded_engine_matches_its_golden(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    actual = await exposition(engine, monkeypatch)
    golden = golden_path(engine)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(actual)
    assert golden.exists(), "no golden file yet: run with UPDATE_GOLDEN=1"
    assert actual == golden.read_text(), "exposition changed: review, then UPDATE_GOLDEN=1 to accept"


def test_every_recorded_engine_has_a_golden_and_every_golden_an_engine() -> None:
    assert sorted(p.stem for p in RECORDED_GOLDEN.glob("*.prom")) == RECORDED_ENGINES


def families(text: str) -> dict[str, tuple[str, str]]:
    """Family name -> (HELP line, TYPE line) of an exposition."""
    helps = {m[1]: m[0] for m in re.finditer(r"^# HELP (\S+) .*$", text, re.M)}
    types = {m[1]: m[0] for m in re.finditer(r"^# TYPE (\S+) .*$", text, re.M)}
    return {name: (helps[name], types[name]) for name in helps}


def label_names(text: str) -> dict[str, set[frozenset[str]]]:
    """Sample name -> the label-name sets its samples carry."""
    out: dict[str, set[frozenset[str]]] = {}
    for m in re.finditer(r"^([a-zA-Z_:][\w:]*)(?:\{(.*?)\})? ", text, re.M):
        names = frozenset(re.findall(r'(\w+)="', m[2] or ""))
        out.setdefault(m[1], set()).add(names)
    return out


@pytest.mark.parametrize("engine", sorted(ENGINE_GOLDEN))
def test_every_recorded_family_is_in_the_engine_golden(engine: str) -> None:
    """What the payloads render, the real engine's exporter exposes too, with the same HELP, TYPE and label names:
    the recorded golden cannot drift from what the engine-backed one pins."""
    recorded = golden_path(engine).read_text()
    live = (GOLDEN / ENGINE_GOLDEN[engine]).read_text()
    live_families = families(live)
    for name, lines in families(recorded).items():
        assert live_families.get(name) == lines, (engine, name)
    live_labels = label_names(live)
    for sample, sets in label_names(recorded).items():
        assert sets <= live_labels.get(sample, set()), (engine, sample, sets)
