"""Alertmanager webhook (v4): authentication, body limits, validation, routing, once-only acceptance.

The handler answers within milliseconds: it validates, routes each firing alert to the first matching
route, claims the action (at most one run per action, none inside the route's cooldown) and starts the
run in the background. Codes follow what Alertmanager does with them: 2xx delivered (also for alerts we
deliberately ignore), 4xx never retried within a flush (bodies that can never succeed), 5xx retried (the
engine is unreachable right now).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from exporter.config import AuthConfig, RouteConfig
from exporter.matchers import Matcher, all_match

if TYPE_CHECKING:
    from exporter.remediation.service import RemediationService

REALM = "docker-image-exporter"
# The hop header of fleet mode (relay.py): a delivery carrying it came from a peer and is never relayed on.
HOP_HEADER = "X-Docker-Image-Exporter-Relayed-By"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class PayloadError(Exception):
    """The body can never be processed: 400 (not JSON) or 422 (JSON, but not an Alertmanager v4 webhook)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Alert:
    status: str
    labels: Mapping[str, str]
    fingerprint: str
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as received, for relays


# --------------------------------------------------------------------------------------------- auth


def authorized(header: str | None, auth: AuthConfig) -> bool:
    """Check an `Authorization` header against the configured bearer token and/or basic auth.

    Constant-time comparisons (hmac.compare_digest) on bytes; only the header counts, never the URL.
    """
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    scheme = scheme.lower()
    if scheme == "bearer" and auth.bearer_token is not None:
        return hmac.compare_digest(value.encode(), auth.bearer_token.encode())
    if scheme == "basic" and auth.basic_auth is not None:
        try:
            decoded = base64.b64decode(value.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return False
        user, sep, password = decoded.partition(b":")
        expected_user = auth.basic_auth.username.encode()
        expected_password = auth.basic_auth.password.encode()
        # evaluate both comparisons, so timing does not reveal which part was wrong
        user_ok = hmac.compare_digest(user, expected_user)
        password_ok = hmac.compare_digest(password, expected_password)
        return bool(sep) and user_ok and password_ok
    return False


def unauthorized(auth: AuthConfig) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    if auth.bearer_token is not None:
        headers.add("WWW-Authenticate", f'Bearer realm="{REALM}"')
    if auth.basic_auth is not None:
        headers.add("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"')
    return error_response(401, "missing or wrong credentials (Authorization header)", headers)


def error_response(status: int, message: str, headers: CIMultiDict[str] | None = None) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=headers)


# --------------------------------------------------------------------------------------------- body


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` (checked before and while reading)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _fingerprint(labels: Mapping[str, str]) -> str:
    """A stable stand-in when a sender omits `fingerprint` (Alertmanager always sends one)."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_webhook(body: bytes) -> list[Alert]:
    """Validate an Alertmanager v4 webhook body; raise PayloadError (400/422) naming the problem."""
    return parse_envelope(body)[1]


def parse_envelope(body: bytes) -> tuple[dict[str, Any], list[Alert]]:
    """The validated body (everything but `alerts`, kept for relays) and its alerts."""
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(400, f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(422, f"body must be a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if version is not None and version != "4":
        raise PayloadError(422, f'unsupported webhook version {version!r} (want "4")')
    for key in ("status", "receiver", "groupKey", "externalURL"):
        if key in data and not isinstance(data[key], str):
            raise PayloadError(422, f"{key} must be a string")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError(422, "alerts must be a list (is this an Alertmanager webhook?)")
    parsed: list[Alert] = []
    for index, raw in enumerate(alerts):
        where = f"alerts[{index}]"
        if not isinstance(raw, dict):
            raise PayloadError(422, f"{where} must be an object")
        labels = raw.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise PayloadError(422, f"{where}.labels must be a non-empty object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise PayloadError(422, f"{where}.labels must map strings to strings")
        status = raw.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(422, f"{where}.status must be firing or resolved, got {status!r}")
        fingerprint = raw.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise PayloadError(422, f"{where}.fingerprint must be a string")
        parsed.append(Alert(status, dict(labels), fingerprint or _fingerprint(labels), raw))
    return {k: v for k, v in data.items() if k != "alerts"}, parsed


def route_alert(
    alert: Alert, scope: Sequence[Matcher], routes: Sequence[RouteConfig]
) -> tuple[str, RouteConfig | None]:
    """(outcome, route): resolved alerts and unmatched ones are `unrouted`, foreign ones `out_of_scope`."""
    if not all_match(scope, alert.labels):
        return "out_of_scope", None
    if alert.status != "firing":
        return "unrouted", None
    for route in routes:
        if all_match(route.matchers, alert.labels):
            return "routed", route
    return "unrouted", None


# --------------------------------------------------------------------------------------------- handler


def make_webhook_handler(service: RemediationService) -> Handler:
    """`POST /webhook/alertmanager`: counted by response code whatever happens."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await service.counted(_handle, request)

    async def _handle(request: web.Request) -> web.Response:
        config = service.config
        if not authorized(request.headers.get("Authorization"), config.auth):
            return unauthorized(config.auth)
        body = await read_body(request, config.max_body_bytes)
        if body is None:
            return error_response(413, f"body larger than {config.max_body_bytes} bytes")
        try:
            envelope, alerts = parse_envelope(body)
        except PayloadError as exc:
            return error_response(exc.status, str(exc))
        relayed_by = request.headers.get(HOP_HEADER)
        return await service.accept_delivery(envelope, alerts, request.headers["Authorization"], relayed_by)

    return handler
