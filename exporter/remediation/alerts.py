"""Alertmanager webhook payloads (v4) and routing, as pure code: bytes in, alerts and routes out.

Nothing here knows about HTTP; the web layer (exporter/web/remediation.py) maps a `PayloadError`'s kind to
its status code. Validation names the problem so a sender can fix it, and anything that can never become a
valid payload (not JSON, absurdly nested, a number too long to convert) is a PayloadError, never a crash.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.config import RouteConfig
from exporter.core.matchers import Matcher, all_match


class Unprocessable(enum.Enum):
    """Why a body can never be processed."""

    NOT_JSON = "not_json"  # not JSON we accept (undecodable, nested too deeply, a number too long)
    NOT_A_WEBHOOK = "not_a_webhook"  # JSON, but not an Alertmanager v4 webhook


class PayloadError(Exception):
    """The body can never be processed, and `kind` says whether it is JSON at all."""

    def __init__(self, kind: Unprocessable, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Alert:
    status: str
    labels: Mapping[str, str]
    fingerprint: str
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # as received, for relays


@dataclass(frozen=True)
class Envelope:
    """One delivery: its alerts, and everything else in the body (kept so a relay sends the same shape)."""

    fields: Mapping[str, Any]
    alerts: tuple[Alert, ...]


def fingerprint(labels: Mapping[str, str]) -> str:
    """A stable stand-in when a sender omits `fingerprint` (Alertmanager always sends one)."""
    canonical = json.dumps(sorted(labels.items()), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(Unprocessable.NOT_JSON, f"body is not JSON: {exc}") from None
    except RecursionError:
        raise PayloadError(Unprocessable.NOT_JSON, "body is not JSON we accept: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise PayloadError(Unprocessable.NOT_JSON, f"body is not JSON we accept: {exc}") from None


def parse_envelope(body: bytes) -> Envelope:
    """Validate an Alertmanager v4 webhook body; raise PayloadError naming the problem."""
    data = _load_json(body)
    if not isinstance(data, dict):
        raise PayloadError(Unprocessable.NOT_A_WEBHOOK, f"body must be a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if version is not None and version != "4":
        raise PayloadError(Unprocessable.NOT_A_WEBHOOK, f'unsupported webhook version {version!r} (want "4")')
    for key in ("status", "receiver", "groupKey", "externalURL"):
        if key in data and not isinstance(data[key], str):
            raise PayloadError(Unprocessable.NOT_A_WEBHOOK, f"{key} must be a string")
    alerts = data.get("alerts")
    if not isinstance(alerts, list):
        raise PayloadError(Unprocessable.NOT_A_WEBHOOK, "alerts must be a list (is this an Alertmanager webhook?)")
    parsed: list[Alert] = []
    for index, raw in enumerate(alerts):
        where = f"alerts[{index}]"
        if not isinstance(raw, dict):
            raise PayloadError(Unprocessable.NOT_A_WEBHOOK, f"{where} must be an object")
        labels = raw.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise PayloadError(Unprocessable.NOT_A_WEBHOOK, f"{where}.labels must be a non-empty object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            raise PayloadError(Unprocessable.NOT_A_WEBHOOK, f"{where}.labels must map strings to strings")
        status = raw.get("status")
        if status not in ("firing", "resolved"):
            raise PayloadError(
                Unprocessable.NOT_A_WEBHOOK, f"{where}.status must be firing or resolved, got {status!r}"
            )
        given = raw.get("fingerprint")
        if given is not None and not isinstance(given, str):
            raise PayloadError(Unprocessable.NOT_A_WEBHOOK, f"{where}.fingerprint must be a string")
        parsed.append(Alert(status, dict(labels), given or fingerprint(labels), raw))
    return Envelope({k: v for k, v in data.items() if k != "alerts"}, tuple(parsed))


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
