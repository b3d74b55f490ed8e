"""Kept-alive HTTP clients that time single requests: the engine's raw API and the exporter's endpoints.

Both sides of every comparison use one persistent connection, so neither pays connection setup: the
engine reference is "one raw `/images/json`" as the exporter's own client could at best do it.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from tests.harness.dockerd import PrivateDockerd, UnixHTTPConnection
from tests.harness.exporter import find_sample


class _Timed:
    """One kept-alive connection; `call` returns (status, body, seconds) and reconnects once if dropped."""

    def __init__(self, conn: http.client.HTTPConnection) -> None:
        self.conn = conn

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, float]:
        for attempt in (0, 1):
            start = time.perf_counter()
            try:
                self.conn.request(method, path, body=body, headers=dict(headers or {}))
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                if attempt:
                    raise
                continue
            return resp.status, data, time.perf_counter() - start
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


class EngineAPI(_Timed):
    """The private engine's API over its unix socket: the reference side of each comparison."""

    def __init__(self, engine: PrivateDockerd, timeout: float = 300) -> None:
        super().__init__(UnixHTTPConnection(engine.socket, timeout))

    def json(self, method: str, path: str) -> tuple[Any, float]:
        status, data, took = self.call(method, path)
        if status >= 400:
            raise RuntimeError(f"{method} {path} -> {status}: {data[:300]!r}")
        return (json.loads(data) if data.strip() else None), took

    def list_images(self) -> tuple[list[dict[str, Any]], float]:
        """`GET /images/json`: what a poll must read at least once."""
        images, took = self.json("GET", "/images/json")
        return list(images), took

    def inspect_all(self, ids: list[str]) -> float:
        """Seconds to `GET /images/{id}/json` every image, one after the other (a cold first poll's work)."""
        start = time.perf_counter()
        for image_id in ids:
            self.json("GET", f"/images/{image_id}/json")
        return time.perf_counter() - start

    def tag(self, source: str, repo: str, tag: str) -> float:
        query = urllib.parse.urlencode({"repo": repo, "tag": tag})
        return self.json("POST", f"/images/{urllib.parse.quote(source, safe='')}/tag?{query}")[1]

    def remove(self, ref: str) -> float:
        """`DELETE /images/{ref}` without force: for a second tag of an image, an untag."""
        return self.json("DELETE", f"/images/{urllib.parse.quote(ref, safe='')}")[1]


class ExporterHTTP(_Timed):
    """The exporter over one kept-alive TCP connection, as Prometheus scrapes it."""

    def __init__(self, address: str, timeout: float = 300, token: str | None = None) -> None:
        host, port = address.rsplit(":", 1)
        super().__init__(http.client.HTTPConnection(host, int(port), timeout=timeout))
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def scrape(self) -> tuple[str, float]:
        """`GET /metrics` in the text format; (body, seconds)."""
        status, data, took = self.call("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics -> {status}")
        return data.decode(), took

    def sample(self, name: str, labels: Mapping[str, str] | None = None) -> float | None:
        return find_sample(self.scrape()[0], name, labels)

    def run_action(self, action: str, dry_run: bool) -> tuple[dict[str, Any], float]:
        """`POST /api/v1/actions/{action}`: plans (and with `dry_run=False` deletes); (answer, seconds)."""
        path = f"/api/v1/actions/{action}?dry_run={'true' if dry_run else 'false'}"
        status, data, took = self.call("POST", path, headers=self.auth)
        if status != 200:
            raise RuntimeError(f"POST {path} -> {status}: {data[:500]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer, took
