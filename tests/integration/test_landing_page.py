"""The landing page against a private engine: its numbers equal /metrics, it escapes, and Chromium renders it.

The exporter is a subprocess on an engine with the standard scenario loaded; remediation is enabled in
dry-run mode (nothing is deleted) with an audit log that already holds a hostile and a corrupt line. The
screenshot is taken by Debian's `chromium` in headless mode; `make test-deps` installs it, and under
CI=true a missing chromium fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import time
import zlib
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.harness.dockerd import PrivateDockerd
from tests.harness.engines import engine_store
from tests.harness.exporter import ExporterProcess, find_sample, parse_samples
from tests.harness.requires import require_programs

# subject: the landing page; the engine does not matter, so one engine (make test) is enough
pytestmark = pytest.mark.engine_agnostic

TOKEN = "landing-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = "<script>alert('pwned')</script>"
#: Families the page must show (the scenario has a filesystem, a /system/df answer and a build cache).
#: What Podman cannot tell (its /system/df has no layer sizes): unknown, so neither page nor metrics show it.
PODMAN_UNKNOWN = {"docker_images_disk_usage_bytes", "docker_images_reclaimable_bytes"}
#: Where every image lists a repo digest (containerd store, Podman), which exist only here is unknown.
LOCAL_ONLY = {"docker_images_local_only", "docker_images_local_only_size_bytes"}
EXPECTED_METRICS = {
    "docker_up",
    "docker_images",
    "docker_images_size_bytes",
    "docker_images_unused",
    "docker_images_local_only",
    "docker_images_local_only_size_bytes",
    "docker_images_dangling",
    "docker_images_dangling_size_bytes",
    "docker_images_disk_usage_bytes",
    "docker_images_reclaimable_bytes",
    "docker_build_cache_size_bytes",
    "docker_build_cache_reclaimable_bytes",
    "docker_build_cache_entries",
    "docker_filesystem_size_bytes",
    "docker_filesystem_avail_bytes",
    "docker_exporter_snapshot_timestamp_seconds",
    "docker_remediation_last_run_reclaimed_bytes",
}


class PageData(HTMLParser):
    """Every element carrying `data-metric`, and the repository / action / audit rows, from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[str, dict[str, str], float]] = []
        self.repositories: list[dict[str, str]] = []
        self.actions: dict[str, dict[str, str]] = {}
        self.audit_rows = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "data-metric" in a:
            self.metrics.append((a["data-metric"], parse_labels(a.get("data-labels", "")), float(a["data-value"])))
        if tag == "tr" and "data-repository" in a:
            self.repositories.append(a)
        if tag == "tr" and "data-action" in a:
            self.actions[a["data-action"]] = a
        if tag == "tr" and a.get("class") == "audit":
            self.audit_rows += 1


def parse_labels(text: str) -> dict[str, str]:
    """`path="/x",action="y"` (the page's data-labels) as a dict; values here never contain quotes."""
    labels = {}
    for part in filter(None, text.split('",')):
        key, _, value = part.partition('="')
        labels[key.strip(", ")] = value.rstrip('"')
    return labels


def page_data(html: str) -> PageData:
    parser = PageData()
    parser.feed(html)
    return parser


def unique_bytes_by_repository(metrics: str, metric: str = "docker_image_unique_size_bytes") -> dict[str, float]:
    """Σ `metric` (unique sizes; whole sizes where the engine knows no unique ones) over the distinct images
    tagged in each repository."""
    per_repo: dict[str, dict[str, float]] = defaultdict(dict)
    for name, labels, value in parse_samples(metrics):
        if name == metric and labels["repository"] != "<none>":
            per_repo[labels["repository"]][labels["image_id"]] = value
    return {repo: sum(ids.values()) for repo, ids in per_repo.items()}


def write_audit_log(path: Path) -> None:
    """Three lines as a previous run left them: a normal end, a hostile image line, and a torn write."""
    good = {
        "ts": 1_700_000_000.0,
        "event": "run_end",
        "action": "clean-dangling",
        "run_id": "r1",
        "result": "success",
        "reclaimed_bytes": 4096,
        "dry_run": False,
    }
    hostile = {
        "ts": 1_700_000_001.0,
        "event": "image",
        "action": "clean-dangling",
        "run_id": "r1",
        "references": [f"evil/{HOSTILE}:1"],
        "result": "skipped",
        "detail": f"engine said {HOSTILE}",
        "size": 10,
        "dry_run": False,
    }
    path.write_text(json.dumps(good) + "\n" + json.dumps(hostile) + "\n" + '{"ts": 1700000002, "event": "im\n')


def config(tmp_path: Path, engine: PrivateDockerd) -> dict[str, Any]:
    return {
        "state": {"path": str(tmp_path / "state.json")},
        "poll": {"interval": "10m", "disk_usage_interval": "10m"},
        "filesystem": {"path": str(engine.data_root)},
        "remediation": {
            "enabled": True,
            "dry_run": True,
            "auth": {"bearer_token": TOKEN},
            "audit_log": str(tmp_path / "audit.jsonl"),
            "actions": {"clean-dangling": {"type": "prune_dangling", "min_age": "1h", "schedule": "6h"}},
            "routes": [{"matchers": ['alertname="DockerDanglingImages"'], "action": "clean-dangling"}],
        },
    }


