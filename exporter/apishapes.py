"""Normalise Engine API payloads across versions 1.41-1.52, Podman and the containerd image store.

Every quirk of what the engine *answers* lives here, in pure functions over the raw JSON, so unit tests can
feed recorded payloads: `-1` meaning "not computed", `<none>:<none>` versus empty arrays, `null` lists,
`VirtualSize` removed in 1.44, registry hosts with ports, Podman IDs without `sha256:`, Podman's zero
shared and layer sizes, the repo digests Podman and the containerd store give every image, and zero times
meaning "unknown". What the exporter *asks* (query parameters by API version) is `engine.Engine`'s job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from exporter.snapshot import BuildCache, Container, DigestRef, DiskUsage, EngineInfo, Image, ImageRef

_EMPTY: Mapping[str, str] = MappingProxyType({})
_EMPTY_SIZES: Mapping[str, int] = MappingProxyType({})


def normalize_id(raw: str) -> str:
    """Engine IDs as `sha256:<hex>` (Podman omits the prefix) so IDs compare across endpoints."""
    raw = raw or ""
    return raw if ":" in raw or not raw else f"sha256:{raw}"


def _known(value: Any) -> int | None:
    """Engine sizes/counts use -1 (and sometimes null) for 'not computed'."""
    if type(value) is int:  # the common case first: `parse_image` runs once per image on every listing
        return value if value >= 0 else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return int(value)


def parse_time(value: Any) -> float | None:
    """RFC 3339 (nanosecond precision allowed) or epoch seconds to epoch seconds; zero time is None."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    text = str(value)
    if text.startswith("0001-01-01"):
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    main, sep, rest = text.partition(".")
    if sep:  # trim fractional seconds to microseconds, keep the zone
        digits = "".join(ch for ch in rest if ch.isdigit())
        zone = rest[len(digits) :]
        text = f"{main}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


#: The registry host of the remediation executor's hold references (`<it>/<run id>:<short image id>`): a
#: name the exporter gives an image without tags for the moment of its deletion, never one of its tags.
HOLD_REPOSITORY = "docker-image-exporter.hold"
_HOLD_PREFIX = HOLD_REPOSITORY + "/"


def is_hold_reference(ref: str) -> bool:
    return ref.startswith(_HOLD_PREFIX)


def parse_refs(repo_tags: Any) -> tuple[ImageRef, ...]:
    """`RepoTags` as sorted, distinct ImageRefs; `<none>:<none>` and hold references dropped."""
    if not repo_tags:
        return ()
    if len(repo_tags) == 1:  # most images have one tag: no set, no sort (10k images: ~20 % of a listing's parse)
        tag = repo_tags[0]
        ref = ImageRef.parse(tag) if isinstance(tag, str) and not tag.startswith(_HOLD_PREFIX) else None
        return () if ref is None else (ref,)
    refs = (ImageRef.parse(t) for t in repo_tags if isinstance(t, str) and not t.startswith(_HOLD_PREFIX))
    return tuple(sorted({r for r in refs if r is not None}))


def parse_digests(repo_digests: Any) -> tuple[str, ...]:
    """`RepoDigests` as `repo@sha256:…` strings; `<none>@<none>`, malformed entries and the digests Podman
    and the containerd store derive from a hold reference's name dropped."""
    if not repo_digests:
        return ()
    refs = (DigestRef.parse(d) for d in repo_digests if isinstance(d, str) and not d.startswith(_HOLD_PREFIX))
    return tuple(sorted({str(r) for r in refs if r is not None}))


def parse_image(raw: Mapping[str, Any]) -> Image:
    """One `/images/json` entry; `Size` is preferred over the removed `VirtualSize`."""
    size = _known(raw.get("Size"))
    if size is None:
        size = _known(raw.get("VirtualSize")) or 0
    labels = raw.get("Labels")
    return Image(
        id=normalize_id(str(raw.get("Id", ""))),
        refs=parse_refs(raw.get("RepoTags")),
        digests=parse_digests(raw.get("RepoDigests")),
        created=float(raw.get("Created") or 0),
        size=size,
        shared_size=_known(raw.get("SharedSize")),
        labels=_labels(labels) if labels else _EMPTY,
        containers=_known(raw.get("Containers")) or 0,
    )


