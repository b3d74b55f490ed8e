"""A basic-auth flood against a loopback exporter, with a scraper holding the right credentials beside it.

Used by the listener test and `make bench-auth-flood`. The flood runs in a process of its own
(`python -m tests.harness.authflood`), so its work does not compete with the scraper's for one GIL:
`connections` keep-alive connections, each sending `GET /metrics` with a wrong password as soon as the
previous answer arrived (re-opening any connection the server closes), for `seconds`. It prints one JSON
object: answers by status, and how long they took.

`scrape_during_flood` starts that process and, meanwhile, scrapes like Prometheus does (one kept-alive
connection, re-opened after a failure, one GET every `interval`), recording each scrape's latency or failure.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import http.client
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ------------------------------------------------------------------------------------------ the flood process


@dataclasses.dataclass
class _Conn:
    sock: socket.socket
    sent_at: float
    buffer: bytes = b""


def flood(port: int, connections: int, seconds: float, authorization: str) -> dict[str, object]:
    request = (f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: {authorization}\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    counts = Counter[str]()

    def open_one() -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(request)
        except OSError:
            counts["connect_failures"] += 1
            return
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, _Conn(sock, time.monotonic()))
        counts["opened"] += 1

    def drop(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()
        counts["closed_by_server"] += 1

    for _ in range(connections):
        open_one()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            conn: _Conn = key.data
            try:
                data = conn.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                drop(conn)
                open_one()
                continue
            conn.buffer += data
            head, sep, rest = conn.buffer.partition(b"\r\n\r\n")
            length = _LENGTH.search(head)
            if not sep or length is None or len(rest) < int(length.group(1)):
                continue
            statuses[head.split(b" ", 2)[1].decode()] += 1
            now = time.monotonic()
            latencies.append(now - conn.sent_at)
            conn.buffer, conn.sent_at = b"", now
            try:
                conn.sock.send(request)
            except OSError:
                drop(conn)
                open_one()
    for key in list(sel.get_map().values()):
        sel.unregister(key.fileobj)
        key.data.sock.close()
    return {"statuses": dict(statuses), "answer_ms": summary_ms(latencies), **counts}


def summary_ms(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {}
    ordered = sorted(latencies)
    return {
        "p50": round(statistics.median(ordered) * 1000, 1),
        "p99": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--authorization", required=True)
    args = parser.parse_args()
    print(json.dumps(flood(args.port, args.connections, args.seconds, args.authorization)), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ the scraper


@dataclasses.dataclass
class FloodResult:
    scrapes: int
    answered: int
    """Scrapes answered 200 within `timeout` (the rest are in `failures`, by cause)."""
    latencies: list[float]
    failures: Counter[str]
    flood: Mapping[str, object]

    @property
    def ratio(self) -> float:
        return self.answered / self.scrapes if self.scrapes else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "scrapes": self.scrapes,
            "answered": self.answered,
            "answered_ratio": round(self.ratio, 3),
            "scrape_ms": summary_ms(self.latencies),
            "scrape_failures": dict(self.failures),
            "flood": dict(self.flood),
        }


def scrape_during_flood(
    port: int,
    *,
    good: str,
    bad: str,
    connections: int = 300,
    seconds: float = 5.0,
    interval: float = 0.1,
    timeout: float = 1.0,
) -> FloodResult:
    """Scrape `/metrics` with `good` every `interval` while the flood process sends `bad` on `connections`."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "tests.harness.authflood", f"--port={port}", f"--connections={connections}"]
    attacker = subprocess.Popen(
        [*command, f"--seconds={seconds}", f"--authorization={bad}"],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    conn: http.client.HTTPConnection | None = None
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    scrapes = 0
    try:
        time.sleep(min(1.0, seconds / 5))  # the flood's connections are open before the first scrape
        deadline = time.monotonic() + seconds * 0.7
        while time.monotonic() < deadline:
            scrapes += 1
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                conn.request("GET", "/metrics", headers={"Authorization": good})
                response = conn.getresponse()
                response.read()
                took = time.monotonic() - started
                if response.status == 200 and took <= timeout:
                    latencies.append(took)
                elif response.status == 200:
                    failures["slower than the timeout"] += 1
                else:
                    failures[str(response.status)] += 1
            except (OSError, http.client.HTTPException) as exc:
                failures[type(exc).__name__] += 1
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        out, _ = attacker.communicate(timeout=seconds + 60)
    finally:
        if conn is not None:
            conn.close()
        if attacker.poll() is None:
            attacker.kill()
            attacker.wait()
    return FloodResult(scrapes, len(latencies), latencies, failures, json.loads(out or b"{}"))


if __name__ == "__main__":
    raise SystemExit(main())
