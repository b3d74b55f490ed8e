"""The only module that imports `docker`: an async facade over the blocking SDK.

Why lanes: the SDK blocks and one client's thread safety is undocumented (docker-py says so itself), so each lane
is one worker thread owning one client. Cheap calls (lists, inspects, deletes) share the `api` lane; the
expensive `/system/df` and build-cache prune get the `df` lane so they never run twice at once and never
hold up a poll; the remediation executor's checks and DELETEs get the `delete` lane (up to
DELETE_LANE_THREADS calls at once) so a few deletions can be in flight and polls never queue behind them; the event
stream has its own client. Clients are built lazily inside their thread, so the
exporter starts while the engine is down, and are dropped on connection errors so the API version is
renegotiated when the engine comes back (possibly upgraded).

When the engine is on a unix socket, the delete lane's calls and every image inspect go over the lean client
(`lean`: plain HTTP/1.1 on the event loop, at the API version an SDK client negotiated); tcp hosts (plain or
TLS) keep the SDK in the lane's threads. Errors and answer checks are `errors`', shared by both paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

import docker
import docker.errors
import requests.exceptions

from exporter.core import engineaddress
from exporter.core.engineaddress import EngineAddress
from exporter.core.logs import kv
from exporter.engine.apiversion import api_at_least, images_query
from exporter.engine.errors import (
    AnswerTooLarge,
    EngineConflict,
    EngineError,
    EngineNotFound,
    EngineUnavailable,
    decode,
    shaped,
    status_error,
)
from exporter.engine.lean import LeanClient

__all__ = [
    "DELETE_LANE_THREADS",
    "DISK_USAGE_KINDS",
    "MAX_RESPONSE_BYTES",
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

EVENT_TYPES = ("image", "container")
# What the exporter reads from /system/df: never containers or volumes, which can cost minutes to size.
DISK_USAGE_KINDS = ("image", "build-cache")
#: `docker.max_response_bytes`'s default: the largest engine answer read. A listing takes a few hundred bytes
#: per image (tags, digests and labels are most of it), so this leaves room for the largest hosts, also with
#: many labels per image; what it bounds is memory, since a parsed answer needs several times its size.
MAX_RESPONSE_BYTES = 64 << 20
#: Bytes read from the engine per call while reading an answer (the limit is checked between reads).
READ_CHUNK = 1 << 20


def _translate(exc: Exception) -> EngineError:
    if isinstance(exc, docker.errors.APIError):
        return status_error(exc.status_code or 0, str(exc.explanation or exc))
    return EngineUnavailable(f"{type(exc).__name__}: {exc}")


Lane = Literal["api", "df", "delete"]
#: How long one restore pull may take: a registry download, far slower than any other engine call.
RESTORE_PULL_TIMEOUT = 900.0
# Deletions in flight at most. Measured (benchmarks/deletion.py, 1,000 images, 2 cores): 1 -> 4 -> 8 in
# flight take 4.3 -> 2.5 -> 2.4 s, 16 about the same as 8: the engine serialises much of a removal, and a
# few calls waiting at the engine hide each other's round trips and fsyncs.
DELETE_LANE_THREADS = 8


def _get(c: docker.APIClient, limit: int, path: str, params: Mapping[str, Any] | None = None, **url: Any) -> Any:
    """`GET path` through the SDK client, read up to `limit` bytes (`docker.max_response_bytes`) and decoded.

    Why not the SDK's own readers: they read the whole answer into memory whatever its size (and a parsed
    answer needs several times that), and hand on whatever JSON came. Here the body is streamed into
    one buffer that stops at the limit (`Content-Length` is refused before anything is read), and an
    answer that is not JSON, or nests too deeply for the parser, is an EngineError naming the call.
    """
    what = f"GET {path}"
    response = c._get(c._url(path, **url), params=dict(params or {}), stream=True)
    try:
        c._raise_for_status(response)
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > limit:
            raise AnswerTooLarge(what, limit, int(length))
        body = bytearray()
        for chunk in response.iter_content(READ_CHUNK):
            body += chunk
            if len(body) > limit:
                del body, chunk  # not kept alive by the traceback while the error is handled and logged
                raise AnswerTooLarge(what, limit, None)
    finally:
        response.close()
    return decode(body, what)


class SdkLanes:
    """The docker SDK side: one client per lane thread (built lazily, so the exporter starts while the engine
    is down, and dropped on connection errors so the API version is negotiated again), the restore thread,
    and the event stream's own client."""

    def __init__(self, address: EngineAddress, delete_lane_threads: int) -> None:
        self.address = address
        self.api_version: str | None = None
        self._lanes = {
            "api": ThreadPoolExecutor(1, thread_name_prefix="engine-api"),
            "df": ThreadPoolExecutor(1, thread_name_prefix="engine-df"),
            "delete": ThreadPoolExecutor(delete_lane_threads, thread_name_prefix="engine-delete"),
        }
        # restore pulls get a thread of their own: minutes of download never hold up a poll on the `api` lane
        self._restore_lane = ThreadPoolExecutor(1, thread_name_prefix="engine-restore")
        self._local = threading.local()
        self.stream: Any = None
        self._stream_lock = threading.Lock()
        self._events_closed = False

    def new_client(self, timeout: float | None) -> docker.APIClient:
        tls: Any = False
        if os.environ.get("DOCKER_TLS_VERIFY") or os.environ.get("DOCKER_CERT_PATH"):
            tls = docker.utils.kwargs_from_env().get("tls", False)
        client = docker.APIClient(base_url=self.address.base_url, version="auto", timeout=timeout, tls=tls)
        if self.api_version != client.api_version:
            log.info(
                "engine API version negotiated", extra=kv(api_version=client.api_version, host=self.address.display)
            )
        self.api_version = client.api_version
        return client

    def _client(self, timeout: float) -> docker.APIClient:
        client: docker.APIClient | None = getattr(self._local, "client", None)
        if client is None:
            client = self.new_client(timeout)
            self._local.client = client
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            client.close()

    def run(self, fn: Callable[[docker.APIClient], T], timeout: float) -> T:
        try:
            return fn(self._client(timeout))
        except (docker.errors.APIError, docker.errors.NotFound) as exc:
            raise _translate(exc) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            self._drop_client()
            raise _translate(exc) from exc

    async def call(self, fn: Callable[[docker.APIClient], T], lane: Lane, seconds: float) -> T:
        """Run `fn(client)` in the lane's worker thread; a hung engine becomes EngineUnavailable."""
        future = asyncio.get_running_loop().run_in_executor(self._lanes[lane], self.run, fn, seconds)
        try:
            async with asyncio.timeout(seconds + 5):  # not wait_for, which can swallow a cancel on 3.11
                return await future
        except TimeoutError:
            raise EngineUnavailable(f"engine did not answer within {seconds + 5:.0f}s") from None

    async def call_restore(self, fn: Callable[[docker.APIClient], T], seconds: float, what: str) -> T:
        """`fn(client)` in the restore thread, bounded by `seconds` (EngineUnavailable naming `what` after)."""
        future = asyncio.get_running_loop().run_in_executor(self._restore_lane, self.run, fn, seconds)
        try:
            async with asyncio.timeout(seconds + 5):
                return await future
        except TimeoutError:
            raise EngineUnavailable(f"{what} did not finish within {seconds:.0f}s") from None

    def follow_events(
        self, on_event: Callable[[dict[str, Any]], None], on_connected: Callable[[], None] | None
    ) -> None:
        """`Engine.follow_events`, on a client of its own."""
        try:
            client = self.new_client(None)
            stream = client.events(decode=True, filters={"type": list(EVENT_TYPES)})
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise _translate(exc) from exc
        with self._stream_lock:
            if self._events_closed:  # closed while we were connecting: do not block on a fresh stream
                stream.close()
                client.close()
                return
            self.stream = stream
        if on_connected is not None:
            on_connected()
        try:
            for event in stream:
                if isinstance(event, dict):
                    on_event(event)
        except (requests.exceptions.RequestException, OSError, ValueError, AttributeError, RecursionError) as exc:
            raise EngineUnavailable(f"event stream broke: {exc}") from exc
        finally:
            with self._stream_lock:
                self.stream = None
            client.close()

    def close_events(self) -> None:
        """End a blocking `follow_events`, and any that starts later."""
        with self._stream_lock:
            self._events_closed = True
            stream = self.stream
        if stream is not None:
            try:
                stream.close()
            except Exception as exc:  # closing a half-dead socket may raise anything; it is ending anyway
                log.debug("closing event stream", extra=kv(err=exc))

    def shutdown(self) -> None:
        for lane in self._lanes.values():
            lane.shutdown(wait=False, cancel_futures=True)
        self._restore_lane.shutdown(wait=False, cancel_futures=True)


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
        if status >= 400:
            try:
                data = decode(body, f"{method} {path}")
            except EngineError:
                data = None
            message = data.get("message") if isinstance(data, dict) else None
            raise status_error(status, str(message or body[:1000].decode(errors="replace").strip()))
        return decode(body, f"{method} {path}")

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
            version = shaped(_get(c, self.max_response_bytes, "/version", versioned_api=False), dict, "GET /version")
            return version, shaped(_get(c, self.max_response_bytes, "/info"), dict, "GET /info"), str(c.api_version)

        return await self._call(get)

    async def list_images(self) -> list[dict[str, Any]]:
        """`/images/json`, asking 1.42+ engines to compute SharedSize (`shared-size=1`; 1.41 leaves it -1).

        The SDK's public `images()` cannot pass `shared-size`, hence the raw request.
        """

        def get(c: docker.APIClient) -> list[dict[str, Any]]:
            params = dict(urllib.parse.parse_qsl(images_query(c.api_version)))
            return list(shaped(_get(c, self.max_response_bytes, "/images/json", params), list, "GET /images/json"))

        return await self._call(get)

    async def list_containers(self, *, lane: Lane = "api") -> list[dict[str, Any]]:
        """Every container, running or stopped: a stopped one still holds its image."""
        what = "GET /containers/json"
        if self._lean(lane):
            return list(shaped(await self._call_raw("GET", "/containers/json?all=1"), list, what))
        return await self._call(
            lambda c: list(shaped(_get(c, self.max_response_bytes, "/containers/json", {"all": 1}), list, what)),
            lane=lane,
        )

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        path = f"/images/{_quote(ref)}/json"
        # every inspect takes the lean client on a unix socket: the poller's LastTagTime fill and event
        # applies make thousands of them, and the SDK's per-request overhead was 4-5x the engine's answer
        if self._socket_path is not None:
            return dict(shaped(await self._call_raw("GET", path), dict, f"GET {path}"))
        return await self._call(
            lambda c: dict(shaped(_get(c, self.max_response_bytes, path), dict, f"GET {path}")), lane=lane
        )

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        path = f"/containers/{_quote(container_id)}/json"
        return await self._call(lambda c: dict(shaped(_get(c, self.max_response_bytes, path), dict, f"GET {path}")))

    async def disk_usage(self, kinds: Sequence[str] = DISK_USAGE_KINDS) -> dict[str, Any]:
        """`/system/df`, one call at a time (df lane), limited to `kinds` where the API allows it.

        1.42+ honours `?type=` (1.41 computes everything, and a second concurrent call fails there);
        1.52+ moves per-item records into per-type summaries, returned only with `verbose=1`. The SDK's
        public `df()` takes neither parameter, hence the raw request.
        """

        def get(c: docker.APIClient) -> dict[str, Any]:
            params: dict[str, Any] = {}
            if api_at_least(c.api_version, "1.42"):
                params["type"] = list(kinds)
            if api_at_least(c.api_version, "1.52"):
                params["verbose"] = "1"
            return dict(shaped(_get(c, self.max_response_bytes, "/system/df", params), dict, "GET /system/df"))

        return await self._call(get, lane="df")

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

    # -- restore (bringing a deleted image back) ---------------------------------------------------------
    async def pull_digest(self, repository: str, digest: str) -> None:
        """`POST /images/create?fromImage=<repository>&tag=<digest>`: pull one image by its repo digest.

        In its own worker thread, bounded by RESTORE_PULL_TIMEOUT: a download takes minutes where the other
        calls take seconds, and on the `api` lane it would hold up every poll meanwhile. The engine reports a
        failed pull inside its progress stream (HTTP 200 then `{"error": ...}`), so the stream is read to its
        end and such a line raises.
        """

        def pull(c: docker.APIClient) -> None:
            for line in c.pull(repository, tag=digest, stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise docker.errors.APIError(f"pull {repository}@{digest}: {line['error']}")

        await self._sdk.call_restore(pull, RESTORE_PULL_TIMEOUT, f"pull {repository}@{digest}")

    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        """`POST /images/{id}/tag` for a restore: point `repository:tag` at the image (moving it if it names
        another; the restore decides beforehand whether it may)."""

        def tag_it(c: docker.APIClient) -> None:
            if not c.tag(image_id, repository, tag, force=True):
                raise docker.errors.APIError(f"tag {image_id} as {repository}:{tag}: refused")

        await self._call(tag_it)

    # -- the trash (an image saved before its deletion, loaded back by a restore) -----------------------
    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        """`GET /images/{id}/get`: stream the image's archive into `sink`, one chunk at a time.

        `sink` may raise to cut the save short (a full trash, a stop); that error is raised here unchanged and
        the connection is closed. `platform` (API 1.48+) saves one platform of the image: the containerd store
        fails a save of every platform when content of another platform was never pulled. On the restore
        lane, bounded by RESTORE_PULL_TIMEOUT: an archive of gigabytes takes minutes.
        """

        def save(c: docker.APIClient) -> None:
            params: dict[str, str] = {}
            if platform and api_at_least(str(c.api_version), "1.48"):
                params["platform"] = json.dumps(dict(platform), separators=(",", ":"))
            response = c._get(c._url("/images/{0}/get", image_id), params=params, stream=True)
            try:
                c._raise_for_status(response)
                for chunk in response.iter_content(READ_CHUNK):
                    sink(chunk)
            finally:
                response.close()

        await self._on_restore_lane(save, f"save {image_id}")

    async def load_archive(self, path: str) -> list[str]:
        """`POST /images/load` of the archive at `path`, streamed from the file; what the engine says it loaded
        (`Loaded image ID: sha256:…`, `Loaded image: name:tag`), each line's text. A failed load reported in the
        stream (HTTP 200, then `{"error": …}`) raises."""

        def load(c: docker.APIClient) -> list[str]:
            said: list[str] = []
            with open(path, "rb") as archive:
                for line in c.load_image(archive):
                    if isinstance(line, dict) and line.get("error"):
                        raise docker.errors.APIError(f"load: {line['error']}")
                    if isinstance(line, dict) and line.get("stream"):
                        said.append(str(line["stream"]).strip())
            return said

        return await self._on_restore_lane(load, "load")

    async def _on_restore_lane(self, fn: Callable[[docker.APIClient], T], what: str) -> T:
        return await self._sdk.call_restore(fn, RESTORE_PULL_TIMEOUT, what)

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
