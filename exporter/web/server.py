"""The HTTP listener: bind first, then start the app; keep slow or idle clients from starving everyone else.

aiohttp waits forever for request headers, so a client that opens connections and never finishes a request
(slowloris) holds a file descriptor each; at the usual 1,024-descriptor limit the process can no longer
accept anyone, `/metrics` included. `ConnectionGuard` wraps aiohttp's protocol factory:

- a request must deliver its complete headers within `read_header_timeout` of the connection (or, on a
  kept-alive connection, of its first byte), else the connection is closed;
- at most `max_connections` are open; a new one over the cap first closes the oldest connection that is not
  handling a request (stalled or idle keep-alive), so a flood cannot lock out a real client; only when every
  slot is busy handling a request is the newcomer closed at once;
- a connection that has not yet had an answer other than 401/429 (no request, or only refused credentials)
  makes room before one that has, and a request waiting for a basic-auth check (`waiting_for_auth`) counts as
  not busy: a flood of wrong passwords cannot hold the slots nor push out an authenticated scraper's
  kept-alive connection;
- what it closes is logged as one summary line per `LOG_INTERVAL`, not one line per connection.

Requests aiohttp cannot parse (a garbage request line, a bad header, TLS sent to the plain HTTP port) are
the client's mistake: aiohttp answers 400 and would log a traceback, mostly at error level, for each one.
`MalformedRequests` makes that one info line naming the peer and the problem, then at most one summary line
per `LOG_INTERVAL`, so a scanner cannot fill the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import enum
import logging
import resource
import signal
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from exporter.core.logs import kv
from exporter.web.listen import ListenerLimits, listen_error

log = logging.getLogger("exporter.web.server")

#: asyncio accepts up to `backlog` connections per wake-up before any of them reaches `admit`: that many
#: descriptors can be in use on top of the cap for a moment.
ACCEPT_BACKLOG = 64
#: Descriptors the rest of the process needs (engine connections per worker, logs, state, audit, epoll).
RESERVED_DESCRIPTORS = 32
#: At most one summary line of closed connections per this many seconds.
LOG_INTERVAL = 10.0


def connection_budget(descriptor_limit: int) -> int:
    """How many connections fit under a file descriptor limit with the accept burst and the process's own."""
    return max(descriptor_limit - ACCEPT_BACKLOG - RESERVED_DESCRIPTORS, 1)


