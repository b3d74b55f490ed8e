"""Metric families from the current Snapshot. No I/O: a scrape never calls the engine.

Totals never depend on the per-image series cap. Per-tag series are bounded by
`metrics.max_image_series` (largest images first) and the number dropped is exported, so cardinality is
the operator's choice, not the host's.
"""

from __future__ import annotations

import platform
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, compress
from operator import itemgetter, not_
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

import exporter
from exporter.config import MetricsConfig
from exporter.core.snapshot import NONE_LABEL, EngineInfo, Image, ImageRef, Snapshot

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
    "docker_images_local_only_size_bytes",
    "docker_containers",
    "docker_images_held_by_stopped_containers",
    "docker_images_held_by_stopped_containers_bytes",
    "docker_repository_images",
    "docker_repository_tags",
    "docker_repository_size_bytes",
    "docker_repository_local_only_images",
    "docker_repository_local_only_size_bytes",
    "docker_exporter_image_series_dropped",
    "docker_image_size_bytes",
    "docker_image_shared_size_bytes",
    "docker_image_unique_size_bytes",
    "docker_image_created_timestamp_seconds",
    "docker_image_last_tag_timestamp_seconds",
    "docker_image_last_used_timestamp_seconds",
    "docker_image_containers",
    "docker_image_restorable",
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

# Container states the engine documents (ContainerState.Status); anything else counts as `other`, so the
# `state` label stays bounded whatever an engine reports.
CONTAINER_STATES = ("created", "running", "paused", "restarting", "removing", "exited", "dead")
# States in which a container runs nothing yet still pins its image: `docker container prune` removes these.
STOPPED_STATES = frozenset(("created", "exited", "dead"))

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
SortKey = tuple[int, str, str]
#: What a kept row's place is decided from: (size, repository, tag, image ID), strings the image holds already
#: (no tag: None, None). Its `SortKey` (`_key_order`) is made when compared only: a kept `repository:tag`
#: string per row costs more than the row. Strings only, so the garbage collector does not track the tuples.
RowKey = tuple[int, str | None, str | None, str]


def _row_order(row: Row) -> SortKey:
    image, ref = row
    return (-image.size, str(ref) if ref else NONE_LABEL, image.id)


def _key_order(key: RowKey) -> SortKey:
    size, repository, tag, image_id = key
    return (-size, NONE_LABEL if tag is None else f"{repository}:{tag}", image_id)


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


# --- tables: families exposed row by row ---------------------------------------------------------------------

TableRow = tuple[tuple[str, ...], tuple[float | None, ...]]
"""(label values, one value per family of the table: None where the row has no sample in that family)."""

#: Table rows per render chunk on average (`exporter.metrics.exposition` renders tables chunk by chunk): a row
#: whose labels hash to 0 modulo CHUNK_ROWS ends a chunk. The cuts depend on the rows' labels, not their
#: positions: adding or removing a row changes only the chunk it is in.
CHUNK_ROWS = 32


#: At most this many rows per chunk: a run of rows longer than that between two that end a chunk is split every
#: MAX_CHUNK_ROWS rows from its start.
MAX_CHUNK_ROWS = 256

Chunk = tuple[TableRow, ...]


def ends_chunk(labels: tuple[str, ...]) -> bool:
    return not hash(labels) % CHUNK_ROWS


def chunk_ends(rows: Sequence[TableRow]) -> list[int]:
    """The index after each row that ends a chunk (`ends_chunk`), in order."""
    # iterators only (no bytecode per row): a table without kept ends is cut on every render
    cut = map(not_, map(CHUNK_ROWS.__rmod__, map(hash, map(itemgetter(0), rows))))
    return list(compress(range(1, len(rows) + 1), cut))


@dataclass(frozen=True)
class TableFamily:
    name: str
    documentation: str


