"""A Unix-socket proxy in front of a private dockerd that holds chosen requests until the test says go, or
answers them itself.

What a real engine cannot be made to do on demand is *when* another client acts: to put a `docker tag`
exactly between the exporter's last check and its DELETE, the proxy holds the DELETE (it has not reached
the engine yet), the test acts on the engine directly, then releases the DELETE, which the engine answers
as it would any other. Nor does a real engine answer with a malformed or oversized body: `replace()` makes
the proxy answer matching requests with the given body (framed as the engine frames it: Content-Length, or
chunked as Go sends a large JSON answer) until the test removes it. Everything else passes through untouched.

One upstream connection per request, with `Connection: close` both ways, so the proxy never has to frame
responses (streams such as /events are relayed as they come).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.lifecycle import Managed

_HEAD_END = b"\r\n\r\n"


@dataclass
class Hold:
    """One request to hold: `arrived` is set when it is held, it goes on after `release()`."""

    method: str
    path: re.Pattern[str]
    arrived: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    target: str = ""

    def release(self) -> None:
        self.released.set()


@dataclass
class Replacement:
    """Answer requests with this method and path (without the API version prefix) with `body` while armed."""

    method: str
    path: re.Pattern[str]
    body: bytes
    status: int = 200
    chunked: bool = False
    #: Content-Length announced (None: the body's length); a larger one makes a client that trusts it wait.
    length: int | None = None
    served: int = 0


class FaultProxy(Managed):
    """Listens on `path`, forwards to the engine socket `upstream`; `hold()` arms a one-shot hold."""

    def __init__(self, upstream: Path, path: Path) -> None:
        self.upstream = Path(upstream)
        self.path = Path(path)
        self.host = f"unix://{self.path}"
        self.requests: list[str] = []
        self._holds: list[Hold] = []
        self._replacements: list[Replacement] = []
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    def hold(self, method: str, path_regex: str) -> Hold:
        """Hold the next request with this method whose path (without the API version prefix) matches."""
        hold = Hold(method.upper(), re.compile(path_regex))
        with self._lock:
            self._holds.append(hold)
        return hold

    def replace(self, method: str, path_regex: str, body: bytes, **kw: object) -> Replacement:
        """Answer every matching request with `body` (see `Replacement`) until `restore(it)`."""
        replacement = Replacement(method.upper(), re.compile(path_regex), body, **kw)  # type: ignore[arg-type]
        with self._lock:
            self._replacements.append(replacement)
        return replacement

    def restore(self, replacement: Replacement) -> None:
        with self._lock:
            self._replacements.remove(replacement)

    def _matching_replacement(self, method: str, path: str) -> Replacement | None:
        bare = re.sub(r"^/v[0-9.]+", "", path.split("?", 1)[0])
        with self._lock:
            for replacement in self._replacements:
                if replacement.method == method and replacement.path.search(bare):
                    replacement.served += 1
                    return replacement
        return None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(64)
        self._server = server
        self._spawn(self._accept)

    def stop(self) -> None:
        with self._lock:
            for hold in self._holds:
                hold.release()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        for thread in self._threads:
            thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while self._server is not None:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._spawn(self._serve, client)

    def _matching_hold(self, method: str, path: str) -> Hold | None:
        bare = re.sub(r"^/v[0-9.]+", "", path.split("?", 1)[0])
        with self._lock:
            for hold in self._holds:
                if hold.method == method and hold.path.search(bare):
                    self._holds.remove(hold)
                    hold.target = bare
                    return hold
        return None

    def _serve(self, client: socket.socket) -> None:
        with client:
            head, rest = _read_head(client)
            if head is None:
                return
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
            self.requests.append(f"{method} {target}")
            replacement = self._matching_replacement(method, target)
            if replacement is not None:
                with contextlib.suppress(OSError):  # the client may stop reading (an answer over its limit)
                    _answer(client, replacement)
                return
            hold = self._matching_hold(method, target)
            if hold is not None:
                hold.arrived.set()
                hold.released.wait(timeout=120)
            request = "\r\n".join([lines[0], *headers, "Connection: close", "", ""]).encode("latin-1")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
                upstream.connect(str(self.upstream))
                upstream.sendall(request + rest)
                self._spawn(_pump, client, upstream)  # the request body, if any is still coming
                _pump(upstream, client)


def _answer(client: socket.socket, replacement: Replacement) -> None:
    body = replacement.body
    head = [f"HTTP/1.1 {replacement.status} Replaced", "Content-Type: application/json", "Connection: close"]
    if replacement.chunked:
        client.sendall(("\r\n".join([*head, "Transfer-Encoding: chunked", "", ""])).encode("latin-1"))
        for start in range(0, len(body), 1 << 20):
            chunk = body[start : start + (1 << 20)]
            client.sendall(f"{len(chunk):x}\r\n".encode("ascii") + chunk + b"\r\n")
        client.sendall(b"0\r\n\r\n")
    else:
        length = len(body) if replacement.length is None else replacement.length
        client.sendall(("\r\n".join([*head, f"Content-Length: {length}", "", ""])).encode("latin-1") + body)


def _read_head(sock: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while _HEAD_END not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        data += chunk
    head, _, rest = data.partition(_HEAD_END)
    return head, rest


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until the source closes (or either side fails)."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(65536):
            sink.sendall(chunk)
