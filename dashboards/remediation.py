"""The "Docker image remediation" dashboard: what the remediation hook did, and whether it helped."""

from __future__ import annotations

from dashboards.model import Dashboard, Panel, Row, Target, sel
from dashboards.panels import (
    RUN_ANNOTATION,
    bargauge,
    free_space_stat,
    free_space_timeseries,
    stat,
    steps,
    timeseries,
    unit_override,
)

UID = "docker-image-exporter-remediation"


def remediation_dashboard() -> Dashboard:
    """Panels answering "what did the remediation hook do, and did it help"."""
    runs = "docker_remediation_runs_total"
    skipped_empty = "skips happen only when a candidate is protected, in use, too young or refused"
    overview = Row(
        200,
        "Overview",
        [
            stat(
                1,
                "Runs in range",
                "Remediation runs in the selected time range by result (success, partial, failure, dry_run).",
                "short",
                f"sum by (result) (increase({sel(runs)}[$__range]))",
                legend="{{result}}",
                width=5,
            ),
            stat(
                2,
                "Images deleted in range",
                "Images (or tags) deleted by remediation in the time range.",
                "short",
                f"sum(increase({sel('docker_remediation_images_deleted_total')}[$__range]))",
                legend="deleted",
                width=5,
            ),
            stat(
                3,
                "Bytes reclaimed in range",
                "Bytes the engine reported freed by remediation in the time range.",
                "bytes",
                f"sum(increase({sel('docker_remediation_reclaimed_bytes_total')}[$__range]))",
                legend="reclaimed",
                width=5,
            ),
            stat(
                4,
                "Running now",
                "Actions running at this moment (one run per action at a time).",
                "short",
                f"sum by (action) ({sel('docker_remediation_running')})",
                legend="{{action}}",
                width=4,
            ),
            free_space_stat(5, "Free share of the data-root filesystem.", width=5),
        ],
    )
    activity = Row(
        201,
        "Runs",
        [
            timeseries(
                6,
                "Runs by action and result",
                "Runs started by alerts, schedules or by hand, by action and result.",
                "short",
                [Target(f"sum by (action, result) (increase({sel(runs)}[$__rate_interval]))", "{{action}} {{result}}")],
                draw_style="bars",
                stacking="normal",
                fill=80,
                width=12,
            ),
            free_space_timeseries(
                7,
                "Data-root free space during remediation",
                "Free share of the data root; the run annotations show whether runs moved it.",
            ),
            timeseries(
                8,
                "Images deleted",
                "Images or tags deleted per interval, by action.",
                "short",
                [
                    Target(
                        f"sum by (action) (increase({sel('docker_remediation_images_deleted_total')}"
                        f"[$__rate_interval]))",
                        "{{action}}",
                    )
                ],
                draw_style="bars",
                stacking="normal",
                fill=80,
            ),
            timeseries(
                9,
                "Bytes reclaimed",
                "Bytes freed per interval, by action (as the engine reports them).",
                "bytes",
                [
                    Target(
                        f"sum by (action) (increase({sel('docker_remediation_reclaimed_bytes_total')}"
                        f"[$__rate_interval]))",
                        "{{action}}",
                    )
                ],
                draw_style="bars",
                stacking="normal",
                fill=80,
            ),
            timeseries(
                10,
                "Skipped images by reason",
                "Candidates not deleted, by reason: in_use, protected_reference, protected_label, local_only, "
                "too_young, conflict (engine 409), not_found, max_deletions.",
                "short",
                [
                    Target(
                        f"sum by (reason) (increase({sel('docker_remediation_skipped_images_total')}"
                        f"[$__rate_interval]))",
                        "{{reason}}",
                        may_be_empty=skipped_empty,
                    )
                ],
                draw_style="bars",
                stacking="normal",
                fill=80,
            ),
            bargauge(
                11,
                "Skipped images in range",
                "Skips in the selected time range by action and reason: what protection held back.",
                "short",
                [
                    Target(
                        f"sum by (action, reason) (increase({sel('docker_remediation_skipped_images_total')}"
                        f"[$__range]))",
                        "{{action}} {{reason}}",
                        instant=True,
                        may_be_empty=skipped_empty,
                    )
                ],
                width=12,
            ),
            Panel(
                12,
                "table",
                "Last run per action",
                "For each action: time since its last run, what that run reclaimed, and whether it runs now.",
                "s",
                [
                    Target(
                        f"time() - {sel('docker_remediation_last_run_timestamp_seconds')}", instant=True, table=True
                    ),
                    Target(sel("docker_remediation_last_run_reclaimed_bytes"), instant=True, table=True),
                    Target(sel("docker_remediation_running"), instant=True, table=True),
                ],
                width=12,
                options={"showHeader": True, "cellHeight": "sm"},
                overrides=[
                    unit_override("Since last run", "s"),
                    unit_override("Last run reclaimed", "bytes"),
                    unit_override("Running", "short"),
                ],
                transformations=[
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True, "__name__": True, "job": True},
                            "renameByName": {
                                "Value #A": "Since last run",
                                "Value #B": "Last run reclaimed",
                                "Value #C": "Running",
                            },
                        },
                    },
                ],
            ),
        ],
    )
    webhook = Row(
        202,
        "Alertmanager webhook",
        [
            timeseries(
                13,
                "Webhook requests by code",
                "Requests to /webhook/alertmanager by HTTP status: 2xx accepted, 401 bad auth, 4xx bad bodies "
                "(not retried), 503 not accepted now (Alertmanager retries).",
                "reqps",
                [Target(f"sum by (code) (rate({sel('docker_webhook_requests_total')}[$__rate_interval]))", "{{code}}")],
                width=12,
            ),
            timeseries(
                14,
                "Alerts by outcome",
                "Alerts received per interval by status and outcome: routed (an action started), unrouted, "
                "out_of_scope (another host's alert), deduplicated, cooldown, relayed (fleet mode).",
                "short",
                [
                    Target(
                        f"sum by (status, outcome) (increase({sel('docker_webhook_alerts_total')}[$__rate_interval]))",
                        "{{status}} {{outcome}}",
                    )
                ],
                draw_style="bars",
                stacking="normal",
                fill=80,
                width=12,
            ),
        ],
    )
    trash_bytes, trash_max = sel("docker_remediation_trash_bytes"), sel("docker_remediation_trash_max_bytes")
    way_back = Row(
        203,
        "Trash and restores",
        [
            stat(
                15,
                "Trash used",
                "Share of remediation.trash.max_bytes the saved archives take; a save first removes the oldest "
                "archives to stay under it. No value when no trash is configured.",
                "percentunit",
                f"{trash_bytes} / {trash_max}",
                defaults={"thresholds": steps(("green", None), ("yellow", 0.8), ("red", 0.95)), "min": 0, "max": 1},
                width=4,
            ),
            stat(
                16,
                "Images in the trash",
                "Deleted images saved before their deletion: a restore loads them back without a registry "
                "(docs/remediation.md, Getting an image back). No value when no trash is configured.",
                "short",
                sel("docker_remediation_trash_images"),
                width=4,
            ),
            timeseries(
                17,
                "Trash bytes vs max",
                "Bytes of the archives in remediation.trash, and its max_bytes bound.",
                "bytes",
                [Target(trash_bytes, "{{instance}} in trash"), Target(trash_max, "{{instance}} max_bytes")],
                width=8,
            ),
            timeseries(
                18,
                "Restores by result",
                "Deleted images a restore dealt with per interval: restored, present (only tags re-created), "
                "would_restore (dry run), no_copy, mismatch, failed.",
                "short",
                [
                    Target(
                        f"sum by (result) (increase({sel('docker_remediation_restored_images_total')}"
                        f"[$__rate_interval]))",
                        "{{result}}",
                    )
                ],
                draw_style="bars",
                stacking="normal",
                fill=80,
                width=8,
            ),
        ],
    )
    return Dashboard(
        UID,
        "Docker image remediation",
        "What docker-image-exporter's remediation hook did: runs, deletions, bytes reclaimed, skips, the "
        "Alertmanager webhook traffic, the trash and restores.",
        [overview, activity, webhook, way_back],
        annotations=[("Remediation runs", RUN_ANNOTATION)],
    )