def consistent_page(exp: ExporterProcess) -> tuple[str, str]:
    """(page, metrics) from the same snapshot: metrics, page, metrics again, retried until nothing moved."""

    def attempt() -> tuple[str, str] | None:
        before = exp.metrics_text()
        page = exp.get("/")
        after = exp.metrics_text()
        shown = {n: v for n, _, v in page_data(page).metrics}
        stamps = ("docker_exporter_snapshot_timestamp_seconds", "docker_exporter_disk_usage_timestamp_seconds")
        for stamp in stamps:  # None before the first /system/df: not ready yet
            if stamp not in shown or not find_sample(before, stamp) == shown[stamp] == find_sample(after, stamp):
                return None
        return page, after

    result = exp.wait_for(attempt, timeout=60, what="a page and a scrape of the same snapshot")
    assert result is not None
    return result


def test_landing_page_numbers_equal_metrics_and_engine_text_is_escaped(loaded_dockerd, exporter_factory, tmp_path):
    write_audit_log(tmp_path / "audit.jsonl")
    exp = exporter_factory(loaded_dockerd.engine, config(tmp_path, loaded_dockerd.engine))
    status, _ = exp.request("POST", "/api/v1/actions/clean-dangling?dry_run=true", headers=BEARER)
    assert status == 200

    page, metrics = consistent_page(exp)
    data = page_data(page)

    shown = {name for name, _, _ in data.metrics}
    wanted = EXPECTED_METRICS
    podman = engine_store(loaded_dockerd.engine) == "podman"
    if podman:  # no layer sizes there: absent from /metrics and the page
        wanted = wanted - PODMAN_UNKNOWN
        assert not shown & PODMAN_UNKNOWN
    if engine_store(loaded_dockerd.engine) != "classic":
        wanted = wanted - LOCAL_ONLY
        assert not shown & LOCAL_ONLY and "exist only on this host: unknown on this engine" in page
    assert shown >= wanted, f"missing on the page: {sorted(wanted - shown)}"
    for name, labels, value in data.metrics:
        assert find_sample(metrics, name, labels) == value, f"{name}{labels}: page {value}"

    # Podman knows no shared sizes: the page ranks by whole sizes, marked as upper bounds
    expected = unique_bytes_by_repository(
        metrics, "docker_image_size_bytes" if podman else "docker_image_unique_size_bytes"
    )
    if podman:
        assert "(upper bound)" in page
    ranking = sorted(expected, key=lambda repo: (-expected[repo], repo))
    assert [row["data-repository"] for row in data.repositories] == ranking[:10]
    for row in data.repositories:
        assert float(row["data-unique-bytes"]) == expected[row["data-repository"]]
    listed = {row["data-repository"].removeprefix("localhost/") for row in data.repositories}  # Podman: localhost/
    assert {"team/web", "127.0.0.1:5000/ns/api"} <= listed

    assert list(data.actions) == ["clean-dangling"]
    assert "dry run" in page  # the manual preview is the action's last result
    now = time.time()  # the 6h schedule's timer started when the exporter did, within the last minute
    assert now - 60 < float(data.actions["clean-dangling"]["data-next-run"]) - 6 * 3600 <= now

    # the audit tail: newest first, the torn line shown as unreadable, the hostile text escaped
    assert data.audit_rows >= 3
    assert "unreadable line" in page
    assert HOSTILE not in page and "<script" not in page
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page


def test_bad_refresh_is_refused_and_a_good_one_sets_the_meta_tag(loaded_dockerd, exporter_factory, tmp_path):
    exp = exporter_factory(loaded_dockerd.engine, {"state": {"path": str(tmp_path / "state.json")}})
    for bad in ("1", "abc", "99999", "-5", "%C2%B2", "30.5"):
        status, body = exp.request("GET", f"/?refresh={bad}")
        assert status == 400 and b"refresh must be whole seconds" in body, bad
    page = exp.get("/?refresh=30")
    assert '<meta http-equiv="refresh" content="30">' in page
    assert 'id="remediation"' not in page and 'id="audit"' not in page  # remediation is off


# -------------------------------------------------------------------------------------------- screenshot


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit truecolour PNG, decoded with zlib alone."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format: depth {depth}, colour type {colour}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - bpp] if i >= bpp else 0
            up, up_left = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - up_left
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else up_left
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def test_chromium_screenshot_of_the_landing_page(loaded_dockerd, exporter_factory, tmp_path):
    require_programs("chromium")
    write_audit_log(tmp_path / "audit.jsonl")
    exp = exporter_factory(loaded_dockerd.engine, config(tmp_path, loaded_dockerd.engine))
    exp.request("POST", "/api/v1/actions/clean-dangling?dry_run=true", headers=BEARER)
    consistent_page(exp)  # the page shows disk usage, not a first empty snapshot
    shot = tmp_path / "landing.png"
    profile = tmp_path / "chromium-profile"
    result = subprocess.run(
        [
            shutil.which("chromium") or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--disable-dev-shm-usage",  # containers often have a 64 MiB /dev/shm
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,2000",
            exp.url + "/",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert shot.exists(), f"no screenshot (exit {result.returncode}):\n{result.stderr[-2000:]}"
    assert shot.stat().st_size > 20_000, "screenshot suspiciously small"
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1280, 2000)
    bpp = len(rows[0]) // width
    colours = {row[x * bpp : x * bpp + 3] for row in rows[::8] for x in range(0, width, 4)}
    assert len(colours) > 20, f"screenshot is (nearly) blank: {len(colours)} colours"
    header = {rows[20][x * bpp : x * bpp + 3] for x in range(0, width, 4)}
    assert bytes((0x1D, 0x2B, 0x3A)) in header, "the page's header bar is not at the top"
