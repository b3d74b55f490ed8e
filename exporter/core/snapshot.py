"""The immutable view of one engine at one moment: what the collector renders and the planner decides on.

Everything here is plain data, built by the poller from normalised API payloads (see `apishapes`); nothing
in this module talks to the engine, so metrics and deletion plans are testable from recorded payloads.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

NONE_LABEL = "<none>"


@dataclass(frozen=True, order=True, slots=True)  # slots: one or more per image, kept for the image's life
class ImageRef:
    """One `repository:tag` of an image; the repository may carry a registry host with a port."""

    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    @classmethod
    def parse(cls, text: str) -> ImageRef | None:
        """Split at the last `:` after the last `/` (so `host:5000/ns/app:1` works); None for `<none>`."""
        if not text or text.startswith(NONE_LABEL) or "@" in text:
            return None
        slash = text.rfind("/")
        colon = text.rfind(":")
        if colon > slash:  # interned: many tags share a repository, one string each is kept per image otherwise
            return cls(sys.intern(text[:colon]), text[colon + 1 :])
        return cls(sys.intern(text), "latest")


@dataclass(frozen=True, order=True, slots=True)
class DigestRef:
    """One `repository@sha256:<hex>` of an image: how images pulled by digest (no tag) are named.

    A digest names content, so unlike a tag it cannot be moved to another image.
    """

    repository: str
    digest: str

    def __str__(self) -> str:
        return f"{self.repository}@{self.digest}"

    @classmethod
    def parse(cls, text: str) -> DigestRef | None:
        """Split at the `@`; None for `<none>@<none>` and anything without an algorithm-prefixed digest."""
        repository, sep, digest = text.partition("@")
        if not sep or not repository or repository.startswith(NONE_LABEL) or ":" not in digest:
            return None
        return cls(repository, digest)


@dataclass(frozen=True, slots=True)  # slots: two per image are kept (the listed one, the published one)
class Image:
    """One image as `/images/json` lists it, with what the exporter learned about it elsewhere."""

    id: str
    refs: tuple[ImageRef, ...]
    digests: tuple[str, ...]
    created: float
    size: int
    shared_size: int | None
    labels: Mapping[str, str]
    containers: int = 0
    last_tag_time: float | None = None
    last_used: float | None = None
    arrived: float | None = None
    #: The wall clock's offset from the boot clock when the exporter first saw this `age_reference`
    #: (see exporter.core.clocks): a forward step of the wall clock since then does not count as age.
    seen_offset: float | None = None
    #: LastTagTime not inspected yet (the poller fills it in behind the first publish): unknown, not absent.
    tag_time_pending: bool = False

    @property
    def short_id(self) -> str:
        """12 hex characters, whatever the engine prefixes (`sha256:` or nothing on Podman)."""
        return self.id.split(":", 1)[-1][:12]

    @property
    def digest_refs(self) -> tuple[DigestRef, ...]:
        """The `repo@sha256:…` references (RepoDigests): a digest-pulled image has these and no tag."""
        return tuple(r for r in (DigestRef.parse(d) for d in self.digests) if r is not None)

    @property
    def references(self) -> tuple[ImageRef | DigestRef, ...]:
        """Every name the image answers to, tags first: what protection globs and plans look at."""
        return (*self.refs, *self.digest_refs)

    @property
    def dangling(self) -> bool:
        """Named by nothing: no tag and no digest reference (an image pulled by digest is not dangling).

        Docker calls every untagged image dangling; an image pulled as `repo@sha256:…` is one that
        someone pinned on purpose, so it is only removed by actions that remove unused images.
        """
        return not self.refs and not self.digest_refs

    @property
    def local_only(self) -> bool:
        """Tagged but never pushed or pulled: it exists nowhere else, so deleting it loses it."""
        return bool(self.refs) and not self.digests

    @property
    def unique_size(self) -> int | None:
        """Bytes only this image holds: what deleting it alone frees."""
        if self.shared_size is None:
            return None
        return max(self.size - self.shared_size, 0)

    @property
    def age_reference(self) -> float:
        """When the image last became 'new' here: the latest of created, last tag, and arrival.

        Infinitely recent while the last tag time is still being inspected: it may have been tagged just now,
        so remediation treats it as too young (and newest in LRU order) until it is known.
        """
        if self.tag_time_pending:
            return math.inf
        return max(t for t in (self.created, self.last_tag_time, self.arrived) if t is not None)

    @property
    def recency(self) -> float:
        """Least-recently-used ordering key: last use when known, else when it became new here."""
        return self.last_used if self.last_used is not None else self.age_reference


@dataclass(frozen=True)
class Container:
    id: str
    image_id: str
    state: str


@dataclass(frozen=True)
class BuildCache:
    size: int
    reclaimable: int
    entries: int


@dataclass(frozen=True)
class DiskUsage:
    """The expensive `/system/df` answer, taken rarely; `taken_at` says how old it is."""

    taken_at: float
    layers_size: int | None  # None where the engine does not compute it (Podman answers 0)
    reclaimable: int | None
    shared_sizes: Mapping[str, int]
    build_cache: BuildCache | None


@dataclass(frozen=True)
class Filesystem:
    path: str
    size: int
    avail: int

    @property
    def avail_ratio(self) -> float:
        return self.avail / self.size if self.size else 1.0


@dataclass(frozen=True)
class EngineInfo:
    version: str
    api_version: str
    storage_driver: str
    os: str
    arch: str
    containerd_store: bool = False
    podman: bool = False
    #: Where the engine keeps its data (`docker info`: Docker Root Dir), as the engine sees it; "" if unsaid.
    data_root: str = ""
    #: The CRI runtime that answered (`containerd`, `cri-o`); "" for an engine speaking the Docker API.
    cri_runtime: str = ""

    @property
    def runtime(self) -> str:
        """Which kind of engine answered: `docker`, `podman`, or the CRI runtime's name."""
        return self.cri_runtime or ("podman" if self.podman else "docker")


@dataclass(frozen=True)
class Snapshot:
    """Images, containers and disk data from one poll, plus when it was taken."""

    taken_at: float
    engine: EngineInfo | None
    images: tuple[Image, ...] = ()
    containers: tuple[Container, ...] = ()
    disk_usage: DiskUsage | None = None
    filesystem: Filesystem | None = None
    by_id: Mapping[str, Image] = field(default_factory=lambda: MappingProxyType({}))
    #: Images whose per-image inspect (LastTagTime) has not answered yet.
    pending_inspects: int = 0

    @property
    def dangling(self) -> tuple[Image, ...]:
        return tuple(i for i in self.images if i.dangling)

    @property
    def unused(self) -> tuple[Image, ...]:
        return tuple(i for i in self.images if i.containers == 0)
