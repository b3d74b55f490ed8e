"""Generate the Grafana dashboards (``python -m dashboards.generate`` / ``make dashboards``).

Why generated: ~40 panels that must all carry the datasource variable, the job/instance filters, a unit
and a description are easy to get subtly wrong by hand, and the alert thresholds drawn on the filesystem
panels must equal the ones in ``alerts/render.py``. Plain dicts keep the generator free of dependencies.
``tests/unit/test_dashboards.py`` fails when the committed JSON drifts from this module's output, checks
every panel, and parses every query with ``promtool``.

Panel ids are written out by hand (not counted) so they stay stable when panels are added or moved:
links like ``?viewPanel=7`` keep working.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts.render import DEFAULT_THRESHOLDS

DASHBOARD_DIR = Path(__file__).resolve().parent
SCHEMA_VERSION = 39
TAGS = ["docker", "docker-image-exporter"]
IMAGES_UID = "docker-image-exporter-images"
REMEDIATION_UID = "docker-image-exporter-remediation"

DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
FILTER = 'job=~"$job", instance=~"$instance"'
# One key covers a whole image row: these five labels identify a per-tag series.
IMAGE_KEY = "job, instance, repository, tag, image_id"


def sel(metric: str, extra: str = "") -> str:
    """``metric{job=~"$job", instance=~"$instance", <extra>}`` — every query filters by the variables."""
    return f"{metric}{{{FILTER}{', ' + extra if extra else ''}}}"


AVAIL_RATIO = f"{sel('docker_filesystem_avail_bytes')} / ({sel('docker_filesystem_size_bytes')} > 0)"


@dataclass(frozen=True)
class Target:
    """One query of a panel; ``may_be_empty`` names why it can legitimately return no series."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    may_be_empty: str = ""


@dataclass
class Panel:
    """A panel before layout; ``width``/``height`` are grid units (24 columns wide)."""

    id: int
    type: str
    title: str
    description: str
    unit: str
    targets: list[Target]
    width: int = 8
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Row:
    """A row header followed by its panels."""

    id: int
    title: str
    panels: list[Panel]


