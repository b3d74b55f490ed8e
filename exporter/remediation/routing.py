"""One webhook delivery decided: which action each alert routes to, and whether that starts a run.

Per action, a delivery's alerts are `routed` (start a run), `deduplicated` (a run of the same kind is in
progress) or `cooldown` (the route's cooldown since the last real run has not passed; dry runs have none);
alerts that match no route are `unrouted` or `out_of_scope`. The decision reads the gate and claims
nothing: the service claims the routed actions right after it, with no await in between, so two
deliveries cannot both claim one action. In fleet mode the alerts for other hosts are relayed
(remediation/relay.py) after the local ones are claimed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.config import RemediationConfig, RouteConfig
from exporter.remediation.alerts import Alert, Envelope, route_alert
from exporter.remediation.gate import RunGate
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.records import record_json
from exporter.remediation.relay import Relay, RelayResult, Split


@dataclass(frozen=True)
class RunStarted:
    action: str
    run_id: str
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


@dataclass(frozen=True)
class AlertOutcome:
    """What one delivered alert led to (`outcome` is one of metrics.ALERT_OUTCOMES)."""

    fingerprint: str
    status: str
    outcome: str
    action: str | None
    cooldown_remaining_seconds: float | None = None  # for `cooldown`: when a delivery would start a run

    def to_json(self) -> dict[str, Any]:
        return record_json(self, omit_empty=("cooldown_remaining_seconds",))


@dataclass(frozen=True)
class DeliveryResult:
    """The answer to one webhook delivery; `relayed` is None when nothing was forwarded to a peer."""

    runs_started: tuple[RunStarted, ...]
    alerts: tuple[AlertOutcome, ...]
    relayed: tuple[RelayResult, ...] | None = None

    @property
    def ok(self) -> bool:
        """False when a relay failed: the delivery must be retried (the local part is idempotent)."""
        return self.relayed is None or all(r.ok for r in self.relayed)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": "ok" if self.ok else "error",
            "runs_started": [r.to_json() for r in self.runs_started],
            "alerts": [a.to_json() for a in self.alerts],
        }
        if self.relayed is not None:
            data["relayed"] = [r.to_json() for r in self.relayed]
        if not self.ok:
            data["error"] = "relay to a peer failed; retry the delivery"
        return data


@dataclass
class Routing:
    """The local alerts of one delivery, routed, with each routed action's verdict."""

    dry_run: bool
    decisions: list[tuple[Alert, str, RouteConfig | None]] = field(default_factory=list)
    fingerprints: dict[str, list[str]] = field(default_factory=dict)  # action -> its alerts' fingerprints
    verdict: dict[str, str] = field(default_factory=dict)  # action -> routed | deduplicated | cooldown
    remaining: dict[str, float] = field(default_factory=dict)  # action -> cooldown seconds left

    def due(self) -> list[tuple[str, list[str]]]:
        """The actions to start now, each with the sorted fingerprints of the alerts that routed to it."""
        return [(name, sorted(set(self.fingerprints[name]))) for name, v in self.verdict.items() if v == "routed"]

    def deduplicated(self, name: str) -> None:
        """The claim of a due action failed (never without an await since `route`, but never run twice)."""
        self.verdict[name] = "deduplicated"

    def answer(self, runs: Sequence[RunStarted], metrics: RemediationMetrics) -> DeliveryResult:
        """Count each alert by what it led to, and answer the delivery."""
        answer: list[AlertOutcome] = []
        for alert, outcome, route in self.decisions:
            final = self.verdict[route.action] if route is not None else outcome
            metrics.webhook_alerts.labels(alert.status, final).inc()
            action = route.action if route is not None else None
            remaining = self.remaining.get(action or "")
            answer.append(AlertOutcome(alert.fingerprint, alert.status, final, action, remaining))
        return DeliveryResult(tuple(runs), tuple(answer))


def route(
    alerts: Sequence[Alert], extra: Sequence[tuple[Alert, str]], config: RemediationConfig, gate: RunGate
) -> Routing:
    """Route `alerts` and decide per action; `extra` are alerts already decided elsewhere (fleet mode's
    misrouted ones), only counted and answered."""
    routing = Routing(dry_run=config.dry_run)
    routes: dict[str, RouteConfig] = {}
    for alert in alerts:
        outcome, matched = route_alert(alert, config.scope, config.routes)
        routing.decisions.append((alert, outcome, matched))
        if matched is not None:
            routes.setdefault(matched.action, matched)
            routing.fingerprints.setdefault(matched.action, []).append(alert.fingerprint)
    for name, first in routes.items():  # the first route that matched an alert for the action decides
        if gate.busy(name, routing.dry_run):
            routing.verdict[name] = "deduplicated"
        elif not routing.dry_run and gate.in_cooldown(name, first):
            routing.verdict[name] = "cooldown"
            routing.remaining[name] = round(gate.cooldown_left(name, first), 3)
        else:
            routing.verdict[name] = "routed"
    routing.decisions.extend((alert, outcome, None) for alert, outcome in extra)
    return routing


async def relay_foreign(
    relay: Relay,
    envelope: Envelope,
    split: Split,
    authorization: str,
    local: DeliveryResult,
    metrics: RemediationMetrics,
) -> DeliveryResult:
    """Forward the alerts for other hosts and add the peers' answers to the local one.

    Any failed relay makes the answer not `ok`, so the sender retries; the retry finds the local action
    claimed or cooling down, so it never runs twice.
    """
    results = await relay.forward_all(envelope.fields, split.foreign, authorization)
    for result in results:
        metrics.relays.labels("ok" if result.ok else "failed").inc()
    for alerts_for_host in split.foreign.values():
        for alert in alerts_for_host:
            metrics.webhook_alerts.labels(alert.status, "relayed").inc()
    return DeliveryResult(local.runs_started, local.alerts, tuple(results))
