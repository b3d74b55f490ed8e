"""The listener under slow and abusive clients, and start-up failures of the listener (issue #12 and #13).

Real sockets on loopback throughout: in-process `serve()` with a tiny app for the exact slot decisions, and
the exporter as a subprocess (engine address pointing nowhere; no engine needed) for what an operator sees:
`/metrics` answering through a slowloris flood at a low descriptor limit, the log staying short, a taken port
giving one line and exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from exporter.web import server
from exporter.web.listen import ListenerLimits
from exporter.web.server import connection_budget, serve, waiting_for_auth
from tests.harness.exporter import ExporterProcess
from tests.harness.ports import free_port

NOWHERE = "unix:///nonexistent/die-server-limits.sock"
PARTIAL_HEADERS = b"GET /metrics HTTP/1.1\r\nHost: exporter\r\nUser-Agent: slow"


# --------------------------------------------------------------------------------------- in-process


class Server:
    def __init__(
        self, port: int, release: asyncio.Event, started: asyncio.Queue[str], checked: asyncio.Queue[bool]
    ) -> None:
        self.port = port
        self.release = release
        self.started = started  # one entry per /slow or /checking request whose handler is running
        self.checked = checked

    async def handlers_running(self, count: int) -> None:
        for _ in range(count):
            await asyncio.wait_for(self.started.get(), 10)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def get(self, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.connect()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        await writer.drain()
        return reader, writer

    async def stalled(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self.connect()
        writer.write(PARTIAL_HEADERS)
        await writer.drain()
        return reader, writer


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response with Content-Length (what aiohttp sends for these handlers)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(re.search(rb"Content-Length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    return head + await asyncio.wait_for(reader.readexactly(length), 10)


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """True when the server closed (EOF or reset) within the test's patience."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


@contextlib.asynccontextmanager
async def running(limits: ListenerLimits) -> AsyncIterator[Server]:
    release = asyncio.Event()
    started: asyncio.Queue[str] = asyncio.Queue()
    checked: asyncio.Queue[bool] = asyncio.Queue()  # `wanted()` of each /checking request, once released

    async def slow(request: web.Request) -> web.Response:
        started.put_nowait(request.path)
        await release.wait()
        return web.Response(text="slow done")

    async def fast(_request: web.Request) -> web.Response:
        return web.Response(text="fast")

    async def denied(_request: web.Request) -> web.Response:
        return web.Response(status=401, text="denied")

    async def checking(request: web.Request) -> web.Response:
        """Stands for a request in the basic-auth gate's queue: refused once released (or if its client left)."""
        with waiting_for_auth() as wanted:
            started.put_nowait(request.path)
            await release.wait()
            checked.put_nowait(wanted())
            return web.Response(status=401, text="denied")

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_get("/fast", fast)
    app.router.add_get("/denied", denied)
    app.router.add_get("/checking", checking)
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(app, host="127.0.0.1", port=port, ssl_context=None, limits=limits, shutdown_timeout=1, stop=stop)
    )
    for _ in range(200):
        with contextlib.suppress(OSError):
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            break
        await asyncio.sleep(0.05)
    try:
        yield Server(port, release, started, checked)
    finally:
        release.set()
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_stalled_connection_is_closed_after_the_header_timeout_and_others_are_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "exporter.web.server")
    async with running(ListenerLimits(max_connections=10, read_header_timeout=0.5)) as srv:
        reader, _writer = await srv.stalled()
        ok_reader, _ok = await srv.get("/fast")
        assert (await read_response(ok_reader)).endswith(b"fast")
        assert await closed_by_server(reader)
    lines = [r.getMessage() for r in caplog.records if "listener closed" in r.getMessage()]
    assert len(lines) == 1
    assert "1 sent no complete request headers within 0.5s (--web.read-header-timeout)" in lines[0]


async def test_kept_alive_connection_survives_the_header_timeout_between_requests() -> None:
    """The deadline runs only while a request is being received, not while the client is between requests."""
    async with running(ListenerLimits(max_connections=10, read_header_timeout=0.3)) as srv:
        reader, writer = await srv.get("/fast")
        assert (await read_response(reader)).endswith(b"fast")
        await asyncio.sleep(1.0)  # > the header timeout: an idle keep-alive connection must still be open
        writer.write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        await writer.drain()
        assert (await read_response(reader)).endswith(b"fast")


