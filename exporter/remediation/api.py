"""The actions API: list recent runs, and run an action by hand (same auth as the webhook).

A manual run answers synchronously with the full plan and result, because an operator asking "what would
this delete?" (`?dry_run=true`) wants the answer in the response, not in a log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from exporter.remediation.webhook import Handler, authorized, error_response, unauthorized

if TYPE_CHECKING:
    from exporter.remediation.service import RemediationService

_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


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


def make_list_handler(service: RemediationService) -> Handler:
    """`GET /api/v1/actions`: configured actions and the recent runs, newest first."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await service.counted(_handle, request)

    async def _handle(request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), service.config.auth):
            return unauthorized(service.config.auth)
        return web.json_response(service.describe())

    return handler


def make_run_handler(service: RemediationService) -> Handler:
    """`POST /api/v1/actions/{name}?dry_run=true|false`: run now and answer with plan and result.

    404 unknown action, 409 already running, 503 engine unreachable. A global `dry_run: true` wins over
    `?dry_run=false`.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        return await service.counted(_handle, request)

    async def _handle(request: web.Request) -> web.Response:
        config = service.config
        if not authorized(request.headers.get("Authorization"), config.auth):
            return unauthorized(config.auth)
        name = request.match_info["name"]
        if name not in config.actions:
            return error_response(404, f"no action named {name!r} (configured: {', '.join(sorted(config.actions))})")
        try:
            requested = parse_dry_run(request.query.get("dry_run"))
        except ValueError as exc:
            return error_response(400, str(exc))
        dry_run = config.dry_run or bool(requested)
        if not service.poller.up:
            return error_response(503, "the engine is unreachable right now; nothing was run")
        run = service.begin(name, "manual", (), dry_run)
        if run is None:
            return error_response(409, f"action {name!r} is already running")
        result = await service.run_to_completion(run)
        return web.json_response(result.to_json())

    return handler
