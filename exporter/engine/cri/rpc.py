"""One CRI runtime's gRPC channel: its stubs, the lanes its calls run in, and gRPC errors as engine errors.

Each call is a blocking gRPC call with a deadline, run in a lane's worker thread as the Docker backend does:
reads on `api`, removals and their re-checks on `delete` (so a slow listing never holds up a removal's
re-check), pulls for a restore on a thread of their own. Shared by `client.CriEngine` and `transfer`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as rpc

from exporter.engine.errors import EngineError, EngineNotFound, EngineUnavailable
from exporter.engine.seam import RESTORE_PULL_TIMEOUT, Lane

T = TypeVar("T")
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


class CriChannel:
    """The gRPC channel to one runtime's socket, its image and runtime stubs, and the lanes calls run in."""

    def __init__(self, socket_path: str, timeout: float, delete_lane_threads: int) -> None:
        self.timeout = timeout
        self._lanes = {
            "api": ThreadPoolExecutor(1, thread_name_prefix="cri-api"),
            "df": ThreadPoolExecutor(1, thread_name_prefix="cri-df"),
            "delete": ThreadPoolExecutor(delete_lane_threads, thread_name_prefix="cri-delete"),
        }
        self._restore_lane = ThreadPoolExecutor(1, thread_name_prefix="cri-restore")
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        self._channel = grpc.insecure_channel(f"unix://{socket_path}", options=options)
        self.images = rpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.runtime = rpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def call(self, what: str, fn: Callable[[float], T], *, lane: Lane = "api") -> T:
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

    async def status(self, ref: str, *, lane: Lane = "api") -> pb.ImageStatusResponse | None:
        """Verbose `ImageStatus` of `ref`; None when the runtime has no such image."""
        request = pb.ImageStatusRequest(image=pb.ImageSpec(image=ref), verbose=True)
        answer = await self.call(f"ImageStatus {ref}", lambda t: self.images.ImageStatus(request, timeout=t), lane=lane)
        return answer if answer.HasField("image") else None

    async def pull(self, ref: str) -> None:
        """CRI `PullImage` of `ref` on the restore thread, bounded by RESTORE_PULL_TIMEOUT (minutes of download)."""
        request = pb.PullImageRequest(image=pb.ImageSpec(image=ref))

        def pull() -> None:
            try:
                self.images.PullImage(request, timeout=RESTORE_PULL_TIMEOUT)
            except grpc.RpcError as exc:
                raise _translate(exc, f"PullImage {ref}") from None

        future = asyncio.get_running_loop().run_in_executor(self._restore_lane, pull)
        try:
            async with asyncio.timeout(RESTORE_PULL_TIMEOUT + 5):
                await future
        except TimeoutError:
            raise EngineUnavailable(f"pull {ref} did not finish in time") from None

    def close(self) -> None:
        for lane in self._lanes.values():
            lane.shutdown(wait=False, cancel_futures=True)
        self._restore_lane.shutdown(wait=False, cancel_futures=True)
        self._channel.close()
