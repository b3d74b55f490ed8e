"""The delete lane's lean unix-socket client, where a real engine cannot be made to act on demand.

A real dockerd keeps idle connections open; what it does on shutdown or restart (closing a kept-alive
connection between two requests) cannot be timed from a test, so a tiny server on a unix socket plays that
part with recorded bookworm payloads. What the lean client answers against a real engine is in
tests/integration/test_engine.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from exporter.core.engineaddress import AddressError
from exporter.engine.client import Engine, EngineConflict, EngineNotFound

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api" / "bookworm"


def payload(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@dataclass
class ClosingServer:
    """Answers each connection's requests; with `drop`, closes a connection after an image request (idle drop)."""

    path: Path
    drop: bool = False
    requests: list[tuple[int, str, str]] = field(default_factory=list)  # (connection number, method, path)
    connections: int = 0
    dropped: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    _sock: socket.socket | None = None

    def start(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(8)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, self.connections), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                self.requests.append((number, method, target))
                status, body = self._answer(method, target)
                start = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                if method == "GET" and "/images/" in target:  # as Go frames an answer it did not buffer whole
                    half = len(body) // 2
                    chunks = b"".join(b"%x;ext=1\r\n" % len(c) + c + b"\r\n" for c in (body[:half], body[half:]))
                    conn.sendall(f"{start}Transfer-Encoding: chunked\r\n\r\n".encode() + chunks + b"0\r\n\r\n")
                else:
                    conn.sendall(f"{start}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                if self.drop and "/images/" in target:
                    conn.close()  # the engine drops the kept-alive connection after answering
                    self.dropped.release()
                    return

    @staticmethod
    def _answer(method: str, target: str) -> tuple[str, bytes]:
        if target.endswith("/version"):
            return "200 OK", payload("version.json")
        if method == "DELETE" and "inuse" in target:
            return "409 Conflict", payload("delete-conflict.json")
        if method == "DELETE" and "gone" in target:
            return "404 Not Found", payload("delete-unknown.json")
        if method == "DELETE":
            return "200 OK", payload("delete-image.json")
        if method == "POST" and "/tag?" in target:
            return "201 Created", b""  # dockerd's answer to a tag: no body
        return "200 OK", payload("image-inspect.json")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ClosingServer]:
    srv = ClosingServer(tmp_path / "engine.sock")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def engine(server: ClosingServer) -> Iterator[Engine]:
    facade = Engine(f"unix://{server.path}", timeout=10)
    yield facade
    facade.close()


async def test_a_connection_the_engine_dropped_is_not_reused(engine: Engine, server: ClosingServer) -> None:
    """Without the staleness check the second call is written into the closed connection and fails."""
    server.drop = True
    first = await engine.inspect_image("sha256:abc", lane="delete")
    assert await asyncio.to_thread(server.dropped.acquire, True, 10)
    second = await engine.inspect_image("sha256:abc", lane="delete")
    assert first == second == json.loads(payload("image-inspect.json"))
    assert await asyncio.to_thread(server.dropped.acquire, True, 10)
    answer = await engine.remove_image("sha256:abc")
    assert answer == json.loads(payload("delete-image.json"))
    image_calls = [(n, m) for n, m, t in server.requests if "/images/" in t]
    assert [m for _, m in image_calls] == ["GET", "GET", "DELETE"]
    assert len({n for n, _ in image_calls}) == 3  # each on a fresh connection: the dropped ones were noticed


async def test_connections_are_kept_alive(engine: Engine, server: ClosingServer) -> None:
    for _ in range(3):
        await engine.inspect_image("sha256:abc", lane="delete")
    await engine.remove_image("sha256:abc")
    assert {n for n, _, t in server.requests if "/images/" in t} == {server.connections}  # one, the last opened


async def test_the_lean_client_speaks_the_negotiated_version_and_never_forces(
    engine: Engine, server: ClosingServer
) -> None:
    await engine.remove_image("localhost:5000/team/app:1.0")
    deletes = [t for _, m, t in server.requests if m == "DELETE"]
    assert deletes == ["/v1.41/images/localhost:5000/team/app:1.0?force=false&noprune=false"]


async def test_a_hold_tag_is_a_bodiless_post_without_force(engine: Engine, server: ClosingServer) -> None:
    await engine.tag_image("sha256:abc", "docker-image-exporter.hold/0123456789abcdef", "abc")
    await engine.remove_image("sha256:abc")  # the connection stays usable after the empty 201
    posts = [t for _, m, t in server.requests if m == "POST"]
    assert posts == ["/v1.41/images/sha256:abc/tag?repo=docker-image-exporter.hold%2F0123456789abcdef&tag=abc"]
    assert len({n for n, _, t in server.requests if "/images/" in t}) == 1


async def test_engine_refusals_keep_their_meaning(engine: Engine) -> None:
    with pytest.raises(EngineConflict, match="container f47e7876e1ae is using"):
        await engine.remove_image("sha256:inuse")
    with pytest.raises(EngineNotFound):
        await engine.remove_image("sha256:gone")


def test_only_unix_hosts_get_the_lean_client() -> None:
    assert Engine("unix:///run/docker.sock")._socket_path == "/run/docker.sock"
    assert Engine("unix://run/docker.sock")._socket_path == "/run/docker.sock"  # as the SDK reads it
    assert Engine(None)._socket_path == "/var/run/docker.sock"
    assert Engine("tcp://127.0.0.1:2376")._socket_path is None
    with pytest.raises(AddressError, match="ssh"):
        Engine("ssh://user@host")
