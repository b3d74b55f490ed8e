"""Start-up order (`cli.run`): the engine's first reads go out before the app is built; what that must not change."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from exporter import cli
from exporter.app import create_app
from exporter.config import parse_config
from exporter.core import memory
from exporter.engine.firstreads import FirstReads
from exporter.state.history import STATE_VERSION
from tests.harness.exporter import parse_samples
from tests.unit.recorded import RecordedEngine


class ReplayingEngine(RecordedEngine):
    """A recorded engine that says which replay window the event follower asked for."""

    def __init__(self, engine: str) -> None:
        super().__init__(engine)
        self.replays: list[tuple[int, int]] = []

    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]:
        self.replays.append((since, until))
        return []


class SlowInspectEngine(ReplayingEngine):
    """Image inspects that have not answered yet (a busy engine): the LastTagTime fill is still under way."""

    async def inspect_image(self, ref: str, *, lane: Any = "api") -> dict[str, Any]:
        await asyncio.Event().wait()  # cancelled at shutdown
        raise AssertionError("unreachable")


async def ready_client(aiohttp_client: Any, app: Any) -> Any:
    client = await aiohttp_client(app)
    for _ in range(500):
        if (await client.get("/-/ready")).status == 200:
            return client
        await asyncio.sleep(0.01)
    raise AssertionError("the app never became ready")


async def test_the_first_scrape_after_start_shows_no_zero_for_what_is_not_known_yet(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """Ready comes with the first listing: LastTagTime (inspects) and /system/df are not known yet, and the
    scrape says so (pending count, absent series), never 0. The inspects are held back (not failed: a failing
    inspect is an engine path failing, docker_up 0), /system/df fails."""
    engine = SlowInspectEngine("bookworm")  # API 1.41: shared sizes come only from /system/df
    engine.failing = {"disk_usage"}
    config = parse_config({"filesystem": {"path": str(tmp_path)}, "state": {"path": str(tmp_path / "state.json")}})
    reads = await FirstReads.start(engine)
    client = await ready_client(aiohttp_client, create_app(config, docker_host=None, engine=engine, first_reads=reads))
    samples = parse_samples(await (await client.get("/metrics")).text())
    names = {name for name, _, _ in samples}
    value = {name: v for name, labels, v in samples if not labels}
    assert value["docker_up"] == 1 and value["docker_images"] == len(engine.images)
    assert value["docker_exporter_pending_inspects"] == len(engine.images)
    unknown = {
        "docker_image_last_tag_timestamp_seconds",
        "docker_image_shared_size_bytes",
        "docker_image_unique_size_bytes",
        "docker_images_disk_usage_bytes",
        "docker_images_reclaimable_bytes",
        "docker_exporter_disk_usage_timestamp_seconds",
    }
    assert not names & unknown
    assert engine.calls.count("list_images") == 1  # the reads sent ahead were the first poll's


# a state file saved well before, and one saved less than a second before the listing went out (a replay
# reaching back before it re-marked images the file proves present as just arrived: found by the engine tests)
@pytest.mark.parametrize("saved_at", [None, 1_600_000_000.0, 1_700_000_000.2])
async def test_events_are_replayed_from_when_the_listing_was_sent(
    tmp_path: Path, aiohttp_client: Any, saved_at: float | None
) -> None:
    """The listing goes out before the event stream starts: the follower replays from then (or from the saved
    state's time, never earlier), so a change in between reaches the snapshot."""
    state = tmp_path / "state.json"
    if saved_at is not None:
        state.write_text(json.dumps({"version": STATE_VERSION, "saved_at": saved_at, "present": []}))
    engine = ReplayingEngine("bookworm")
    config = parse_config({"filesystem": {"path": str(tmp_path)}, "state": {"path": str(state)}})
    reads = await FirstReads.start(engine, clock=lambda: 1_700_000_000.5)
    await ready_client(aiohttp_client, create_app(config, docker_host=None, engine=engine, first_reads=reads))
    for _ in range(500):
        if engine.replays:
            break
        await asyncio.sleep(0.01)
    since, _until = engine.replays[0]
    assert since == int(saved_at if saved_at is not None else 1_700_000_000.5)


def test_a_taken_port_stops_startup_with_one_line_while_the_first_reads_are_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The reads go out before the listener binds: a taken port still ends start-up at once, exit 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["--web.listen-address", f"127.0.0.1:{port}", "--docker.host", "unix:///nonexistent/e.sock"])
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in capsys.readouterr().err


def test_the_collector_paused_at_launch_is_running_again_once_the_app_is_built() -> None:
    """`python -m exporter` pauses cyclic collection at launch (exporter/core/memory.py); building the app must
    resume it, or the exporter would run for good without it. Seen here through the same path as above."""
    memory.pause_collector_for_startup()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            cli.main(["--web.listen-address", f"127.0.0.1:{port}", "--docker.host", "unix:///nonexistent/e.sock"])
        assert gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
