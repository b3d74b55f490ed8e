"""HTTP/1.1 answers as the engine's Go server sends them: the one response parser of the raw engine reads.

Two readers use it: the lean client (`lean.UnixConnection`, asyncio streams on the event loop) and the launch
read (`earlyread`, a blocking socket in a thread, before the rest of the exporter is imported). They differ
only in how bytes arrive; what the bytes mean (status line, headers, how the body is framed, chunk sizes) is
decided here, once. Requests are bodiless GET, POST and DELETE. Standard library only: `earlyread` imports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

#: How a body is framed: its length in bytes, chunked, or read until the engine closes the connection.
Framing = int | Literal["chunked", "close"]


class BadAnswer(ValueError):
    """What came back is not an HTTP/1.x answer (or not one this parser reads)."""


def request(method: str, target: str) -> bytes:
    """A bodiless request on a kept-alive connection."""
    return f"{method} {target} HTTP/1.1\r\nHost: docker\r\n\r\n".encode("ascii")


@dataclass(frozen=True)
class Head:
    """The status line and headers of one answer (header names lower-cased)."""

    version: bytes
    status: int
    headers: dict[bytes, bytes]

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry the next request once this answer's body is read."""
        return self.version != b"HTTP/1.0" and self.headers.get(b"connection", b"").lower() != b"close"

    @property
    def framing(self) -> Framing:
        if self.status in (204, 304):
            return 0
        if b"chunked" in self.headers.get(b"transfer-encoding", b"").lower():
            return "chunked"
        if b"content-length" in self.headers:
            try:
                return int(self.headers[b"content-length"])
            except ValueError:
                raise BadAnswer(f"Content-Length is not a number: {self.headers[b'content-length'][:40]!r}") from None
        return "close"


def parse_head(status_line: bytes, header_lines: Iterable[bytes]) -> Head:
    """The head from its status line and header lines (each without its CRLF); BadAnswer when it is not
    HTTP/1.x or a header line has no colon."""
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BadAnswer(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in header_lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadAnswer(f"malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return Head(parts[0], int(parts[1]), headers)


def chunk_size(line: bytes) -> int:
    """The size a chunk-size line announces (extensions ignored); 0 ends the body; BadAnswer if unreadable."""
    text = line.split(b";", 1)[0].strip()
    try:
        return int(text, 16)
    except ValueError:
        raise BadAnswer(f"malformed chunk size: {line[:40]!r}") from None
