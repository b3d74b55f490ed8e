"""Normalise Engine API payloads across versions 1.41-1.52, Podman and the containerd image store.

Every quirk of what the engine *answers* lives here, in pure functions over the raw JSON, so unit tests can
feed recorded payloads: `-1` meaning "not computed", `<none>:<none>` versus empty arrays, `null` lists,
`VirtualSize` removed in 1.44, registry hosts with ports, Podman IDs without `sha256:`, Podman's zero
shared and layer sizes, the repo digests Podman and the containerd store give every image, and zero times
meaning "unknown". What the exporter *asks* (query parameters by API version) is `engine.Engine`'s job.

Anything else is refused: an answer of the wrong shape (an object where a list belongs, `Created:
"yesterday"`, `Size: 1e400`, a size beyond 2**63) raises `MalformedAnswer` naming the field, and the
caller fails that read as a whole (the poller: `docker_up 0`, the last good snapshot kept). Why not skip
the one bad entry: a listing that silently drops an image makes every count and sum wrong while looking
healthy; a failed poll is visible and the next good answer repairs it.
"""

from __future__ import annotations

import math
import reprlib
import sys
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from types import MappingProxyType
from typing import Any

from exporter.core.offloop import checkpoint
from exporter.core.snapshot import BuildCache, Container, DigestRef, DiskUsage, EngineInfo, Image, ImageRef

_EMPTY: Mapping[str, str] = MappingProxyType({})
_EMPTY_SIZES: Mapping[str, int] = MappingProxyType({})
#: The largest size or count believed: no disk holds more bytes than a signed 64-bit count (what Go sends).
MAX_KNOWN = 2**63 - 1
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60