@dataclass(frozen=True)
class Table:
    """Gauge families sharing their label names, filled row by row: row `(labels, values)` has the sample
    `values[f]` in family `f` (none where it is None), and each family lists its samples in row order.

    Why a shape of its own: the exposition renders a table in chunks of rows and renders again only the chunks
    whose rows changed (`exporter.metrics.exposition`), so one changed image costs its rows, not every series.
    Rows compare by value: equal rows render to equal text (values are ints and finite floats here).
    """

    families: tuple[TableFamily, ...]
    labelnames: tuple[str, ...]
    rows: Sequence[TableRow]
    #: the rows cut in chunks (`exporter.metrics.exposition.table_chunks`) when the caller keeps them (the
    #: TableCache does, run by run: an unchanged chunk is the same tuple); None: cut on every render
    chunks: Sequence[Chunk] | None = None

    def metrics(self) -> list[GaugeMetricFamily]:
        """The families as prometheus_client renders them (what `collect()` yields)."""
        out = [GaugeMetricFamily(f.name, f.documentation, labels=list(self.labelnames)) for f in self.families]
        for labels, values in self.rows:
            for family, value in zip(out, values, strict=True):
                if value is not None:
                    family.add_metric(labels, value)
        return out


@dataclass(frozen=True)
class Section:
    """A run of consecutive families of `SnapshotCollector.families()`; `table` when they are one Table."""

    families: Callable[[], Iterable[Metric]]
    table: Table | None = None


PER_IMAGE_FAMILIES = (
    TableFamily("docker_image_size_bytes", f"Image size (all its layers, shared or not). {_FRESH}"),
    TableFamily(
        "docker_image_shared_size_bytes",
        "Bytes of the image's layers that other images also use (1.42+: every poll; 1.41: from /system/df).",
    ),
    TableFamily("docker_image_unique_size_bytes", "Bytes only this image holds: what deleting it alone frees."),
    TableFamily("docker_image_created_timestamp_seconds", "When the image was built (config `created`)."),
    TableFamily(
        "docker_image_last_tag_timestamp_seconds",
        "When the image was last tagged/built/imported here (Metadata.LastTagTime), when the engine knows it.",
    ),
    TableFamily(
        "docker_image_last_used_timestamp_seconds",
        "Last use of the image by a container: the latest of container create/start events, running "
        "containers seen by polls, and every existing container's State.FinishedAt/StartedAt (so uses from "
        "before the exporter started count); persisted across restarts. Absent: no use known.",
    ),
    TableFamily("docker_image_containers", f"Containers (running or stopped) using the image. {_FRESH}"),
    TableFamily(
        "docker_image_restorable",
        "1 if the image lists a repo digest (it was pulled or pushed: a registry held it then, a restore can "
        "try to pull it back), 0 if none (a deletion loses it). Absent where repo digests prove nothing (the "
        f"containerd store, Podman list one for every image). {_FRESH}",
    ),
)
REPOSITORY_FAMILIES = (
    TableFamily("docker_repository_images", f"Distinct images with a tag in the repository. {_FRESH}"),
    TableFamily("docker_repository_tags", f"Tags in the repository. {_FRESH}"),
    TableFamily(
        "docker_repository_size_bytes", f"Sum of sizes of the distinct images tagged in the repository. {_FRESH}"
    ),
    TableFamily(
        "docker_repository_local_only_images",
        "Distinct images tagged in the repository with no repo digest: they exist only on this host. Absent where "
        f"repo digests prove nothing (the containerd store, Podman). {_FRESH}",
    ),
    TableFamily(
        "docker_repository_local_only_size_bytes",
        f"Sum of the sizes of the repository's local-only images. Absent as docker_repository_local_only_images. {_FRESH}",
    ),
)


def digests_known(engine: EngineInfo | None) -> bool:
    """Whether a repo digest means a pull or a push happened (the classic store); unknown engine: no."""
    return engine is not None and not (engine.containerd_store or engine.podman)


def _image_table_rows(image: Image, known: bool = True) -> list[tuple[RowKey, TableRow]]:
    """The per-tag rows of one image with their sort keys; values in `PER_IMAGE_FAMILIES` order. `known`:
    whether repo digests tell what can be restored on this engine (else `docker_image_restorable` is absent)."""
    values = (
        image.size,
        image.shared_size,
        image.unique_size,  # None exactly when shared_size is
        image.created,
        image.last_tag_time,
        image.last_used,
        image.containers,
        (1 if image.digests else 0) if known else None,
    )
    short_id = image.short_id
    rows: list[tuple[RowKey, TableRow]] = []
    for row in image_rows((image,)):
        ref = row[1]
        if ref is not None:
            labels = (ref.repository, ref.tag, short_id)
        else:  # pinned by digest: its repository, as `docker images` shows it; dangling: nothing names it
            pinned = min((d.repository for d in image.digest_refs), default=NONE_LABEL)
            labels = (pinned, NONE_LABEL, short_id)
        key = (image.size, None, None, image.id) if ref is None else (image.size, ref.repository, ref.tag, image.id)
        rows.append((key, (labels, values)))
    return rows


