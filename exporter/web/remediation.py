"""The remediation HTTP endpoints: the Alertmanager webhook (v4) and the actions API.

Every endpoint goes through one guard (`RemediationEndpoints._endpoint`): authentication before anything
else, one JSON error shape, and one count per answer in `docker_webhook_requests_total{code}`. The handlers
only translate: request -> service call -> response; what may run, and when, is the service's decision.

Codes follow what Alertmanager does with them: 2xx delivered (also for alerts we deliberately ignore), 4xx
never retried within a flush (requests that can never succeed), 5xx retried (the engine is unreachable
right now, or a relay to a peer failed). A manual run (`POST /api/v1/actions/{name}`) answers synchronously
with the full plan and result, because an operator asking "what would this delete?" (`?dry_run=true`)
wants the answer in the response, not in a log.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from multidict import CIMultiDict

from exporter.config import AuthConfig
from exporter.remediation.alerts import PayloadError, parse_envelope
from exporter.remediation.relay import HOP_HEADER
from exporter.remediation.service import Refused, RemediationService

log = logging.getLogger(__name__)

REALM = "docker-image-exporter"
Handler = Callable[[web.Request], Awaitable[web.Response]]

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


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


def refused(refusal: Refused) -> web.Response:
    return error_response(refusal.status, refusal.message)


# --------------------------------------------------------------------------------------------- params


def parse_dry_run(value: str | None) -> bool | None:
    """`?dry_run=` as a bool (None when absent); ValueError for anything else."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"dry_run must be true or false, got {value!r}")


# --------------------------------------------------------------------------------------------- endpoints


class RemediationEndpoints:
    """The routes of the remediation API, bound to one service; registered by the app factory."""

    def __init__(self, service: RemediationService, max_body_bytes: int) -> None:
        self.service = service
        self.max_body_bytes = max_body_bytes

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhook/alertmanager", self._endpoint(self.webhook)),
            web.get("/api/v1/actions", self._endpoint(self.list_actions)),
            web.post("/api/v1/actions/{name}", self._endpoint(self.run_action)),
        ]

    def _endpoint(self, handle: Handler) -> Handler:
        """Authenticate, answer errors as JSON, and count every answer by status code."""
        auth = self.service.config.auth

        async def endpoint(request: web.Request) -> web.Response:
            code = 500
            try:
                if not authorized(request.headers.get("Authorization"), auth):
                    response = unauthorized(auth)
                else:
                    response = await handle(request)
            except web.HTTPRequestEntityTooLarge:
                response = error_response(413, f"body larger than {self.max_body_bytes} bytes")
            except web.HTTPException as exc:
                response = error_response(exc.status, exc.reason)
            except Exception:
                log.exception("remediation endpoint %s failed", request.path)
                response = error_response(500, "internal error (see the exporter log)")
            code = response.status
            self.service.metrics.webhook_requests.labels(str(code)).inc()
            return response

        return endpoint

    async def webhook(self, request: web.Request) -> web.Response:
        """`POST /webhook/alertmanager`: validate, then let the service route, claim and relay."""
        body = await request.read()
        try:
            envelope = parse_envelope(body)
        except PayloadError as exc:
            return error_response(exc.status, str(exc))
        result = await self.service.accept_delivery(
            envelope, request.headers["Authorization"], request.headers.get(HOP_HEADER)
        )
        if isinstance(result, Refused):
            return refused(result)
        return web.json_response(result.to_json(), status=200 if result.ok else 502)

    async def list_actions(self, _request: web.Request) -> web.Response:
        """`GET /api/v1/actions`: configured actions and the recent runs, newest first."""
        return web.json_response(self.service.describe())

    async def run_action(self, request: web.Request) -> web.Response:
        """`POST /api/v1/actions/{name}?dry_run=true|false`: run now and answer with plan and result.

        404 unknown action, 409 already running, 503 engine unreachable. A global `dry_run: true` wins over
        `?dry_run=false`.
        """
        try:
            requested = parse_dry_run(request.query.get("dry_run"))
        except ValueError as exc:
            return error_response(400, str(exc))
        result = await self.service.run_manual(request.match_info["name"], requested)
        if isinstance(result, Refused):
            return refused(result)
        return web.json_response(result.to_json())