async def test_slow_handler_is_not_cut_off_by_the_header_timeout() -> None:
    async with running(ListenerLimits(max_connections=10, read_header_timeout=0.3)) as srv:
        reader, _writer = await srv.get("/slow")
        await srv.handlers_running(1)
        await asyncio.sleep(1.0)  # the handler runs past the header timeout
        srv.release.set()
        assert (await read_response(reader)).endswith(b"slow done")


async def test_at_the_cap_the_oldest_stalled_connection_makes_room(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exporter.web.server")
    async with running(ListenerLimits(max_connections=2, read_header_timeout=30)) as srv:
        oldest, _w1 = await srv.stalled()
        newer, _w2 = await srv.stalled()
        await asyncio.sleep(0.1)  # both accepted before the third arrives
        reader, _w3 = await srv.get("/fast")
        assert (await read_response(reader)).endswith(b"fast")
        assert await closed_by_server(oldest)
        with pytest.raises(TimeoutError):  # the newer stalled one still holds its slot
            await asyncio.wait_for(newer.read(1), 0.5)
    assert any("1 stalled or idle closed to admit new ones" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("unproven", ["/denied", "/checking"])
async def test_at_the_cap_a_served_client_outlives_connections_that_only_failed_auth(
    unproven: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Were the oldest idle connection to make room whatever it was, a flood of wrong passwords would push
    out the scraper's kept-alive connection (its requests answered 200) while the flood's own stayed."""
    caplog.set_level(logging.WARNING, "exporter.web.server")
    async with running(ListenerLimits(max_connections=2, read_header_timeout=30)) as srv:
        served, served_w = await srv.get("/fast")
        assert (await read_response(served)).endswith(b"fast")  # now idle between requests, the oldest
        refused, _w = await srv.get(unproven)
        if unproven == "/checking":
            await srv.handlers_running(1)  # handling, but only waiting for a credential check
        else:
            assert (await read_response(refused)).endswith(b"denied")  # idle after a 401
        newcomer, _w3 = await srv.get("/fast")
        assert (await read_response(newcomer)).endswith(b"fast")
        assert await closed_by_server(refused)
        served_w.write(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")  # the served client's connection is still open
        await served_w.drain()
        assert (await read_response(served)).endswith(b"fast")
    reason = "waiting for a basic auth check" if unproven == "/checking" else "stalled or idle"
    assert any(f"1 {reason} closed to admit new ones" in r.getMessage() for r in caplog.records)


async def test_a_credential_check_is_not_wanted_once_its_client_is_gone() -> None:
    async with running(ListenerLimits(max_connections=10, read_header_timeout=30)) as srv:
        gone, writer = await srv.get("/checking")
        await srv.handlers_running(1)
        writer.transport.abort()  # reaches the server before the next connection does (loopback, in order)
        assert await closed_by_server(gone)
        kept, _w = await srv.get("/checking")
        await srv.handlers_running(1)
        srv.release.set()
        assert (await read_response(kept)).endswith(b"denied")
        wanted = sorted([await asyncio.wait_for(srv.checked.get(), 10) for _ in range(2)])
        assert wanted == [False, True]


async def test_when_every_slot_is_handling_a_request_a_newcomer_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "exporter.web.server")
    async with running(ListenerLimits(max_connections=2, read_header_timeout=30)) as srv:
        busy = [await srv.get("/slow"), await srv.get("/slow")]
        await srv.handlers_running(2)
        refused, _w = await srv.get("/fast")
        assert await closed_by_server(refused)
        srv.release.set()
        for reader, _writer in busy:
            assert (await read_response(reader)).endswith(b"slow done")
    assert any("1 refused: all 2 connections were busy" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------------------- subprocess


class LimitedExporter(ExporterProcess):
    """The exporter under a file descriptor limit (`prlimit`), like a container's or systemd's default."""

    def __init__(self, *args: Any, nofile: int, hard_nofile: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nofile = nofile
        self.hard_nofile = hard_nofile or nofile

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.hard_nofile}", "--", *super().command()]


@pytest.fixture
def exporters(tmp_path: Path) -> Iterator[list[ExporterProcess]]:
    made: list[ExporterProcess] = []
    yield made
    for exp in made:
        exp.stop()


def state_config(tmp_path: Path) -> dict[str, Any]:
    return {"state": {"path": str(tmp_path / "state.json")}, "poll": {"interval": "10m"}}


def listener_counts(log: str) -> int:
    return sum(int(n) for n in re.findall(r"listener closed (\d+) connections", log))


def test_metrics_answer_through_a_slowloris_flood_beyond_the_descriptor_limit(
    tmp_path: Path, exporters: list[ExporterProcess]
) -> None:
    """Before the guard, 300 stalled connections at a 256-descriptor limit left accept() failing (EMFILE):
    `/metrics` timed out and the log grew by a traceback per accept retry."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    exp = LimitedExporter(
        tmp_path,
        NOWHERE,
        state_config(tmp_path),
        nofile=256,
        extra_args=["--web.max-connections", "64", "--web.read-header-timeout", "2s"],
    )
    exporters.append(exp)
    exp.start()
    flood = 300
    sockets: list[socket.socket] = []
    try:
        for _ in range(flood):
            s = socket.create_connection(("127.0.0.1", exp.port), timeout=10)
            s.sendall(PARTIAL_HEADERS)
            sockets.append(s)
        with urllib.request.urlopen(f"{exp.url}/metrics", timeout=20) as resp:
            assert resp.status == 200
            assert b"docker_up 0.0" in resp.read()
        # every stalled connection is closed by the server: evicted at the cap, the rest at the timeout
        exp.wait_for(lambda: listener_counts(exp.logs()) >= flood, timeout=60, what="summary of closed connections")
        for s in sockets:
            s.settimeout(10)
            with contextlib.suppress(ConnectionResetError):  # a reset is a close too
                assert s.recv(1) == b""
    finally:
        for s in sockets:
            s.close()
    log = exp.logs()
    assert listener_counts(log) == flood
    assert len(re.findall("listener closed", log)) <= 3  # one line per 10 s, not one per connection
    assert "Traceback" not in log and "out of system resource" not in log
    assert len(log) < 20_000


GARBAGE = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",  # TLS on the plain port
    b"GET / HTTP/1.1\r\nHost: exporter\r\nBad Header\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: exporter\r\n\r\n",
    b"\xff\xfe garbage that is no request line at all\r\n\r\n",
]


def send_garbage(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        answer = s.recv(4096)
    return answer


def test_malformed_requests_are_one_short_line_not_a_traceback_each(
    tmp_path: Path, exporters: list[ExporterProcess]
) -> None:
    """aiohttp's own report of each unparseable request is `level=error msg="Error handling request"` with a
    traceback: a scanner would fill the log with them."""
    exp = ExporterProcess(tmp_path, NOWHERE, state_config(tmp_path))
    exporters.append(exp)
    exp.start()
    before = len(exp.logs())
    for payload in GARBAGE[1:]:
        assert send_garbage(exp.port, payload).startswith(b"HTTP/1.0 400 Bad Request")
    exp.wait_for(lambda: "malformed HTTP request" in exp.logs()[before:], timeout=10, what="the malformed request line")
    assert exp.get("/-/healthy") == "Healthy.\n"  # the requests after them are answered, and logged if at all
    added = exp.logs()[before:]
    assert "Traceback" not in added and "Error handling request" not in added
    lines = [line for line in added.splitlines() if "caller=exporter.web.server" in line or "aiohttp" in line]
    assert len(lines) == 1, lines
    assert "level=info" in lines[0]
    assert 'msg="malformed HTTP request refused" peer=127.0.0.1 status=400 problem="Invalid header token"' in lines[0]


class SetOnMessage(logging.Handler):
    """Sets `seen` when a record containing `text` is logged (on the loop's thread: the server's timers)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_malformed_requests_within_the_interval_make_one_summary_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "LOG_INTERVAL", 0.5)
    caplog.set_level(logging.DEBUG)
    on_summary = SetOnMessage("more malformed")
    logging.getLogger("exporter.web.server").addHandler(on_summary)
    async with running(ListenerLimits(max_connections=10, read_header_timeout=5)) as srv:
        for payload in GARBAGE:
            reader, writer = await srv.connect()
            writer.write(payload)
            assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.0 400 Bad Request")
            writer.close()
        try:
            await asyncio.wait_for(on_summary.seen.wait(), 10)  # written by a timer of the server's loop
        finally:
            logging.getLogger("exporter.web.server").removeHandler(on_summary)
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "exporter.web"))]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("INFO", "malformed HTTP request refused"),
        ("INFO", f"{len(GARBAGE) - 1} more malformed HTTP requests refused in the last 0.5s"),
    ]
    assert all(r.exc_info is None for r in records)


def test_taken_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        exp = ExporterProcess(tmp_path, NOWHERE, state_config(tmp_path), port=port)
        exp.write_config()
        env = exp._env()
        started = time.monotonic()
        proc = subprocess.run(exp.command(), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "level=error" in line]
    assert errors == [
        errors[0].split(" level=")[0]
        + " level=error caller=exporter "
        + f'msg="cannot listen on 127.0.0.1:{port}: address already in use; change --web.listen-address"'
    ]
    assert "Traceback" not in proc.stderr
    # nothing was started before the bind failed: no poller, no engine warning
    assert "unreachable" not in proc.stderr, proc.stderr
    assert time.monotonic() - started < 60


def test_remediation_over_plain_http_on_all_interfaces_warns(tmp_path: Path, exporters: list[ExporterProcess]) -> None:
    config = {
        **state_config(tmp_path),
        "remediation": {
            "enabled": True,
            "dry_run": True,
            "auth": {"bearer_token": "s3cret-token-for-tests"},
            "audit_log": str(tmp_path / "audit.jsonl"),
            "actions": {"clean": {"type": "prune_dangling"}},
            "routes": [{"matchers": ['alertname="X"'], "action": "clean"}],
        },
    }
    everywhere = ExporterProcess(tmp_path, NOWHERE, config, name="all-interfaces")
    everywhere.extra_args = ("--web.listen-address", f"0.0.0.0:{everywhere.port}")
    loopback = ExporterProcess(tmp_path, NOWHERE, config, name="loopback")
    exporters.extend([everywhere, loopback])
    everywhere.start()
    loopback.start()
    warnings = [line for line in everywhere.logs().splitlines() if "level=warn" in line and "plain HTTP" in line]
    assert len(warnings) == 1
    assert f"served over plain HTTP on 0.0.0.0:{everywhere.port}" in warnings[0]
    assert "--web.config.file" in warnings[0]
    assert "plain HTTP" not in loopback.logs()


def test_landing_page_says_what_to_do_when_the_socket_is_missing(
    tmp_path: Path, exporters: list[ExporterProcess]
) -> None:
    exp = ExporterProcess(tmp_path, NOWHERE, state_config(tmp_path))
    exporters.append(exp)
    exp.start()

    def page_with_hint() -> str | None:
        page = exp.get("/")
        return page if "What to do" in page else None

    page = exp.wait_for(page_with_hint, timeout=30, what="a hint on the landing page")
    assert page is not None
    assert "No such file or directory" in page
    assert "is the engine running? check --docker.host" in page


def test_a_cap_above_the_descriptor_limit_is_lowered_with_a_warning(
    tmp_path: Path, exporters: list[ExporterProcess]
) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    exp = LimitedExporter(tmp_path, NOWHERE, state_config(tmp_path), nofile=128)  # default cap 512
    exporters.append(exp)
    exp.start()
    budget = connection_budget(128)
    warnings = [line for line in exp.logs().splitlines() if "does not fit the file descriptor limit" in line]
    assert len(warnings) == 1
    assert f"--web.max-connections=512 does not fit the file descriptor limit 128: using {budget}" in warnings[0]
    assert exp.sample("docker_up") == 0


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one(tmp_path: Path, exporters: list[ExporterProcess]) -> None:
    """As Go programs do: a soft limit of 128 under a hard 4096 leaves room for the default cap, no warning."""
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    exp = LimitedExporter(tmp_path, NOWHERE, state_config(tmp_path), nofile=128, hard_nofile=4096)
    exporters.append(exp)
    exp.start()
    assert exp.pid is not None
    limits = Path(f"/proc/{exp.pid}/limits").read_text()
    assert re.search(r"^Max open files\s+4096\s+4096\s", limits, re.M), limits
    assert "does not fit the file descriptor limit" not in exp.logs()
