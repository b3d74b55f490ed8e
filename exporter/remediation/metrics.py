"""Remediation and webhook metrics, instrumented directly (they count the exporter's own actions).

Every label set a configured action can produce is created at startup, so series exist at 0 and
`increase()` / absence alerts work from the first scrape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge

from exporter.remediation.planner import SKIP_REASONS

TRIGGERS = ("alert", "schedule", "manual")
RESULTS = ("success", "partial", "failure", "dry_run")
ALERT_STATUSES = ("firing", "resolved")
ALERT_OUTCOMES = ("routed", "unrouted", "out_of_scope", "deduplicated", "cooldown", "relayed")
#: What one restore of one deleted image can end in (see exporter/remediation/restore.py).
RESTORE_RESULTS = ("restored", "present", "would_restore", "no_copy", "mismatch", "failed")


class RemediationMetrics:
    """Counters and gauges for runs, deletions, skips and webhook traffic (on the app's registry)."""

    def __init__(self, registry: CollectorRegistry, actions: Iterable[str]) -> None:
        self._registry = registry
        self.trash_bytes: Gauge | None = None
        self.trash_images: Gauge | None = None
        self.trash_max_bytes: Gauge | None = None
        self.runs = Counter(
            "docker_remediation_runs",
            "Remediation runs by action, trigger (alert, schedule, manual) and result "
            "(success, partial, failure, dry_run).",
            ["action", "trigger", "result"],
            registry=registry,
        )
        self.images_deleted = Counter(
            "docker_remediation_images_deleted",
            "Images that remediation removed from the engine (the engine answered Deleted for the image ID; "
            "untagging a tag of an image that stays is not counted).",
            ["action"],
            registry=registry,
        )
        self.reclaimed = Counter(
            "docker_remediation_reclaimed_bytes",
            "Bytes freed by remediation: unique sizes of images that really disappeared plus build cache "
            "SpaceReclaimed (a lower bound: layers shared only among deleted images are not counted).",
            ["action"],
            registry=registry,
        )
        self.skipped = Counter(
            "docker_remediation_skipped_images",
            "Images a run selected but did not delete, by reason; counted once per run (dry runs included).",
            ["action", "reason"],
            registry=registry,
        )
        self.last_run = Gauge(
            "docker_remediation_last_run_timestamp_seconds",
            "When the last run of the action ended (any result, dry runs included); 0 = never since start.",
            ["action"],
            registry=registry,
        )
        self.last_reclaimed = Gauge(
            "docker_remediation_last_run_reclaimed_bytes",
            "Bytes the last run of the action freed (0 for dry runs).",
            ["action"],
            registry=registry,
        )
        self.last_candidates = Gauge(
            "docker_remediation_last_run_candidates",
            "Images the plan of the last run of the action selected for deletion (dry runs included).",
            ["action"],
            registry=registry,
        )
        self.last_shortfall = Gauge(
            "docker_remediation_last_run_shortfall_bytes",
            "free_space: bytes still missing to reach target_avail_ratio and/or target_avail_bytes when the last run "
            "ended (a dry run: after what it would delete); 0 when the goal was met and for other actions.",
            ["action"],
            registry=registry,
        )
        self.next_run = Gauge(
            "docker_remediation_next_run_timestamp_seconds",
            "When the action's next scheduled run is due (only actions with a schedule); a time in the past "
            "while a run missed during downtime is being caught up.",
            ["action"],
            registry=registry,
        )
        self.running = Gauge(
            "docker_remediation_running",
            "1 while a run of the action is in progress.",
            ["action"],
            registry=registry,
        )
        # its `code` series are created by the web layer, which alone knows the codes it answers with
        self.webhook_requests = Counter(
            "docker_webhook_requests",
            "Requests to the remediation HTTP endpoints (webhook and actions API) by response code.",
            ["code"],
            registry=registry,
        )
        self.relays = Counter(
            "docker_webhook_relays",
            "Fleet mode: webhook deliveries relayed to another host's exporter, by result (ok, failed).",
            ["result"],
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.relays.labels(result)
        self.webhook_alerts = Counter(
            "docker_webhook_alerts",
            "Alerts received on the webhook by alert status and what happened to them.",
            ["status", "outcome"],
            registry=registry,
        )
        self.restored = Counter(
            "docker_remediation_restored_images",
            "Deleted images a restore (`POST /api/v1/runs/{run_id}/restore`) dealt with, by result: restored, "
            "present (was there already), would_restore (dry run), no_copy (no repo digest recorded), mismatch "
            "(the digest came back as another image ID), failed (pull or tag failed).",
            ["result"],
            registry=registry,
        )
        for result in RESTORE_RESULTS:
            self.restored.labels(result)
        self.add_actions(actions)
        for status in ALERT_STATUSES:
            for outcome in ALERT_OUTCOMES:
                self.webhook_alerts.labels(status, outcome)

    def set_trash(self, images: int, size: int, max_bytes: int) -> None:
        """The trash's contents and bound; the series exist only once a trash is configured (absent is "no
        trash")."""
        if self.trash_bytes is None or self.trash_images is None or self.trash_max_bytes is None:
            self.trash_bytes = Gauge(
                "docker_remediation_trash_bytes",
                "Bytes the archives in remediation.trash take (images saved before their deletion).",
                registry=self._registry,
            )
            self.trash_images = Gauge(
                "docker_remediation_trash_images",
                "Archives in remediation.trash: deleted images a restore can load back without a registry.",
                registry=self._registry,
            )
            self.trash_max_bytes = Gauge(
                "docker_remediation_trash_max_bytes",
                "remediation.trash.max_bytes: the oldest archives are removed before the trash would pass it.",
                registry=self._registry,
            )
        self.trash_bytes.set(size)
        self.trash_images.set(images)
        self.trash_max_bytes.set(max_bytes)

    def set_next_run(self, action: str, when: float) -> None:
        self.next_run.labels(action).set(when)

    def clear_next_run(self, action: str) -> None:
        """Drop the series of an action that is no longer scheduled (no stale "due" time stays behind)."""
        with contextlib.suppress(KeyError):
            self.next_run.remove(action)

    def add_actions(self, actions: Iterable[str]) -> None:
        """Create the series of these actions at 0 (at start, and for actions a reload adds)."""
        for action in actions:
            for trigger in TRIGGERS:
                for result in RESULTS:
                    self.runs.labels(action, trigger, result)
            self.images_deleted.labels(action)
            self.reclaimed.labels(action)
            for reason in SKIP_REASONS:
                self.skipped.labels(action, reason)
            # the last_run_* gauges appear with the first run: a 0 timestamp would read as "ran in 1970"
            self.running.labels(action)