@dataclass
class Dashboard:
    """Everything that differs between the two dashboards."""

    uid: str
    title: str
    description: str
    rows: list[Row]
    annotations: list[tuple[str, Target]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Small builders
# --------------------------------------------------------------------------------------------------
def _steps(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def _free_space_thresholds() -> dict[str, Any]:
    """Threshold steps at the DockerDiskPressure levels, so the panel draws the alert lines."""
    crit = float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"])
    warn = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"])
    clear = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning_clear"])
    return _steps(("red", None), ("orange", crit), ("yellow", warn), ("green", clear))


def _free_space_description(what: str) -> str:
    crit = float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"])
    warn = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"])
    clear = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning_clear"])
    return (
        f"{what} Lines: DockerDiskPressure critical below {crit:.0%}, warning below {warn:.0%}; the warning "
        f"clears only above {clear:.0%} (low watermark). Thresholds come from alerts/render.py."
    )


def _stat(pid: int, title: str, description: str, unit: str, expr: str, **kw: Any) -> Panel:
    return Panel(
        pid,
        "stat",
        title,
        description,
        unit,
        [Target(expr, legend=kw.pop("legend", "{{instance}}"), instant=True)],
        width=kw.pop("width", 4),
        height=kw.pop("height", 4),
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        **kw,
    )


def _timeseries(pid: int, title: str, description: str, unit: str, targets: list[Target], **kw: Any) -> Panel:
    custom: dict[str, Any] = {
        "drawStyle": kw.pop("draw_style", "line"),
        "lineWidth": 1,
        "fillOpacity": kw.pop("fill", 10),
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": kw.pop("stacking", "none"), "group": "A"},
        "thresholdsStyle": {"mode": kw.pop("thresholds_style", "off")},
    }
    defaults = kw.pop("defaults", {})
    defaults.setdefault("custom", custom)
    return Panel(
        pid,
        "timeseries",
        title,
        description,
        unit,
        targets,
        defaults=defaults,
        options={
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **kw,
    )


def _free_space_stat(pid: int, what: str, **kw: Any) -> Panel:
    """The data-root free share as a stat coloured at the DockerDiskPressure levels."""
    return _stat(
        pid,
        "Data root free",
        _free_space_description(what),
        "percentunit",
        AVAIL_RATIO,
        defaults={"thresholds": _free_space_thresholds(), "min": 0, "max": 1},
        **kw,
    )


def _free_space_timeseries(pid: int, title: str, what: str) -> Panel:
    """The data-root free share over time with the alert levels drawn as lines."""
    return _timeseries(
        pid,
        title,
        _free_space_description(what),
        "percentunit",
        [Target(AVAIL_RATIO, "{{instance}} {{path}}")],
        width=12,
        thresholds_style="line+area",
        defaults={"thresholds": _free_space_thresholds(), "min": 0, "max": 1},
    )


def _bargauge(pid: int, title: str, description: str, unit: str, targets: list[Target], **kw: Any) -> Panel:
    return Panel(
        pid,
        "bargauge",
        title,
        description,
        unit,
        targets,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        },
        **kw,
    )


def _unit_override(name: str, unit: str) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}


def _image_table(pid: int, title: str, description: str, rank: str, width: int = 12) -> Panel:
    """A per-image table: the rows are ``rank`` (a topk), the columns joined onto it by labels."""
    cols = [
        ("A", "Size", "bytes", sel("docker_image_size_bytes")),
        ("B", "Unique size", "bytes", sel("docker_image_unique_size_bytes")),
        ("C", "Age", "s", f"time() - {sel('docker_image_created_timestamp_seconds')}"),
        ("D", "Since last used", "s", f"time() - {sel('docker_image_last_used_timestamp_seconds')}"),
        ("E", "Containers", "short", sel("docker_image_containers")),
    ]
    targets = []
    for ref, _name, _unit, expr in cols:
        empty = (
            "last-used times exist only for images a container was created/started from while the exporter ran"
            if ref == "D"
            else ""
        )
        targets.append(Target(f"({expr})\nand on ({IMAGE_KEY})\n{rank}", instant=True, table=True, may_be_empty=empty))
    rename = {f"Value #{ref}": name for ref, name, _u, _e in cols}
    return Panel(
        pid,
        "table",
        title,
        description,
        "bytes",
        targets,
        width=width,
        height=10,
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}},
        overrides=[_unit_override(name, unit) for _ref, name, unit, _e in cols],
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "__name__": True, "job": True},
                    "indexByName": {
                        "instance": 0,
                        "repository": 1,
                        "tag": 2,
                        "image_id": 3,
                        **{name: 4 + i for i, (_r, name, _u, _e) in enumerate(cols)},
                    },
                    "renameByName": rename,
                },
            },
        ],
    )


RUN_ANNOTATION = Target(
    f"changes({sel('docker_remediation_last_run_timestamp_seconds')}[$__rate_interval]) > 0",
    legend="{{action}} on {{instance}}",
    may_be_empty="a remediation run must have finished within the last rate interval",
)


