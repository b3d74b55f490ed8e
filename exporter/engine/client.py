"""The Docker backend: `Engine`, an async facade over the blocking docker SDK (`sdk`) and the lean client.

Which lane a call takes: cheap calls (lists, inspects, deletes) share the `api` lane; the expensive
`/system/df` and build-cache prune get the `df` lane so they never run twice at once and never hold up a
poll; the remediation executor's checks and DELETEs get the `delete` lane (up to DELETE_LANE_THREADS calls at
once) so a few deletions can be in flight and polls never queue behind them; the event stream has its own
client; pulls, saves and loads for the trash and restores are `transfer`'s, in a thread of their own.

When the engine is on a unix socket, the delete lane's calls and every image inspect go over the lean client
(`lean`: plain HTTP/1.1 on the event loop, at the API version an SDK client negotiated); tcp hosts (plain or
TLS) keep the SDK in the lane's threads. Errors and answer checks are `errors`', shared by both paths.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import docker

from exporter.core import engineaddress, offloop
from exporter.engine.apiversion import api_at_least, images_query
from exporter.engine.errors import (
    AnswerTooLarge,
    EngineConflict,
    EngineError,
    EngineNotFound,
    EngineUnavailable,
    answered,
    decode,
    shaped,
)
from exporter.engine.lean import LeanClient
from exporter.engine.sdk import EVENT_TYPES, SdkLanes, bounded_get, bounded_read
from exporter.engine.seam import DELETE_LANE_THREADS, DISK_USAGE_KINDS, RESTORE_PULL_TIMEOUT, Lane
from exporter.engine.transfer import DockerTransfer

__all__ = [
    "DELETE_LANE_THREADS",
    "DISK_USAGE_KINDS",
    "MAX_RESPONSE_BYTES",
    "RESTORE_PULL_TIMEOUT",
    "AnswerTooLarge",
    "Engine",
    "EngineConflict",
    "EngineError",
    "EngineNotFound",
    "EngineUnavailable",
    "Lane",
]

T = TypeVar("T")
log = logging.getLogger("exporter.engine")  # the caller= name log pipelines filter on, not the file's place

#: `docker.max_response_bytes`'s default: the largest engine answer read. A listing takes a few hundred bytes
#: per image (tags, digests and labels are most of it), so this leaves room for the largest hosts, also with
#: many labels per image; what it bounds is memory, since a parsed answer needs several times its size.
MAX_RESPONSE_BYTES = 64 << 20


class Engine:
    """Async access to one Docker-API engine (dockerd or Podman) with per-call timeouts."""

    #: Whether `follow_events` delivers image and container events (the CRI backend has none).
    follows_events = True

    def __init__(
        self,
        host: str | None,
        timeout: float = 30.0,
        disk_usage_timeout: float = 300.0,
        delete_lane_threads: int = DELETE_LANE_THREADS,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.host = host
        #: Read once by `engineaddress.parse`, the reading the launch read shares: the SDK client gets its
        #: absolute form and the lean client its socket file, so every call reaches the same engine.
        self.address = engineaddress.parse(host)
        self.timeout = timeout
        self.disk_usage_timeout = disk_usage_timeout
        self.max_response_bytes = max_response_bytes
        self._sdk = SdkLanes(self.address, delete_lane_threads)
        #: Pulls, saves and loads (the trash and restores): minutes per call, on the SDK's restore thread.
        self.transfer = DockerTransfer(self._sdk, lambda: self.timeout)
        self._socket_path = self.address.socket_path
        self._lean_client = LeanClient()

    @property
    def api_version(self) -> str | None:
        """The API version the SDK negotiated last (None before the first call)."""
        return self._sdk.api_version

    @api_version.setter
    def api_version(self, version: str | None) -> None:
        self._sdk.api_version = version

    @property
    def _stream(self) -> Any:
        """The event stream while one is open (tests wait for it before making changes they must see)."""
        return self._sdk.stream

    @property
    def where(self) -> str:
        """The address for logs and the landing page: the socket or URL contacted (and the address as given
        when it reads differently)."""
        return self.address.display

    def _lean(self, lane: Lane) -> bool:
        """Whether this lane's call goes over the lean client: the delete lane, on a unix socket."""
        return lane == "delete" and self._socket_path is not None

    async def _call_raw(self, method: str, path: str) -> Any:
        """`method path` over the lean client; the decoded JSON answer.

        Errors as the SDK path raises them: 404/409/other statuses become EngineNotFound/EngineConflict/
        EngineError, a broken, refused or silent connection EngineUnavailable (and the API version is
        negotiated again next time, the engine may have been upgraded meanwhile).
        """
        assert self._socket_path is not None
        lean = self._lean_client
        if lean.version is None:
            lean.version = await self._call(lambda c: str(c.api_version), lane="delete")
        status, body = await lean.request(self._socket_path, method, path, self.timeout, self.max_response_bytes)
        return answered(status, body, f"{method} {path}")

    @property
    def lean_error(self) -> str | None:
        """Why the lean client's last call could not reach the engine; None once a call goes through."""
        return self._lean_client.error

    async def check_lean(self) -> None:
        """EngineUnavailable while the lean client still cannot reach the engine after a call of it failed.

        Why: polls go through the SDK, inspects and deletions through the lean client. A poll that reached
        the engine must not call it up while those fail (every image would stay "LastTagTime pending", so
        too young to delete, and runs would end "success" having deleted nothing). Free while the lean
        client works: it asks only after a failure, and one answer clears it.
        """
        if self._socket_path is not None and self.lean_error is not None:
            await self._call_raw("GET", "/version")

    async def _call(self, fn: Callable[[docker.APIClient], T], *, lane: Lane = "api") -> T:
        """Run `fn(client)` in the lane's worker thread; a hung engine becomes EngineUnavailable.

        Private: the client never leaves this module, so every engine call is a named method below and
        the API-version quirks of its parameters are decided in one place.
        """
        return await self._sdk.call(fn, lane, self.disk_usage_timeout if lane == "df" else self.timeout)

    # -- reads ----------------------------------------------------------------------------------------
    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        def get(c: docker.APIClient) -> tuple[dict[str, Any], dict[str, Any], str]:
            version = shaped(
                bounded_get(c, self.max_response_bytes, "/version", versioned_api=False), dict, "GET /version"
            )
            return (
                version,
                shaped(bounded_get(c, self.max_response_bytes, "/info"), dict, "GET /info"),
                str(c.api_version),
            )

        return await self._call(get)

    async def list_images(self) -> list[dict[str, Any]]:
        """`/images/json`, asking 1.42+ engines to compute SharedSize (`shared-size=1`; 1.41 leaves it -1).

        The SDK's public `images()` cannot pass `shared-size`, hence the raw request.
        """

        def get(c: docker.APIClient) -> bytearray:
            params = dict(urllib.parse.parse_qsl(images_query(c.api_version)))
            return bounded_read(c, self.max_response_bytes, "/images/json", params)

        what = "GET /images/json"
        # decoded off the loop, in slices: one json.loads of a large listing holds the interpreter lock throughout
        return list(shaped(await offloop.off_loop(decode, await self._call(get), what), list, what))

    async def list_containers(self, *, lane: Lane = "api") -> list[dict[str, Any]]:
        """Every container, running or stopped: a stopped one still holds its image."""
        what = "GET /containers/json"
        if self._lean(lane):
            return list(shaped(await self._call_raw("GET", "/containers/json?all=1"), list, what))
        return await self._call(
            lambda c: list(shaped(bounded_get(c, self.max_response_bytes, "/containers/json", {"all": 1}), list, what)),
            lane=lane,
        )

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        path = f"/images/{_quote(ref)}/json"
        # every inspect takes the lean client on a unix socket: the poller's LastTagTime fill and event
        # applies make thousands of them, and the SDK's per-request overhead was 4-5x the engine's answer
        if self._socket_path is not None:
            return dict(shaped(await self._call_raw("GET", path), dict, f"GET {path}"))
        return await self._call(
            lambda c: dict(shaped(bounded_get(c, self.max_response_bytes, path), dict, f"GET {path}")), lane=lane
        )

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        path = f"/containers/{_quote(container_id)}/json"
        return await self._call(
            lambda c: dict(shaped(bounded_get(c, self.max_response_bytes, path), dict, f"GET {path}"))
        )

    async def disk_usage(self, kinds: Sequence[str] = DISK_USAGE_KINDS) -> dict[str, Any]:
        """`/system/df`, one call at a time (df lane), limited to `kinds` where the API allows it.

        1.42+ honours `?type=` (1.41 computes everything, and a second concurrent call fails there);
        1.52+ moves per-item records into per-type summaries, returned only with `verbose=1`. The SDK's
        public `df()` takes neither parameter, hence the raw request.
        """

        def get(c: docker.APIClient) -> bytearray:
            params: dict[str, Any] = {}
            if api_at_least(c.api_version, "1.42"):
                params["type"] = list(kinds)
            if api_at_least(c.api_version, "1.52"):
                params["verbose"] = "1"
            return bounded_read(c, self.max_response_bytes, "/system/df", params)

        what = "GET /system/df"
        return dict(shaped(await offloop.off_loop(decode, await self._call(get, lane="df"), what), dict, what))

    # -- writes (only the remediation executor calls these) -----------------------------------------
    async def remove_image(self, ref: str) -> list[dict[str, Any]]:
        """`DELETE /images/{ref}` without force, on the `delete` lane: in-use or multi-reference images are
        never forced."""
        if self._lean("delete"):
            answer = await self._call_raw("DELETE", f"/images/{_quote(ref)}?force=false&noprune=false")
            return list(answer or [])
        return await self._call(lambda c: list(c.remove_image(ref, force=False, noprune=False) or []), lane="delete")

    async def tag_image(self, image_id: str, repository: str, tag: str) -> None:
        """`POST /images/{id}/tag` without force, on the `delete` lane: the executor's hold reference."""
        if self._lean("delete"):
            query = urllib.parse.urlencode({"repo": repository, "tag": tag})
            await self._call_raw("POST", f"/images/{_quote(image_id)}/tag?{query}")
            return
        await self._call(lambda c: c.tag(image_id, repository, tag, force=False), lane="delete")

    async def inspect_container_now(self, container_id: str) -> dict[str, Any]:
        """Container inspect on the `delete` lane: the re-check right before a container's DELETE."""
        if self._lean("delete"):
            return dict(await self._call_raw("GET", f"/containers/{_quote(container_id)}/json") or {})
        return await self._call(lambda c: dict(c.inspect_container(container_id)), lane="delete")

    async def remove_container(self, container_id: str) -> None:
        """`DELETE /containers/{id}` with force and v off: the engine refuses a running container (409), and
        the container's volumes stay."""
        if self._lean("delete"):
            await self._call_raw("DELETE", f"/containers/{_quote(container_id)}?force=false&v=false&link=false")
            return
        await self._call(lambda c: c.remove_container(container_id, v=False, link=False, force=False), lane="delete")

    async def prune_images(self, filters: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call(lambda c: dict(c.prune_images(filters=dict(filters)) or {}))

    async def prune_builds(self, keep_storage: int | None, filters: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /build/prune` on the df lane: it walks the whole cache, like `/system/df`."""
        return await self._call(
            lambda c: dict(c.prune_builds(filters=dict(filters), keep_storage=keep_storage or None) or {}),
            lane="df",
        )

    # -- the restore and trash lane: `transfer`'s, in a thread of its own ------------------------------
    async def pull_digest(self, repository: str, digest: str) -> None:
        await self.transfer.pull_digest(repository, digest)

    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        await self.transfer.restore_tag(image_id, repository, tag)

    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        await self.transfer.save_image(image_id, sink, platform)

    async def load_archive(self, path: str) -> list[str]:
        return await self.transfer.load_archive(path)

    # -- events ---------------------------------------------------------------------------------------
    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]:
        """Replay image/container events from the engine's buffer (its last 256, none from before its start)."""

        def get(c: docker.APIClient) -> list[dict[str, Any]]:
            stream = c.events(since=since, until=until, decode=True, filters={"type": list(EVENT_TYPES)})
            return [e for e in stream if isinstance(e, dict)]

        return await self._call(get)

    def follow_events(
        self, on_event: Callable[[dict[str, Any]], None], on_connected: Callable[[], None] | None = None
    ) -> None:
        """Block, delivering decoded image/container events until the stream ends or `close_events`.

        `on_connected` is called once the engine has answered the request: from then on it delivers every
        event to this stream, so a replay of what came before can start."""
        self._sdk.follow_events(on_event, on_connected)

    def close_events(self) -> None:
        """Called from the event loop thread to end a blocking `follow_events`, and any that starts later."""
        self._sdk.close_events()

    def close(self) -> None:
        self.close_events()
        with contextlib.suppress(RuntimeError):  # the loop that owned them may be closed already
            self._lean_client.drop()
        self._sdk.shutdown()


def _quote(ref: str) -> str:
    """An image reference as a path segment, quoted as the SDK does (`/` and `:` stay)."""
    return urllib.parse.quote(ref, safe="/:")
