"""A fake CRI runtime built from the same stubs, answering with answers recorded from a real containerd.

Why a fake at all: pod sandboxes cannot start on this machine (runc cannot), so no container can really use
an image here, and "in use" is what the removal protocol must get right. Everything else the fake answers
comes from `tests/fixtures/cri/containerd-1.6.20.json`, recorded from the real containerd by `record` with
`recorded_specs()` loaded (`DIE_RECORD_CRI=1 pytest tests/integration/test_cri_engine.py -k recorded` writes
it again; without it that test checks the fixture against a fresh recording). Its `RemoveImage` behaves as
containerd's does: every reference of the image goes, a container using it is no obstacle, a missing image
is no error.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc
from google.protobuf import json_format

from tests.harness.containerd import SANDBOX_IMAGE
from tests.harness.images import ImageSpec, Layer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cri"
#: Answers of Debian bookworm's containerd 1.6.20 (no `pinned` field yet); `fixture_for` names the others.
FIXTURE = FIXTURES / "containerd-1.6.20.json"


def fixture_for(version: str) -> Path:
    """The recording of containerd `version` (`1.7.24~ds1` -> containerd-1.7.24.json)."""
    return FIXTURES / f"containerd-{version.split('~')[0]}.json"


#: What the fixture's containerd held: fixed created times, so a fresh recording has the same image IDs.
RECORDED_CREATED = datetime(2024, 3, 1, tzinfo=UTC)


def recorded_specs() -> list[ImageSpec]:
    """The images the fixture was recorded with: shared layers, two tags on one image, labels, a registry
    with a port, and the sandbox (pause) image the private containerd is configured with."""
    base = Layer.random(200_000, "cri-base")
    at = RECORDED_CREATED
    return [
        ImageSpec(
            tags=("team/web:1.0", "team/web:latest"),
            layers=(base, Layer.random(30_000, "web-1")),
            labels={"keep": "true"},
            created=at,
        ),
        ImageSpec(tags=("team/web:0.9",), layers=(base, Layer.random(20_000, "web-0.9")), created=at - timedelta(1)),
        ImageSpec(tags=("registry.example:5000/ns/api:2",), layers=(Layer.random(50_000, "api"),), created=at),
        ImageSpec(tags=(SANDBOX_IMAGE,), layers=(Layer.text("pause", "#"),), cmd=("/pause",), created=at),
        ImageSpec(tags=("team/tool:1",), layers=(Layer.random(10_000, "tool"),), created=at + timedelta(1)),
    ]


def comparable(recording: dict[str, Any]) -> dict[str, Any]:
    """A recording without what differs between two runs of the same images (paths, times)."""
    return {
        "Version": recording["Version"],
        "sandboxImage": recording["StatusConfig"]["sandboxImage"],
        # containerd lists in no fixed order
        "ListImages": sorted(recording["ListImages"].get("images", []), key=lambda i: json.dumps(i, sort_keys=True)),
        "ImageStatus": recording["ImageStatus"],
    }


def record(endpoint: str) -> dict[str, Any]:
    """Version, verbose Status config, ListImages, verbose ImageStatus of each image and ImageFsInfo, as JSON."""
    with grpc.insecure_channel(endpoint) as channel:
        images = rpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]
        runtime = rpc.RuntimeServiceStub(channel)  # type: ignore[no-untyped-call]
        listed = images.ListImages(pb.ListImagesRequest(), timeout=10)
        status = {
            i.id: json_format.MessageToDict(
                images.ImageStatus(pb.ImageStatusRequest(image=pb.ImageSpec(image=i.id), verbose=True), timeout=10)
            )
            for i in listed.images
        }
        return {
            "Version": json_format.MessageToDict(runtime.Version(pb.VersionRequest(), timeout=10)),
            "StatusConfig": json.loads(runtime.Status(pb.StatusRequest(verbose=True), timeout=10).info["config"]),
            "ListImages": json_format.MessageToDict(listed),
            "ImageStatus": status,
            "ImageFsInfo": json_format.MessageToDict(images.ImageFsInfo(pb.ImageFsInfoRequest(), timeout=10)),
        }


@dataclass
class FakeImage:
    image: pb.Image
    info: dict[str, str]


@dataclass
class FakeState:
    """What the fake runtime holds; tests change it directly (and from `before`, between calls)."""

    version: pb.VersionResponse
    config: dict[str, Any]
    images: dict[str, FakeImage]
    fs: pb.ImageFsInfoResponse
    #: container ID -> image ID
    containers: dict[str, str] = field(default_factory=dict)
    #: (call, argument) in the order they arrived
    calls: list[tuple[str, str]] = field(default_factory=list)
    #: called with (call, argument) before each call is answered: where a test lands its changes
    before: Callable[[str, str], None] | None = None
    #: called with the image ID right before `RemoveImage` takes effect: where a test checks its invariants
    on_remove: Callable[[str], None] | None = None

    @classmethod
    def recorded(cls, path: Path = FIXTURE) -> FakeState:
        data = json.loads(path.read_text())
        images: dict[str, FakeImage] = {}
        for raw in data["ListImages"].get("images", []):
            image = json_format.ParseDict(raw, pb.Image())
            if image.id in images:  # containerd lists an image once per reference
                images[image.id].image.repo_tags.extend(
                    t for t in image.repo_tags if t not in images[image.id].image.repo_tags
                )
                continue
            status = data["ImageStatus"][image.id]
            images[image.id] = FakeImage(
                json_format.ParseDict(status["image"], pb.Image()), dict(status.get("info", {}))
            )
        return cls(
            version=json_format.ParseDict(data["Version"], pb.VersionResponse()),
            config=data["StatusConfig"],
            images=images,
            fs=json_format.ParseDict(data["ImageFsInfo"], pb.ImageFsInfoResponse()),
        )

    def resolve(self, ref: str) -> FakeImage | None:
        """An image by ID, tag or digest reference (a short name as `docker.io/library/…`, as containerd does)."""
        if ref in self.images:
            return self.images[ref]
        full = (
            ref
            if "/" in ref.split(":")[0] and "." in ref.split("/")[0]
            else f"docker.io/{ref if '/' in ref else 'library/' + ref}"
        )
        for image in self.images.values():
            if ref in image.image.repo_tags or full in image.image.repo_tags or ref in image.image.repo_digests:
                return image
        return None


class _Services(rpc.ImageServiceServicer, rpc.RuntimeServiceServicer):
    def __init__(self, state: FakeState) -> None:
        self.state = state
        self.lock = threading.Lock()

    def _call(self, name: str, arg: str = "") -> None:
        with self.lock:
            self.state.calls.append((name, arg))
        if self.state.before is not None:
            self.state.before(name, arg)

    def Version(self, request: pb.VersionRequest, context: Any) -> pb.VersionResponse:
        self._call("Version")
        return self.state.version

    def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        self._call("Status")
        ready = pb.RuntimeCondition(type="RuntimeReady", status=True)
        return pb.StatusResponse(
            status=pb.RuntimeStatus(conditions=[ready]), info={"config": json.dumps(self.state.config)}
        )

    def ListImages(self, request: pb.ListImagesRequest, context: Any) -> pb.ListImagesResponse:
        self._call("ListImages")
        return pb.ListImagesResponse(images=[i.image for i in list(self.state.images.values())])

    def ImageStatus(self, request: pb.ImageStatusRequest, context: Any) -> pb.ImageStatusResponse:
        self._call("ImageStatus", request.image.image)
        found = self.state.resolve(request.image.image)
        if found is None:
            return pb.ImageStatusResponse()
        return pb.ImageStatusResponse(image=found.image, info=found.info if request.verbose else {})

    def ImageFsInfo(self, request: pb.ImageFsInfoRequest, context: Any) -> pb.ImageFsInfoResponse:
        self._call("ImageFsInfo")
        return self.state.fs

    def ListContainers(self, request: pb.ListContainersRequest, context: Any) -> pb.ListContainersResponse:
        self._call("ListContainers")
        return pb.ListContainersResponse(
            containers=[
                pb.Container(id=cid, image_ref=iid, state=pb.CONTAINER_RUNNING, image=pb.ImageSpec(image=iid))
                for cid, iid in list(self.state.containers.items())
            ]
        )

    def ContainerStatus(self, request: pb.ContainerStatusRequest, context: Any) -> pb.ContainerStatusResponse:
        self._call("ContainerStatus", request.container_id)
        image = self.state.containers.get(request.container_id)
        if image is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no such container")
            raise AssertionError("abort raises")
        return pb.ContainerStatusResponse(
            status=pb.ContainerStatus(
                id=request.container_id, image_ref=image, state=pb.CONTAINER_RUNNING, started_at=1
            )
        )

    def RemoveImage(self, request: pb.RemoveImageRequest, context: Any) -> pb.RemoveImageResponse:
        self._call("RemoveImage", request.image.image)
        found = self.state.resolve(request.image.image)
        if found is not None:  # as containerd: in use or not, every reference; missing is no error
            if self.state.on_remove is not None:
                self.state.on_remove(found.image.id)
            self.state.images.pop(found.image.id, None)
        return pb.RemoveImageResponse()

    def PullImage(self, request: pb.PullImageRequest, context: Any) -> pb.PullImageResponse:
        self._call("PullImage", request.image.image)
        context.abort(grpc.StatusCode.UNAVAILABLE, "no registry here")
        raise AssertionError("abort raises")


class FakeCri:
    """The fake runtime serving on `<dir>/cri.sock` until `stop`."""

    def __init__(self, directory: Path, state: FakeState | None = None) -> None:
        self.state = state or FakeState.recorded()
        self.socket = directory / "cri.sock"
        self.endpoint = f"unix://{self.socket}"
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        services = _Services(self.state)
        rpc.add_ImageServiceServicer_to_server(services, self._server)  # type: ignore[no-untyped-call]
        rpc.add_RuntimeServiceServicer_to_server(services, self._server)  # type: ignore[no-untyped-call]
        self._server.add_insecure_port(self.endpoint)
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)