# --------------------------------------------------------------------------------------------------
# Docker images dashboard
# --------------------------------------------------------------------------------------------------
def images_dashboard() -> Dashboard:
    """Panels answering "what is on this host's Docker disk, and can the exporter see it"."""
    tagged = sel("docker_image_created_timestamp_seconds", 'tag!="<none>"')
    age = f"(time() - {tagged})"
    day = 86400
    buckets = [
        ("< 1 day", f"{age} <= {day}"),
        ("1-7 days", f"{age} > {day} <= {7 * day}"),
        ("7-30 days", f"{age} > {7 * day} <= {30 * day}"),
        ("30-90 days", f"{age} > {30 * day} <= {90 * day}"),
        ("90-365 days", f"{age} > {90 * day} <= {365 * day}"),
        ("> 1 year", f"{age} > {365 * day}"),
    ]
    latest, not_latest = sel("docker_image_size_bytes", 'tag="latest"'), sel("docker_image_size_bytes", 'tag!="latest"')
    only_latest = (
        f"{sel('docker_repository_size_bytes')}\n"
        f"and on (job, instance, repository)\n"
        f"(\n  count by (job, instance, repository) ({latest})\n"
        f"  unless on (job, instance, repository)\n"
        f"  count by (job, instance, repository) ({not_latest})\n)"
    )
    overview = Row(
        100,
        "Overview",
        [
            _stat(
                1, "Images", "Images as `docker images` lists them (one per image ID).", "short", sel("docker_images")
            ),
            _stat(
                2,
                "Dangling images",
                "Untagged images (`<none>:<none>`): leftovers of rebuilds and re-pulls, usually safe to prune.",
                "short",
                sel("docker_images_dangling"),
            ),
            _stat(
                3,
                "Unused images",
                "Images no container (running or stopped) uses.",
                "short",
                sel("docker_images_unused"),
            ),
            _stat(
                4,
                "Local-only images",
                "Tagged images with no repository digest: built here and never "
                "pushed, so deleting them loses them. Remediation protects them by default.",
                "short",
                sel("docker_images_local_only"),
            ),
            _free_space_stat(5, "Free share of the filesystem holding the engine's data root (statvfs avail/size)."),
            _stat(
                6,
                "Reclaimable by image prune",
                "Bytes that deleting every unused image would free (layers shared with used images stay).",
                "bytes",
                sel("docker_images_reclaimable_bytes"),
            ),
        ],
    )
    filesystem = Row(
        101,
        "Data-root filesystem",
        [
            _free_space_timeseries(
                7,
                "Data-root free space (with alert thresholds)",
                "How much of the data-root filesystem is free over time.",
            ),
            _timeseries(
                8,
                "Data-root filesystem bytes",
                "Size, used and available bytes of the filesystem holding the data root. Used includes "
                "containers, volumes and anything else on that filesystem, not only images.",
                "bytes",
                [
                    Target(sel("docker_filesystem_size_bytes"), "size {{instance}}"),
                    Target(
                        f"{sel('docker_filesystem_size_bytes')} - {sel('docker_filesystem_avail_bytes')}",
                        "used {{instance}}",
                    ),
                    Target(sel("docker_filesystem_avail_bytes"), "available {{instance}}"),
                ],
                width=12,
            ),
        ],
    )
    space = Row(
        102,
        "Where the space goes",
        [
            _timeseries(
                9,
                "Disk usage vs logical size",
                "Logical size counts a shared layer once per image that has it (what `docker images` adds up); "
                "disk usage counts it once (`LayersSize`). The difference is what layer sharing saves. "
                "Disk usage comes from /system/df, refreshed every poll.disk_usage_interval.",
                "bytes",
                [
                    Target(sel("docker_images_size_bytes"), "logical {{instance}}"),
                    Target(sel("docker_images_disk_usage_bytes"), "on disk {{instance}}"),
                    Target(
                        f"{sel('docker_images_size_bytes')} - {sel('docker_images_disk_usage_bytes')}",
                        "saved by sharing {{instance}}",
                    ),
                ],
            ),
            _timeseries(
                10,
                "Reclaimable space",
                "What pruning could free: unused images (all of them), dangling images only, and the "
                "reclaimable part of the build cache.",
                "bytes",
                [
                    Target(sel("docker_images_reclaimable_bytes"), "unused images {{instance}}"),
                    Target(sel("docker_images_dangling_size_bytes"), "dangling images {{instance}}"),
                    Target(sel("docker_build_cache_reclaimable_bytes"), "build cache {{instance}}"),
                ],
            ),
            _timeseries(
                11,
                "Build cache",
                "BuildKit cache size and the part not in use (what `docker builder prune` frees).",
                "bytes",
                [
                    Target(sel("docker_build_cache_size_bytes"), "size {{instance}}"),
                    Target(sel("docker_build_cache_reclaimable_bytes"), "reclaimable {{instance}}"),
                ],
            ),
            _timeseries(
                12,
                "Image counts",
                "Images, dangling, unused and local-only images over time: a steady climb of dangling images "
                "means builds or pulls replace tags without cleanup.",
                "short",
                [
                    Target(sel("docker_images"), "images {{instance}}"),
                    Target(sel("docker_images_dangling"), "dangling {{instance}}"),
                    Target(sel("docker_images_unused"), "unused {{instance}}"),
                    Target(sel("docker_images_local_only"), "local-only {{instance}}"),
                ],
                width=16,
            ),
            _stat(
                13,
                "Build cache entries",
                "Records in the BuildKit cache.",
                "short",
                sel("docker_build_cache_entries"),
                width=8,
                height=8,
            ),
        ],
    )
    repos = Row(
        103,
        "Repositories and tags",
        [
            _bargauge(
                14,
                "Top repositories by size",
                "The 10 repositories whose images are largest (logical size: shared layers count in each image).",
                "bytes",
                [
                    Target(
                        f"topk(10, {sel('docker_repository_size_bytes')})",
                        "{{repository}} ({{instance}})",
                        instant=True,
                    )
                ],
            ),
            _bargauge(
                15,
                "Tag age distribution",
                "How many tags were created how long ago (image creation time, not pull time). Many old tags "
                "suggest a keep_last remediation.",
                "short",
                [Target(f"count({expr}) or vector(0)", label, instant=True) for label, expr in buckets],
            ),
            _bargauge(
                16,
                "Tags per repository",
                "The 10 repositories with the most tags: candidates for keep_last.",
                "short",
                [Target(f"topk(10, {sel('docker_repository_tags')})", "{{repository}} ({{instance}})", instant=True)],
            ),
            Panel(
                17,
                "table",
                "Repositories that only have latest",
                "Repositories whose only tag is `latest`: no older version to roll back to, and `latest` moves "
                "on every pull. Value is the repository size. Needs per-image series (metrics.per_image).",
                "bytes",
                [
                    Target(
                        only_latest,
                        instant=True,
                        table=True,
                        may_be_empty="empty unless some repository has `latest` as its only tag",
                    )
                ],
                width=24,
                height=7,
                options={"showHeader": True, "cellHeight": "sm"},
                transformations=[
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True, "__name__": True, "job": True},
                            "renameByName": {"Value": "Size"},
                        },
                    },
                ],
            ),
        ],
    )
    largest = f"topk(20, {sel('docker_image_size_bytes')})"
    oldest = f"topk(20, time() - {sel('docker_image_created_timestamp_seconds')})"
    images = Row(
        104,
        "Images",
        [
            _image_table(
                18,
                "Largest images",
                "The 20 largest tags: size, the part no other image shares "
                "(what deleting it frees), age since creation, time since a container last used it, "
                "and how many containers use it now.",
                largest,
            ),
            _image_table(
                19,
                "Oldest images",
                "The 20 tags with the oldest creation time, with the same columns as Largest images.",
                oldest,
            ),
        ],
    )
    stale = float(DEFAULT_THRESHOLDS["stale_seconds"])
    health = Row(
        105,
        "Exporter health",
        [
            _stat(
                20,
                "Engine reachable",
                "1 when the exporter's last poll reached the Docker engine (DockerEngineDown fires on 0).",
                "short",
                sel("docker_up"),
                defaults={
                    "thresholds": _steps(("red", None), ("green", 1)),
                    "mappings": [
                        {
                            "type": "value",
                            "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}},
                        }
                    ],
                },
            ),
            _stat(
                21,
                "Snapshot age",
                f"How old the data on /metrics is. DockerImageMetricsStale fires above {stale:g}s.",
                "s",
                f"time() - {sel('docker_exporter_snapshot_timestamp_seconds')}",
                defaults={"thresholds": _steps(("green", None), ("red", stale))},
            ),
            _stat(
                22,
                "Disk-usage data age",
                "How old the /system/df figures are (disk usage, reclaimable, "
                "shared sizes, build cache): that call is expensive and refreshed rarely.",
                "s",
                f"time() - {sel('docker_exporter_disk_usage_timestamp_seconds')}",
            ),
            _stat(
                23,
                "Per-image series dropped",
                "Per-tag series cut by metrics.max_image_series (largest kept). Totals are unaffected.",
                "short",
                sel("docker_exporter_image_series_dropped"),
            ),
            Panel(
                24,
                "table",
                "Engine",
                "Engine version, negotiated API version, storage driver and platform of each host.",
                "short",
                [Target(sel("docker_engine_info"), instant=True, table=True)],
                width=8,
                height=4,
                options={"showHeader": True, "cellHeight": "sm"},
                transformations=[
                    {
                        "id": "organize",
                        "options": {"excludeByName": {"Time": True, "__name__": True, "job": True, "Value": True}},
                    }
                ],
            ),
            _timeseries(
                25,
                "Poll duration",
                "Duration of the last poll (list images and containers, statvfs, and /system/df when due).",
                "s",
                [Target(sel("docker_exporter_poll_duration_seconds"), "{{instance}}")],
                width=12,
            ),
            _timeseries(
                26,
                "Polls and poll errors",
                "Polls per second, and failed polls per second by stage (images, containers, disk_usage, "
                "filesystem, info, events).",
                "cps",
                [
                    Target(
                        f"sum by (instance) (rate({sel('docker_exporter_polls_total')}[$__rate_interval]))",
                        "polls {{instance}}",
                    ),
                    Target(
                        f"sum by (instance, stage) "
                        f"(rate({sel('docker_exporter_poll_errors_total')}[$__rate_interval]))",
                        "errors {{stage}} {{instance}}",
                        may_be_empty="error counters may appear only after the first error",
                    ),
                ],
                width=12,
            ),
        ],
    )
    return Dashboard(
        IMAGES_UID,
        "Docker images",
        "Images, dangling and unused images, reclaimable space, build cache and the data-root filesystem of "
        "each Docker host, from docker-image-exporter.",
        [overview, filesystem, space, repos, images, health],
        annotations=[("Remediation runs", RUN_ANNOTATION)],
    )