def fit_descriptor_limit(limits: ListenerLimits) -> ListenerLimits:
    """Raise the soft descriptor limit to the hard one (as Go programs do at start), then lower the cap, with
    a warning, if it still does not fit: past the limit accept() fails and nobody gets in, scrapers included."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft == resource.RLIM_INFINITY:
        return limits
    budget = connection_budget(soft)
    if limits.max_connections <= budget:
        return limits
    log.warning(
        "--web.max-connections=%d does not fit the file descriptor limit %d: using %d; raise the limit "
        "(ulimit -n, systemd LimitNOFILE=, docker run --ulimit nofile=) or lower the flag",
        limits.max_connections,
        soft,
        budget,
    )
    return dataclasses.replace(limits, max_connections=budget)


class _State(enum.Enum):
    WAITING = "waiting for request headers"  # the deadline runs
    HANDLING = "handling a request"
    IDLE = "idle keep-alive"


class _Summary:
    """Counts closed connections by reason and logs them as one line per interval."""

    def __init__(self, limits: ListenerLimits, interval: float) -> None:
        self.limits = limits
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self._flush: asyncio.TimerHandle | None = None

    def note(self, reason: str) -> None:
        self.counts[reason] += 1
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self.counts:
            return
        c, self.counts = self.counts, Counter()
        parts = []
        if c["timeout"]:
            parts.append(
                f"{c['timeout']} sent no complete request headers within {self.limits.read_header_timeout:g}s"
                " (--web.read-header-timeout)"
            )
        if c["evicted"]:
            parts.append(f"{c['evicted']} stalled or idle closed to admit new ones at --web.max-connections")
        if c["evicted_auth"]:
            parts.append(f"{c['evicted_auth']} waiting for a basic auth check closed to admit new ones")
        if c["refused"]:
            parts.append(f"{c['refused']} refused: all {self.limits.max_connections} connections were busy")
        log.warning(
            "listener closed %d connections in the last %gs: %s; a steady stream means a scanner, a "
            "slow-client attack, or a --web.max-connections=%d too low for the scrapers and webhooks",
            sum(c.values()),
            self.interval,
            "; ".join(parts),
            self.limits.max_connections,
        )


#: Characters of aiohttp's description of a malformed request worth logging (its first line).
_PROBLEM_SHOWN = 120


class MalformedRequests(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's request-handler logger (`AppRunner(logger=…)`), with unparseable requests made short.

    aiohttp reports such a request as "Error handling request from <peer>" with the parser's exception: the
    first in a quiet spell is one info line (peer, status, problem), the others within `interval` after it
    one count at its end. Everything else goes to aiohttp's logger unchanged (a handler's exception keeps its
    traceback: that one is ours).
    """

    def __init__(self, interval: float) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))
        self.interval = interval
        self.count = 0
        self.last: tuple[str, int, str] | None = None
        self._flush: asyncio.TimerHandle | None = None

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError) and str(msg).startswith("Error handling request"):
            self.note(str(args[0]) if args else "unknown", exc)
            return
        super().log(level, msg, *args, **kwargs)

    def note(self, peer: str, exc: HttpProcessingError) -> None:
        problem = (
            exc.message.strip().splitlines()[0].rstrip(":")[:_PROBLEM_SHOWN] if exc.message else type(exc).__name__
        )
        self.last = (peer, exc.code, problem)
        if self._flush is not None:  # within the interval of a line already written: counted for its end
            self.count += 1
            return
        log.info("malformed HTTP request refused", extra=kv(peer=peer, status=exc.code, problem=problem))
        self._flush = asyncio.get_running_loop().call_later(self.interval, self.flush)

    def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self.count or self.last is None:
            return
        peer, status, problem = self.last
        log.info(
            "%d more malformed HTTP requests refused in the last %gs",
            self.count,
            self.interval,
            extra=kv(last_peer=peer, last_status=status, last_problem=problem),
        )
        self.count = 0


#: Answers that do not make a connection one we serve: refused or unchecked credentials.
_UNPROVEN = frozenset({401, 429})
#: The slot of the request the current task handles (set by `ConnectionGuard.middleware`).
_current: contextvars.ContextVar[GuardedProtocol | None] = contextvars.ContextVar("connection_slot", default=None)


@contextlib.contextmanager
def waiting_for_auth() -> Iterator[Callable[[], bool]]:
    """Mark the current request's connection as waiting for a credential check (evictable under pressure).

    Yields `wanted()`: False once that connection is closed (evicted, or the client hung up), so the check it
    waits for can be skipped. Outside a guarded listener (tests' in-process apps) always True.
    """
    slot = _current.get()
    if slot is not None:
        slot.authenticating = True
    try:
        yield lambda: slot is None or (slot.transport is not None and not slot.transport.is_closing())
    finally:
        if slot is not None:
            slot.authenticating = False


