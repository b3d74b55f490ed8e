"""Metric families from the current Snapshot. No I/O: a scrape never calls the engine.

Totals never depend on the per-image series cap. Per-tag series are bounded by
`metrics.max_image_series` (largest images first) and the number dropped is exported, so cardinality is
the operator's choice, not the host's.
"""

from __future__ import annotations

import heapq
import platform
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

import exporter
from exporter.config import MetricsConfig
from exporter.snapshot import NONE_LABEL, Image, ImageRef, Snapshot

PER_IMAGE_LABELS = ["repository", "tag", "image_id"]

# Every family collect() can yield (tests/unit/test_collector.py holds the two lists together). describe()
# names them so `/metrics?name[]=...` (prometheus_client's restricted registry) can find this collector.
GAUGE_FAMILIES = (
    "docker_up",
    "docker_exporter_snapshot_timestamp_seconds",
    "docker_exporter_pending_inspects",
    "docker_engine_info",
    "docker_images",
    "docker_images_size_bytes",
    "docker_images_dangling",
    "docker_images_dangling_size_bytes",
    "docker_images_unused",
    "docker_images_local_only",
    "docker_repository_images",
    "docker_repository_tags",
    "docker_repository_size_bytes",
    "docker_exporter_image_series_dropped",
    "docker_image_size_bytes",
    "docker_image_shared_size_bytes",
    "docker_image_unique_size_bytes",
    "docker_image_created_timestamp_seconds",
    "docker_image_last_tag_timestamp_seconds",
    "docker_image_last_used_timestamp_seconds",
    "docker_image_containers",
    "docker_exporter_disk_usage_timestamp_seconds",
    "docker_images_disk_usage_bytes",
    "docker_images_reclaimable_bytes",
    "docker_build_cache_size_bytes",
    "docker_build_cache_reclaimable_bytes",
    "docker_build_cache_entries",
    "docker_filesystem_size_bytes",
    "docker_filesystem_avail_bytes",
)
INFO_FAMILIES = ("docker_exporter_build",)  # exposed with the `_info` suffix

_FRESH = "Refreshed every poll and within about a second of image/container events."
_DF = "From /system/df, refreshed every poll.disk_usage_interval (see docker_exporter_disk_usage_timestamp_seconds)."


