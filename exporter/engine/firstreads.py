"""The first poll's engine reads, sent before the rest of the exporter is imported (see `cli.run`).

A module of its own, importing nothing but `engine`: what `cli` must import before the reads can go out
is what delays them (the poller alone pulls in prometheus_client, the history and the snapshot types). The
listing may have gone out sooner still, at launch (`earlyread`): then its answer is taken from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from exporter.core.logs import kv
from exporter.engine.earlyread import MAX_ANSWER_BYTES, EarlyListing
from exporter.engine.errors import EngineUnavailable
from exporter.engine.seam import EngineSeam

log = logging.getLogger("exporter.firstreads")  # the caller= name log pipelines filter on, not the file's place


class FirstReads:
    """The first poll's engine reads (version and info, images, containers), started before the app exists.

    Why: with many images the engine takes about as long to list them as this process takes to import and
    build the web app. `cli` starts these reads as soon as the config names the engine, so the engine lists
    while the process imports; the first poll then takes their answers instead of asking again. Each read
    is the same engine call a poll makes, queued at once on the engine's api lane (the listing first: the
    small version and info calls would otherwise wait for the importing thread's GIL before the long one
    is even sent), so a failure counts against the same stage. `started_at` (wall clock, before the reads
    were sent) is where the event follower's replay starts: a change between the listing and the event
    stream's start is not lost.
    """

    def __init__(
        self, engine: EngineSeam, clock: Callable[[], float] = time.time, early: EarlyListing | None = None
    ) -> None:
        self.started_at = clock() if early is None else min(clock(), early.started_at)
        self.images: asyncio.Future[list[dict[str, Any]]] = asyncio.ensure_future(_listing(engine, early))
        self.info: asyncio.Future[tuple[dict[str, Any], dict[str, Any], str]] = asyncio.ensure_future(
            engine.version_and_info()
        )
        self.containers: asyncio.Future[list[dict[str, Any]]] = asyncio.ensure_future(engine.list_containers())

    @classmethod
    async def start(
        cls, engine: EngineSeam, clock: Callable[[], float] = time.time, early: EarlyListing | None = None
    ) -> FirstReads:
        """Create the reads and let each reach the engine's lane (they run there while the caller works)."""
        reads = cls(engine, clock, early)
        await asyncio.sleep(0)
        return reads

    def discard(self) -> None:
        """The first poll is done with these reads (or never will be): cancel what has not answered (a queued
        read never reaches the engine), retrieve failures (no "exception never retrieved" log), and forget the
        answers. Why forget: the launcher keeps this object for the process's life (to discard the reads of a
        start that fails), and the listing's answer is tens of megabytes with many images."""
        for task in (self.info, self.images, self.containers):
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()
        taken: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        taken.cancel()
        self.images = self.info = self.containers = taken


async def _listing(engine: EngineSeam, early: EarlyListing | None) -> list[dict[str, Any]]:
    """The listing sent at launch when there is one, else (or when it failed) `list_images`.

    A launch read that failed is asked again the normal way, which reports the failure as every poll does;
    one that has not answered within `docker.timeout` is the engine not answering, as for any read. A launch
    read is bounded by the default `docker.max_response_bytes`: under a lower configured limit it is not used.
    """
    if early is not None and engine.max_response_bytes < MAX_ANSWER_BYTES:
        early.future.cancel()
        early = None
    if early is not None:
        try:
            async with asyncio.timeout(engine.timeout):
                images = await asyncio.wrap_future(early.future)
            log.debug("first listing taken from the launch read", extra=kv(images=len(images)))
            return images
        except TimeoutError:
            raise EngineUnavailable(f"engine did not answer within {engine.timeout:.0f}s") from None
        except Exception as exc:  # refused, broken, an error status: the normal read says what it is
            log.debug("launch read failed; listing again", extra=kv(err=exc))
    return await engine.list_images()
