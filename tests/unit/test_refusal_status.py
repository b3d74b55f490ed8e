"""Below web/ a refusal is a kind; web/remediation.py alone turns each kind into a status code."""

from __future__ import annotations

from exporter.remediation.alerts import Unprocessable
from exporter.remediation.gate import Refusal
from exporter.web.remediation import REFUSAL_STATUS, RESPONSE_CODES, UNPROCESSABLE_STATUS


def test_every_kind_has_a_status_and_its_series_exists() -> None:
    assert set(REFUSAL_STATUS) == set(Refusal)
    assert set(UNPROCESSABLE_STATUS) == set(Unprocessable)
    assert {str(s) for s in [*REFUSAL_STATUS.values(), *UNPROCESSABLE_STATUS.values()]} <= set(RESPONSE_CODES)


def test_a_refusal_the_sender_may_retry_is_a_5xx_and_only_that() -> None:
    """Alertmanager retries 5xx and never 4xx: only an engine that is down is worth a retry."""
    assert {kind for kind, status in REFUSAL_STATUS.items() if status >= 500} == {Refusal.ENGINE_DOWN}