# --------------------------------------------------------------------------------------------------
# Remediation dashboard
# --------------------------------------------------------------------------------------------------
def remediation_dashboard() -> Dashboard:
    """Panels answering "what did the remediation hook do, and did it help"."""
    runs = "docker_remediation_runs_total"
    skipped_empty = "skips happen only when a candidate is protected, in use, too young or refused"
    overview = Row(
        200,
        "Overview",
        [
            _stat(
                1,
                "Runs in range",
                "Remediation runs in the selected time range by result (success, partial, failure, dry_run).",
                "short",
                f"sum by (result) (increase({sel(runs)}[$__range]))",
                legend="{{result}}",
                width=5,
            ),
            _stat(
                2,
                "Images deleted in range",
                "Images (or tags) deleted by remediation in the time range.",
                "short",
                f"sum(increase({sel('docker_remediation_images_deleted_total')}[$__range]))",
                legend="deleted",
                width=5,
            ),
            _stat(
                3,
                "Bytes reclaimed in range",
                "Bytes the engine reported freed by remediation in the time range.",
                "bytes",
                f"sum(increase({sel('docker_remediation_reclaimed_bytes_total')}[$__range]))",
                legend="reclaimed",
                width=5,
            ),
            _stat(
                4,
                "Running now",
                "Actions running at this moment (one run per action at a time).",
                "short",
                f"sum by (action) ({sel('docker_remediation_running')})",
                legend="{{action}}",
                width=4,
            ),
            _free_space_stat(5, "Free share of the data-root filesystem.", width=5),
        ],
    )
    activity = Row(
        201,
        "Runs",
        [
            _timeseries(
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
            _free_space_timeseries(
                7,
                "Data-root free space during remediation",
                "Free share of the data root; the run annotations show whether runs moved it.",
            ),
            _timeseries(
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
            _timeseries(
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
            _timeseries(
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
            _bargauge(
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
                    _unit_override("Since last run", "s"),
                    _unit_override("Last run reclaimed", "bytes"),
                    _unit_override("Running", "short"),
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
            _timeseries(
                13,
                "Webhook requests by code",
                "Requests to /webhook/alertmanager by HTTP status: 2xx accepted, 401 bad auth, 4xx bad bodies "
                "(not retried), 503 not accepted now (Alertmanager retries).",
                "reqps",
                [Target(f"sum by (code) (rate({sel('docker_webhook_requests_total')}[$__rate_interval]))", "{{code}}")],
                width=12,
            ),
            _timeseries(
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
    return Dashboard(
        REMEDIATION_UID,
        "Docker image remediation",
        "What docker-image-exporter's remediation hook did: runs, deletions, bytes reclaimed, skips and the "
        "Alertmanager webhook traffic.",
        [overview, activity, webhook],
        annotations=[("Remediation runs", RUN_ANNOTATION)],
    )


DASHBOARDS = {"docker-images.json": images_dashboard, "docker-remediation.json": remediation_dashboard}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------
def _target_json(target: Target, ref: str) -> dict[str, Any]:
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": target.expr,
        "legendFormat": target.legend or "__auto",
        "range": not target.instant,
        "instant": target.instant,
        "format": "table" if target.table else "time_series",
        "refId": ref,
    }


def _panel_json(panel: Panel, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.defaults}
    defaults.setdefault("color", {"mode": "palette-classic" if panel.type == "timeseries" else "thresholds"})
    defaults.setdefault("thresholds", _steps(("green", None)))
    return {
        "id": panel.id,
        "type": panel.type,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": panel.overrides},
        "options": panel.options,
        "targets": [_target_json(t, chr(ord("A") + i)) for i, t in enumerate(panel.targets)],
        "transformations": panel.transformations,
    }


def _layout(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Place rows and panels left to right, wrapping at 24 columns."""
    out: list[dict[str, Any]] = []
    y = 0
    for row in rows:
        out.append(
            {
                "id": row.id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            out.append(_panel_json(panel, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


def _annotation_json(name: str, target: Target) -> dict[str, Any]:
    return {
        "name": name,
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": "purple",
        "expr": target.expr,
        "step": "1m",
        "titleFormat": "Remediation run",
        "textFormat": target.legend,
        "tagKeys": "action,instance",
        "useValueForTime": False,
    }


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-variable"},
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".+",
            "current": {},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "regex": "",
            "refresh": 1,
            "hide": 0,
        },
        query_var("job", "Job", "label_values(docker_up, job)"),
        query_var("instance", "Instance", 'label_values(docker_up{job=~"$job"}, instance)'),
    ]


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The importable Grafana JSON model of ``dashboard``."""
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "annotations": {"list": [builtin, *(_annotation_json(n, t) for n, t in dashboard.annotations)]},
        "description": dashboard.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "type": "dashboards",
                "title": "docker-image-exporter",
                "tags": ["docker-image-exporter"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "panels": _layout(dashboard.rows),
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": _variables()},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": dashboard.title,
        "uid": dashboard.uid,
        "version": 1,
        "weekStart": "",
    }


def render_all() -> dict[str, str]:
    """File name -> JSON text, exactly as committed under ``dashboards/``."""
    return {
        name: json.dumps(render(build()), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()
    }


# --------------------------------------------------------------------------------------------------
# Queries, for the tests and the end-to-end loop
# --------------------------------------------------------------------------------------------------
def _all_targets() -> Iterable[tuple[str, str, Target]]:
    for build in DASHBOARDS.values():
        dashboard = build()
        for name, target in dashboard.annotations:
            yield dashboard.uid, f"annotation: {name}", target
        for row in dashboard.rows:
            for panel in row.panels:
                for target in panel.targets:
                    yield dashboard.uid, panel.title, target


def all_queries() -> list[tuple[str, str, str]]:
    """Every PromQL expression the dashboards run: (dashboard uid, panel title, expr)."""
    return [(uid, title, t.expr) for uid, title, t in _all_targets()]


def queries_that_may_be_empty() -> dict[tuple[str, str, str], str]:
    """The queries that can legitimately return no series on a healthy host, with the reason."""
    return {(uid, title, t.expr): t.may_be_empty for uid, title, t in _all_targets() if t.may_be_empty}


def _regex_literal(value: str) -> str:
    r"""``value`` as a regex matching only itself, escaped for a double-quoted PromQL string (``.`` -> ``\\.``)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", value)


def substitute_variables(
    expr: str,
    job: str,
    instance: str,
    *,
    rate_interval: str = "1m",
    interval: str = "1m",
    range_: str = "1h",
) -> str:
    """Replace the Grafana variables in ``expr`` the way Grafana would, so Prometheus can run it.

    ``job`` and ``instance`` are matched literally (regex metacharacters escaped, as Grafana does for a
    single selected value); ``$__rate_interval``/``$__interval``/``$__range`` get concrete durations.
    """
    seconds = _duration_seconds(range_)
    replacements = {
        "$__rate_interval": rate_interval,
        "$__interval_ms": str(_duration_seconds(interval) * 1000),
        "$__interval": interval,
        "$__range_s": str(seconds),
        "$__range_ms": str(seconds * 1000),
        "$__range": range_,
        "${job}": _regex_literal(job),
        "$job": _regex_literal(job),
        "${instance}": _regex_literal(instance),
        "$instance": _regex_literal(instance),
    }
    # Longest names first, so "$__interval" never eats the start of "$__interval_ms".
    for name in sorted(replacements, key=len, reverse=True):
        expr = expr.replace(name, replacements[name])
    return expr


def _duration_seconds(duration: str) -> int:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return int(sum(int(n) * units[u] for n, u in parts))


def main(argv: Sequence[str] | None = None) -> int:
    """Write every dashboard into ``dashboards/`` (or the directory given as the only argument)."""
    args = list(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args[0]) if args else DASHBOARD_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {out_dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