def _labels(labels: Mapping[Any, Any]) -> Mapping[str, str]:
    """A read-only copy with string keys and values (JSON gives strings: converted only when not)."""
    if all(type(k) is str and type(v) is str for k, v in labels.items()):
        return MappingProxyType(dict(labels))
    return MappingProxyType({str(k): str(v) for k, v in labels.items()})


def parse_image_inspect(raw: Mapping[str, Any], engine: EngineInfo) -> Image:
    """One image inspect as `parse_image` would read the same image's `/images/json` entry.

    Why: an event names one image, and inspecting it is exact where a full re-list costs seconds at 10k
    images. Inspect has `Created` as RFC 3339 (the listing truncates it to whole seconds), labels under
    `Config`, and no `SharedSize` (None: the listing's value is merged in by the poller, see `Poller`).
    On the containerd store inspect and listing disagree (`Size`, `RepoDigests`), so the poller re-lists
    there instead of using this.
    """
    created = parse_time(raw.get("Created"))
    size = _known(raw.get("Size"))
    if size is None:
        size = _known(raw.get("VirtualSize")) or 0
    labels = (raw.get("Config") or {}).get("Labels")
    return Image(
        id=normalize_id(str(raw.get("Id", ""))),
        refs=parse_refs(raw.get("RepoTags")),
        digests=parse_digests(raw.get("RepoDigests")),
        created=float(int(created)) if created is not None else 0.0,
        size=size,
        shared_size=None,
        labels=_labels(labels) if labels else _EMPTY,
    )


def shared_sizes_known(engine: EngineInfo | None) -> bool:
    """False on Podman, which answers SharedSize 0 (and LayersSize 0) for images that do share layers."""
    return engine is None or not engine.podman


def local_images_have_digests(engine: EngineInfo | None) -> bool:
    """Podman and the containerd store give every image a repo digest, even one built or loaded here."""
    return engine is not None and (engine.podman or engine.containerd_store)


def parse_images(raw: Iterable[Mapping[str, Any]] | None, engine: EngineInfo) -> list[Image]:
    """`/images/json` as `parse_image` reads each entry, with sizes this engine cannot know made unknown."""
    return for_engine([parse_image(entry) for entry in (raw or ())], engine)


def for_engine(images: list[Image], engine: EngineInfo) -> list[Image]:
    """Listed images (`parse_image`) with the sizes this engine cannot know made unknown: the part of
    `parse_images` that needs the engine's identity, for a caller that parsed the listing before knowing it."""
    if not shared_sizes_known(engine):
        return [replace(image, shared_size=None) for image in images]
    return images


def parse_containers(raw: Any) -> tuple[Container, ...]:
    return tuple(
        Container(
            id=str(c.get("Id", "")),
            image_id=normalize_id(str(c.get("ImageID") or "")),
            state=str(c.get("State") or ""),
        )
        for c in (raw or ())
    )


def parse_last_tag_time(inspect: Mapping[str, Any]) -> float | None:
    """`Metadata.LastTagTime` from image inspect; absent or zero time means unknown."""
    return parse_time((inspect.get("Metadata") or {}).get("LastTagTime"))


def parse_container_last_use(inspect: Mapping[str, Any]) -> float | None:
    """When a container last used its image: the later of `State.FinishedAt` and `State.StartedAt`.

    Zero times (never started, still running) are unknown; None when the container never ran.
    """
    state = inspect.get("State") or {}
    times = [t for t in (parse_time(state.get("FinishedAt")), parse_time(state.get("StartedAt"))) if t is not None]
    return max(times, default=None)


