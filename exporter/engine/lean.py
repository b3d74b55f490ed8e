"""The lean engine client: plain HTTP/1.1 over the engine's unix socket, on the event loop.

Why: every deletion pays an inspect and a DELETE, and through the SDK each costs several times the engine's
own work in Python (requests' environment, proxy and netrc lookups, header parsing) plus two thread hops, on
the same cores dockerd needs. When the engine is on a unix socket, the delete lane's calls and every image
inspect go over kept-alive connections here (one per call in flight), at the API version an SDK client
negotiated (`client.Engine` asks it and hands it over).
"""

from __future__ import annotations

import asyncio
import select

from exporter.engine import http1
from exporter.engine.errors import AnswerTooLarge, EngineUnavailable


class UnixConnection:
    """One HTTP/1.1 connection to the engine's unix socket, on the event loop, kept alive between calls.

    Minimal on purpose: bodiless requests, answers framed by Content-Length or chunked (what the engine's Go
    server sends) or by the connection's end (`http1`). Any error, timeout or cancellation closes it.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, socket_path: str) -> UnixConnection:
        reader, writer = await asyncio.open_unix_connection(socket_path)
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.close()

    def stale(self) -> bool:
        """The engine closed the idle connection (or sent something unasked): do not send on it.

        Asked of the socket itself, not only of the stream (which learns of an end one loop turn later),
        so a DELETE is never sent on a connection the engine already dropped, where its fate could not be
        told from a lost answer.
        """
        if self.reader.at_eof() or self.writer.is_closing():
            return True
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return True
        readable, _, _ = select.select([sock.fileno()], [], [], 0)
        return bool(readable)

    async def request(self, method: str, target: str, max_bytes: int) -> tuple[int, bytes, bool]:
        """Send one bodiless request and read its whole answer: (status, body, still usable).

        OSError or EOFError when the connection breaks, ValueError when the answer is not HTTP/1.x,
        AnswerTooLarge (without reading it) when its body is over `max_bytes`.
        """
        try:
            return await self._exchange(method, target, max_bytes)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, method: str, target: str, max_bytes: int) -> tuple[int, bytes, bool]:
        self.writer.write(http1.request(method, target))
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the engine closed the connection without answering")
        header_lines = []
        while line := (await self.reader.readline()).strip():
            header_lines.append(line)
        head = http1.parse_head(status_line.strip(), header_lines)
        keep_alive = head.keep_alive
        framing = head.framing
        if framing == "chunked":
            body = await self._chunked(method, target, max_bytes)
        elif framing == "close":
            body, keep_alive = await self.reader.read(max_bytes + 1), False
            if len(body) > max_bytes:
                raise AnswerTooLarge(f"{method} {target}", max_bytes, None)
        else:
            if framing > max_bytes:
                raise AnswerTooLarge(f"{method} {target}", max_bytes, framing)
            body = await self.reader.readexactly(framing)
        if not keep_alive:
            self.close()
        return head.status, body, keep_alive

    async def _chunked(self, method: str, target: str, max_bytes: int) -> bytes:
        parts = []
        total = 0
        while size := http1.chunk_size(await self.reader.readline()):
            total += size
            if total > max_bytes:
                raise AnswerTooLarge(f"{method} {target}", max_bytes, None)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)  # the CRLF after each chunk
        while (await self.reader.readline()).strip():  # trailer fields, then the empty line
            pass
        return b"".join(parts)


class LeanClient:
    """Kept-alive connections to one engine's socket, and what the last call learned about that path."""

    def __init__(self) -> None:
        self._idle: list[UnixConnection] = []  # kept-alive connections not in use
        #: The API version the connections speak, negotiated by an SDK client; None: ask again.
        self.version: str | None = None
        #: Why the last call could not reach the engine; None once a call goes through.
        self.error: str | None = None

    async def request(
        self, socket_path: str, method: str, path: str, seconds: float, max_bytes: int
    ) -> tuple[int, bytes]:
        """`method /v<version>path` on an idle connection or a new one, within `seconds`: (status, body).

        A broken, refused or silent connection is EngineUnavailable, and every idle connection is dropped
        with the version (the engine may have restarted, upgraded); AnswerTooLarge passes through.
        """
        assert self.version is not None
        try:
            async with asyncio.timeout(seconds):
                conn = self._idle_connection() or await UnixConnection.open(socket_path)
                status, body, reusable = await conn.request(method, f"/v{self.version}{path}", max_bytes)
        except TimeoutError:
            self.drop()
            self.error = f"{method} {path}: engine did not answer within {seconds:.0f}s"
            raise EngineUnavailable(self.error) from None
        except (OSError, EOFError, ValueError) as exc:
            self.drop()
            self.error = f"{method} {path}: {type(exc).__name__}: {exc}"
            raise EngineUnavailable(self.error) from exc
        self.error = None
        if reusable:
            self._idle.append(conn)
        return status, body

    def _idle_connection(self) -> UnixConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.stale():
                return conn
            conn.close()
        return None

    def drop(self) -> None:
        """Close every idle connection and forget the version."""
        self.version = None
        for conn in self._idle:
            conn.close()
        self._idle.clear()
