"""The docker SDK side of the Docker backend: one worker thread per lane, each owning one SDK client.

Why lanes: the SDK blocks and one client's thread safety is undocumented (docker-py says so itself), so each lane
is one worker thread owning one client (see `client` for which call takes which lane). Clients are built lazily
inside their thread, so the exporter starts while the engine is down, and are dropped on connection errors so
the API version is renegotiated when the engine comes back (possibly upgraded).

With `transfer` and `client`, the only modules that import `docker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions

from exporter.core.engineaddress import EngineAddress
from exporter.core.logs import kv
from exporter.engine.errors import AnswerTooLarge, EngineError, EngineUnavailable, decode, status_error
from exporter.engine.seam import Lane

T = TypeVar("T")
log = logging.getLogger("exporter.engine")  # the caller= name log pipelines filter on, not the file's place

EVENT_TYPES = ("image", "container")
#: Bytes read from the engine per call while reading an answer (the limit is checked between reads).
READ_CHUNK = 1 << 20


def _translate(exc: Exception) -> EngineError:
    if isinstance(exc, docker.errors.APIError):
        return status_error(exc.status_code or 0, str(exc.explanation or exc))
    return EngineUnavailable(f"{type(exc).__name__}: {exc}")


def bounded_get(c: docker.APIClient, limit: int, path: str, params: Mapping[str, Any] | None = None, **url: Any) -> Any:
    """`bounded_read`, decoded: an answer that is not JSON, or nests too deeply, is an EngineError naming the call."""
    return decode(bounded_read(c, limit, path, params, **url), f"GET {path}")


def bounded_read(
    c: docker.APIClient, limit: int, path: str, params: Mapping[str, Any] | None = None, **url: Any
) -> bytearray:
    """`GET path` through the SDK client, read up to `limit` bytes (`docker.max_response_bytes`).

    Why not the SDK's own readers: they read the whole answer into memory whatever its size (and a parsed
    answer needs several times that), and hand on whatever JSON came. Here the body is streamed into
    one buffer that stops at the limit (`Content-Length` is refused before anything is read). The body is
    decoded by the caller: `bounded_get` at once, a listing's caller off the event loop (`core.offloop`).
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
    return body


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
