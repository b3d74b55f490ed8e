"""The first image listing, asked of the engine at launch, before the exporter's own modules are imported.

Why: with many images the engine needs a noticeable time to list them, and this process as long again to import
pydantic, aiohttp and the docker SDK and to validate its config. `python -m exporter` and the console script
call `start` first thing: it works out the engine exactly as the CLI will (`--docker.host`, else the config
file's `docker.host`, else `DOCKER_HOST`, else the default socket, read by the same
`engineaddress.resolve`, from the CLI's own flag table `engineaddress.FLAGS`) and, when that is a unix socket, a daemon
thread asks `GET /version` and then `GET /v<ApiVersion>/images/json` (with `shared-size=1` from API 1.42,
as `Engine.list_images` does) over a plain blocking socket. The first poll takes the answer through
`claim`, and only when the validated config names the same engine; anything else (another engine, an
error, no answer) leaves the normal read to do the work, so the early read never changes what is read.

Safe by construction:
- It never runs for `--config.check`, `--version` or `--help` (those stay engine-free), nor when the command
  line holds anything it does not recognise exactly (an abbreviated flag could name another engine), nor
  when the config file cannot be read cheaply (missing, over `MAX_CONFIG_BYTES`, not YAML): then the engine
  it would ask is not certain.
- It only reads. The thread is a daemon: a config error still stops start-up at once, whatever the engine does.
- Standard library only (plus PyYAML for the config file, which start-up loads anyway). At import it loads
  only `exporter.core.engineaddress` (the CLI's flag table, the address, the config file's `docker.host`); the
  reading thread loads `engine.http1` (the response parser the lean client shares) and `engine.apiversion`,
  themselves standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from exporter.core import engineaddress
from exporter.core.engineaddress import MAX_CONFIG_BYTES, EngineAddress

__all__ = ["MAX_CONFIG_BYTES", "EarlyListing", "EarlyReadError", "claim", "fetch", "start"]

#: Flags taking a value, flags without one that still start the exporter, and flags after which the process
#: talks to no engine at all: the CLI's own flag table (`engineaddress.FLAGS`).
VALUE_FLAGS = engineaddress.flags_of_kind("value")
SWITCH_FLAGS = engineaddress.flags_of_kind("switch")
NO_ENGINE_FLAGS = engineaddress.flags_of_kind("no-engine")


def __getattr__(name: str) -> Any:
    """`api_at_least` (of `apiversion`), importable from here without loading `apiversion` at import."""
    if name == "api_at_least":
        from exporter.engine.apiversion import api_at_least

        return api_at_least
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: How long the thread's socket waits on the engine; the first poll waits only `docker.timeout` for it.
SOCKET_TIMEOUT = 300.0
#: The largest answer read here: `docker.max_response_bytes`'s default (`engine.MAX_RESPONSE_BYTES`, kept equal
#: by a unit test). A larger answer fails the early read, and the first poll reads again under the configured
#: limit; a configured limit below this one makes the first poll ignore the early read (`firstreads`).
MAX_ANSWER_BYTES = 64 << 20


class EarlyReadError(Exception):
    """The engine answered the early read with an error status or something that is not the expected JSON."""


@dataclass
class EarlyListing:
    """The listing in flight: for which engine (as the CLI will resolve it), since when, its answer."""

    address: EngineAddress
    #: Wall clock before the request was sent: the event replay must start no later than this.
    started_at: float
    future: Future[list[dict[str, Any]]] = field(default_factory=Future)


_pending: EarlyListing | None = None


def engine_address(argv: Sequence[str], environ: Mapping[str, str]) -> EngineAddress | None:
    """The engine the CLI will talk to, worked out without importing it; None unless certain (then nothing
    is sent): `engineaddress.from_command_line`, by the CLI's flag table and its precedence."""
    return engineaddress.from_command_line(argv, environ)


