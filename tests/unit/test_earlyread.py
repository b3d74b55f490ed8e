"""The listing sent at launch (`exporter.engine.earlyread`): to which engine it may go, what it asks, who takes it.

The engine it would ask must be exactly the one the CLI decides on, or nothing is sent: a wrong guess would
be a connection to an engine nobody named (tests, for one, must never reach the machine's own socket). The
answer is used only by a first poll that talks to that same engine, and any failure falls back to the
normal read. A tiny HTTP/1.1 server on a unix socket plays the engine with recorded payloads.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter import cli
from exporter.config import parse_config
from exporter.core.engineaddress import parse
from exporter.engine import earlyread
from exporter.engine.client import MAX_RESPONSE_BYTES, EngineUnavailable
from exporter.engine.earlyread import EarlyListing, EarlyReadError
from exporter.engine.firstreads import FirstReads
from tests.unit.recorded import RecordedEngine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"


@pytest.fixture(autouse=True)
def nothing_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launch read is process state: no test leaves one for another to claim."""
    monkeypatch.setattr(earlyread, "_pending", None)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# -- which engine -----------------------------------------------------------------------------------------
def engine_host(argv: list[str], environ: dict[str, str]) -> tuple[bool, str | None]:
    """(certain, the address as given) of `earlyread.engine_address`."""
    address = earlyread.engine_address(argv, environ)
    return (False, None) if address is None else (True, address.given)


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        ([], {}, (True, None)),  # the SDK's default socket
        ([], {"DOCKER_HOST": "unix:///env.sock"}, (True, "unix:///env.sock")),
        (["--docker.host", "unix:///flag.sock"], {"DOCKER_HOST": "unix:///env.sock"}, (True, "unix:///flag.sock")),
        (["--docker.host=unix:///flag.sock"], {}, (True, "unix:///flag.sock")),
        (["--web.enable-lifecycle", "--log.level=debug", "--docker.host", "tcp://h:2375"], {}, (True, "tcp://h:2375")),
        (["--config.check"], {}, (False, None)),
        (["--version"], {}, (False, None)),
        (["-h"], {}, (False, None)),
        (["--docker.host", "unix:///flag.sock", "--config.check"], {}, (False, None)),
        (["--docker.h", "unix:///abbreviated.sock"], {}, (False, None)),  # argparse would accept it
        (["--docker.hots", "unix:///typo.sock"], {}, (False, None)),
        (["--docker.host"], {}, (False, None)),  # no value: argparse stops start-up
        (["stray"], {}, (False, None)),
        # the restore subcommand never serves: its engine reads are its own, nothing goes out early
        (["restore", "--run", "abc", "--docker.host", "unix:///flag.sock"], {}, (False, None)),
        (["--", "--docker.host", "unix:///after.sock"], {}, (False, None)),
    ],
)
def test_the_engine_is_the_one_the_cli_decides_on_or_none(
    argv: list[str], environ: dict[str, str], expected: tuple[bool, str | None]
) -> None:
    assert engine_host(argv, environ) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker:\n  host: unix:///config.sock\n", (True, "unix:///config.sock")),
        ("docker: {host: 'unix:///config.sock', timeout: 5s}\n", (True, "unix:///config.sock")),
        ("poll: {interval: 10s}\n", (True, "unix:///env.sock")),  # no docker.host: DOCKER_HOST
        ("docker: {timeout: 5s}\n", (True, "unix:///env.sock")),
        ("", (True, "unix:///env.sock")),
        ("docker:\n  host: 123\n", (False, None)),  # the config is wrong: its loader says so, nothing is sent
        ("docker:\n  host: ''\n", (False, None)),
        ("docker: [host]\n", (False, None)),
        ("- docker\n", (False, None)),
        ("docker: {host: [unclosed\n", (False, None)),
    ],
)
def test_the_config_files_docker_host_comes_before_docker_host_from_the_environment(
    tmp_path: Path, text: str, expected: tuple[bool, str | None]
) -> None:
    config = write(tmp_path, text)
    assert engine_host(["--config.file", config], {"DOCKER_HOST": "unix:///env.sock"}) == expected
    # the flag wins over the file, as in the CLI
    assert engine_host(["--config.file", config, "--docker.host", "unix:///flag.sock"], {}) == (
        True,
        "unix:///flag.sock",
    )


