"""#13: SIGTERM stops a manual run at the next deletion boundary (the whole app on the in-memory engine).

aiohttp's graceful shutdown waits for open requests before it runs cleanup, and a manual run is an open
request: the stop has to be signalled from `on_shutdown`, which runs before that wait.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from exporter.app import create_app
from exporter.config import parse_config
from tests.harness.audit import read_audit
from tests.unit.fake_engine import FakeEngine

TOKEN = "s3cret-token"


async def test_shutdown_stops_a_manual_run_at_the_next_deletion(tmp_path: Path) -> None:
    engine = FakeEngine()
    for n in range(50):
        engine.add(f"old{n}", (f"app:{n}",), arrived=1_600_000_000 + n, digests=(f"app@sha256:{n:064x}",))
    audit = tmp_path / "audit.jsonl"
    config = parse_config(
        {
            "filesystem": {"path": str(tmp_path)},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": TOKEN},
                "audit_log": str(audit),
                "actions": {"unused": {"type": "prune_unused", "min_age": "0s"}},
            },
        }
    )
    server = TestServer(create_app(config, docker_host=None, engine=engine))
    await server.start_server()
    closing: list[asyncio.Task[None]] = []

    def shut_down_at_first_delete(call: str, arg: str) -> None:
        if call == "remove_image" and not closing:
            closing.append(asyncio.get_running_loop().create_task(server.close()))  # what SIGTERM does

    engine.before = shut_down_at_first_delete
    async with ClientSession() as session:
        for _ in range(500):  # the first poll's parse runs in a worker thread: ready says when it is done
            async with session.get(server.make_url("/-/ready")) as ready:
                if ready.status == 200:
                    break
            await asyncio.sleep(0.01)
        url = server.make_url("/api/v1/actions/unused?dry_run=false")
        request = asyncio.create_task(session.post(url, headers={"Authorization": f"Bearer {TOKEN}"}))
        await asyncio.wait([request], timeout=30)
        await closing[0]
    deleted = len(engine.removals)
    assert 1 <= deleted < 5, f"{deleted} images deleted after the shutdown began"
    records = read_audit(audit)
    end = records[-1]
    assert end["event"] == "run_end" and end["images_deleted"] == deleted
    assert "shutting down" in end["detail"]
    assert len([r for r in records if r["event"] == "intent"]) == deleted