def start(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> EarlyListing | None:
    """Send the first listing now when the engine is certain and on a unix socket; see the module doc."""
    global _pending
    address = engine_address(argv, os.environ if environ is None else environ)
    if address is None or address.socket_path is None:
        return None
    from exporter.core import memory

    memory.configure()
    listing = EarlyListing(address=address, started_at=time.time())
    threading.Thread(target=_fetch_into, args=(listing,), name="early-listing", daemon=True).start()
    _pending = listing
    return listing


def claim(address: EngineAddress) -> EarlyListing | None:
    """The listing sent at launch, if it went to the socket `address` names; each listing is claimed once."""
    global _pending
    listing, _pending = _pending, None
    if listing is None or address.socket_path is None or address.socket_path != listing.address.socket_path:
        return None
    return listing


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    """`size` bytes in as few system calls as the kernel allows (MSG_WAITALL on a blocking socket).

    Why not a buffered reader: each `recv` gives the interpreter lock back and must take it again, and
    while the main thread imports (holding it) every retake waits up to the interpreter's switch interval.
    A large listing is megabytes: in 64 KiB reads those waits add up to a visible part of the transfer.
    """
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
        if n == 0:
            raise ConnectionError("the engine closed the connection mid-answer")
        got += n
    return bytes(data)


def _recv_through(sock: socket.socket, buffer: bytes, marker: bytes) -> tuple[bytes, bytes]:
    """(what comes before `marker`, what came after it), receiving until `marker` has arrived."""
    while marker not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the engine closed the connection before the answer was complete")
        buffer += chunk
    before, _, after = buffer.partition(marker)
    return before, after


def _exchange(sock: socket.socket, target: str) -> tuple[int, bytes]:
    """One bodiless `GET` on a kept-alive HTTP/1.1 connection: (status, body), read as `http1` reads it
    (Content-Length, or chunked: Go sends a large JSON answer as one big chunk)."""
    from exporter.engine import http1  # in the reading thread: this module is imported before anything else

    sock.sendall(http1.request("GET", target))
    head_bytes, buffer = _recv_through(sock, b"", b"\r\n\r\n")
    status_line, *header_lines = head_bytes.split(b"\r\n")
    try:
        head = http1.parse_head(status_line, header_lines)
        framing = head.framing
    except http1.BadAnswer as exc:
        raise EarlyReadError(f"GET {target}: {exc}") from None
    if framing == "close":
        raise EarlyReadError(f"GET {target}: an answer framed by neither Content-Length nor chunks")
    if framing != "chunked":
        if framing > MAX_ANSWER_BYTES:
            raise EarlyReadError(f"GET {target}: the answer is {framing} bytes, over {MAX_ANSWER_BYTES}")
        body = buffer if len(buffer) >= framing else buffer + _recv_exactly(sock, framing - len(buffer))
        return head.status, body[:framing]
    parts: list[bytes] = []
    total = 0
    while True:
        line, buffer = _recv_through(sock, buffer, b"\r\n")
        size = http1.chunk_size(line)
        if size == 0:
            return head.status, b"".join(parts)  # trailers (the engine sends none) are left unread
        total += size
        if total > MAX_ANSWER_BYTES:
            raise EarlyReadError(f"GET {target}: the answer is over {MAX_ANSWER_BYTES} bytes")
        if len(buffer) < size + 2:
            buffer += _recv_exactly(sock, size + 2 - len(buffer))
        parts.append(buffer[:size])
        buffer = buffer[size + 2 :]


def _get_json(sock: socket.socket, target: str) -> Any:
    status, body = _exchange(sock, target)
    if status != 200:
        raise EarlyReadError(f"GET {target}: the engine answered {status}: {body[:200]!r}")
    return json.loads(body)


def fetch(socket_path: str, timeout: float = SOCKET_TIMEOUT) -> list[dict[str, Any]]:
    """`GET /version`, then the image listing at that API version, as the SDK would negotiate it."""
    from exporter.engine.apiversion import api_at_least, images_query  # in the reading thread, as `http1`

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # blocking, so MSG_WAITALL waits in the kernel; the kernel's receive timeout bounds each wait
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(timeout), 0))
        sock.connect(socket_path)
        version = _get_json(sock, "/version")
        api = version.get("ApiVersion") if isinstance(version, dict) else None
        if not isinstance(api, str) or not api_at_least(api, "1.0"):
            raise EarlyReadError(f"GET /version: no usable ApiVersion ({api!r})")
        query = images_query(api)
        images = _get_json(sock, f"/v{api}/images/json" + (f"?{query}" if query else ""))
    finally:
        sock.close()
    if not isinstance(images, list):
        raise EarlyReadError("GET /images/json: the answer is not a list")
    return images


def _fetch_into(listing: EarlyListing) -> None:
    if not listing.future.set_running_or_notify_cancel():
        return
    try:
        assert listing.address.socket_path is not None
        result = fetch(listing.address.socket_path)
    except Exception as exc:  # handed to the first poll, which falls back to the normal read
        listing.future.set_exception(exc)
    else:
        listing.future.set_result(result)
