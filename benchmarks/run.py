"""`make bench`: how fast and how big the exporter is on a private engine with many images.

Measures, at each image count: poll duration (from the exporter's own gauge), /system/df duration, scrape
latency and exposition size, event-to-metrics latency for a `docker rmi` with a 10 minute poll interval,
resident memory of the exporter process, and a remediation dry-run plan's latency. Results go to
benchmarks/results/<date>.json and a Markdown table on stdout; benchmarks/README.md quotes them.
Numbers only: nothing here passes or fails.
"""

from __future__ import annotations

import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.harness.certs import client_context, issue, make_ca
from tests.harness.dockerd import PrivateDockerd, remove_workdir, short_workdir
from tests.harness.exporter import ExporterProcess
from tests.harness.images import Layer, load_images, tiny_images

RESULTS = Path(__file__).resolve().parent / "results"
COUNTS = [int(c) for c in os.environ.get("BENCH_IMAGE_COUNTS", "100,1000").split(",")]
SCRAPES = 20


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def timed_get(url: str, context: ssl.SSLContext | None = None) -> tuple[float, int]:
    """One GET on a new connection (urllib does not keep connections): with HTTPS, a full handshake."""
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30, context=context) as resp:
        body = resp.read()
    return time.perf_counter() - start, len(body)


def bench_count(count: int) -> dict[str, Any]:
    workdir = short_workdir("die-bench-")
    engine = PrivateDockerd(workdir, name=f"bench-{count}")
    result: dict[str, Any] = {"images": count}
    try:
        engine.start(timeout=60)
        specs = tiny_images(count, shared=Layer.random(256 * 1024, "bench-base"))
        start = time.perf_counter()
        load_images(engine, specs)
        result["load_seconds"] = round(time.perf_counter() - start, 2)
        token = "bench-token"
        exp = ExporterProcess(
            workdir / "exp",
            engine.host,
            {
                "poll": {"interval": "10m", "disk_usage_interval": "10m"},
                "filesystem": {"path": str(engine.data_root)},
                "state": {"path": str(workdir / "state.json")},
                "remediation": {
                    "enabled": True,
                    "dry_run": True,
                    "auth": {"bearer_token": token},
                    "audit_log": str(workdir / "audit.jsonl"),
                    "actions": {"unused": {"type": "prune_unused", "min_age": "0s", "max_deletions": 100000}},
                },
            },
            name="bench",
        )
        start = time.perf_counter()
        exp.start(timeout=120)
        exp.wait_ready(timeout=300)
        result["startup_to_ready_seconds"] = round(time.perf_counter() - start, 2)
        exp.wait_for(lambda: exp.sample("docker_images_disk_usage_bytes") is not None, timeout=300, what="df")
        result["poll_seconds"] = exp.sample("docker_exporter_poll_duration_seconds")
        result["disk_usage_seconds"] = exp.sample("docker_exporter_disk_usage_duration_seconds")
        latencies, size = [], 0
        for _ in range(SCRAPES):
            took, size = timed_get(exp.url + "/metrics")
            latencies.append(took)
        result["scrape_seconds_median"] = round(statistics.median(latencies), 4)
        result["scrape_seconds_max"] = round(max(latencies), 4)
        result["exposition_bytes"] = size
        result["series"] = sum(1 for line in exp.metrics_text().splitlines() if line and not line.startswith("#"))
        assert exp.pid is not None
        result["rss_bytes"] = rss_bytes(exp.pid)
        # a poll forced by an event: the tiniest image goes, the poll interval is 10 minutes
        victim = specs[-1].tags[0]
        repo, tag = victim.rsplit(":", 1)
        engine.cli("rmi", victim)
        start = time.perf_counter()
        exp.wait_for(
            lambda: exp.sample("docker_image_size_bytes", {"repository": repo, "tag": tag}) is None,
            timeout=60,
            interval=0.02,
            what="rmi visible",
        )
        result["rmi_to_metrics_seconds"] = round(time.perf_counter() - start, 3)
        # a dry-run plan over every image
        start = time.perf_counter()
        status, _ = exp.request(
            "POST", "/api/v1/actions/unused?dry_run=true", headers={"Authorization": f"Bearer {token}"}, timeout=300
        )
        result["dry_run_plan_seconds"] = round(time.perf_counter() - start, 3)
        result["dry_run_status"] = status
        result["rss_after_bytes"] = rss_bytes(exp.pid)
        exp.stop()
        result.update(bench_tls_scrape(engine, workdir))
    finally:
        engine.stop()
        remove_workdir(workdir)
    return result


def bench_tls_scrape(engine: PrivateDockerd, workdir: Path) -> dict[str, Any]:
    """The same scrape over HTTPS (--web.config.file, P-256 certificate), a new handshake every time."""
    pki = workdir / "pki"
    ca = make_ca(pki, "bench-ca")
    server = issue(ca, pki, "bench-exporter")
    web = workdir / "web.yml"
    web.write_text(json.dumps({"tls_server_config": {"cert_file": str(server.cert), "key_file": str(server.key)}}))
    exp = ExporterProcess(
        workdir / "exp-tls",
        engine.host,
        {
            "poll": {"interval": "10m"},
            "filesystem": {"path": str(engine.data_root)},
            "state": {"path": str(workdir / "tls-state.json")},
        },
        name="bench-tls",
        extra_args=["--web.config.file", str(web)],
        client_tls=client_context(ca),
    )
    try:
        exp.start(timeout=120)
        exp.wait_ready(timeout=300)
        latencies = [timed_get(exp.url + "/metrics", exp.client_tls)[0] for _ in range(SCRAPES)]
    finally:
        exp.stop()
    return {
        "scrape_tls_seconds_median": round(statistics.median(latencies), 4),
        "scrape_tls_seconds_max": round(max(latencies), 4),
    }


def main() -> int:
    runs = [bench_count(count) for count in COUNTS]
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC):%Y-%m-%d}.json"
    with tempfile.NamedTemporaryFile("w", dir=RESULTS, delete=False, suffix=".tmp") as handle:
        json.dump(report, handle, indent=2)
    os.replace(handle.name, out)
    keys = [k for k in runs[0] if k != "images"]
    print("| metric | " + " | ".join(f"{r['images']} images" for r in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for key in keys:
        print(f"| {key} | " + " | ".join(str(r.get(key)) for r in runs) + " |")
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
