"""`make bench-listener`: scrape latency while a slowloris client holds more connections than descriptors.

The exporter runs at the common 1,024-descriptor limit with its default listener flags (512 connections,
10 s header timeout), engine address pointing nowhere (no engine needed: the listener is what is measured).
An attacker keeps 1,100 connections open that never finish their headers, re-opening each one the server
closes, for `DURATION` seconds; meanwhile a scraper GETs /metrics on a new connection every half second.
Reports scrape latency (median, 95th percentile, max), failed scrapes, connections the server closed, and
log growth. Numbers only: nothing here passes or fails.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.harness.exporter import ExporterProcess

RESULTS = Path(__file__).resolve().parent / "results"
NOFILE = 1024
ATTACK_CONNECTIONS = int(os.environ.get("BENCH_SLOWLORIS_CONNECTIONS", "1100"))
DURATION = float(os.environ.get("BENCH_SLOWLORIS_SECONDS", "30"))
PARTIAL = b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nX-Slow: "


class LimitedExporter(ExporterProcess):
    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--", *super().command()]


def attack(port: int, stop: threading.Event, stats: dict[str, int]) -> None:
    """Hold ATTACK_CONNECTIONS stalled connections; re-open each as soon as the server closes it."""
    sel = selectors.DefaultSelector()

    def open_one() -> None:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(PARTIAL)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            stats["opened"] += 1
        except OSError:
            stats["connect_failures"] += 1

    for _ in range(ATTACK_CONNECTIONS):
        open_one()
    while not stop.is_set():
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                stats["closed_by_server"] += 1
                open_one()
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="die-bench-listener-") as tmp:
        work = Path(tmp)
        exp = LimitedExporter(work, "unix:///nonexistent/bench.sock", {"state": {"path": str(work / "s.json")}})
        exp.start()
        log_before = len(exp.logs())
        stats = {"opened": 0, "connect_failures": 0, "closed_by_server": 0}
        stop = threading.Event()
        attacker = threading.Thread(target=attack, args=(exp.port, stop, stats), daemon=True)
        attacker.start()
        latencies: list[float] = []
        failures = 0
        deadline = time.monotonic() + DURATION
        try:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    with urllib.request.urlopen(f"{exp.url}/metrics", timeout=15) as resp:
                        resp.read()
                    latencies.append(time.perf_counter() - start)
                except OSError:
                    failures += 1
                time.sleep(0.5)
        finally:
            stop.set()
            attacker.join(30)
            log = exp.logs()
            exp.stop()
    ordered = sorted(latencies) or [float("nan")]
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform_python(),
        "nofile": NOFILE,
        "attack_connections": ATTACK_CONNECTIONS,
        "seconds": DURATION,
        "scrapes_ok": len(latencies),
        "scrapes_failed": failures,
        "scrape_median_ms": round(statistics.median(ordered) * 1000, 1),
        "scrape_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
        "scrape_max_ms": round(ordered[-1] * 1000, 1),
        **stats,
        "log_bytes_during_attack": len(log) - log_before,
        "listener_log_lines": log.count("listener closed"),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"listener-{datetime.now(UTC).date().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| metric | value |\n|---|---|")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


def platform_python() -> str:
    return f"{sys.implementation.name} {sys.version.split()[0]}"


if __name__ == "__main__":
    raise SystemExit(main())
