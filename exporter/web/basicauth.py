"""HTTP basic auth on every path (`basic_auth_users` in `--web.config.file`), as exporter-toolkit does it.

bcrypt is slow on purpose (tens to hundreds of milliseconds a check), so:
- a successful (user, password) is remembered, keyed by an HMAC under a per-process random key (the password
  itself is not kept), in a small LRU: scrapes every few seconds pay bcrypt once;
- checks run in a worker thread (bcrypt releases the GIL) one at a time, as exporter-toolkit serialises them:
  a flood of wrong passwords costs one core, and cached requests never wait for it;
- at most `MAX_PENDING` checks wait or run; a request beyond that is answered 429 with `Retry-After` at
  once, without a check, instead of queueing behind every guess before it (those 429s are one warning line
  per `LOG_INTERVAL`). A waiting request's connection is marked for the listener
  (`server.waiting_for_auth`): like the connections that only ever got 401/429, it gives up its slot before
  an authenticated client's kept-alive connection does; and a check whose client is gone is skipped;
- an unknown user is compared against a configured hash of the highest cost and refused whatever the
  result, so response times do not tell which users exist; failures are never cached.

Remediation endpoints are exempt: they always carry their own mandatory `remediation.auth`, and a client can
send only one Authorization header, so Alertmanager's bearer token could never pass an outer Basic gate too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.core.logs import kv
from exporter.web.server import waiting_for_auth
from exporter.web.webconfig import WebConfig

log = logging.getLogger("exporter.web.basicauth")

REALM = "docker-image-exporter"
#: Beyond this bcrypt ignores the rest (Go) or refuses (Python's bcrypt 5): refused here whatever the version.
MAX_PASSWORD_BYTES = 72
#: Verified credentials remembered; exporter-toolkit keeps 100 too. A scraper or two need one entry each.
CACHE_SIZE = 100
#: bcrypt checks waiting or running at most: small, so the last in line waits a few checks' time at the
#: usual cost (10), not a flood's length.
MAX_PENDING = 8
#: What a 429 tells the client to wait, in seconds.
RETRY_AFTER = 1
#: At most one warning line about 429 answers per this many seconds.
LOG_INTERVAL = 10.0


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    REFUSED = "refused"
    BUSY = "busy"
    """Not checked: MAX_PENDING checks already wait or run."""


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from `Authorization: Basic …`, or None when the header is absent or not basic auth.

    As Go's `Request.BasicAuth`: base64 of `user:password`, split at the first colon; the password stays bytes.
    """
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        return (user.decode("utf-8"), password) if sep else None
    except (binascii.Error, ValueError):  # not base64, not ASCII, or a user name that is not UTF-8
        return None


def _cost(hashed: bytes) -> int:
    return int(hashed[4:6])


