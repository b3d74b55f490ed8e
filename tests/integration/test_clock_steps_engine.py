"""Arrival ages against the exporter's clock on a private engine: a forward step of the wall clock (under
libfaketime, the exporter process only, also across a restart in the same boot) and a state file saved "in the future" must not make a just
arrived image old enough for `min_age`.

libfaketime with `FAKETIME_DONT_FAKE_MONOTONIC=1` moves CLOCK_REALTIME only (checked on Debian's 0.9.10:
CLOCK_BOOTTIME and CLOCK_MONOTONIC stay real), which is what NTP's step or a restored VM does. The offset
is read from `FAKETIME_TIMESTAMP_FILE` at most once a second (`FAKETIME_CACHE_DURATION`), so the test
steps the clock by rewriting that file while the exporter runs.
"""

from __future__ import annotations

import glob
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import ImageSpec, Layer, load_images
from tests.harness.requires import require_programs, skip_or_fail
from tests.harness.state import write_saved_state

# subject: the exporter's clock; the engine does not matter, so one engine (make test) is enough
pytestmark = [pytest.mark.engine, pytest.mark.engine_agnostic]

TOKEN = "clock-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
DAY = 86400.0


def libfaketime() -> str:
    require_programs("faketime")
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        skip_or_fail("libfaketime.so.1 not found (apt-get install faketime)")
    return found[0]


def old_dangling_image(engine: PrivateDockerd) -> str:
    """An untagged image built ten days ago: old by Created, young only by its arrival here."""
    created = datetime.now(UTC) - timedelta(days=10)
    return load_images(engine, [ImageSpec(tags=[], layers=[Layer.random(32 * 1024, "clock")], created=created)])[0]


def configure(exp: ExporterProcess, engine: PrivateDockerd, tmp: Path) -> None:
    exp.write_config(
        {
            "filesystem": {"path": str(engine.data_root)},
            "state": {"path": str(tmp / "state.json")},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": TOKEN},
                "audit_log": str(tmp / "audit.jsonl"),
                "actions": {"dangling": {"type": "prune_dangling", "min_age": "1h"}},
            },
        }
    )


def dry_run(exp: ExporterProcess) -> dict[str, Any]:
    status, body = exp.request("POST", "/api/v1/actions/dangling?dry_run=true", b"", AUTH)
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def fate(answer: dict[str, Any], image_id: str) -> str:
    """`would_delete`, or the skip reason the dry run gave the image."""
    if any(o["id"] == image_id for o in answer["would_delete"]):
        return "would_delete"
    return str(next(o["skip_reason"] for o in answer["skipped"] if o["id"] == image_id))


def test_a_forward_step_of_the_exporters_clock_leaves_a_just_arrived_image_young(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    library = libfaketime()
    image_id = old_dangling_image(dockerd)
    offset_file = tmp_path / "faketime"
    offset_file.write_text("+0\n")
    exp = exporter_factory(dockerd, start=False)
    exp.extra_env.update(
        LD_PRELOAD=library,
        FAKETIME_TIMESTAMP_FILE=str(offset_file),
        FAKETIME_DONT_FAKE_MONOTONIC="1",
        FAKETIME_CACHE_DURATION="1",
    )
    configure(exp, dockerd, tmp_path)
    exp.start()
    exp.wait_ready()

    before = dry_run(exp)
    assert fate(before, image_id) == "too_young"  # no state file: it arrived when first seen, just now
    assert abs(before["started_at"] - time.time()) < 60  # the exporter's clock is the real one so far

    offset_file.write_text("+3d\n")  # NTP's first sync on a device without a real-time clock

    def stepped() -> dict[str, Any]:
        answer = dry_run(exp)
        return answer if answer["started_at"] > time.time() + 2 * DAY else {}

    after = exp.wait_for(stepped, timeout=30, interval=0.5, what="the exporter's wall clock three days ahead")
    assert fate(after, image_id) == "too_young", after

    # restarted in the same boot on the stepped clock: the state file's seen offsets still discount the step
    exp.stop()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    exp.start()
    exp.wait_ready()
    assert fate(dry_run(exp), image_id) == "too_young"
    assert "loaded image history" in exp.logs()
    assert image_id in {i["Id"] for i in dockerd.get_json("/images/json?all=1")}


def test_a_state_file_saved_in_the_future_makes_a_present_image_arrive_now(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    """`saved_at` two days ahead (the clock was ahead when it was saved): the file would prove the image
    present back then, and its Created makes it ten days old. The file's times are not trusted instead."""
    image_id = old_dangling_image(dockerd)
    write_saved_state(tmp_path / "state.json", dockerd, saved_at=time.time() + 2 * DAY)
    exp = exporter_factory(dockerd, start=False)
    configure(exp, dockerd, tmp_path)
    exp.start()
    exp.wait_ready()

    assert fate(dry_run(exp), image_id) == "too_young"
    assert "distrusting the image history's times" in exp.logs()
    assert "in the future" in exp.logs()