@dataclass(frozen=True)
class Totals:
    images: int
    size: int
    dangling: int
    dangling_size: int
    unused: int
    local_only: int
    local_only_size: int


def _contribution(image: Image) -> tuple[int, int, int, int, int, int, int]:
    """What one image adds to each field of Totals."""
    dangling = image.dangling
    local_only = image.local_only
    return (1, image.size, int(dangling), image.size if dangling else 0, int(image.containers == 0),
            int(local_only), image.size if local_only else 0)  # fmt: skip


@dataclass(frozen=True)
class ImageTables:
    """Everything the image-derived families need from one `snapshot.images`, computed once for it."""

    images: tuple[Image, ...]
    #: every per-tag row in exposition order (`image_series` order); a cap keeps a prefix
    rows: list[TableRow]
    repositories: list[TableRow]
    totals: Totals
    #: `rows` cut in chunks, kept up to date with the rows rather than cut again per render (`_SortedRows`)
    chunks: list[Chunk]


@dataclass(slots=True)
class _Entry:
    """One image's part of the tables: its per-tag rows (with sort keys); `image` is the object of the last
    snapshot (replaced by an equal new one without rebuilding the rest). Its Totals contribution is computed
    again from `image` when needed (an equal image adds the same) rather than kept per image."""

    image: Image
    rows: tuple[tuple[RowKey, TableRow], ...]  # a tuple: a list's spare room and header cost more per image

    @classmethod
    def of(cls, image: Image, known: bool = True) -> _Entry:
        return cls(image, tuple(_image_table_rows(image, known)))


#: Beyond this many changed images (or an eighth of them) the tables are rebuilt and sorted from scratch.
REBUILD_CHANGES = 512


