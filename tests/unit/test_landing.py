"""The landing page's pieces without an engine: escaping, repository ranking, sizes, and the audit tail reader."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from exporter.config import parse_config
from exporter.core.snapshot import BuildCache, DiskUsage, EngineInfo, Filesystem, Image, ImageRef, Snapshot
from exporter.remediation.audittail import AuditTail, read_audit_tail
from exporter.remediation.gate import Refused
from exporter.remediation.status import ActionStatus
from exporter.web.landing import human_bytes, render_landing, repositories_by_unique_bytes, rough_duration
from tests.unit.webhook_support import RecordedEngine, build_app

HOSTILE = "<script>alert(1)</script>"
NOW = 1_800_000_000.0


def image(ident: str, refs: list[str], size: int, shared: int | None, containers: int = 0) -> Image:
    parsed = tuple(r for r in (ImageRef.parse(t) for t in refs) if r is not None)
    return Image(f"sha256:{ident * 64}"[:71], parsed, (), NOW - 86400, size, shared, {}, containers=containers)


def snapshot(*images: Image) -> Snapshot:
    return Snapshot(
        taken_at=NOW - 5,
        engine=EngineInfo("20.10.24", "1.41", "overlay2", "linux", "amd64"),
        images=images,
        disk_usage=DiskUsage(NOW - 60, 5000, 1200, MappingProxyType({}), BuildCache(700, 300, 4)),
        filesystem=Filesystem("/var/lib/docker", 10_000, 2_500),
    )


def page(snap: Snapshot | None, **kwargs: object) -> str:
    args: dict[str, object] = {
        "telemetry_path": "/metrics",
        "up": True,
        "snapshot": snap,
        "last_error": None,
        "remediation": False,
        "docker_host": "unix:///x.sock",
        "now": NOW,
    }
    args.update(kwargs)
    return render_landing(**args)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- escaping


def test_engine_and_audit_text_is_escaped_everywhere() -> None:
    hostile_image = image("a", [f"evil/{HOSTILE}:1"], 100, 0)
    audit = AuditTail(
        (
            {"ts": NOW, "event": HOSTILE, "action": HOSTILE, "references": [HOSTILE], "detail": HOSTILE},
            {"unreadable": HOSTILE},
        ),
        problem=f"cannot read {HOSTILE}",
    )
    action = ActionStatus(
        "clean", "prune_dangling", None, False, {"result": "failure", "detail": HOSTILE, "finished_at": NOW}, None
    )
    text = page(
        snapshot(hostile_image),
        up=False,
        last_error=f"images: {HOSTILE}",
        remediation=True,
        actions=[action],
        audit=audit,
        docker_host=HOSTILE,
    )
    assert "<script" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 9
    assert f'data-repository="evil/{HOSTILE.replace("<", "&lt;").replace(">", "&gt;")}"' in text


# ---------------------------------------------------------------------------------------------- content


def test_space_cards_carry_exact_bytes_and_the_metric_they_equal() -> None:
    snap = snapshot(image("a", ["web:1"], 1536, 512), image("b", [], 2048, 0), image("c", ["db:2"], 10, 0, 1))
    text = page(snap)
    assert '<span class="num" data-metric="docker_images_size_bytes" data-value="3594" title="3,594 bytes">' in text
    assert 'data-metric="docker_images_dangling_size_bytes" data-value="2048"' in text
    assert 'data-metric="docker_images_reclaimable_bytes" data-value="1200"' in text
    assert 'data-metric="docker_build_cache_entries" data-value="4"' in text
    labels = 'data-labels="path=&quot;/var/lib/docker&quot;"'
    assert f'data-metric="docker_filesystem_avail_bytes" {labels} data-value="2500"' in text
    assert "(75%)" in text and 'class="bar full"' not in text  # 7,500 of 10,000 used: not yet red
    assert 'data-metric="docker_images_unused" data-value="2"' in text


def test_a_nearly_full_data_root_turns_the_bar_red() -> None:
    full = Snapshot(NOW, EngineInfo("1", "1.41", "overlay2", "linux", "amd64"), filesystem=Filesystem("/d", 100, 10))
    assert 'class="bar full"' in page(full)


def test_repositories_rank_by_unique_bytes_counting_each_image_once() -> None:
    images = [
        image("a", ["web:1", "web:latest", "mirror/web:1"], 1000, 400),  # 600 unique, in two repositories
        image("b", ["web:0.9"], 500, 450),  # 50 unique
        image("c", ["db:1"], 700, 0),
        image("d", [], 9999, 0),  # dangling: in no repository
    ]
    top = repositories_by_unique_bytes(images)
    assert [(r.repository, r.unique_bytes, r.images, r.tags) for r in top] == [
        ("db", 700, 1, 1),
        ("web", 650, 2, 3),
        ("mirror/web", 600, 1, 1),
    ]
    assert all(r.exact for r in top)
    assert [r.repository for r in repositories_by_unique_bytes(images, limit=1)] == ["db"]


def test_unknown_shared_sizes_count_the_whole_image_and_say_so() -> None:
    top = repositories_by_unique_bytes([image("a", ["web:1"], 1000, None), image("b", ["web:2"], 300, 100)])
    assert (top[0].unique_bytes, top[0].exact) == (1200, False)
    assert "(upper bound)" in page(snapshot(image("a", ["web:1"], 1000, None)))


def test_remediation_sections_only_when_enabled() -> None:
    off = page(snapshot())
    assert 'id="remediation"' not in off and 'id="audit"' not in off and "/api/v1/actions" not in off
    never = ActionStatus("weekly", "unused", "every 1w", False, None, NOW + 3600)
    on = page(snapshot(), remediation=True, actions=[never], audit=AuditTail(()), dry_run=True)
    assert 'id="remediation"' in on and "No audit entries yet." in on and "dry_run: true" in on
    assert f'data-action="weekly" data-next-run="{NOW + 3600!r}"' in on
    assert "never run" in on and "every 1w" in on and ">in 1h<" in on


def test_images_held_back_only_by_min_age_are_counted_with_the_time_the_first_becomes_deletable() -> None:
    """A first start: every image arrived six minutes ago; min_age 1h holds all of them until 30:00 UTC."""
    arrived = NOW - 360  # 2027-01-15 07:54:00 UTC
    first_day = [
        replace(image("a", ["web:1"], 1000, 0), arrived=arrived),
        replace(image("b", ["web:2"], 2000, 0), arrived=arrived + 60),
        replace(image("c", ["db:1"], 4000, 0, containers=1), arrived=arrived),  # in use: not min_age's doing
        replace(image("d", ["web:3"], 8000, 0), arrived=None),  # built a day ago, known since: deletable now
    ]
    config = parse_config(
        {
            "remediation": {
                "actions": {
                    "unused": {"type": "prune_unused", "min_age": "1h"},
                    "cache": {"type": "build_cache"},
                    "dangling": {"type": "prune_dangling", "min_age": "1h"},
                }
            }
        }
    ).remediation
    text = page(snapshot(*first_day), remediation=True, actions=[], remediation_config=config)
    assert (
        f'<li data-action="unused" data-images="2" data-bytes="3000" data-first="{arrived + 3600!r}"><b>unused</b>: '
        "2 images (" in text
    )
    assert (
        "become deletable within the next min_age (1h): the first at 2027-01-15 08:54:00 UTC (in 54m), "
        "the last at 2027-01-15 08:55:00 UTC (in 55m)</li>" in text
    )
    assert 'data-action="dangling" data-images' not in text and 'data-action="cache" data-images' not in text
    settled = page(snapshot(first_day[3]), remediation=True, actions=[], remediation_config=config)
    assert 'id="maturing"' not in settled


def test_last_run_shows_result_time_and_bytes_freed() -> None:
    last = {"result": "partial", "finished_at": NOW - 120, "reclaimed_bytes": 3 * 2**20, "images_deleted": 2}
    text = page(snapshot(), remediation=True, actions=[ActionStatus("free", "free_space", None, True, last, None)])
    row = text.split('data-action="free"')[1].split("</tr>")[0]
    assert 'class="pill warn">partial<' in row and "running" in row and ">2m ago<" in row
    assert 'data-labels="action=&quot;free&quot;" data-value="3145728" title="3,145,728 bytes">3.0 MiB<' in row
    assert "data-next-run" not in text


@pytest.mark.parametrize(
    ("result", "detail", "tone"),
    [
        ("success", "goal already met at plan time: nothing to delete", "muted"),
        ("dry_run", "goal already met at plan time: nothing to delete", "muted"),
        ("partial", "candidates ran out before the goal was met", "error"),
        ("failure", "engine unreachable", "error"),
    ],
)
def test_a_last_runs_detail_is_red_only_when_something_went_wrong(result: str, detail: str, tone: str) -> None:
    last = {"result": result, "finished_at": NOW - 60, "detail": detail}
    text = page(snapshot(), remediation=True, actions=[ActionStatus("free", "free_space", None, True, last, None)])
    row = text.split('data-action="free"')[1].split("</tr>")[0]
    assert f'<small class="{tone}">{detail}</small>' in row


def test_absurd_audit_timestamps_are_shown_not_fatal() -> None:
    audit = AuditTail(({"ts": 1e300, "event": "run_end"}, {"ts": float("nan"), "event": "x"}, {"ts": "soon"}))
    text = page(snapshot(), remediation=True, audit=audit)
    assert "1e+300" in text and "nan" in text and text.count('class="audit"') == 3


def test_the_event_stream_row_says_whether_changes_apply_as_they_happen() -> None:
    assert "Event stream" not in page(snapshot())  # no follower (embedding): nothing to say
    live = page(snapshot(), events_live=True)
    assert "<th>Event stream</th><td>live: changes are applied as they happen</td>" in live
    down = page(snapshot(), events_live=False)
    assert '<th>Event stream</th><td><span class="error">not live</span>' in down
    assert "remediation runs poll afresh" in down


def test_no_snapshot_yet() -> None:
    text = page(None, up=False)
    assert "No snapshot of the engine yet." in text and "DOWN" in text


def test_refresh_adds_the_meta_tag() -> None:
    assert '<meta http-equiv="refresh" content="30">' in page(snapshot(), refresh_seconds=30)
    assert 'http-equiv="refresh"' not in page(snapshot())


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536 * 1024, "1.5 MiB"),
        (5 * 2**30, "5.0 GiB"),
        (2**60, "1024.0 PiB"),
    ],
)
def test_human_bytes_is_iec(value: int, text: str) -> None:
    assert human_bytes(value) == text


def test_rough_duration_keeps_two_units() -> None:
    assert rough_duration(3 * 365 * 86400 + 16 * 86400 + 25 * 60 + 5) == "3y2w"
    assert rough_duration(42.4) == "42s"
    assert rough_duration(0) == "0s"


# ---------------------------------------------------------------------------------------------- audit tail


def record(i: int) -> str:
    return json.dumps({"ts": NOW + i, "event": "image", "action": "a", "run_id": str(i)}) + "\n"


def test_tail_is_newest_first_and_bounded_in_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(record(i) for i in range(50)))
    tail = read_audit_tail(log, 5)
    assert [r["run_id"] for r in tail.records] == ["49", "48", "47", "46", "45"]
    assert tail.problem is None


def test_tail_reads_only_the_end_of_the_file(tmp_path: Path) -> None:
    """The front of the file is garbage: a reader that parsed the whole file would report it."""
    log = tmp_path / "audit.jsonl"
    log.write_bytes(b"not json at all\n" * 10_000 + b"\xff\xfe torn" + "".join(record(i) for i in range(20)).encode())
    tail = read_audit_tail(log, 100, max_bytes=len(record(0)) * 3 + 10)
    assert [r["run_id"] for r in tail.records] == ["19", "18", "17"]  # the cut-off fourth line is dropped
    assert tail.problem is None


def test_missing_file_is_no_problem_and_corrupt_lines_are_shown(tmp_path: Path) -> None:
    assert read_audit_tail(tmp_path / "absent.jsonl", 10) == AuditTail(())
    log = tmp_path / "audit.jsonl"
    log.write_bytes(record(1).encode() + b"[1, 2]\n" + b'{"ts": 1, "ev\xff\n\n')
    tail = read_audit_tail(log, 10)
    assert tail.records[0] == {"unreadable": '{"ts": 1, "ev\ufffd'}
    assert tail.records[1] == {"unreadable": "[1, 2]"}
    assert tail.records[2]["run_id"] == "1"
    assert tail.problem == f"2 unreadable line(s) in audit log {log}"


def test_unreadable_file_is_reported_not_raised(tmp_path: Path) -> None:
    tail = read_audit_tail(tmp_path, 10)  # a directory
    assert tail.records == () and tail.problem is not None and str(tmp_path) in tail.problem
    if os.geteuid() != 0:  # root reads mode-000 files anyway
        log = tmp_path / "secret.jsonl"
        log.write_text(record(1))
        log.chmod(0)
        assert "cannot read audit log" in (read_audit_tail(log, 10).problem or "")


# ---------------------------------------------------------------------------------------------- the service


async def test_service_reports_last_run_next_run_and_audit_tail(tmp_path: Path) -> None:
    """A real dry run on recorded engine payloads: the status and the audit tail are what that run left."""
    _app, service, _clock = build_app(
        tmp_path,
        RecordedEngine(),
        actions={"clean": {"type": "prune_dangling", "schedule": "1h"}, "idle": {"type": "build_cache"}},
        routes=[],
    )
    before = time.time()
    await service.start()
    try:
        await asyncio.sleep(0)  # let the schedule task time its first run
        await service.poller.poll_once()
        run = await service.run_manual("clean", requested_dry_run=True)
        assert not isinstance(run, Refused)
        clean, idle = service.action_status()
        assert clean.last_run is not None and clean.last_run["run_id"] == run.run_id
        assert clean.last_run["result"] == "dry_run"
        assert clean.next_run is not None and before <= clean.next_run - 3600 <= time.time()
        assert (idle.name, idle.last_run, idle.next_run) == ("idle", None, None)
        tail = await service.recent_audit(3)
        assert tail.records[0]["event"] == "run_end"
        assert all(r["run_id"] == run.run_id for r in tail.records) and tail.problem is None
    finally:
        await service.stop()