class BasicAuthGate:
    """Decides whether an Authorization header names a configured user with the right password."""

    def __init__(self, users: Mapping[str, str], *, cache_size: int = CACHE_SIZE) -> None:
        if not users:
            raise ValueError("BasicAuthGate needs at least one user")
        self._users = {name: hashed.encode() for name, hashed in users.items()}
        self._decoy = max(self._users.values(), key=_cost)
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._cache_size = cache_size
        self._bcrypt = asyncio.Lock()
        self._pending = 0
        self.bcrypt_checks = 0
        """bcrypt comparisons made so far: what the cache saves is visible in tests and debugging."""
        self.busy = 0
        """Requests answered 429 since the last warning line."""
        self._busy_log: asyncio.TimerHandle | None = None

    def _fingerprint(self, user: str, hashed: bytes, password: bytes) -> tuple[str, bytes]:
        # the hash is part of the key, so a changed hash can never match a remembered password
        return user, hmac.new(self._key, hashed + b"\0" + password, hashlib.sha256).digest()

    def _remembered(self, fingerprint: tuple[str, bytes]) -> bool:
        if fingerprint not in self._verified:
            return False
        self._verified.move_to_end(fingerprint)
        return True

    def _remember(self, fingerprint: tuple[str, bytes]) -> None:
        self._verified[fingerprint] = None
        self._verified.move_to_end(fingerprint)
        while len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)

    async def allows(self, header: str | None) -> bool:
        """True when `header` carries a configured user and that user's password."""
        return await self.check(header) is Verdict.ALLOWED

    async def check(self, header: str | None, wanted: Callable[[], bool] = lambda: True) -> Verdict:
        """Whether `header` carries a configured user and that user's password, or BUSY (not checked).

        `wanted()` is asked before the bcrypt check starts: False (the client is gone) skips it.
        """
        credentials = parse_basic(header)
        if credentials is None:
            return Verdict.REFUSED
        user, password = credentials
        if len(password) > MAX_PASSWORD_BYTES:
            return Verdict.REFUSED
        hashed = self._users.get(user)
        fingerprint = self._fingerprint(user, hashed or self._decoy, password)
        if hashed is not None and self._remembered(fingerprint):
            return Verdict.ALLOWED
        if self._pending >= MAX_PENDING:
            self._note_busy()
            return Verdict.BUSY
        self._pending += 1
        try:
            async with self._bcrypt:
                if hashed is not None and self._remembered(fingerprint):  # verified while this request waited
                    return Verdict.ALLOWED
                if not wanted():
                    return Verdict.REFUSED
                self.bcrypt_checks += 1
                try:
                    matches = await asyncio.to_thread(bcrypt.checkpw, password, hashed or self._decoy)
                except ValueError:  # e.g. a NUL byte some bcrypt versions refuse: a wrong password either way
                    matches = False
        finally:
            self._pending -= 1
        if matches and hashed is not None:
            self._remember(fingerprint)
            return Verdict.ALLOWED
        log.debug("basic auth refused for user %r", user)
        return Verdict.REFUSED

    def _note_busy(self) -> None:
        self.busy += 1
        if self._busy_log is None:
            self._busy_log = asyncio.get_running_loop().call_later(LOG_INTERVAL, self._log_busy)

    def _log_busy(self) -> None:
        self._busy_log = None
        log.warning(
            "basic auth answered %d requests 429 in the last %gs: %d credential checks were already waiting; "
            "a steady stream means someone is guessing passwords (scrapers already verified are not affected)",
            self.busy,
            LOG_INTERVAL,
            MAX_PENDING,
        )
        self.busy = 0

    def middleware(self, own_auth: Iterable[web.RouteDef] = ()) -> Middleware:
        """The aiohttp middleware: 401 with `WWW-Authenticate: Basic` unless allowed.

        `own_auth` are routes that check credentials of their own (remediation): they are let through, matched
        by method and route pattern after routing, so only a request that reaches their handler skips the gate.
        """
        exempt = frozenset((route.method, route.path) for route in own_auth)

        @web.middleware
        async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
            route = request.match_info.route
            if route.resource is not None and (route.method, route.resource.canonical) in exempt:
                return await handler(request)
            with waiting_for_auth() as wanted:
                verdict = await self.check(request.headers.get(hdrs.AUTHORIZATION), wanted)
            if verdict is Verdict.ALLOWED:
                return await handler(request)
            if verdict is Verdict.BUSY:
                return web.Response(
                    status=429,
                    text="Too many credential checks waiting; retry later\n",
                    headers={hdrs.RETRY_AFTER: str(RETRY_AFTER)},
                )
            return web.Response(
                status=401,
                text="Unauthorized\n",
                headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}", charset="UTF-8"'},
            )

        return basic_auth


def basic_auth_gate(config: WebConfig) -> BasicAuthGate | None:
    """The gate for `config`'s users, or None when it lists none (every path open, as without a web config)."""
    if not config.basic_auth_users:
        return None
    log.info(
        "basic auth required on every path but the remediation endpoints", extra=kv(users=len(config.basic_auth_users))
    )
    return BasicAuthGate(config.basic_auth_users)


def gate_middlewares(gate: BasicAuthGate | None, own_auth: Iterable[web.RouteDef] = ()) -> list[Middleware]:
    """`web.Application(middlewares=…)` for an optional gate."""
    return [] if gate is None else [gate.middleware(own_auth)]