class TableCache:
    """The tables of the last `snapshot.images` seen, updated by the images that changed for the next one.

    Why: with many images, building and sorting every per-tag row and summing every image is most of what a
    render costs beyond the text. A publish after an event shares nearly every Image object with the one
    before; a quiet poll has equal ones. The store's publish log (`PublishLog`) names the images a publish
    changed, so only those are looked at; without it (or beyond what it keeps) the two image tuples are
    compared by object identity (dicts and set operations, in C). A new object equal to the one it replaces
    keeps its rows, and only the images that really changed have their rows taken out of and put into the
    sorted rows and their chunks (`_SortedRows`), their repositories recounted and their totals subtracted
    and added. The row objects and chunks of unchanged images stay the same, which the exposition's chunk
    cache relies on. Shared by the renders of each format (worker threads) and
    `collect()`, hence the lock; every result is a copy, so a render reading the previous one is undisturbed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known = False  # whether repo digests tell what is restorable (digests_known)
        self._reset()

    def _reset(self) -> None:
        self._last: ImageTables | None = None
        self._number: int | None = None  # the publish number of self._last's snapshot, when known
        self._entries: dict[str, _Entry] = {}  # by image ID, for the images of self._last
        self._sorted = _SortedRows([])
        self._totals = [0, 0, 0, 0, 0, 0, 0]
        self._repos = _Repositories(self._known)

    def tables(self, snapshot: Snapshot, publishes: PublishLog | None = None) -> ImageTables:
        """The tables of `snapshot`; `publishes`: which images each recent publish changed, so that only
        those are looked at (else, or when it does not know, every image is compared by identity)."""
        images = snapshot.images
        with self._lock:
            if digests_known(snapshot.engine) != self._known:  # another engine kind: every row changes
                self._known = not self._known
                self._reset()
            number = publishes.number_of(snapshot) if publishes is not None else None
            if self._last is not None and self._last.images is images:
                self._number = number
                return self._last
            changed = None
            if number is not None and self._number is not None and self._last is not None:
                changed = publishes.changed_between(self._number, number) if publishes is not None else None
            if changed is not None and len(snapshot.by_id) == len(images):
                removed, added = self._diff_changed(snapshot.by_id, changed)
                if len(self._entries) != len(images):  # the log missed a change: start again from the images
                    self._reset()
                    removed, added = self._diff_identity(images)
            else:
                removed, added = self._diff_identity(images)
            self._number = number
            if len(self._entries) != len(images):  # a listing never has: keyed by ID, the tables would be wrong
                self._reset()
                raise ValueError("a snapshot lists an image ID twice")
            if self._last is None or len(removed) + len(added) > max(REBUILD_CHANGES, len(images) // 8):
                self._rebuild(self._entries.values())
            else:
                for entry in removed:
                    self._remove(entry)
                for entry in added:
                    self._add(entry)
            rows = self._sorted
            self._last = ImageTables(images, list(rows.rows), self._repos.rows(), Totals(*self._totals), rows.chunks())
            return self._last

    def _diff_changed(self, by_id: Mapping[str, Image], changed: Iterable[str]) -> tuple[list[_Entry], list[_Entry]]:
        """The entries to take out and put in for the `changed` IDs (every other image is the same object)."""
        removed: list[_Entry] = []
        added: list[_Entry] = []
        for image_id in changed:
            image = by_id.get(image_id)
            entry = self._entries.get(image_id)
            if entry is not None:
                if entry.image is image:
                    continue
                if image is not None and entry.image == image:  # a new object, equal: keep its rows
                    entry.image = image
                    continue
                removed.append(entry)
                del self._entries[image_id]
            if image is not None:
                entry = self._entries[image_id] = _Entry.of(image, self._known)
                added.append(entry)
        return removed, added

    def _diff_identity(self, images: tuple[Image, ...]) -> tuple[list[_Entry], list[_Entry]]:
        """The entries to take out and put in, found by comparing every image with the last ones by identity
        (dicts and set operations, in C), then by equality for the new objects."""
        now = dict(zip(map(id, images), images, strict=True))
        last = self._last.images if self._last is not None else ()
        before = dict(zip(map(id, last), last, strict=True))  # alive: self._last holds them
        gone = {before[key].id for key in before.keys() - now.keys()}
        removed: list[_Entry] = []
        added: list[_Entry] = []
        for key in now.keys() - before.keys():
            image = now[key]
            entry = self._entries.get(image.id)
            if entry is not None:
                gone.discard(image.id)
                if entry.image == image:  # a new object, equal (a poll): keep its rows
                    entry.image = image
                    continue
                removed.append(entry)
            entry = _Entry.of(image, self._known)
            self._entries[image.id] = entry
            added.append(entry)
        for image_id in gone:
            removed.append(self._entries.pop(image_id))
        return removed, added

    def _add(self, entry: _Entry) -> None:
        for key, row in entry.rows:
            self._sorted.insert(key, row)
        self._totals = [a + b for a, b in zip(self._totals, _contribution(entry.image), strict=True)]
        self._repos.add(entry.image)

    def _remove(self, entry: _Entry) -> None:
        for key, row in entry.rows:
            self._sorted.remove(key, row)
        self._totals = [a - b for a, b in zip(self._totals, _contribution(entry.image), strict=True)]
        self._repos.remove(entry.image)

    def _rebuild(self, entries: Iterable[_Entry]) -> None:
        keyed: list[tuple[RowKey, TableRow]] = []
        totals = [0, 0, 0, 0, 0, 0, 0]
        repos = _Repositories(self._known)
        for entry in entries:
            keyed.extend(entry.rows)
            totals = [a + b for a, b in zip(totals, _contribution(entry.image), strict=True)]
            repos.add(entry.image)
        keyed.sort(key=_keyed_order)
        self._sorted = _SortedRows(keyed)
        self._totals = totals
        self._repos = repos


def _keyed_order(keyed: tuple[RowKey, TableRow]) -> SortKey:
    return _key_order(keyed[0])


def _split(rows: Sequence[TableRow]) -> tuple[Chunk, ...]:
    """One run of rows as chunks of at most MAX_CHUNK_ROWS, from its start."""
    size = MAX_CHUNK_ROWS
    return tuple(tuple(rows[start : start + size]) for start in range(0, len(rows), size))


class _SortedRows:
    """The per-tag rows in exposition order with their sort keys, and their render chunks, kept up to date row
    by row.

    The chunks are what `exporter.metrics.exposition.table_chunks` cuts: runs of rows, each ended by a row
    that ends a chunk (`ends_chunk`) or by the last row, split every MAX_CHUNK_ROWS rows. Each run's chunks
    are kept in a list parallel to the keys of the rows ending them; a row put in or taken out rebuilds only
    its run (and the next one when the row ends a chunk), so the other chunks stay the very same tuples: the
    exposition keys its chunk texts on them, and neither side walks every row for a change.
    """

    def __init__(self, keyed: list[tuple[RowKey, TableRow]]) -> None:
        self.keys = [key for key, _row in keyed]  # sorted, parallel to rows
        self.rows = [row for _key, row in keyed]
        ends = chunk_ends(self.rows)
        self._cuts = [self.keys[end - 1] for end in ends]  # sorted: the keys of the rows that end a chunk
        #: the chunks of the run ended by each cut, then of the rows after the last cut
        self._runs: list[tuple[Chunk, ...]] = []
        start = 0
        for end in ends:
            self._runs.append(_split(self.rows[start:end]))
            start = end
        self._runs.append(_split(self.rows[start:]))
        self._touched: list[RowKey] = []  # keys put in or taken out since `chunks` last ran
        self._chunks: list[Chunk] | None = None

    def insert(self, key: RowKey, row: TableRow) -> None:
        order = _key_order(key)
        index = bisect_left(self.keys, order, key=_key_order)
        self.keys.insert(index, key)
        self.rows.insert(index, row)
        if ends_chunk(row[0]):
            cut = bisect_left(self._cuts, order, key=_key_order)
            self._cuts.insert(cut, key)
            self._runs.insert(cut, ())  # a run split in two: both rebuilt by `chunks`
        self._touched.append(key)

    def remove(self, key: RowKey, row: TableRow) -> None:
        order = _key_order(key)
        index = bisect_left(self.keys, order, key=_key_order)
        del self.keys[index]
        del self.rows[index]
        if ends_chunk(row[0]):
            cut = bisect_left(self._cuts, order, key=_key_order)
            del self._cuts[cut]
            del self._runs[cut]  # its rows join the next run, rebuilt by `chunks`
        self._touched.append(key)

    def chunks(self) -> list[Chunk]:
        """Every chunk in order (a new list when one changed: a render may still read the last one)."""
        if self._touched:
            cuts = self._cuts
            runs: set[int] = set()
            for key in self._touched:
                index = bisect_left(cuts, _key_order(key), key=_key_order)
                runs.add(index)
                if index < len(cuts) and cuts[index] == key:  # a row that ends a chunk: the next run lost rows
                    runs.add(index + 1)
            for index in runs:
                self._build_run(index)
            self._touched = []
            self._chunks = None
        if self._chunks is None:
            self._chunks = list(chain.from_iterable(self._runs))
        return self._chunks

    def _build_run(self, index: int) -> None:
        cuts, keys = self._cuts, self.keys
        start = bisect_left(keys, _key_order(cuts[index - 1]), key=_key_order) + 1 if index else 0
        end = bisect_left(keys, _key_order(cuts[index]), key=_key_order) + 1 if index < len(cuts) else len(keys)
        self._runs[index] = _split(self.rows[start:end])


class _Repositories:
    """Per repository: distinct images (and their sizes) and tags, kept up to date image by image; the
    rows (`REPOSITORY_FAMILIES` order, by repository name) of the repositories an image changed are rebuilt."""

    def __init__(self, known: bool = True) -> None:
        self._known = known  # whether local-only is known here (digests_known); else those values are None
        self._tags: dict[str, int] = {}
        self._images: dict[str, dict[str, int]] = {}  # repository -> image ID -> size
        self._local: dict[str, dict[str, int]] = {}  # repository -> local-only image ID -> size
        self._names: list[str] = []  # sorted, parallel to _rows
        self._rows: list[TableRow] = []
        self._changed: set[str] = set()

    def add(self, image: Image) -> None:
        for ref in image.refs:
            self._tags[ref.repository] = self._tags.get(ref.repository, 0) + 1
            self._images.setdefault(ref.repository, {})[image.id] = image.size
            if image.local_only:
                self._local.setdefault(ref.repository, {})[image.id] = image.size
            self._changed.add(ref.repository)

    def remove(self, image: Image) -> None:
        for ref in image.refs:
            self._tags[ref.repository] -= 1
            self._images[ref.repository].pop(image.id, None)
            self._local.get(ref.repository, {}).pop(image.id, None)
            self._changed.add(ref.repository)

    def rows(self) -> list[TableRow]:
        """The rows as they are now (a copy)."""
        for repo in sorted(self._changed):
            index = bisect_left(self._names, repo)
            present = index < len(self._names) and self._names[index] == repo
            tags = self._tags.get(repo, 0)
            if not tags:
                self._tags.pop(repo, None)
                self._images.pop(repo, None)
                self._local.pop(repo, None)
                if present:
                    del self._names[index]
                    del self._rows[index]
                continue
            ids = self._images[repo]
            local = self._local.get(repo, {})
            local_values = (len(local), sum(local.values())) if self._known else (None, None)
            row: TableRow = ((repo,), (len(ids), tags, sum(ids.values()), *local_values))
            if present:
                self._rows[index] = row
            else:
                self._names.insert(index, repo)
                self._rows.insert(index, row)
        self._changed.clear()
        return list(self._rows)


def _table_section(table: Table) -> Section:
    return Section(table.metrics, table)


def held_by_stopped_containers(snapshot: Snapshot) -> list[Image]:
    """Images used by at least one container, all of them stopped: they stay only because of those containers."""
    states: dict[str, set[str]] = {}
    for container in snapshot.containers:
        states.setdefault(container.image_id, set()).add(container.state)
    held = {image_id for image_id, seen in states.items() if seen <= STOPPED_STATES}
    by_id = snapshot.by_id
    if len(by_id) == len(snapshot.images):  # the published map: no pass over every image (runs every render)
        return [by_id[image_id] for image_id in held if image_id in by_id]
    return [image for image in snapshot.images if image.id in held]


class PublishLog(Protocol):
    """Which images recent publishes changed (`exporter.state.store.PublishLog` provides it)."""

    def number_of(self, snapshot: Snapshot) -> int | None: ...

    def changed_between(self, first: int, last: int) -> frozenset[str] | None: ...


class SnapshotSource(Protocol):
    """All the collector reads (the `SnapshotStore` provides it): the current snapshot, and whether the engine
    answered."""

    @property
    def snapshot(self) -> Snapshot | None: ...

    @property
    def up(self) -> bool: ...


class SnapshotCollector(Collector):
    """Renders the current snapshot; `docker_up` says whether the last poll reached the engine."""

    def __init__(self, source: SnapshotSource, config: MetricsConfig) -> None:
        self.source = source
        self.config = config
        self.tables = TableCache()
        #: the source's log of what each publish changed, if it keeps one (the store does)
        self.publishes: PublishLog | None = getattr(source, "publishes", None)
        self._cut_chunk: tuple[Chunk, Chunk] | None = None  # (a chunk the cap cuts, its kept start)

    def describe(self) -> Iterable[Metric]:
        """Names and types only: registration must not call collect(), and `?name[]=` needs the names."""
        yield from (GaugeMetricFamily(name, name) for name in GAUGE_FAMILIES)
        yield from (InfoMetricFamily(name, name) for name in INFO_FAMILIES)

    def collect(self) -> Iterator[Metric]:
        yield from self.families(self.source.snapshot, self.source.up)

    def families(self, snapshot: Snapshot | None, up: bool) -> Iterator[Metric]:
        """The families for one (snapshot, up) state, in exposition order."""
        for section in self.sections(snapshot, up):
            yield from section.families()

    def sections(self, snapshot: Snapshot | None, up: bool) -> list[Section]:
        """`families()` cut into consecutive sections; the image-derived ones with many series are Tables.

        The exposition renders a plain section whole and a table chunk by chunk (reusing unchanged chunks),
        so a new snapshot costs the few families of the plain sections plus the rows that changed.
        """
        head = Section(lambda: self._head(snapshot, up))
        if snapshot is None:
            return [head]
        tables = self.tables.tables(snapshot, self.publishes)
        sections = [
            head,
            Section(lambda: self._totals(tables.totals, snapshot.engine)),
            Section(lambda: self._containers(snapshot)),
            _table_section(Table(REPOSITORY_FAMILIES, ("repository",), tables.repositories)),
        ]
        if self.config.per_image:
            rows = tables.rows
            kept = rows if len(rows) <= self.config.max_image_series else rows[: self.config.max_image_series]
            chunks = tables.chunks if kept is rows else self._kept_chunks(tables.chunks, len(kept))
            dropped = len(rows) - len(kept)
            sections.append(
                Section(
                    lambda: [
                        _gauge(
                            "docker_exporter_image_series_dropped",
                            "Per-tag series left out because of metrics.max_image_series (smallest images are "
                            "dropped first).",
                            dropped,
                        )
                    ]
                )
            )
            sections.append(_table_section(Table(PER_IMAGE_FAMILIES, tuple(PER_IMAGE_LABELS), kept, chunks)))
        sections.append(Section(lambda: self._disk(snapshot)))
        return sections

    def _kept_chunks(self, chunks: list[Chunk], kept: int) -> list[Chunk]:
        """The chunks of the first `kept` rows: whole ones, then the start of the one the cap cuts (the same
        tuple as last time for the same cut, so its text is reused)."""
        out: list[Chunk] = []
        count = 0
        for chunk in chunks:
            if count + len(chunk) > kept:
                if kept > count:
                    last = self._cut_chunk
                    if last is None or last[0] is not chunk or len(last[1]) != kept - count:
                        last = self._cut_chunk = (chunk, chunk[: kept - count])
                    out.append(last[1])
                return out
            out.append(chunk)
            count += len(chunk)
        return out

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

    def _engine(self, snapshot: Snapshot) -> Iterator[Metric]:
        info = snapshot.engine
        if info is None:
            return
        family = GaugeMetricFamily(
            "docker_engine_info",
            "The engine the exporter talks to; api_version is the negotiated API version, runtime says which kind "
            "answered (docker, podman, or the CRI runtime's name). Value is always 1.",
            labels=["version", "api_version", "storage_driver", "os", "arch", "runtime"],
        )
        family.add_metric([info.version, info.api_version, info.storage_driver, info.os, info.arch, info.runtime], 1.0)
        yield family

    def _totals(self, totals: Totals, engine: EngineInfo | None) -> Iterator[Metric]:
        yield _gauge("docker_images", f"Images as /images/json lists them (unique IDs). {_FRESH}", totals.images)
        yield _gauge(
            "docker_images_size_bytes",
            f"Sum of image sizes as `docker images` shows them; a shared layer counts in every image. {_FRESH}",
            totals.size,
        )
        yield _gauge("docker_images_dangling", f"Untagged (dangling) images. {_FRESH}", totals.dangling)
        yield _gauge(
            "docker_images_dangling_size_bytes",
            f"Sum of dangling image sizes (shared layers counted per image). {_FRESH}",
            totals.dangling_size,
        )
        yield _gauge("docker_images_unused", f"Images no container (running or stopped) uses. {_FRESH}", totals.unused)
        if engine is not None and (engine.containerd_store or engine.podman):
            return  # every image lists a repo digest there: which exist only here is unknown, so no series
        yield _gauge(
            "docker_images_local_only",
            f"Tagged images with no repo digest: built here, never pushed or pulled. {_FRESH}",
            totals.local_only,
        )
        yield _gauge(
            "docker_images_local_only_size_bytes",
            "Sum of the sizes of local-only images: what exists only on this host, with no registry copy to "
            f"pull back after a deletion (shared layers counted per image). {_FRESH}",
            totals.local_only_size,
        )

    def _containers(self, snapshot: Snapshot) -> Iterator[Metric]:
        counts = dict.fromkeys(CONTAINER_STATES, 0)
        for container in snapshot.containers:
            state = container.state if container.state in counts else "other"
            counts[state] = counts.get(state, 0) + 1
        family = GaugeMetricFamily(
            "docker_containers",
            f"Containers (/containers/json?all=1) by state; states the engine does not document count as other. "
            f"{_FRESH}",
            labels=["state"],
        )
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family
        held = held_by_stopped_containers(snapshot)
        yield _gauge(
            "docker_images_held_by_stopped_containers",
            f"Images that containers use but only stopped ones (created, exited, dead): removing those "
            f"containers makes the images unused. {_FRESH}",
            len(held),
        )
        sizes = [image.unique_size for image in held]
        yield _gauge(
            "docker_images_held_by_stopped_containers_bytes",
            f"Sum of the unique sizes of those images: what removing the stopped containers and then the images "
            f"frees at least (absent where the engine does not report shared sizes). {_FRESH}",
            None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None),
        )

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
