"""The first poll's engine reads, sent before the rest of the exporter is imported (see `cli.run`).

A module of its own, importing nothing but `engine`: what `cli` must import before the reads can go out
is what delays them (the poller alone pulls in prometheus_client, the history and the snapshot types).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from exporter.engine import Engine


class FirstReads:
    """The first poll's engine reads (version and info, images, containers), started before the app exists.

    Why: at 10k images the engine takes about as long to list them as this process takes to import and
    build the web app. `cli` starts these reads as soon as the config names the engine, so the engine lists
    while the process imports; the first poll then takes their answers instead of asking again. Each read
    is the same `Engine` call a poll makes, queued at once on the engine's api lane (the listing first: the
    small version and info calls would otherwise wait for the importing thread's GIL before the long one
    is even sent), so a failure counts against the same stage. `started_at` (wall clock, before the reads
    were sent) is where the event follower's replay starts: a change between the listing and the event
    stream's start is not lost.
    """

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.started_at = clock()
        self.images: asyncio.Task[list[dict[str, Any]]] = asyncio.ensure_future(engine.list_images())
        self.info: asyncio.Task[tuple[dict[str, Any], dict[str, Any], str]] = asyncio.ensure_future(
            engine.version_and_info()
        )
        self.containers: asyncio.Task[list[dict[str, Any]]] = asyncio.ensure_future(engine.list_containers())

    @classmethod
    async def start(cls, engine: Engine, clock: Callable[[], float] = time.time) -> FirstReads:
        """Create the reads and let each reach the engine's lane (they run there while the caller works)."""
        reads = cls(engine, clock)
        await asyncio.sleep(0)
        return reads

    def discard(self) -> None:
        """Cancel what has not answered (a queued read never reaches the engine) and retrieve failures, so
        an unused read neither runs for nothing nor logs "exception never retrieved"."""
        for task in (self.info, self.images, self.containers):
            if not task.done():
                task.cancel()
            elif not task.cancelled():
                task.exception()