class MalformedAnswer(ValueError):
    """An engine answer whose shape is not the API's; `field` says where (`[3].Created`, `Metadata`)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}" if field else problem)
        self.field = field
        self.problem = problem

    def within(self, prefix: str) -> MalformedAnswer:
        """The same problem, with `field` as seen from the enclosing answer (`/images/json` + `[3].Created`)."""
        joint = "" if not self.field or self.field.startswith("[") else "."
        return MalformedAnswer(f"{prefix}{joint}{self.field}", self.problem)


def _describe(value: Any) -> str:
    """A value for an error message: its JSON-ish type and a bounded repr (an answer may be huge)."""
    return f"{type(value).__name__} {_SHORT.repr(value)}"


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    """`value` when it is a JSON object; null as empty (the engine sends null for empty objects)."""
    if type(value) is dict or isinstance(value, Mapping):  # the exact type first: the ABC check costs more
        return value
    if value is None:
        return _EMPTY
    raise MalformedAnswer(field, f"expected an object, got {_describe(value)}")


def _list(value: Any, field: str) -> list[Any]:
    """`value` when it is a JSON array; null as empty (the engine sends null for empty lists)."""
    if type(value) is list:
        return value
    if value is None:
        return []
    raise MalformedAnswer(field, f"expected a list, got {_describe(value)}")


def _text(value: Any, field: str) -> str:
    """A JSON string; null as empty."""
    if type(value) is str:
        return value
    if value is None:
        return ""
    raise MalformedAnswer(field, f"expected a string, got {_describe(value)}")


def normalize_id(raw: str) -> str:
    """Engine IDs as `sha256:<hex>` (Podman omits the prefix) so IDs compare across endpoints.

    Interned: every answer naming an image (the listing, /system/df's, inspects, containers) decodes its own
    copy of the ID, and the copies kept (shared sizes by ID, each container's image) would each cost as much
    as the image's own."""
    raw = raw or ""
    return sys.intern(raw if ":" in raw or not raw else f"sha256:{raw}")


def _known(value: Any, field: str) -> int | None:
    """Engine sizes/counts use -1 (and sometimes null) for 'not computed'; anything but a number is malformed."""
    if type(value) is int and value <= MAX_KNOWN:  # the common case first: once per image on every listing
        return value if value >= 0 else None
    if value is None:
        return None
    if type(value) is float and math.isfinite(value) and value <= MAX_KNOWN:
        return int(value) if value >= 0 else None
    if type(value) in (int, float):
        raise MalformedAnswer(field, f"{_describe(value)} is not a size or count")
    raise MalformedAnswer(field, f"expected a number, got {_describe(value)}")


def _seconds(value: Any, field: str) -> float:
    """Epoch seconds (`Created` in a listing); null as 0 (unknown)."""
    if (type(value) is int or type(value) is float) and 0 <= value <= MAX_KNOWN:
        return float(value)
    if value is None:
        return 0.0
    raise MalformedAnswer(field, f"expected epoch seconds, got {_describe(value)}")


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


def _time(value: Any, field: str) -> float | None:
    """`parse_time` for a field the engine fills: an RFC 3339 string or nothing (absent, empty, zero time)."""
    if value is None or value == "":
        return None
    parsed = parse_time(value) if type(value) is str else None
    if parsed is None and not (type(value) is str and value.startswith("0001-01-01")):
        raise MalformedAnswer(field, f"expected an RFC 3339 time, got {_describe(value)}")
    return parsed


def _strings(values: Any, field: str) -> list[str]:
    """A JSON list of strings (null: none)."""
    items = _list(values, field)
    for i, value in enumerate(items):
        if type(value) is not str:
            raise MalformedAnswer(f"{field}[{i}]", f"expected a string, got {_describe(value)}")
    return items


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
    tags = _strings(repo_tags, "RepoTags")
    if len(tags) == 1:  # most images have one tag: no set, no sort
        tag = tags[0]
        ref = None if tag.startswith(_HOLD_PREFIX) else ImageRef.parse(tag)
        return () if ref is None else (ref,)
    refs = (ImageRef.parse(t) for t in tags if not t.startswith(_HOLD_PREFIX))
    return tuple(sorted({r for r in refs if r is not None}))


def parse_digests(repo_digests: Any) -> tuple[str, ...]:
    """`RepoDigests` as `repo@sha256:…` strings; `<none>@<none>`, unparsable references and the digests Podman
    and the containerd store derive from a hold reference's name dropped."""
    if not repo_digests:
        return ()
    refs = (DigestRef.parse(d) for d in _strings(repo_digests, "RepoDigests") if not d.startswith(_HOLD_PREFIX))
    return tuple(sorted({str(r) for r in refs if r is not None}))


def _image_id(value: Any, field: str = "Id") -> str:
    if type(value) is str and value:
        return normalize_id(value)
    raise MalformedAnswer(field, f"expected an image ID, got {_describe(value)}")


#: Label sets already read in one listing, by their items: images built alike (from one base image, by one
#: pipeline) carry equal labels, and one read-only mapping per distinct set is kept instead of one per image.
SeenLabels = dict[tuple[tuple[str, str], ...], Mapping[str, str]]


def parse_image(raw: Any, seen_labels: SeenLabels | None = None) -> Image:
    """One `/images/json` entry; `Size` is preferred over the removed `VirtualSize`. MalformedAnswer when
    a field has the wrong type. `seen_labels`: the listing's label sets so far (equal ones are shared)."""
    if type(raw) is not dict:
        raw = _mapping(raw, "")
    size = _known(raw.get("Size"), "Size")
    if size is None:
        size = _known(raw.get("VirtualSize"), "VirtualSize") or 0
    labels = raw.get("Labels")
    return Image(
        id=_image_id(raw.get("Id")),
        refs=parse_refs(raw.get("RepoTags")),
        digests=parse_digests(raw.get("RepoDigests")),
        created=_seconds(raw.get("Created"), "Created"),
        size=size,
        shared_size=_known(raw.get("SharedSize"), "SharedSize"),
        labels=_labels(labels, "Labels", seen_labels) if labels else _EMPTY,
        containers=_known(raw.get("Containers"), "Containers") or 0,
    )


def _labels(labels: Any, field: str, seen: SeenLabels | None = None) -> Mapping[str, str]:
    """A read-only copy of a JSON object of strings; the one in `seen` when an equal set was read before."""
    labels = _mapping(labels, field)
    for key, value in labels.items():
        if type(value) is not str:
            raise MalformedAnswer(f"{field}.{key}", f"expected a string, got {_describe(value)}")
    if seen is None:
        return MappingProxyType(dict(labels))
    items = tuple(labels.items())
    found = seen.get(items)
    if found is None:
        found = seen[items] = MappingProxyType(dict(items))
    return found


def parse_image_inspect(raw: Mapping[str, Any], engine: EngineInfo) -> Image:
    """One image inspect as `parse_image` would read the same image's `/images/json` entry.

    Why: an event names one image, and inspecting it is exact where a full re-list costs seconds with many
    images. Inspect has `Created` as RFC 3339 (the listing truncates it to whole seconds), labels under
    `Config`, and no `SharedSize` (None: the listing's value is merged in by the poller, see `Poller`).
    On the containerd store inspect and listing disagree (`Size`, `RepoDigests`), so the poller re-lists
    there instead of using this.
    """
    raw = _mapping(raw, "")
    created = _time(raw.get("Created"), "Created")
    size = _known(raw.get("Size"), "Size")
    if size is None:
        size = _known(raw.get("VirtualSize"), "VirtualSize") or 0
    labels = _mapping(raw.get("Config"), "Config").get("Labels")
    return Image(
        id=_image_id(raw.get("Id")),
        refs=parse_refs(raw.get("RepoTags")),
        digests=parse_digests(raw.get("RepoDigests")),
        created=float(int(created)) if created is not None else 0.0,
        size=size,
        shared_size=None,
        labels=_labels(labels, "Config.Labels") if labels else _EMPTY,
    )


def shared_sizes_known(engine: EngineInfo | None) -> bool:
    """False on Podman, which answers SharedSize 0 (and LayersSize 0) for images that do share layers, and on
    CRI runtimes, whose API has no layer sizes at all."""
    return engine is None or not (engine.podman or engine.cri_runtime)


def local_images_have_digests(engine: EngineInfo | None) -> bool:
    """Podman and the containerd store give every image a repo digest, even one built or loaded here."""
    return engine is not None and (engine.podman or engine.containerd_store)


def parse_images(raw: Any, engine: EngineInfo) -> list[Image]:
    """`/images/json` as `parse_image` reads each entry, with sizes this engine cannot know made unknown."""
    return for_engine(parse_listing(raw), engine)


def parse_listing(raw: Any) -> list[Image]:
    """`/images/json` as `parse_image` reads each entry; MalformedAnswer names the entry and field."""
    entries = _list(raw, "")
    seen_labels: SeenLabels = {}
    images: list[Image] = []
    try:
        for index, entry in enumerate(entries):
            if not index & 63:
                checkpoint()  # off the loop (the poller's parse), a scrape in flight goes first
            images.append(parse_image(entry, seen_labels))
        return images
    except MalformedAnswer as exc:
        index = next(i for i, entry in enumerate(entries) if not _parses(entry))
        raise exc.within(f"[{index}]") from None


def _at(field: str, raw: Any) -> list[Image]:
    """`parse_listing` of a listing nested in another answer (`/system/df`'s `Images`)."""
    try:
        return parse_listing(raw)
    except MalformedAnswer as exc:
        raise exc.within(field) from None


def _parses(entry: Any) -> bool:
    """Whether one listing entry parses (only asked again after a failure, to name the entry)."""
    try:
        parse_image(entry)
    except MalformedAnswer:
        return False
    return True


def for_engine(images: list[Image], engine: EngineInfo) -> list[Image]:
    """Listed images (`parse_image`) with the sizes this engine cannot know made unknown: the part of
    `parse_images` that needs the engine's identity, for a caller that parsed the listing before knowing it."""
    if not shared_sizes_known(engine):
        return [replace(image, shared_size=None) for image in images]
    return images


def parse_containers(raw: Any) -> tuple[Container, ...]:
    """`/containers/json?all=1`: each container's ID, image ID and state; MalformedAnswer names the entry."""
    containers = []
    for i, entry in enumerate(_list(raw, "")):
        c = _mapping(entry, f"[{i}]")
        image = _text(c.get("ImageID"), f"[{i}].ImageID")
        container_id = _text(c.get("Id"), f"[{i}].Id")
        if not container_id:
            raise MalformedAnswer(f"[{i}].Id", "empty")
        containers.append(Container(container_id, normalize_id(image), _text(c.get("State"), f"[{i}].State")))
    return tuple(containers)


def parse_last_tag_time(inspect: Any) -> float | None:
    """`Metadata.LastTagTime` from image inspect; absent or zero time means unknown."""
    return _time(_mapping(_mapping(inspect, "").get("Metadata"), "Metadata").get("LastTagTime"), "Metadata.LastTagTime")


def parse_container_last_use(inspect: Any) -> float | None:
    """When a container last used its image: the later of `State.FinishedAt` and `State.StartedAt`.

    Zero times (never started, still running) are unknown; None when the container never ran.
    """
    state = _mapping(_mapping(inspect, "").get("State"), "State")
    finished = _time(state.get("FinishedAt"), "State.FinishedAt")
    started = _time(state.get("StartedAt"), "State.StartedAt")
    return max((t for t in (finished, started) if t is not None), default=None)


def parse_engine_info(version: Any, info: Any, api_version: str) -> EngineInfo:
    """Engine identity; detects Podman and the containerd image store, whose semantics differ."""
    try:
        return _engine_info(_mapping(version, ""), _mapping(info, "/info"), api_version)
    except MalformedAnswer as exc:
        raise exc if exc.field.startswith("/info") else exc.within("/version") from None


def _engine_info(version: Mapping[str, Any], info: Mapping[str, Any], api_version: str) -> EngineInfo:
    components = _list(version.get("Components"), "Components")
    names = [
        _text(_mapping(c, f"Components[{i}]").get("Name"), f"Components[{i}].Name") for i, c in enumerate(components)
    ]
    podman = any("podman" in name.lower() for name in names) or "podman" in (
        _text(_mapping(version.get("Platform"), "Platform").get("Name"), "Platform.Name").lower()
    )
    for key in ("Version", "Os", "Arch"):
        _text(version.get(key), key)
    for key in ("Driver", "OSType", "Architecture"):
        _text(info.get(key), f"/info.{key}")
    driver = str(info.get("Driver") or "")
    driver_status = _list(info.get("DriverStatus"), "/info.DriverStatus")
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
        data_root=root if isinstance(root := info.get("DockerRootDir"), str) else "",
        cri_runtime=cri if isinstance(cri := info.get("CRIRuntime"), str) else "",
    )


def parse_build_cache(raw: Any, field: str = "BuildCache") -> BuildCache:
    """Sizes as `docker system df` shows them: shared records are not counted, in-use ones not reclaimable."""
    entries = [_mapping(e, f"{field}[{i}]") for i, e in enumerate(_list(raw, field))]
    sizes = [_known(e.get("Size"), f"{field}[{i}].Size") or 0 for i, e in enumerate(entries)]
    own = [(e, size) for e, size in zip(entries, sizes, strict=True) if not e.get("Shared")]
    size = sum(size for _, size in own)
    reclaimable = sum(size for e, size in own if not e.get("InUse"))
    return BuildCache(size=size, reclaimable=reclaimable, entries=len(entries))


def parse_disk_usage(raw: Mapping[str, Any], taken_at: float, engine: EngineInfo | None = None) -> DiskUsage:
    """`/system/df`: layer bytes, per-image shared sizes, and reclaimable bytes exactly as the CLI does.

    Reclaimable = LayersSize - sum(Size - SharedSize) over images used by a container (docker CLI's
    formula). API 1.52 moved the data into per-type summaries (`ImageUsage`, `BuildCacheUsage`, with
    `Items` when asked with `verbose=1`); their totals are used when the legacy fields are absent.
    On engines whose shared sizes are not known (`shared_sizes_known`) layer and reclaimable bytes are
    unknown too, not zero.
    """
    raw = _mapping(raw, "")
    image_usage = _mapping(raw.get("ImageUsage"), "ImageUsage")
    images = (
        _at("Images", raw.get("Images")) if raw.get("Images") else _at("ImageUsage.Items", image_usage.get("Items"))
    )
    shared = {i.id: i.shared_size for i in images if i.shared_size is not None}
    layers = _known(raw.get("LayersSize"), "LayersSize")
    if layers is None:
        layers = _known(image_usage.get("TotalSize"), "ImageUsage.TotalSize") or 0
    reclaimable = _known(image_usage.get("Reclaimable"), "ImageUsage.Reclaimable")
    if reclaimable is None:
        used = sum(max(i.size - (i.shared_size or 0), 0) for i in images if i.containers > 0)
        reclaimable = max(layers - used, 0)
    cache_usage = _mapping(raw.get("BuildCacheUsage"), "BuildCacheUsage") if "BuildCacheUsage" in raw else None
    build_cache = None
    if "BuildCache" in raw or "BuilderSize" in raw:
        build_cache = parse_build_cache(raw.get("BuildCache"))
    elif cache_usage is not None:
        items = parse_build_cache(cache_usage.get("Items"), "BuildCacheUsage.Items")
        build_cache = BuildCache(
            size=_known(cache_usage.get("TotalSize"), "BuildCacheUsage.TotalSize") or items.size,
            reclaimable=_known(cache_usage.get("Reclaimable"), "BuildCacheUsage.Reclaimable") or items.reclaimable,
            entries=_known(cache_usage.get("TotalCount"), "BuildCacheUsage.TotalCount") or items.entries,
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
