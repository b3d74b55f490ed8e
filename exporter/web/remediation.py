"""The remediation HTTP endpoints: the Alertmanager webhook (v4) and the actions API.

Every endpoint goes through one guard (`RemediationEndpoints._endpoint`): authentication before anything
else (an unauthenticated request never reaches a body parser), one JSON error shape, and one count per
answer in `docker_webhook_requests_total{code}`. Endpoints that can delete also refuse what a browser can be
tricked into sending (CSRF): form and text content types (415), a foreign `Origin` (403), and any query
parameter they do not know (400, so `?dryrun=true` never becomes a real run). The handlers only translate:
request -> service call -> response; what may run, and when, is the service's decision.

Client errors (bad bytes in a header, undecodable or truncated bodies) are 4xx without a traceback, and
credentials are never logged: a refused `Authorization` header is described by its scheme at most.

Codes follow what Alertmanager does with them: 2xx delivered (also for alerts we deliberately ignore), 4xx
never retried within a flush (requests that can never succeed), 5xx retried (the engine is unreachable
right now, or a relay to a peer failed). A manual run (`POST /api/v1/actions/{name}`) answers synchronously
with the full plan and result, because an operator asking "what would this delete?" (`?dry_run=true`)
wants the answer in the response, not in a log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import hdrs, web
from multidict import CIMultiDict

from exporter.config import AuthConfig
from exporter.core import offloop
from exporter.core.logs import kv
from exporter.remediation.alerts import PayloadError, Unprocessable, parse_envelope
from exporter.remediation.audit import AuditError
from exporter.remediation.gate import Refusal, Refused
from exporter.remediation.relay import HOP_HEADER
from exporter.remediation.restore import FAILED, Deleted, RestoreError, audit_line, deleted_images, restore_one, select
from exporter.remediation.runs import ANSWER_LIST_LIMIT, ANSWER_LIST_MAX
from exporter.remediation.service import RemediationService

log = logging.getLogger(__name__)

REALM = "docker-image-exporter"
Handler = Callable[[web.Request], Awaitable[web.Response]]

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")
# What an HTML form (or a "simple" cross-origin fetch) can send without a CORS preflight.
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")
_SCHEME_SHOWN = 16  # characters of an unknown scheme worth logging

#: Each refusal of the service as a status code: 4xx are never retried by Alertmanager, 5xx are.
REFUSAL_STATUS = {Refusal.NOT_FOUND: 404, Refusal.BUSY: 409, Refusal.ENGINE_DOWN: 503}
#: A body that can never be processed: 400 when it is not JSON, 422 when it is JSON of the wrong shape.
UNPROCESSABLE_STATUS = {Unprocessable.NOT_JSON: 400, Unprocessable.NOT_A_WEBHOOK: 422}
#: Every code these endpoints answer with; each series exists at 0 from the start.
RESPONSE_CODES = ("200", "400", "401", "403", "404", "405", "409", "413", "415", "422", "500", "502", "503")


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
        # aiohttp hands over non-UTF-8 header bytes as surrogates: compare those very bytes (never equal)
        return hmac.compare_digest(value.encode("utf-8", "surrogateescape"), auth.bearer_token.encode())
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


def describe_credentials(header: str | None) -> str:
    """What a log line may say about a refused `Authorization` header: its scheme, never its value."""
    if not header or not header.strip():
        return "no Authorization header"
    scheme = header.strip().partition(" ")[0]
    if scheme.lower() in ("bearer", "basic"):
        return f"wrong {scheme.capitalize()} credentials"
    printable = scheme.isascii() and scheme.isprintable() and len(scheme) <= _SCHEME_SHOWN
    return f"unsupported scheme {scheme!r}" if printable else "malformed Authorization header"


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
    return error_response(REFUSAL_STATUS[refusal.kind], refusal.message)


async def json_off_loop(build: Callable[[], dict[str, Any]]) -> web.Response:
    """A JSON answer built and encoded in a worker thread: a large run's answer takes long enough to
    hold up scrapes and webhooks if done on the event loop. Encoded in slices, so that a scrape served
    meanwhile need not wait behind one long call (`offloop.dumps_in_slices`, the same text as `json.dumps`).
    `build` must only read finished data."""
    body = await offloop.off_loop(lambda: offloop.dumps_in_slices(build()).encode())
    return web.Response(body=body, content_type="application/json", charset="utf-8")


# --------------------------------------------------------------------------------------------- params


def parse_dry_run(value: str | None) -> bool | None:
    """`?dry_run=` as a bool (None when absent); ValueError for anything else."""
    try:
        return parse_flag("dry_run", value)
    except ValueError:
        raise ValueError(
            f"dry_run must be one of {', '.join(_TRUE)} (a preview) or {', '.join(_FALSE)} (a real run), got {value!r}"
        ) from None


def parse_limit(value: str | None) -> int:
    """`?limit=`: how many entries each list of a manual run's answer shows (totals always cover all).

    Absent: ANSWER_LIST_LIMIT. A plain decimal integer from 0 (totals only) to ANSWER_LIST_MAX; anything else
    is a ValueError naming the parameter, so a typo never silently changes what an operator sees.
    """
    if value is None:
        return ANSWER_LIST_LIMIT
    text = value  # no stripping: `limit=+5` (a space once decoded) is as unclear as `limit=abc`
    if not text.isascii() or not text.isdigit() or len(text) > len(str(ANSWER_LIST_MAX)):
        raise ValueError(f"limit must be a whole number from 0 to {ANSWER_LIST_MAX}, got {value!r}")
    limit = int(text)
    if limit > ANSWER_LIST_MAX:
        raise ValueError(f"limit must be a whole number from 0 to {ANSWER_LIST_MAX}, got {value!r}")
    return limit


def check_params(request: web.Request, allowed: Collection[str]) -> str | None:
    """Why the query string is refused (an unknown or repeated parameter), or None when it is fine."""
    unknown = sorted({key for key in request.query if key not in allowed})
    if unknown:
        known = ", ".join(sorted(allowed)) or "none"
        return f"unknown query parameter(s) {', '.join(map(repr, unknown))} (allowed here: {known}); nothing was run"
    repeated = sorted({key for key in request.query if len(request.query.getall(key)) > 1})
    if repeated:
        return f"query parameter(s) {', '.join(map(repr, repeated))} given more than once; nothing was run"
    return None


def check_cross_site(request: web.Request) -> web.Response | None:
    """Refuse what a browser on another site could send on an operator's behalf (403/415), else None.

    Alertmanager and API clients send JSON and no `Origin`; an HTML form cannot send `application/json`, and
    a script on another origin that tries needs a CORS preflight, which this server never grants.
    """
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is not None and origin.lower() != f"{request.scheme}://{request.host}".lower():
        return error_response(403, f"cross-origin request refused (Origin {origin!r} is not this exporter)")
    declared = hdrs.CONTENT_TYPE in request.headers
    mime = request.content_type
    if declared and mime in _FORM_TYPES:
        return error_response(415, f"Content-Type {mime} is not accepted: send application/json")
    if request.body_exists and (not declared or mime != "application/json"):
        shown = mime if declared else "none"
        return error_response(415, f"a body needs Content-Type: application/json (got {shown})")
    return None


# --------------------------------------------------------------------------------------------- endpoints


class RemediationEndpoints:
    """The routes of the remediation API, bound to one service; registered by the app factory."""

    def __init__(self, service: RemediationService) -> None:
        self.service = service
        for code in RESPONSE_CODES:
            service.metrics.webhook_requests.labels(code)
        self._restoring = asyncio.Lock()  # one restore at a time: two would pull and tag the same images

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/webhook/alertmanager", self._endpoint(self.webhook, params=())),
            web.get("/api/v1/actions", self._endpoint(self.list_actions)),
            web.post("/api/v1/actions/{name}", self._endpoint(self.run_action, params=("dry_run", "limit"))),
            web.get("/api/v1/runs/{run_id}", self._endpoint(self.show_run)),
            web.post(
                "/api/v1/runs/{run_id}/restore", self._endpoint(self.restore_run, params=("image", "dry_run", "force"))
            ),
        ]

    def _endpoint(self, handle: Handler, *, params: Collection[str] | None = None) -> Handler:
        """Authenticate, answer errors as JSON, and count every answer by status code.

        `params` marks an endpoint that can delete: only those query parameters are allowed, and the
        cross-site checks apply. None: a read-only endpoint.
        """

        async def endpoint(request: web.Request) -> web.Response:
            try:
                response = await guarded(request)
            except web.HTTPRequestEntityTooLarge:
                response = error_response(413, f"body larger than {self.service.config.max_body_bytes} bytes")
            except web.HTTPException as exc:
                response = error_response(exc.status, exc.reason)
            except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not gzip
                response = error_response(400, f"cannot read the body: {str(exc).strip()}")
                # the rest of the body is unreadable: close after answering, and stop aiohttp from draining it
                # afterwards (that drain would raise the same error again and log it as unhandled)
                response.force_close()
                request.content.feed_eof()
            except ConnectionResetError:  # the client hung up mid-body: nobody to answer, nothing to log
                response = error_response(400, "the client closed the connection before the body ended")
            except Exception:
                log.exception("remediation endpoint failed", extra=kv(path=request.path))
                response = error_response(500, "internal error (see the exporter log)")
            self.service.metrics.webhook_requests.labels(str(response.status)).inc()
            return response

        async def guarded(request: web.Request) -> web.Response:
            auth = self.service.config.auth  # read per request: a reload may rotate the credentials
            header = request.headers.get(hdrs.AUTHORIZATION)
            if not authorized(header, auth):
                log.info(
                    "remediation request refused",
                    extra=kv(method=request.method, path=request.path, credentials=describe_credentials(header)),
                )
                return unauthorized(auth)
            if params is not None:
                refusal = check_cross_site(request)
                if refusal is not None:
                    return refusal
                problem = check_params(request, params)
                if problem is not None:
                    return error_response(400, problem)
            return await handle(request)

        return endpoint

    async def webhook(self, request: web.Request) -> web.Response:
        """`POST /webhook/alertmanager`: validate, then let the service route, claim and relay."""
        body = await request.read()
        try:
            envelope = parse_envelope(body)
        except PayloadError as exc:
            return error_response(UNPROCESSABLE_STATUS[exc.kind], str(exc))
        result = await self.service.accept_delivery(
            envelope, request.headers["Authorization"], request.headers.get(HOP_HEADER)
        )
        if isinstance(result, Refused):
            return refused(result)
        return web.json_response(result.to_json(), status=200 if result.ok else 502)

    async def list_actions(self, _request: web.Request) -> web.Response:
        """`GET /api/v1/actions`: configured actions and the recent runs, newest first."""
        described = self.service.describe()  # copies taken on the loop; encoded off it
        return await json_off_loop(lambda: described)

    async def run_action(self, request: web.Request) -> web.Response:
        """`POST /api/v1/actions/{name}?dry_run=true|false`: run now and answer with plan and result.

        404 unknown action, 409 already running, 503 engine unreachable. A global `dry_run: true` wins over
        `?dry_run=false`.
        """
        try:
            requested = parse_dry_run(request.query.get("dry_run"))
            limit = parse_limit(request.query.get("limit"))
        except ValueError as exc:
            return error_response(400, f"{exc}; nothing was run")
        result = await self.service.run_manual(request.match_info["name"], requested)
        if isinstance(result, Refused):
            return refused(result)
        return await json_off_loop(lambda: result.to_json(limit))  # the run is over: nothing changes it now

    async def _deleted(self, run_id: str) -> list[Deleted] | web.Response:
        """The images the run deleted, from the audit log (read in a worker thread), or a 404."""
        try:
            return await asyncio.to_thread(deleted_images, self.service.audit.path, run_id)
        except RestoreError as exc:
            return error_response(404, str(exc))

    async def show_run(self, request: web.Request) -> web.Response:
        """`GET /api/v1/runs/{run_id}`: the run's summary (while in history) and, per deleted image, whether
        and how it can be brought back, with the commands a person can paste."""
        run_id = request.match_info["run_id"]
        deleted = await self._deleted(run_id)
        if isinstance(deleted, web.Response):
            return deleted
        summary = next((dict(s) for s in self.service.history if s.get("run_id") == run_id), None)
        return await json_off_loop(
            lambda: {"run_id": run_id, "summary": summary, "deleted": [d.to_json() for d in deleted]}
        )

    async def restore_run(self, request: web.Request) -> web.Response:
        """`POST /api/v1/runs/{run_id}/restore?image=&dry_run=&force=`: bring the run's deleted images back.

        404 unknown run or image, 409 another restore in progress, 200 with one entry per image otherwise
        (`failed` counts those that did not come back). Each outcome is written to the audit log.
        """
        try:
            dry_run = bool(parse_dry_run(request.query.get("dry_run")))
            force = bool(parse_flag("force", request.query.get("force")))
        except ValueError as exc:
            return error_response(400, f"{exc}; nothing was restored")
        run_id = request.match_info["run_id"]
        deleted = await self._deleted(run_id)
        if isinstance(deleted, web.Response):
            return deleted
        try:
            chosen = select(deleted, request.query.get("image"))
        except RestoreError as exc:
            return error_response(404, str(exc))
        if self._restoring.locked():
            return error_response(409, "another restore is in progress; nothing was restored")
        answers: list[dict[str, Any]] = []
        async with self._restoring:
            for image in chosen:
                done = await restore_one(self.service.engine, image, force=force, dry_run=dry_run)
                line = audit_line(run_id, done, trigger="api", dry_run=dry_run)
                try:
                    await asyncio.to_thread(self.service.audit.write_many, [line])
                except AuditError as exc:
                    return error_response(500, f"{exc}; restored so far: {answers}")
                self.service.metrics.restored.labels(done.result).inc()
                answers.append(done.to_json())
        failed = sum(1 for a in answers if a["result"] in FAILED)
        return web.json_response({"run_id": run_id, "dry_run": dry_run, "failed": failed, "images": answers})


def parse_flag(name: str, value: str | None) -> bool | None:
    """A yes/no query parameter (None when absent); ValueError naming it for anything else."""
    if value is None:
        return None
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{name} must be one of {', '.join(_TRUE + _FALSE)}, got {value!r}")
