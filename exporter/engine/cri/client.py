"""`CriEngine`: the engine seam (`seam.EngineSeam`) over a CRI v1 runtime's gRPC socket.

Calls go over one channel (`rpc`), in lanes as the Docker backend's do. Answers come back in the engine API's
shapes (`shapes`), so the poller, the disk-usage task and the collector read them unchanged.

What the CRI cannot do is refused as an EngineError naming it (tags, events, /system/df): the callers of
those treat the feature as unavailable on this engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cri_api.v1 import api_pb2 as pb

from exporter.core.engineaddress import EngineAddress
from exporter.core.logs import kv
from exporter.engine.cri import shapes
from exporter.engine.cri.rpc import MAX_MESSAGE_BYTES, CriChannel, endpoint_socket
from exporter.engine.cri.transfer import CriTransfer
from exporter.engine.errors import EngineError, EngineNotFound, EngineUnavailable
from exporter.engine.seam import DISK_USAGE_KINDS, Lane

log = logging.getLogger("exporter.engine")


class CriEngine:
    """Async access to one CRI runtime (containerd, CRI-O) with per-call deadlines."""

    #: No image events in the CRI: the snapshot is kept current by polls alone (no event follower).
    follows_events = False

    def __init__(self, endpoint: str, timeout: float = 30.0, delete_lane_threads: int = 4) -> None:
        self.host = endpoint
        self.endpoint = endpoint
        self.socket_path = endpoint_socket(endpoint)
        # no socket_path: the launch read (a Docker API request) never claims a CRI socket
        self.address = EngineAddress(given=endpoint, scheme="unix", socket_path=None, base_url=endpoint)
        self.disk_usage_timeout = timeout
        #: The largest answer gRPC receives (its per-message limit, raised for large listings).
        self.max_response_bytes = MAX_MESSAGE_BYTES
        self._runtime_api_version: str | None = None
        self._cri = CriChannel(self.socket_path, timeout, delete_lane_threads)
        self._images = self._cri.images
        self._runtime = self._cri.runtime
        #: Pulls for a restore; no saves or loads (the trash needs a Docker engine).
        self.transfer = CriTransfer(self._cri)
        #: Created time and labels by image ID (fixed by the ID): one verbose ImageStatus per new image.
        self._configs: dict[str, shapes.ImageConfig] = {}
        #: The runtime's name (`containerd`, `cri-o`) and sandbox image, from the last `version_and_info`.
        self.runtime_name = ""
        self.sandbox_image: str | None = None

    @property
    def timeout(self) -> float:
        """`runtime.timeout`: each call's deadline."""
        return self._cri.timeout

    @property
    def where(self) -> str:
        return f"{self.endpoint} (CRI)"

    @property
    def lean_error(self) -> str | None:
        return None  # no lean HTTP client: every call is gRPC

    @property
    def api_version(self) -> str | None:
        """The CRI API version the runtime answered with last (None before the first call)."""
        return self._runtime_api_version

    @api_version.setter
    def api_version(self, version: str | None) -> None:
        self._runtime_api_version = version

    @property
    def _stream(self) -> Any:
        return None  # no event stream in the CRI

    # -- reads ----------------------------------------------------------------------------------------
    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        version = await self._cri.call("Version", lambda t: self._runtime.Version(pb.VersionRequest(), timeout=t))
        status = await self._cri.call(
            "Status", lambda t: self._runtime.Status(pb.StatusRequest(verbose=True), timeout=t)
        )
        fs = await self._cri.call("ImageFsInfo", lambda t: self._images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=t))
        mountpoint = fs.image_filesystems[0].fs_id.mountpoint if fs.image_filesystems else ""
        self.runtime_name = version.runtime_name
        self.sandbox_image = shapes.sandbox_image(status.info)
        if self.api_version != version.runtime_api_version:
            log.info(
                "CRI runtime answered",
                extra=kv(runtime=version.runtime_name, version=version.runtime_version, host=self.where),
            )
        self.api_version = version.runtime_api_version
        return shapes.version(version), shapes.info(version.runtime_name, mountpoint), version.runtime_api_version

    async def image_fs_used(self) -> tuple[int, int] | None:
        """(used bytes, used inodes) of the image filesystem as the runtime counts them; None if unsaid."""
        fs = await self._cri.call("ImageFsInfo", lambda t: self._images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=t))
        if not fs.image_filesystems:
            return None
        usage = fs.image_filesystems[0]
        return usage.used_bytes.value, usage.inodes_used.value

    async def _config(self, image_id: str, *, lane: Lane = "api") -> shapes.ImageConfig | None:
        config = self._configs.get(image_id)
        if config is None:
            status = await self._cri.status(image_id, lane=lane)
            if status is None:
                return None
            config = self._configs[image_id] = shapes.image_config(status.info)
        return config

    async def list_image_records(self, *, lane: Lane = "api") -> dict[str, pb.Image]:
        """`ListImages` by image ID (one entry per image, every reference merged)."""
        answer = await self._cri.call(
            "ListImages", lambda t: self._images.ListImages(pb.ListImagesRequest(), timeout=t), lane=lane
        )
        return shapes.merged(answer.images)

    async def list_images(self) -> list[dict[str, Any]]:
        """`ListImages`, with each new image's created time and labels from one verbose `ImageStatus`."""
        images = await self.list_image_records()
        self._configs = {k: v for k, v in self._configs.items() if k in images}
        out = []
        for image_id, image in images.items():
            config = await self._config(image_id)
            if config is None:  # removed between the listing and its status: the next poll will not list it
                continue
            out.append(shapes.listed_image(image, config))
        return out

    async def list_containers(self, *, lane: Lane = "api") -> list[dict[str, Any]]:
        """Every container the runtime has, in any state: a stopped one still holds its image."""
        answer = await self._cri.call(
            "ListContainers",
            lambda t: self._runtime.ListContainers(pb.ListContainersRequest(), timeout=t),
            lane=lane,
        )
        return [shapes.container(c) for c in answer.containers]

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        status = await self._cri.status(ref, lane=lane)
        if status is None:
            raise EngineNotFound(f"ImageStatus {ref}: no such image", 404)
        config = self._configs.get(status.image.id)
        if config is None:
            config = self._configs[status.image.id] = shapes.image_config(status.info)
        return shapes.inspected_image(status.image, config)

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        request = pb.ContainerStatusRequest(container_id=container_id)
        answer = await self._cri.call(
            f"ContainerStatus {container_id}", lambda t: self._runtime.ContainerStatus(request, timeout=t)
        )
        return shapes.container_state(answer.status)

    async def check_lean(self) -> None:
        """Every call goes over the one gRPC channel the poll used: nothing else to check."""

    async def disk_usage(self, kinds: Sequence[str] = DISK_USAGE_KINDS) -> dict[str, Any]:
        """No `/system/df` in the CRI: layer and shared sizes are unknown (absent), and there is no build cache."""
        return {"LayersSize": -1, "Images": None, "ImageUsage": {"Items": []}}

    # -- the removal protocol's re-checks (remediation/crideletion.py), on the delete lane ---------------
    async def protection(self, image_id: str) -> str | None:
        """Why the runtime's own rules keep `image_id` now (pinned, or the pod sandbox image), or None.

        Asked right before a removal, never from a cached answer: the sandbox image is read from the runtime's
        Status each time (a config reload may change it), then resolved to an ID by the runtime itself, so a
        short or differently spelled reference still names the same image.
        """
        status = await self._cri.status(image_id, lane="delete")
        if status is None:
            return None
        config = self._configs.get(image_id) or shapes.image_config(status.info)
        if shapes.pinned(status.image, config.labels):
            return "pinned by the runtime (CRI pinned / io.cri-containerd.pinned)"
        answer = await self._cri.call(
            "Status", lambda t: self._runtime.Status(pb.StatusRequest(verbose=True), timeout=t), lane="delete"
        )
        sandbox = shapes.sandbox_image(answer.info)
        if sandbox is None:
            return None
        self.sandbox_image = sandbox
        held = await self._cri.status(sandbox, lane="delete")
        if held is not None and held.image.id == status.image.id:
            return f"the node's pod sandbox image ({sandbox})"
        return None

    async def users(self, image_id: str, references: Sequence[str]) -> list[str]:
        """Containers (any state) whose image is `image_id` now, by ID or by one of its references."""
        answer = await self._cri.call(
            "ListContainers",
            lambda t: self._runtime.ListContainers(pb.ListContainersRequest(), timeout=t),
            lane="delete",
        )
        names = set(references)
        return sorted(
            c.id[:12]
            for c in answer.containers
            if c.image_ref == image_id or c.image.image in names or c.image.image == image_id
        )

    async def present(self, image_id: str) -> bool:
        """Whether the runtime still has `image_id` (ImageStatus on the delete lane)."""
        return await self._cri.status(image_id, lane="delete") is not None

    # -- writes (only the remediation executor's CRI protocol calls these) ---------------------------
    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        """CRI `RemoveImage`: every reference of the image goes, in use or not, and a missing one is no error.

        Only `remediation.crideletion` calls this, after its own checks (see there).
        """
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=ref))
        await self._cri.call(
            f"RemoveImage {ref}", lambda t: self._images.RemoveImage(request, timeout=t), lane="delete"
        )
        return [{"Deleted": ref}]

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        raise EngineError("the CRI cannot tag images")

    # -- the restore lane: `transfer`'s ---------------------------------------------------------------
    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        await self.transfer.restore_tag(image_id, repository, tag)

    async def pull_digest(self, repository: str, digest: str) -> None:
        await self.transfer.pull_digest(repository, digest)

    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        await self.transfer.save_image(image_id, sink, platform)

    async def load_archive(self, path: str) -> list[str]:
        return await self.transfer.load_archive(path)

    # -- container removal and prunes: not the CRI's --------------------------------------------------
    async def inspect_container_now(self, container_id: str) -> dict[str, Any]:
        raise EngineError("container removal is the kubelet's on a Kubernetes node")

    async def remove_container(self, container_id: str) -> None:
        raise EngineError("container removal is the kubelet's on a Kubernetes node")

    async def prune_images(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        raise EngineError("the CRI has no prune")

    async def prune_builds(self, keep_storage: int | None, filters: Mapping[str, Any]) -> dict[str, Any]:
        raise EngineError("the CRI has no build cache")

    # -- events: none in the CRI -------------------------------------------------------------------------
    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]:
        return []

    def follow_events(
        self, on_event: Callable[[dict[str, Any]], None], on_connected: Callable[[], None] | None = None
    ) -> None:
        raise EngineUnavailable("the CRI has no event stream")

    def close_events(self) -> None:
        pass

    def close(self) -> None:
        self._cri.close()
