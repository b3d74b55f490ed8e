"""Fleet mode: one Alertmanager, many hosts; only the exporter on the host an alert is about may prune.

An alert names its host by a label (`relay.host_label`: `instance`, the scraped exporter's address, by
default; or a `host`/`node` label). When it names another host, the receiving exporter forwards the
alert to that host's webhook instead of acting: same body shape, same `Authorization` header, a hop
header so a relayed delivery is never relayed again, and a timeout. A failed relay makes the whole answer
502 so Alertmanager retries; the local part of a delivery is idempotent (once-only claims, cooldowns), so a
retry never runs an action twice.

The credentials travel to the peer, so the peer's address is constrained: `relay.peers` maps host label
values to URLs explicitly, and otherwise the label must match `relay.host_regex` (a bare host[:port] by
default, so a label cannot smuggle a path or userinfo into the URL template).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from exporter.config import RelayConfig
from exporter.remediation.webhook import HOP_HEADER, Alert

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayResult:
    host: str
    url: str
    alerts: int
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "url": self.url, "alerts": self.alerts, "status": self.status, "error": self.error}


@dataclass(frozen=True)
class Split:
    """A delivery divided by host: act here, forward to peers, or refuse (a relayed alert for a third host)."""

    local: list[Alert]
    foreign: dict[str, list[Alert]]
    misrouted: list[Alert]


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self._host_re = re.compile(config.host_regex)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def split(self, alerts: Sequence[Alert], relayed: bool) -> Split:
        """Which alerts are ours. Alerts without the host label are local (scope still guards them)."""
        local: list[Alert] = []
        foreign: dict[str, list[Alert]] = {}
        misrouted: list[Alert] = []
        for alert in alerts:
            host = alert.labels.get(self.config.host_label, "")
            if not host or host in self.config.self_names:
                local.append(alert)
            elif relayed:
                misrouted.append(alert)  # never a second hop: a peer sent us an alert that is not ours
            else:
                foreign.setdefault(host, []).append(alert)
        return Split(local, foreign, misrouted)

    def _client_tls(self) -> ssl.SSLContext | None:
        """Built per relay (alerts are rare), so rotated CA and client certificate files are always current."""
        tls = self.config.tls
        if tls.ca_file is None and tls.cert_file is None:
            return None  # the system's trust store, no client certificate
        context = ssl.create_default_context(cafile=tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        return context

    def url_for(self, host: str) -> str | None:
        """The peer webhook URL for a host label value, or None when relaying there is not allowed."""
        if self.config.peers:
            return self.config.peers.get(host)
        if not self._host_re.fullmatch(host):
            return None
        return self.config.url_template.format(host=host)

    async def forward(
        self, host: str, envelope: Mapping[str, Any], alerts: Sequence[Alert], authorization: str
    ) -> RelayResult:
        url = self.url_for(host)
        if url is None:
            return RelayResult(host, "", len(alerts), error=f"no peer allowed for {self.config.host_label}={host!r}")
        assert self._session is not None, "relay used before start()"
        body = {**envelope, "alerts": [dict(a.raw) for a in alerts]}
        headers = {"Authorization": authorization, HOP_HEADER: self.config.self_names[0]}
        try:
            tls = await asyncio.to_thread(self._client_tls) if url.startswith("https://") else None
            async with self._session.post(url, json=body, headers=headers, ssl=tls or True) as response:
                await response.read()
                result = RelayResult(host, url, len(alerts), status=response.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result = RelayResult(host, url, len(alerts), error=f"{type(exc).__name__}: {exc}")
        if not result.ok:
            log.warning("relay of %d alert(s) to %s failed: %s", len(alerts), url, result.error or result.status)
        return result

    async def forward_all(
        self, envelope: Mapping[str, Any], foreign: Mapping[str, Sequence[Alert]], authorization: str
    ) -> list[RelayResult]:
        return list(
            await asyncio.gather(*(self.forward(h, envelope, a, authorization) for h, a in sorted(foreign.items())))
        )