def parse_engine_info(version: Mapping[str, Any], info: Mapping[str, Any], api_version: str) -> EngineInfo:
    """Engine identity; detects Podman and the containerd image store, whose semantics differ."""
    components = version.get("Components") or []
    podman = (
        any("podman" in str(c.get("Name", "")).lower() for c in components)
        or "podman" in str(version.get("Platform", {}).get("Name", "")).lower()
    )
    driver = str(info.get("Driver") or "")
    driver_status = info.get("DriverStatus") or []
    containerd_store = driver.startswith("io.containerd.snapshotter") or any(
        isinstance(row, list) and row and "driver-type" in str(row[0]) and "snapshotter" in str(row[-1])
        for row in driver_status
    )
    return EngineInfo(
        version=str(version.get("Version") or ""),
        api_version=api_version,
        storage_driver=driver,
        os=str(version.get("Os") or info.get("OSType") or ""),
        arch=str(version.get("Arch") or info.get("Architecture") or ""),
        containerd_store=containerd_store,
        podman=podman,
    )


def parse_build_cache(raw: Any) -> BuildCache:
    """Sizes as `docker system df` shows them: shared records are not counted, in-use ones not reclaimable."""
    entries = [e for e in (raw or ()) if isinstance(e, Mapping)]
    own = [e for e in entries if not e.get("Shared")]
    size = sum(_known(e.get("Size")) or 0 for e in own)
    reclaimable = sum(_known(e.get("Size")) or 0 for e in own if not e.get("InUse"))
    return BuildCache(size=size, reclaimable=reclaimable, entries=len(entries))


def parse_disk_usage(raw: Mapping[str, Any], taken_at: float, engine: EngineInfo | None = None) -> DiskUsage:
    """`/system/df`: layer bytes, per-image shared sizes, and reclaimable bytes exactly as the CLI does.

    Reclaimable = LayersSize - sum(Size - SharedSize) over images used by a container (docker CLI's
    formula). API 1.52 moved the data into per-type summaries (`ImageUsage`, `BuildCacheUsage`, with
    `Items` when asked with `verbose=1`); their totals are used when the legacy fields are absent.
    On engines whose shared sizes are not known (`shared_sizes_known`) layer and reclaimable bytes are
    unknown too, not zero.
    """
    image_usage: Mapping[str, Any] = raw.get("ImageUsage") or {}
    raw_images = raw.get("Images") or image_usage.get("Items") or ()
    images = [parse_image(i) for i in raw_images]
    shared = {i.id: i.shared_size for i in images if i.shared_size is not None}
    layers = _known(raw.get("LayersSize"))
    if layers is None:
        layers = _known(image_usage.get("TotalSize")) or 0
    reclaimable = _known(image_usage.get("Reclaimable"))
    if reclaimable is None:
        used = sum(max(i.size - (i.shared_size or 0), 0) for i in images if i.containers > 0)
        reclaimable = max(layers - used, 0)
    cache_usage = raw.get("BuildCacheUsage") if isinstance(raw.get("BuildCacheUsage"), Mapping) else None
    build_cache = None
    if "BuildCache" in raw or "BuilderSize" in raw:
        build_cache = parse_build_cache(raw.get("BuildCache"))
    elif cache_usage is not None:
        items = parse_build_cache(cache_usage.get("Items"))
        build_cache = BuildCache(
            size=_known(cache_usage.get("TotalSize")) or items.size,
            reclaimable=_known(cache_usage.get("Reclaimable")) or items.reclaimable,
            entries=_known(cache_usage.get("TotalCount")) or items.entries,
        )
    if not shared_sizes_known(engine):
        return DiskUsage(taken_at, None, None, _EMPTY_SIZES, build_cache)
    return DiskUsage(
        taken_at=taken_at,
        layers_size=layers,
        reclaimable=reclaimable,
        shared_sizes=MappingProxyType(shared),
        build_cache=build_cache,
    )
