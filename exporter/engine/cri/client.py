"""`CriEngine`: the engine seam (`Engine`'s public methods) over a CRI v1 runtime's gRPC socket.

Each call is a blocking gRPC call with a deadline, run in a lane's worker thread as the Docker backend does:
reads on `api`, removals and their re-checks on `delete` (so a slow listing never holds up a removal's
re-check), pulls for a restore on a thread of their own. Answers come back in the engine API's shapes
(`shapes`), so the poller, the disk-usage task and the collector read them unchanged.

What the CRI cannot do is refused as an EngineError naming it (tags, events, /system/df): the callers of
those treat the feature as unavailable on this engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from exporter.core.engineaddress import EngineAddress
from exporter.core.logs import kv
from exporter.engine.client import (
    DISK_USAGE_KINDS,
    RESTORE_PULL_TIMEOUT,
    Engine,
    EngineError,
    EngineNotFound,
    EngineUnavailable,
    Lane,
)
from exporter.engine.cri import shapes

T = TypeVar("T")
log = logging.getLogger("exporter.engine")
#: gRPC's default receive limit (4 MiB) is too small for a listing of a few thousand images.
MAX_MESSAGE_BYTES = 64 << 20
_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def endpoint_socket(endpoint: str) -> str:
    """The socket path of a `unix:///path` endpoint (the only form runtimes serve the CRI on)."""
    if not endpoint.startswith("unix:///"):
        raise ValueError(f"{endpoint!r}: a CRI endpoint is unix:///path/to/socket")
    return endpoint.removeprefix("unix://")


def _translate(exc: grpc.RpcError, what: str) -> EngineError:
    code = exc.code() if isinstance(exc, grpc.Call) else None
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    message = f"{what}: {code.name if code else 'error'}: {details}"
    if code in _UNAVAILABLE:
        return EngineUnavailable(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return EngineNotFound(message, 404)
    return EngineError(message)


class CriEngine(Engine):
    """Async access to one CRI runtime (containerd, CRI-O) with per-call deadlines."""

    #: No image events in the CRI: the snapshot is kept current by polls alone (no event follower).
    follows_events = False

    def __init__(self, endpoint: str, timeout: float = 30.0, delete_lane_threads: int = 4) -> None:
        # not Engine.__init__: no docker SDK client, no lean HTTP client
        self.host = endpoint
        self.endpoint = endpoint
        self.socket_path = endpoint_socket(endpoint)
        # no socket_path: the launch read (a Docker API request) never claims a CRI socket
        self.address = EngineAddress(given=endpoint, scheme="unix", socket_path=None, base_url=endpoint)
        self.timeout = timeout
        self.disk_usage_timeout = timeout
        self._runtime_api_version: str | None = None
        self._lanes = {
            "api": ThreadPoolExecutor(1, thread_name_prefix="cri-api"),
            "df": ThreadPoolExecutor(1, thread_name_prefix="cri-df"),
            "delete": ThreadPoolExecutor(delete_lane_threads, thread_name_prefix="cri-delete"),
        }
        self._restore_lane = ThreadPoolExecutor(1, thread_name_prefix="cri-restore")
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self._channel = grpc.insecure_channel(f"unix://{self.socket_path}", options=options)
        self._images = rpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._runtime = rpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        #: Created time and labels by image ID (fixed by the ID): one verbose ImageStatus per new image.
        self._configs: dict[str, shapes.ImageConfig] = {}
        #: The runtime's name (`containerd`, `cri-o`) and sandbox image, from the last `version_and_info`.
        self.runtime_name = ""
        self.sandbox_image: str | None = None

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

    async def _rpc(self, what: str, fn: Callable[[float], T], *, lane: Lane = "api") -> T:
        """`fn(deadline)` in the lane's thread; gRPC errors become the engine errors callers handle."""

        def call() -> T:
            try:
                return fn(self.timeout)
            except grpc.RpcError as exc:
                raise _translate(exc, what) from None

        future = asyncio.get_running_loop().run_in_executor(self._lanes[lane], call)
        try:
            async with asyncio.timeout(self.timeout + 5):
                return await future
        except TimeoutError:
            raise EngineUnavailable(f"{what}: runtime did not answer within {self.timeout + 5:.0f}s") from None

    # -- reads ----------------------------------------------------------------------------------------
    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        version = await self._rpc("Version", lambda t: self._runtime.Version(pb.VersionRequest(), timeout=t))
        status = await self._rpc("Status", lambda t: self._runtime.Status(pb.StatusRequest(verbose=True), timeout=t))
        fs = await self._rpc("ImageFsInfo", lambda t: self._images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=t))
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
        fs = await self._rpc("ImageFsInfo", lambda t: self._images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=t))
        if not fs.image_filesystems:
            return None
        usage = fs.image_filesystems[0]
        return usage.used_bytes.value, usage.inodes_used.value

    async def _config(self, image_id: str, *, lane: Lane = "api") -> shapes.ImageConfig | None:
        config = self._configs.get(image_id)
        if config is None:
            status = await self._status(image_id, lane=lane)
            if status is None:
                return None
            config = self._configs[image_id] = shapes.image_config(status.info)
        return config

    async def _status(self, ref: str, *, lane: Lane = "api") -> pb.ImageStatusResponse | None:
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=True)
        answer = await self._rpc(
            f"ImageStatus {ref}", lambda t: self._images.ImageStatus(request, timeout=t), lane=lane
        )
        return answer if answer.HasField("image") else None

    async def list_image_records(self, *, lane: Lane = "api") -> dict[str, pb.Image]:
        """`ListImages` by image ID (one entry per image, every reference merged)."""
        answer = await self._rpc(
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
        answer = await self._rpc(
            "ListContainers",
            lambda t: self._runtime.ListContainers(pb.ListContainersRequest(), timeout=t),
            lane=lane,
        )
        return [shapes.container(c) for c in answer.containers]

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        status = await self._status(ref, lane=lane)
        if status is None:
            raise EngineNotFound(f"ImageStatus {ref}: no such image", 404)
        config = self._configs.get(status.image.id)
        if config is None:
            config = self._configs[status.image.id] = shapes.image_config(status.info)
        return shapes.inspected_image(status.image, config)

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        request = pb.ContainerStatusRequest(container_id=container_id)
        answer = await self._rpc(
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
        status = await self._status(image_id, lane="delete")
        if status is None:
            return None
        config = self._configs.get(image_id) or shapes.image_config(status.info)
        if shapes.pinned(status.image, config.labels):
            return "pinned by the runtime (CRI pinned / io.cri-containerd.pinned)"
        answer = await self._rpc(
            "Status", lambda t: self._runtime.Status(pb.StatusRequest(verbose=True), timeout=t), lane="delete"
        )
        sandbox = shapes.sandbox_image(answer.info)
        if sandbox is None:
            return None
        self.sandbox_image = sandbox
        held = await self._status(sandbox, lane="delete")
        if held is not None and held.image.id == status.image.id:
            return f"the node's pod sandbox image ({sandbox})"
        return None

    async def users(self, image_id: str, references: Sequence[str]) -> list[str]:
        """Containers (any state) whose image is `image_id` now, by ID or by one of its references."""
        answer = await self._rpc(
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
        return await self._status(image_id, lane="delete") is not None

    # -- writes (only the remediation executor's CRI protocol calls these) ---------------------------
    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        """CRI `RemoveImage`: every reference of the image goes, in use or not, and a missing one is no error.

        Only `remediation.crideletion` calls this, after its own checks (see there).
        """
        request = pb.RemoveImageRequest(image=pb.ImageSpec(image=ref))
        await self._rpc(f"RemoveImage {ref}", lambda t: self._images.RemoveImage(request, timeout=t), lane="delete")
        return [{"Deleted": ref}]

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        raise EngineError("the CRI cannot tag images")

    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        """The CRI cannot tag: the tag comes back by pulling `repository:tag`, which names the restored image
        only while the registry's tag still points at it. Checked after the pull; an EngineError says so
        when the registry's tag has moved (the image it names now was pulled, the restored one is untouched)."""
        await self._pull(f"{repository}:{tag}")
        status = await self._status(f"{repository}:{tag}", lane="delete")
        if status is None or status.image.id != image_id:
            now = status.image.id if status is not None else "nothing"
            raise EngineError(f"{repository}:{tag} in the registry is {now} now, not {image_id}: tag not restored")

    async def pull_digest(self, repository: str, digest: str) -> None:
        """CRI `PullImage` of `repository@digest`, on a thread of its own (minutes of download)."""
        await self._pull(f"{repository}@{digest}")

    async def _pull(self, ref: str) -> None:
        request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))

        def pull() -> None:
            try:
                self._images.PullImage(request, timeout=RESTORE_PULL_TIMEOUT)
            except grpc.RpcError as exc:
                raise _translate(exc, f"PullImage {ref}") from None

        future = asyncio.get_running_loop().run_in_executor(self._restore_lane, pull)
        try:
            async with asyncio.timeout(RESTORE_PULL_TIMEOUT + 5):
                await future
        except TimeoutError:
            raise EngineUnavailable(f"pull {ref} did not finish in time") from None

    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        raise EngineError("the CRI cannot export an image: remediation.trash needs a Docker engine")

    async def load_archive(self, path: str) -> list[str]:
        raise EngineError("the CRI cannot load an image archive: remediation.trash needs a Docker engine")

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
        for lane in self._lanes.values():
            lane.shutdown(wait=False, cancel_futures=True)
        self._restore_lane.shutdown(wait=False, cancel_futures=True)
        self._channel.close()
