"""The "Docker images" dashboard: what is on each host's Docker disk, and can the exporter see it."""

from __future__ import annotations

from alerts.render import DEFAULT_THRESHOLDS
from dashboards.model import AVAIL_RATIO, Dashboard, Panel, Row, Target, sel
from dashboards.panels import (
    RUN_ANNOTATION,
    bargauge,
    free_space_stat,
    free_space_timeseries,
    image_table,
    stat,
    steps,
    timeseries,
    used_space_thresholds,
)

UID = "docker-image-exporter-images"


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
            stat(
                1, "Images", "Images as `docker images` lists them (one per image ID).", "short", sel("docker_images")
            ),
            stat(
                2,
                "Dangling images",
                "Untagged images (`<none>:<none>`): leftovers of rebuilds and re-pulls, usually safe to prune.",
                "short",
                sel("docker_images_dangling"),
                width=3,
            ),
            stat(
                3,
                "Unused images",
                "Images no container (running or stopped) uses.",
                "short",
                sel("docker_images_unused"),
                width=3,
            ),
            stat(
                4,
                "Local-only images",
                "Tagged images with no repository digest: built here and never "
                "pushed, so deleting them loses them. Remediation protects them by default. No value on the "
                "containerd store and Podman, where every image lists a digest (unknown there).",
                "short",
                sel("docker_images_local_only"),
                width=3,
            ),
            stat(
                29,
                "Exists only on this host",
                "Bytes of the local-only images: what no registry holds a copy of, so a deletion could not be "
                "undone by a pull (docs/remediation.md, Getting an image back). No value where unknown.",
                "bytes",
                sel("docker_images_local_only_size_bytes"),
                width=3,
            ),
            free_space_stat(5, "Free share of the filesystem holding the engine's data root (statvfs avail/size)."),
            stat(
                6,
                "Reclaimable by image prune",
                "Bytes that deleting every unused image would free (layers shared with used images stay).",
                "bytes",
                sel("docker_images_reclaimable_bytes"),
            ),
        ],
    )
    crit_used = 1 - float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"])
    warn_used = 1 - float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"])
    fleet = Row(
        106,
        "Fleet: hosts ranked",
        [
            bargauge(
                27,
                "Top hosts by reclaimable bytes",
                "The 10 hosts (of those selected) where deleting every unused image would free the most: where a "
                "prune_unused or keep_last action pays off first. Node is the Kubernetes node, where known.",
                "bytes",
                [
                    Target(
                        f"topk(10, {sel('docker_images_reclaimable_bytes')})",
                        "{{node}} {{instance}}",
                        instant=True,
                    )
                ],
                width=12,
            ),
            bargauge(
                28,
                "Top hosts by data-root use",
                "The 10 data-root filesystems (of the hosts selected) with the highest used share (1 - avail/size). "
                f"Colours: DockerDiskPressure warning above {warn_used:.0%} used, critical above {crit_used:.0%}.",
                "percentunit",
                [Target(f"topk(10, 1 - ({AVAIL_RATIO}))", "{{node}} {{instance}} {{path}}", instant=True)],
                width=12,
                defaults={"thresholds": used_space_thresholds(), "min": 0, "max": 1},
            ),
        ],
    )
    filesystem = Row(
        101,
        "Data-root filesystem",
        [
            free_space_timeseries(
                7,
                "Data-root free space (with alert thresholds)",
                "How much of the data-root filesystem is free over time.",
            ),
            timeseries(
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
            timeseries(
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
            timeseries(
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
            timeseries(
                11,
                "Build cache",
                "BuildKit cache size and the part not in use (what `docker builder prune` frees).",
                "bytes",
                [
                    Target(sel("docker_build_cache_size_bytes"), "size {{instance}}"),
                    Target(sel("docker_build_cache_reclaimable_bytes"), "reclaimable {{instance}}"),
                ],
            ),
            timeseries(
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
            stat(
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
            bargauge(
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
            bargauge(
                15,
                "Tag age distribution",
                "How many tags were created how long ago (image creation time, not pull time). Many old tags "
                "suggest a keep_last remediation.",
                "short",
                [Target(f"count({expr}) or vector(0)", label, instant=True) for label, expr in buckets],
            ),
            bargauge(
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
            image_table(
                18,
                "Largest images",
                "The 20 largest tags: size, the part no other image shares "
                "(what deleting it frees), age since creation, time since a container last used it, "
                "and how many containers use it now.",
                largest,
            ),
            image_table(
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
            stat(
                20,
                "Engine reachable",
                "1 when the exporter's last poll reached the Docker engine (DockerEngineDown fires on 0).",
                "short",
                sel("docker_up"),
                defaults={
                    "thresholds": steps(("red", None), ("green", 1)),
                    "mappings": [
                        {
                            "type": "value",
                            "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}},
                        }
                    ],
                },
            ),
            stat(
                21,
                "Snapshot age",
                f"How old the data on /metrics is. DockerImageMetricsStale fires above {stale:g}s.",
                "s",
                f"time() - {sel('docker_exporter_snapshot_timestamp_seconds')}",
                defaults={"thresholds": steps(("green", None), ("red", stale))},
            ),
            stat(
                22,
                "Disk-usage data age",
                "How old the /system/df figures are (disk usage, reclaimable, "
                "shared sizes, build cache): that call is expensive and refreshed rarely.",
                "s",
                f"time() - {sel('docker_exporter_disk_usage_timestamp_seconds')}",
            ),
            stat(
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
            timeseries(
                25,
                "Poll duration",
                "Duration of the last poll (list images and containers, statvfs, and /system/df when due).",
                "s",
                [Target(sel("docker_exporter_poll_duration_seconds"), "{{instance}}")],
                width=12,
            ),
            timeseries(
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
        UID,
        "Docker images",
        "Images, dangling and unused images, reclaimable space, build cache and the data-root filesystem of "
        "each Docker host, from docker-image-exporter.",
        [overview, fleet, filesystem, space, repos, images, health],
        annotations=[("Remediation runs", RUN_ANNOTATION)],
    )
