"""Fleet mode: one Alertmanager, many hosts; only the exporter on the host an alert is about may prune.

An alert names its host by a label (`relay.host_label`: `instance`, the scraped exporter's address, by
default; or a `host`/`node` label). When it names another host, the receiving exporter forwards the
alert to that host's webhook instead of acting: same body shape, same `Authorization` header, a hop
header so a relayed delivery is never relayed again, and a timeout. A failed relay makes the whole answer
502 so Alertmanager retries; the local part of a delivery is idempotent (once-only claims, cooldowns), so a
retry never runs an action twice.

The credentials travel to the peer, so the peer's address comes from configuration: `relay.peers` maps
host label values to URLs explicitly, or else the label must fully match `relay.host_regex`, which is then
required (there is no default: an alert naming `evil.example:80` must never receive the bearer token).

This module decides *where* alerts go; sending is the web layer's job (exporter/web/relay.py), handed in
as a `Transport` so this logic stays free of HTTP clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exporter.config import RelayConfig
from exporter.core.logs import kv
from exporter.remediation.alerts import Alert
from exporter.remediation.records import record_json

log = logging.getLogger(__name__)

# The hop header: a delivery carrying it came from a peer and is never relayed on.
HOP_HEADER = "X-Docker-Image-Exporter-Relayed-By"


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
        return record_json(self)


@dataclass(frozen=True)
class Split:
    """A delivery divided by host: act here, forward to peers, or refuse (a relayed alert for a third host)."""

    local: list[Alert]
    foreign: dict[str, list[Alert]]
    misrouted: list[Alert]


class Transport(Protocol):
    """Sends one relayed delivery: the peer's HTTP status, or raises OSError/TimeoutError-like errors."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int: ...


class Relay:
    def __init__(self, config: RelayConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self._host_re = re.compile(config.host_regex) if config.host_regex is not None else None

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

    def url_for(self, host: str) -> str | None:
        """The peer webhook URL for a host label value, or None when relaying there is not allowed."""
        if self.config.peers:
            return self.config.peers.get(host)
        if self._host_re is None or not self._host_re.fullmatch(host):
            return None
        return self.config.url_template.format(host=host)

    async def forward(
        self, host: str, envelope: Mapping[str, Any], alerts: Sequence[Alert], authorization: str
    ) -> RelayResult:
        url = self.url_for(host)
        if url is None:
            return RelayResult(host, "", len(alerts), error=f"no peer allowed for {self.config.host_label}={host!r}")
        body = json.dumps({**envelope, "alerts": [dict(a.raw) for a in alerts]}).encode()
        headers = {
            "Authorization": authorization,
            HOP_HEADER: self.config.self_names[0],
            "Content-Type": "application/json",
        }
        try:
            result = RelayResult(host, url, len(alerts), status=await self.transport.post(url, body, headers))
        except RelayError as exc:
            result = RelayResult(host, url, len(alerts), error=str(exc))
        if not result.ok:
            log.warning("relay failed", extra=kv(alerts=len(alerts), url=url, err=result.error or result.status))
        return result

    async def forward_all(
        self, envelope: Mapping[str, Any], foreign: Mapping[str, Sequence[Alert]], authorization: str
    ) -> list[RelayResult]:
        return list(
            await asyncio.gather(*(self.forward(h, envelope, a, authorization) for h, a in sorted(foreign.items())))
        )


class RelayError(Exception):
    """A relay that got no HTTP answer (connection refused, timeout, TLS, an answer too large)."""
