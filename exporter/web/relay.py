"""The HTTP client of fleet mode: posts a relayed delivery to a peer exporter (see remediation/relay.py).

Bounded on every side, because the peer's answer is not ours to trust: a total timeout, and at most
`MAX_ANSWER_BYTES` of its body read (only its status matters).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping

import aiohttp

from exporter.config import RelayConfig
from exporter.remediation.relay import RelayError
from exporter.web.aiohttpload import load_deferred_trust

MAX_ANSWER_BYTES = 1 << 20


class RelayClient:
    """One `aiohttp.ClientSession` for all relays, opened and closed with the app."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await asyncio.to_thread(load_deferred_trust)  # the system trust store `ssl=True` relies on
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client_tls(self) -> ssl.SSLContext | None:
        """Built per relay (alerts are rare), so rotated CA and client certificate files are always current."""
        tls = self.config.tls
        if tls.ca_file is None and tls.cert_file is None:
            return None  # the system's trust store, no client certificate
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        """The peer's status code; RelayError when there is none (or its answer is larger than allowed)."""
        assert self._session is not None, "relay used before start()"
        try:
            tls = await asyncio.to_thread(self._client_tls) if url.startswith("https://") else None
            async with self._session.post(url, data=body, headers=dict(headers), ssl=tls or True) as response:
                await _read_bounded(response, MAX_ANSWER_BYTES)
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RelayError(f"{type(exc).__name__}: {exc}") from exc


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> None:
    """Drain the answer, refusing more than `limit` bytes (a peer must not make us buffer without end)."""
    total = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise RelayError(f"answer larger than {limit} bytes")
