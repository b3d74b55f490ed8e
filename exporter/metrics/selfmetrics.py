"""The exporter's own activity (polls, errors), instrumented directly as the client library intends."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

POLL_STAGES = ("info", "images", "containers", "filesystem", "disk_usage", "events")


class PollMetrics:
    """Counters and gauges about polling; registered on the app's own registry, never the global one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # `_created` samples double the counter series and nothing here needs them (process-wide switch).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.polls = Counter(
            "docker_exporter_polls",
            "Polls of the engine started by the exporter (timer, events or remediation).",
            registry=registry,
        )
        self.errors = Counter(
            "docker_exporter_poll_errors",
            "Failed engine reads by stage (info, images, containers, filesystem, disk_usage, events).",
            ["stage"],
            registry=registry,
        )
        for stage in POLL_STAGES:
            self.errors.labels(stage)
        self.duration = Gauge(
            "docker_exporter_poll_duration_seconds",
            "Wall time of the last poll (images, containers, filesystem; /system/df runs separately).",
            registry=registry,
        )
        self.disk_usage_duration = Gauge(
            "docker_exporter_disk_usage_duration_seconds",
            "Wall time of the last /system/df call, which is expensive on large hosts.",
            registry=registry,
        )


def register_runtime_metrics(registry: CollectorRegistry) -> None:
    """The standard `process_*` and `python_*` families, as on the client library's default registry.

    The app serves its own registry (never the global one, so tests can build many apps), which leaves
    these out unless registered here: memory, CPU, open file descriptors and GC activity of the exporter.
    """
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