class GuardedProtocol(asyncio.Protocol):
    """One connection: aiohttp's request handler inside, with the header deadline and the slot around it."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.inner: asyncio.Protocol = guard.server()
        self.transport: asyncio.Transport | None = None
        self.state = _State.WAITING
        self.admitted = False
        self.proven = False
        """An answer other than 401/429 went out on this connection: it is a client we serve."""
        self.authenticating = False
        """Its request waits for a basic-auth check: unauthenticated work, the first to give up its slot."""
        self._deadline: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport, plain or TLS
        if not self.guard.admit(self):
            self.transport.abort()
            return
        self.admitted = True
        self._arm()
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.state is _State.IDLE:  # the first byte of the next request on a kept-alive connection
            self.state = _State.WAITING
            self._arm()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.admitted:
            self.guard.release(self)
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # -- request tracking (from the middleware) -------------------------------------------------------
    def request_started(self) -> None:
        self.state = _State.HANDLING
        self._disarm()

    def request_finished(self, status: int | None) -> None:
        self.state = _State.IDLE  # aiohttp's keep-alive timeout closes it if nothing follows
        self.authenticating = False
        if status is not None and status not in _UNPROVEN:
            self.proven = True

    def close(self, reason: str) -> None:
        self.guard.summary.note(reason)
        if self.transport is not None:
            self.transport.abort()

    def _arm(self) -> None:
        self._disarm()
        loop = asyncio.get_running_loop()
        self._deadline = loop.call_later(self.guard.limits.read_header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.state is _State.WAITING:
            self.close("timeout")


class ConnectionGuard:
    """A protocol factory for `loop.create_server` around aiohttp's `web.Server`, plus its middleware."""

    def __init__(self, limits: ListenerLimits, log_interval: float | None = None) -> None:
        self.limits = limits
        interval = LOG_INTERVAL if log_interval is None else log_interval
        self.summary = _Summary(limits, interval)
        self.malformed = MalformedRequests(interval)
        self._server: web.Server | None = None
        # insertion-ordered: the first entry not handling a request is the one to close under pressure
        self._open: dict[asyncio.BaseTransport, GuardedProtocol] = {}

    def attach(self, server: web.Server) -> None:
        self._server = server

    def server(self) -> asyncio.Protocol:
        if self._server is None:
            raise RuntimeError("ConnectionGuard used before attach()")
        protocol: asyncio.Protocol = self._server()
        return protocol

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, protocol: GuardedProtocol) -> bool:
        """Take a slot for `protocol`, closing another connection (`_victim`) if the cap is reached."""
        if len(self._open) >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                self.summary.note("refused")
                return False
            self._forget(victim)
            victim.close("evicted_auth" if victim.state is _State.HANDLING else "evicted")
        assert protocol.transport is not None
        self._open[protocol.transport] = protocol
        return True

    def _victim(self) -> GuardedProtocol | None:
        """The oldest connection not yet proven and not handling a request; else the oldest one waiting for
        a credential check; else the oldest proven one between requests; None when all are busy."""
        authenticating: GuardedProtocol | None = None
        proven_idle: GuardedProtocol | None = None
        for protocol in self._open.values():
            if protocol.state is _State.HANDLING:
                if protocol.authenticating and authenticating is None:
                    authenticating = protocol
            elif not protocol.proven:
                return protocol
            elif proven_idle is None:
                proven_idle = protocol
        return authenticating or proven_idle

    def release(self, protocol: GuardedProtocol) -> None:
        self._forget(protocol)

    def _forget(self, protocol: GuardedProtocol) -> None:
        if protocol.transport is not None and self._open.get(protocol.transport) is protocol:
            del self._open[protocol.transport]

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Headers are in once a handler runs: stop that connection's deadline until the handler returns."""
        protocol = self._open.get(request.transport) if request.transport is not None else None
        if protocol is None:
            return await handler(request)
        protocol.request_started()
        token = _current.set(protocol)
        status: int | None = None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # 404s and the like, answered by aiohttp
            status = exc.status
            raise
        finally:
            _current.reset(token)
            protocol.request_finished(status)


async def serve(
    app: web.Application,
    *,
    host: str | None,
    port: int,
    ssl_context: ssl.SSLContext | None,
    limits: ListenerLimits,
    shutdown_timeout: float = 10.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Bind, start the app, serve until SIGTERM/SIGINT (or `stop`), then shut down in reverse order.

    Binding comes first so that a taken port fails before any task starts: one line, nothing to undo.
    Raises ListenError when the address cannot be bound.
    """
    loop = asyncio.get_running_loop()
    limits = fit_descriptor_limit(limits)
    guard = ConnectionGuard(limits)
    try:
        listener = await loop.create_server(
            guard,
            host,
            port,
            ssl=ssl_context,
            ssl_handshake_timeout=limits.read_header_timeout if ssl_context is not None else None,
            backlog=ACCEPT_BACKLOG,
            reuse_address=True,
            start_serving=False,
        )
    except OSError as exc:
        raise listen_error(host, port, exc) from None
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout, logger=guard.malformed)
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()
        assert runner.server is not None
        guard.attach(runner.server)
        await listener.start_serving()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        listener.close()
        await runner.cleanup()
        with contextlib.suppress(TimeoutError):  # 3.12+ waits for every connection; cleanup closed them
            async with asyncio.timeout(shutdown_timeout):  # not wait_for: it can swallow a cancel on 3.11
                await listener.wait_closed()
        guard.summary.flush()
        guard.malformed.flush()