def test_a_config_file_that_cannot_be_read_cheaply_sends_nothing(tmp_path: Path) -> None:
    assert engine_host(["--config.file", str(tmp_path / "missing.yaml")], {}) == (False, None)
    big = write(tmp_path, "# padding\n" * (earlyread.MAX_CONFIG_BYTES // 10 + 1))
    assert engine_host([f"--config.file={big}"], {}) == (False, None)


def test_the_flags_known_here_are_the_clis_flags() -> None:
    """A flag added to the CLI but not here would make every start skip the early read (or worse, a flag
    taking a value read as a switch): keep both lists in step."""
    parser = cli.build_parser()
    taking_value = {o for a in parser._actions if a.nargs != 0 for o in a.option_strings}
    switches = {o for a in parser._actions if a.nargs == 0 for o in a.option_strings}
    assert taking_value == earlyread.VALUE_FLAGS
    assert switches == earlyread.SWITCH_FLAGS | earlyread.NO_ENGINE_FLAGS


def test_nothing_is_sent_to_a_tcp_engine_or_when_unsure() -> None:
    assert earlyread.start(["--docker.host", "tcp://127.0.0.1:2375"], {}) is None
    assert earlyread.start(["--config.check", "--docker.host", "unix:///x.sock"], {}) is None
    assert earlyread.claim(parse("tcp://127.0.0.1:2375")) is None


# -- what it asks -----------------------------------------------------------------------------------------
class FakeEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """`/version` and `/images/json` from recorded payloads, over kept-alive HTTP/1.1; records each target."""

    daemon_threads = True

    def __init__(
        self,
        path: Path,
        recorded: str,
        api_version: str | None = None,
        listing_status: int = 200,
        chunked: bool = False,
    ) -> None:
        self.targets: list[str] = []
        self.chunked = chunked
        self.version = json.loads((FIXTURES / recorded / "version.json").read_text())
        if api_version is not None:
            self.version["ApiVersion"] = api_version
        self.images = (FIXTURES / recorded / "images.json").read_bytes()
        self.listing_status = listing_status
        self.release = threading.Event()
        self.release.set()
        super().__init__(str(path), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeEngine

    def do_GET(self) -> None:
        self.server.targets.append(self.path)
        if self.path == "/version":
            self._send(200, json.dumps(self.server.version).encode())
        elif "/images/json" in self.path:
            self.server.release.wait(30)
            if self.server.chunked:  # as Go frames a large answer: chunks (here three, one with an extension)
                self._send_chunked(self.server.listing_status, self.server.images)
            else:
                self._send(self.server.listing_status, self.server.images)
        else:
            self._send(404, b'{"message": "page not found"}')

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_chunked(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        third = len(body) // 3
        for n, part in enumerate((body[:third], body[third : 2 * third], body[2 * third :])):
            self.wfile.write(b"%x%s\r\n" % (len(part), b";ext=1" if n == 1 else b"") + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: Any) -> None:
        pass


def serve(path: Path, recorded: str, **kwargs: Any) -> Iterator[FakeEngine]:
    server = FakeEngine(path, recorded, **kwargs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeEngine]:
    yield from serve(tmp_path / "engine.sock", "bookworm")


@pytest.mark.parametrize(("recorded", "query"), [("bookworm", ""), ("sid", "?shared-size=1")])
def test_it_asks_what_the_first_poll_asks_at_the_negotiated_version(tmp_path: Path, recorded: str, query: str) -> None:
    """API 1.41 leaves SharedSize unasked (it is -1 there either way); 1.42+ computes it only when asked."""
    for server in serve(tmp_path / "engine.sock", recorded):
        images = earlyread.fetch(str(tmp_path / "engine.sock"))
        api = server.version["ApiVersion"]
        assert server.targets == ["/version", f"/v{api}/images/json{query}"]
        assert images == json.loads((FIXTURES / recorded / "images.json").read_text())


def test_a_chunked_answer_reads_whole_and_the_connection_stays_usable(tmp_path: Path) -> None:
    for server in serve(tmp_path / "engine.sock", "sid", chunked=True):
        assert earlyread.fetch(str(tmp_path / "engine.sock")) == json.loads(server.images)
        assert len(server.targets) == 2


def test_an_engine_that_stops_answering_ends_the_read(tmp_path: Path) -> None:
    """The thread's socket blocks (for MSG_WAITALL), so the kernel's receive timeout bounds each wait."""
    for server in serve(tmp_path / "engine.sock", "bookworm"):
        server.release.clear()
        with pytest.raises(OSError):
            earlyread.fetch(str(tmp_path / "engine.sock"), timeout=1)


def test_an_engine_error_or_a_version_without_api_version_is_an_error(tmp_path: Path) -> None:
    for _ in serve(tmp_path / "a.sock", "bookworm", listing_status=500):
        with pytest.raises(EarlyReadError, match="answered 500"):
            earlyread.fetch(str(tmp_path / "a.sock"))
    for _ in serve(tmp_path / "b.sock", "bookworm", api_version=""):
        with pytest.raises(EarlyReadError, match="ApiVersion"):
            earlyread.fetch(str(tmp_path / "b.sock"))
    with pytest.raises(FileNotFoundError):
        earlyread.fetch(str(tmp_path / "nobody.sock"))


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunked: bool) -> None:
    """Bounded as `docker.max_response_bytes` bounds the normal read; the first poll then reads again."""
    monkeypatch.setattr(earlyread, "MAX_ANSWER_BYTES", 1000)
    for server in serve(tmp_path / "engine.sock", "bookworm", chunked=chunked):
        assert len(server.images) > 1000
        with pytest.raises(EarlyReadError, match="over 1000"):
            earlyread.fetch(str(tmp_path / "engine.sock"))


def test_the_launch_read_is_bounded_by_the_default_limit() -> None:
    assert earlyread.MAX_ANSWER_BYTES == MAX_RESPONSE_BYTES == parse_config({}).docker.max_response_bytes


# -- who takes it -----------------------------------------------------------------------------------------
def test_started_at_launch_and_claimed_once_by_the_same_engine_only(fake: FakeEngine) -> None:
    host = f"unix://{fake.server_address}"
    listing = earlyread.start(["--docker.host", host], {})
    assert listing is not None
    assert listing.future.result(timeout=30) == json.loads(fake.images)
    assert earlyread.claim(parse("unix:///another.sock")) is None  # another engine: not this answer, ...
    assert earlyread.claim(parse(host)) is None  # ... and it is not kept for later either
    again = earlyread.start([f"--docker.host={host}"], {})
    assert earlyread.claim(parse(f"http+unix://{fake.server_address}")) is again  # the same socket, spelt otherwise
    assert earlyread.claim(parse(host)) is None


def early(result: list[dict[str, Any]] | BaseException | None, started_at: float = 1_600_000_000.0) -> EarlyListing:
    listing = EarlyListing(address=parse(None), started_at=started_at)
    if isinstance(result, BaseException):
        listing.future.set_exception(result)
    elif result is not None:
        listing.future.set_result(result)
    return listing


async def test_the_first_poll_takes_the_launch_listing_and_replays_from_when_it_was_sent() -> None:
    engine = RecordedEngine("bookworm")
    sent = [{"Id": "sha256:" + "a" * 64, "RepoTags": ["launch:read"]}]
    reads = await FirstReads.start(engine, clock=lambda: 1_700_000_000.0, early=early(sent))
    assert await reads.images == sent
    assert "list_images" not in engine.calls
    assert reads.started_at == 1_600_000_000.0  # changes since the launch read are replayed, not lost


async def test_under_a_lower_configured_limit_the_launch_listing_is_not_used() -> None:
    """The launch read knows only the default limit: a lower one is the normal read's to apply."""
    engine = RecordedEngine("bookworm")
    engine.max_response_bytes = earlyread.MAX_ANSWER_BYTES - 1
    reads = await FirstReads.start(engine, early=early([{"Id": "sha256:" + "a" * 64}]))
    assert await reads.images == engine.images
    assert engine.calls.count("list_images") == 1


async def test_a_failed_launch_read_is_asked_again_the_normal_way() -> None:
    engine = RecordedEngine("bookworm")
    reads = await FirstReads.start(engine, early=early(ConnectionRefusedError("refused")))
    assert await reads.images == engine.images
    assert engine.calls.count("list_images") == 1


async def test_a_launch_read_the_engine_never_answers_is_the_engine_not_answering() -> None:
    engine = RecordedEngine("bookworm")
    engine.timeout = 0.2
    reads = await FirstReads.start(engine, early=early(None))
    with pytest.raises(EngineUnavailable, match="did not answer within"):
        await asyncio.wait_for(reads.images, 30)
    assert "list_images" not in engine.calls
