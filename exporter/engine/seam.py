"""The engine seam: what the layers above `engine/` use of an engine, whichever backend answers.

`state/`, `remediation/`, `web/`, `app` and the first reads are typed against `EngineSeam`, never against a
backend class, so mypy checks each backend (`client.Engine` for the Docker API, `cri.client.CriEngine` for a
CRI runtime) against the same list: a method a backend lacks, or takes with other arguments, is a type error
where the backend is handed over. The backends share no base class.

A backend that cannot do something (the CRI cannot tag, save, prune or stream events) still has the method
and raises an EngineError naming what it cannot do; the callers treat that as the feature being unavailable.
`follows_events` says beforehand whether there is an event stream to follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from exporter.core.engineaddress import EngineAddress

__all__ = ["DELETE_LANE_THREADS", "DISK_USAGE_KINDS", "RESTORE_PULL_TIMEOUT", "EngineSeam", "Lane", "TransferSeam"]

#: Which of a backend's worker lanes a call takes: `api` for reads, `df` for the slow disk-usage walk and
#: build-cache prune, `delete` for the executor's re-checks and removals (never queued behind a poll).
Lane = Literal["api", "df", "delete"]
# What the exporter reads from /system/df: never containers or volumes, which can cost minutes to size.
DISK_USAGE_KINDS = ("image", "build-cache")
#: How long one restore pull, save or load may take: a registry download or an archive of gigabytes, far
#: slower than any other engine call.
RESTORE_PULL_TIMEOUT = 900.0
# Deletions in flight at most. Measured (benchmarks/deletion.py, 1,000 images, 2 cores): 1 -> 4 -> 8 in
# flight take 4.3 -> 2.5 -> 2.4 s, 16 about the same as 8: the engine serialises much of a removal, and a
# few calls waiting at the engine hide each other's round trips and fsyncs.
DELETE_LANE_THREADS = 8


class TransferSeam(Protocol):
    """The restore and trash lane: whole images in and out of the engine, minutes per call."""

    async def pull_digest(self, repository: str, digest: str) -> None:
        """Pull one image by its repository digest."""
        ...

    async def restore_tag(self, image_id: str, repository: str, tag: str) -> None:
        """Point `repository:tag` at `image_id` again (moving it if it names another image)."""
        ...

    async def save_image(
        self, image_id: str, sink: Callable[[bytes], None], platform: Mapping[str, str] | None = None
    ) -> None:
        """Stream the image's archive into `sink`; an error `sink` raises is raised unchanged."""
        ...

    async def load_archive(self, path: str) -> list[str]:
        """Load the archive at `path`; what the engine says it loaded, one line each."""
        ...


class EngineSeam(TransferSeam, Protocol):
    """One engine as the exporter above `engine/` sees it."""

    #: Whether `follow_events` delivers image and container events (the CRI has none: polls alone).
    follows_events: bool

    @property
    def timeout(self) -> float:
        """Seconds one call may take before the engine counts as not answering."""
        ...

    @property
    def max_response_bytes(self) -> int:
        """The largest answer read from the engine, in bytes (the first reads compare the launch read's)."""
        ...

    @property
    def address(self) -> EngineAddress:
        """The engine's address as the launch read reads it (a CRI endpoint's has no socket: never claimed)."""
        ...

    @property
    def where(self) -> str:
        """The address for logs and the landing page."""
        ...

    async def check_lean(self) -> None:
        """EngineUnavailable while a second path to the engine (beside the poll's) still fails."""
        ...

    # -- reads ----------------------------------------------------------------------------------------
    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]: ...
    async def list_images(self) -> list[dict[str, Any]]: ...
    async def list_containers(self, *, lane: Lane = "api") -> list[dict[str, Any]]: ...
    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]: ...
    async def inspect_container(self, container_id: str) -> dict[str, Any]: ...
    async def disk_usage(self, kinds: Sequence[str] = DISK_USAGE_KINDS) -> dict[str, Any]: ...

    # -- writes (the remediation executor's) ----------------------------------------------------------
    async def remove_image(self, ref: str) -> list[dict[str, Any]]: ...
    async def tag_image(self, image_id: str, repository: str, tag: str) -> None: ...
    async def inspect_container_now(self, container_id: str) -> dict[str, Any]: ...
    async def remove_container(self, container_id: str) -> None: ...
    async def prune_builds(self, keep_storage: int | None, filters: Mapping[str, Any]) -> dict[str, Any]: ...

    # -- events ---------------------------------------------------------------------------------------
    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]: ...

    def follow_events(
        self, on_event: Callable[[dict[str, Any]], None], on_connected: Callable[[], None] | None = None
    ) -> None: ...

    def close_events(self) -> None: ...

    def close(self) -> None: ...
