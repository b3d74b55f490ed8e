"""CRI v1 answers in the engine API's documented shapes, so the poller and `apishapes` read one format.

Why translate instead of a second parser: `apishapes` already turns those shapes into snapshot records with
every check of types and ranges, and the snapshot, the collector and the planner stay as they are. What the
CRI does not know is given as the engine API spells "unknown": `SharedSize` -1 (absent series), no
`LastTagTime` (zero time), `Containers` -1 (the poller counts containers itself).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cri_api.v1 import api_pb2 as pb

#: The engine API's zero time: "never" (a container that never started or is still running).
ZERO_TIME = "0001-01-01T00:00:00Z"
#: The containerd image label that marks an image pinned before the CRI reported `pinned` (containerd 1.7.3).
PINNED_LABEL = "io.cri-containerd.pinned"

_STATES = {
    pb.CONTAINER_CREATED: "created",
    pb.CONTAINER_RUNNING: "running",
    pb.CONTAINER_EXITED: "exited",
    pb.CONTAINER_UNKNOWN: "unknown",
}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}


@dataclass(frozen=True)
class ImageConfig:
    """What only verbose `ImageStatus` tells about an image: fixed by its ID, so read once per ID."""

    created: int
    labels: Mapping[str, str]


def _rfc3339(nanoseconds: int) -> str:
    if nanoseconds <= 0:
        return ZERO_TIME
    seconds, nanos = divmod(nanoseconds, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def image_config(info: Mapping[str, str]) -> ImageConfig:
    """Created time and labels from verbose `ImageStatus`'s `info` (containerd: `imageSpec`, the OCI config).

    An answer without it (CRI-O answers verbose status differently) leaves both unknown: created 0, no labels.
    """
    try:
        spec = json.loads(info.get("info") or "{}").get("imageSpec") or {}
    except (ValueError, AttributeError):
        spec = {}
    created = 0
    text = spec.get("created") if isinstance(spec, dict) else None
    if isinstance(text, str):
        try:
            created = int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
        except ValueError:
            created = 0
    config = spec.get("config") if isinstance(spec, dict) else None
    labels = config.get("Labels") if isinstance(config, dict) else None
    clean = (
        {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(labels, dict)
        else {}
    )
    return ImageConfig(created=max(created, 0), labels=clean)


def merged(images: Iterable[pb.Image]) -> dict[str, pb.Image]:
    """`ListImages` by ID: containerd lists an image once per reference it holds, so one ID may come twice."""
    out: dict[str, pb.Image] = {}
    for image in images:
        seen = out.get(image.id)
        if seen is None:
            out[image.id] = image
            continue
        both = pb.Image()
        both.CopyFrom(seen)
        both.repo_tags[:] = sorted(set(seen.repo_tags) | set(image.repo_tags))
        both.repo_digests[:] = sorted(set(seen.repo_digests) | set(image.repo_digests))
        both.pinned = seen.pinned or image.pinned
        out[image.id] = both
    return out


def listed_image(image: pb.Image, config: ImageConfig) -> dict[str, Any]:
    """One `/images/json` entry."""
    return {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": list(image.repo_digests),
        "Created": config.created,
        "Size": image.size,
        "SharedSize": -1,
        "Labels": dict(config.labels),
        "Containers": -1,
    }


def inspected_image(image: pb.Image, config: ImageConfig) -> dict[str, Any]:
    """One `/images/{id}/json` answer: created as RFC 3339, labels under `Config`, no tag time."""
    return {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": list(image.repo_digests),
        "Created": _rfc3339(config.created * 1_000_000_000),
        "Size": image.size,
        "Config": {"Labels": dict(config.labels)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def container(c: pb.Container) -> dict[str, Any]:
    """One `/containers/json?all=1` entry; `image_ref` is the image ID on containerd."""
    return {"Id": c.id, "ImageID": c.image_ref, "State": _STATES.get(c.state, "unknown")}


def container_state(status: pb.ContainerStatus) -> dict[str, Any]:
    """`/containers/{id}/json`'s `State`: when the container last ran its image."""
    return {"State": {"StartedAt": _rfc3339(status.started_at), "FinishedAt": _rfc3339(status.finished_at)}}


def host_arch() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def version(answer: pb.VersionResponse) -> dict[str, Any]:
    """`/version`: the runtime's name and version, as a component (what `docker_engine_info` shows)."""
    return {
        "Version": answer.runtime_version,
        "ApiVersion": answer.runtime_api_version,
        "Os": "linux",
        "Arch": host_arch(),
        "Components": [{"Name": answer.runtime_name, "Version": answer.runtime_version}],
        "Platform": {"Name": answer.runtime_name},
    }


def info(runtime_name: str, mountpoint: str) -> dict[str, Any]:
    """`/info`: the image filesystem's mountpoint is the data root (its statvfs is the node's image disk).

    `Driver` is the snapshotter's short name from the mountpoint (`…snapshotter.v1.overlayfs` -> `overlayfs`),
    never the `io.containerd.snapshotter` prefix that marks Docker's containerd image store.
    """
    driver = mountpoint.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[-1] if mountpoint else ""
    return {
        "Driver": driver,
        "DriverStatus": [],
        "OSType": "linux",
        "Architecture": host_arch(),
        "DockerRootDir": mountpoint,
        "CRIRuntime": runtime_name,
    }


def sandbox_image(status_info: Mapping[str, str]) -> str | None:
    """The pod sandbox (pause) image from verbose `Status`' config (containerd: `sandboxImage`)."""
    try:
        config = json.loads(status_info.get("config") or "{}")
    except ValueError:
        return None
    image = config.get("sandboxImage") if isinstance(config, dict) else None
    return image if isinstance(image, str) and image else None


def pinned(image: pb.Image, labels: Mapping[str, str]) -> bool:
    """The CRI's `pinned` (containerd 1.7.3+, CRI-O), or the containerd label that said it before."""
    return bool(image.pinned) or labels.get(PINNED_LABEL) == "pinned"
