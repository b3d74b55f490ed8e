"""`make bench-auth-flood`: a verified scraper's `/metrics` while a wrong-password flood hits basic auth.

The exporter runs with one `basic_auth_users` entry (bcrypt cost 10, the usual one), its default listener
flags (512 connections) and no engine. The flood (`tests.harness.authflood`, a process of its own) keeps
`BENCH_AUTH_FLOOD_CONNECTIONS` (600) kept-alive connections sending `GET /metrics` with a wrong password as
soon as each answer arrives, for `BENCH_AUTH_FLOOD_SECONDS` (20); meanwhile a scraper whose credentials the
exporter has already verified GETs `/metrics` every 100 ms on one kept-alive connection, as Prometheus does,
with a 1 s timeout. Reports the answered ratio, scrape latency, and how fast and how the flood was refused.
Numbers only: nothing here passes or fails.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import bcrypt
import yaml

from tests.harness.authflood import basic, scrape_during_flood
from tests.harness.exporter import ExporterProcess

RESULTS = Path(__file__).resolve().parent / "results"
CONNECTIONS = int(os.environ.get("BENCH_AUTH_FLOOD_CONNECTIONS", "600"))
SECONDS = float(os.environ.get("BENCH_AUTH_FLOOD_SECONDS", "20"))
PASSWORD = "scrape-secret"
GOOD = basic("prometheus", PASSWORD)


class AuthenticatedExporter(ExporterProcess):
    """Health checks with the scraper's credentials: they are verified and remembered before the flood."""

    def _status(self, path: str) -> int | None:
        try:
            return self.request("GET", path, headers={"Authorization": GOOD}, timeout=5)[0]
        except OSError:
            return None


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="die-bench-auth-") as tmp:
        work = Path(tmp)
        web = work / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
        web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
        exp = AuthenticatedExporter(
            work,
            "unix:///nonexistent/bench.sock",
            {"state": {"path": None}},
            extra_args=["--web.config.file", str(web)],
        )
        exp.start()
        try:
            flood = scrape_during_flood(
                exp.port, good=GOOD, bad=basic("prometheus", "guess"), connections=CONNECTIONS, seconds=SECONDS
            )
            log = exp.logs()
        finally:
            exp.stop()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": f"{sys.implementation.name} {sys.version.split()[0]}",
        "flood_connections": CONNECTIONS,
        "seconds": SECONDS,
        **flood.as_dict(),
        "log_lines_at_warn_or_error": sum(
            1 for line in log.splitlines() if "level=warn" in line or "level=error" in line
        ),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"auth-flood-{datetime.now(UTC).date().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
