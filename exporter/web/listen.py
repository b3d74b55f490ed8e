"""What the command line knows about the listener before aiohttp is imported: its flags' defaults, limits,
how an address is spelled, and the error naming a failed bind.

Why a module of its own: `exporter.web.server` imports aiohttp (slow to import), and `cli` needs these to parse
its flags before it sends the engine the first reads (see `cli.run`); aiohttp is imported while the engine
answers.
"""

from __future__ import annotations

import dataclasses
import errno

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_READ_HEADER_TIMEOUT = 10.0


class ListenError(Exception):
    """The listener could not be opened; the message names the address, the cause and the flag to change."""


@dataclasses.dataclass(frozen=True)
class ListenerLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    read_header_timeout: float = DEFAULT_READ_HEADER_TIMEOUT


def format_address(host: str | None, port: int) -> str:
    """The address as `--web.listen-address` spells it: `:10151`, `127.0.0.1:10151`, `[::1]:10151`."""
    if host is None:
        return f":{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_LISTEN_CAUSES = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
    errno.EADDRNOTAVAIL: "address not available on this host",
}


def listen_error(host: str | None, port: int, exc: OSError) -> ListenError:
    cause = _LISTEN_CAUSES.get(exc.errno or 0) or exc.strerror or str(exc)
    return ListenError(f"cannot listen on {format_address(host, port)}: {cause}; change --web.listen-address")
