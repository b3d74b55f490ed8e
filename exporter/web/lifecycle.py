"""What a reload means to the web layer: `POST|PUT /-/reload`, and the response headers it may change.

`/-/reload` is as in Prometheus: 403 unless the lifecycle API is enabled, 500 when a reload fails. The
reload itself (exporter/web/reload.py) sits above the web layer; it is handed in as a call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web

from exporter.web.remediation import check_cross_site
from exporter.web.webconfig import WebConfig

ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]


class ReloadOutcome(Protocol):
    @property
    def ok(self) -> bool: ...

    @property
    def message(self) -> str: ...


class ReloadEndpoint:
    """`reload(source)` re-reads the files and applies them; `enabled` is `--web.enable-lifecycle`."""

    def __init__(self, reload: Callable[[str], Awaitable[ReloadOutcome]], enabled: bool) -> None:
        self.reload = reload
        self.enabled = enabled

    async def handle(self, request: web.Request) -> web.Response:
        if not self.enabled:
            return web.Response(status=403, text="Lifecycle API is not enabled.\n")
        # a reload applies whatever the files say now: a page on another site must not trigger one through
        # an operator's browser, so the remediation endpoints' rules apply (`curl -X POST` sends neither)
        refusal = check_cross_site(request)
        if refusal is not None:
            return refusal
        result = await self.reload("/-/reload")
        return web.Response(status=200 if result.ok else 500, text=result.message + "\n")


def header_hook(web_config: Callable[[], WebConfig]) -> ResponseHook:
    """An `on_response_prepare` hook adding `--web.config.file`'s headers to every response, errors included.

    The config is read per response: a reload may change the headers.
    """

    async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(web_config().headers)

    return add_headers