def _gauge(name: str, doc: str, value: float | None, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    if value is not None:
        family.add_metric([], value)
    return family


def build_labels() -> dict[str, str]:
    """`docker_exporter_build_info` labels; revision and build date exist only in packaged builds."""
    return {
        "version": exporter.__version__,
        "revision": str(getattr(exporter, "__revision__", None) or "unknown"),
        "build_date": str(getattr(exporter, "__build_date__", None) or "unknown"),
        "python_version": platform.python_version(),
    }


Row = tuple[Image, ImageRef | None]


def _row_order(row: Row) -> tuple[int, str, str]:
    image, ref = row
    return (-image.size, str(ref) if ref else NONE_LABEL, image.id)


def image_rows(images: Iterable[Image]) -> list[Row]:
    """One row per tag (untagged images, dangling or pinned by digest, get one `<none>` row), in snapshot order."""
    rows: list[Row] = []
    for image in images:
        if not image.refs:
            rows.append((image, None))
        rows.extend((image, ref) for ref in image.refs)
    return rows


def image_series(images: Iterable[Image]) -> list[Row]:
    """Every row, largest images first, then by name (then ID): the order per-image series are exposed in."""
    return sorted(image_rows(images), key=_row_order)


def top_image_series(images: Iterable[Image], limit: int) -> tuple[list[Row], int]:
    """`image_series(images)[:limit]`, and how many rows there are in all, without sorting every row.

    `heapq.nsmallest` keeps only `limit` rows (10,625 rows to keep 2,000 at 10k images); it is documented
    equal to `sorted(rows, key=...)[:limit]`, ties included, so the exposed order does not change.
    """
    rows = image_rows(images)
    if limit >= len(rows):
        return sorted(rows, key=_row_order), len(rows)
    return heapq.nsmallest(limit, rows, key=_row_order), len(rows)


Section = tuple[object, Callable[[], Iterable[Metric]]]


class SnapshotSource(Protocol):
    """All the collector reads (the poller provides it): the current snapshot, and whether the engine answered."""

    @property
    def snapshot(self) -> Snapshot | None: ...

    @property
    def up(self) -> bool: ...


class SnapshotCollector(Collector):
    """Renders the poller's current snapshot; `docker_up` says whether the last poll reached the engine."""

    def __init__(self, poller: SnapshotSource, config: MetricsConfig) -> None:
        self.poller = poller
        self.config = config

    def describe(self) -> Iterable[Metric]:
        """Names and types only: registration must not call collect(), and `?name[]=` needs the names."""
        yield from (GaugeMetricFamily(name, name) for name in GAUGE_FAMILIES)
        yield from (InfoMetricFamily(name, name) for name in INFO_FAMILIES)

    def collect(self) -> Iterator[Metric]:
        yield from self.families(self.poller.snapshot, self.poller.up)

    def families(self, snapshot: Snapshot | None, up: bool) -> Iterator[Metric]:
        """The families for one (snapshot, up) state, in exposition order."""
        for _key, section in self.sections(snapshot, up):
            yield from section()

    def sections(self, snapshot: Snapshot | None, up: bool) -> list[Section]:
        """`families()` cut into consecutive sections, each with the key of all it depends on (None: render always).

        A poll publishes a new snapshot even when no image changed (`taken_at` always moves); the image-derived
        families are nearly all of the text, so `exposition` reuses their render while `snapshot.images` is equal.
        """
        head: Section = (None, lambda: self._head(snapshot, up))
        if snapshot is None:
            return [head]
        return [
            head,
            (("images", self.config, snapshot.images), lambda: self._images(snapshot)),
            (None, lambda: self._disk(snapshot)),
        ]

    def _head(self, snapshot: Snapshot | None, up: bool) -> Iterator[Metric]:
        yield _gauge("docker_up", "1 if the last poll reached the engine, 0 if not.", 1.0 if up else 0.0)
        build = InfoMetricFamily(
            "docker_exporter_build",
            "Version, git revision and build date of docker-image-exporter (unknown outside release builds), "
            "and the Python running it.",
        )
        build.add_metric([], build_labels())
        yield build
        if snapshot is None:
            return
        yield _gauge(
            "docker_exporter_snapshot_timestamp_seconds",
            "When the served image data was read from the engine (stale while docker_up is 0).",
            snapshot.taken_at,
        )
        yield _gauge(
            "docker_exporter_pending_inspects",
            "Images whose inspect (LastTagTime) has not answered yet: their last-tag series are absent until then.",
            snapshot.pending_inspects,
        )
        yield from self._engine(snapshot)

    def _images(self, snapshot: Snapshot) -> Iterator[Metric]:
        """Everything here depends on `snapshot.images` alone (and the config)."""
        yield from self._totals(snapshot)
        yield from self._repositories(snapshot)
        if self.config.per_image:
            yield from self._per_image(snapshot)

    def _engine(self, snapshot: Snapshot) -> Iterator[Metric]:
        info = snapshot.engine
        if info is None:
            return
        family = GaugeMetricFamily(
            "docker_engine_info",
            "The engine the exporter talks to; api_version is the negotiated API version. Value is always 1.",
            labels=["version", "api_version", "storage_driver", "os", "arch"],
        )
        family.add_metric([info.version, info.api_version, info.storage_driver, info.os, info.arch], 1.0)
        yield family

    def _totals(self, snapshot: Snapshot) -> Iterator[Metric]:
        images = snapshot.images
        dangling = snapshot.dangling
        yield _gauge("docker_images", f"Images as /images/json lists them (unique IDs). {_FRESH}", len(images))
        yield _gauge(
            "docker_images_size_bytes",
            f"Sum of image sizes as `docker images` shows them; a shared layer counts in every image. {_FRESH}",
            sum(i.size for i in images),
        )
        yield _gauge("docker_images_dangling", f"Untagged (dangling) images. {_FRESH}", len(dangling))
        yield _gauge(
            "docker_images_dangling_size_bytes",
            f"Sum of dangling image sizes (shared layers counted per image). {_FRESH}",
            sum(i.size for i in dangling),
        )
        yield _gauge(
            "docker_images_unused",
            f"Images no container (running or stopped) uses. {_FRESH}",
            len(snapshot.unused),
        )
        yield _gauge(
            "docker_images_local_only",
            f"Tagged images with no repo digest: built here, never pushed or pulled. {_FRESH}",
            sum(1 for i in images if i.local_only),
        )

    def _repositories(self, snapshot: Snapshot) -> Iterator[Metric]:
        tags: dict[str, int] = {}
        ids: dict[str, dict[str, int]] = {}
        for image in snapshot.images:
            for ref in image.refs:
                tags[ref.repository] = tags.get(ref.repository, 0) + 1
                ids.setdefault(ref.repository, {})[image.id] = image.size
        count = GaugeMetricFamily(
            "docker_repository_images",
            f"Distinct images with a tag in the repository. {_FRESH}",
            labels=["repository"],
        )
        tag_count = GaugeMetricFamily(
            "docker_repository_tags", f"Tags in the repository. {_FRESH}", labels=["repository"]
        )
        size = GaugeMetricFamily(
            "docker_repository_size_bytes",
            f"Sum of sizes of the distinct images tagged in the repository. {_FRESH}",
            labels=["repository"],
        )
        for repo in sorted(tags):
            count.add_metric([repo], len(ids[repo]))
            tag_count.add_metric([repo], tags[repo])
            size.add_metric([repo], sum(ids[repo].values()))
        yield from (count, tag_count, size)

    def _per_image(self, snapshot: Snapshot) -> Iterator[Metric]:
        kept, total = top_image_series(snapshot.images, self.config.max_image_series)
        yield _gauge(
            "docker_exporter_image_series_dropped",
            "Per-tag series left out because of metrics.max_image_series (smallest images are dropped first).",
            total - len(kept),
        )

        def family(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=PER_IMAGE_LABELS)

        size = family("docker_image_size_bytes", f"Image size (all its layers, shared or not). {_FRESH}")
        shared = family(
            "docker_image_shared_size_bytes",
            "Bytes of the image's layers that other images also use (1.42+: every poll; 1.41: from /system/df).",
        )
        unique = family("docker_image_unique_size_bytes", "Bytes only this image holds: what deleting it alone frees.")
        created = family("docker_image_created_timestamp_seconds", "When the image was built (config `created`).")
        tagged = family(
            "docker_image_last_tag_timestamp_seconds",
            "When the image was last tagged/built/imported here (Metadata.LastTagTime), when the engine knows it.",
        )
        used = family(
            "docker_image_last_used_timestamp_seconds",
            "Last use of the image by a container: the latest of container create/start events, running "
            "containers seen by polls, and every existing container's State.FinishedAt/StartedAt (so uses from "
            "before the exporter started count); persisted across restarts. Absent: no use known.",
        )
        containers = family("docker_image_containers", f"Containers (running or stopped) using the image. {_FRESH}")
        for image, ref in kept:
            labels = [ref.repository, ref.tag, image.short_id] if ref else [NONE_LABEL, NONE_LABEL, image.short_id]
            size.add_metric(labels, image.size)
            if image.shared_size is not None:
                shared.add_metric(labels, image.shared_size)
                unique.add_metric(labels, image.unique_size or 0)
            created.add_metric(labels, image.created)
            if image.last_tag_time is not None:
                tagged.add_metric(labels, image.last_tag_time)
            if image.last_used is not None:
                used.add_metric(labels, image.last_used)
            containers.add_metric(labels, image.containers)
        yield from (size, shared, unique, created, tagged, used, containers)

    def _disk(self, snapshot: Snapshot) -> Iterator[Metric]:
        du = snapshot.disk_usage
        if du is not None:
            yield _gauge(
                "docker_exporter_disk_usage_timestamp_seconds",
                "When /system/df was last read successfully.",
                du.taken_at,
            )
            yield _gauge(
                "docker_images_disk_usage_bytes",
                f"Bytes image layers really take on disk, each shared layer once (LayersSize). {_DF}",
                du.layers_size,
            )
            yield _gauge(
                "docker_images_reclaimable_bytes",
                f"What deleting every unused image would free (docker system df's RECLAIMABLE). {_DF}",
                du.reclaimable,
            )
            if du.build_cache is not None:
                bc = du.build_cache
                yield _gauge(
                    "docker_build_cache_size_bytes",
                    f"Build cache size (shared records excluded). {_DF}",
                    bc.size,
                )
                yield _gauge(
                    "docker_build_cache_reclaimable_bytes",
                    f"Build cache not in use by a build. {_DF}",
                    bc.reclaimable,
                )
                yield _gauge("docker_build_cache_entries", f"Build cache records. {_DF}", bc.entries)
        fs = snapshot.filesystem
        if fs is not None:
            total = GaugeMetricFamily(
                "docker_filesystem_size_bytes",
                "Size of the filesystem holding the engine's data root (statvfs).",
                labels=["path"],
            )
            total.add_metric([fs.path], fs.size)
            avail = GaugeMetricFamily(
                "docker_filesystem_avail_bytes",
                "Bytes available to unprivileged users on the data-root filesystem (statvfs f_bavail).",
                labels=["path"],
            )
            avail.add_metric([fs.path], fs.avail)
            yield from (total, avail)
