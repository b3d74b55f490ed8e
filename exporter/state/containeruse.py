"""When images were last used, from the containers listed: the running ones now, stopped ones when they ran.

One inspect per (container ID, state) never seen before: a container is read once, and once more after it
stops, so an image used before the exporter started (or while it was down) has a last use from the first
poll. Running containers need none (their image is marked used now), nor do containers created and never
started (nothing ran).
"""

from __future__ import annotations

from exporter.core.snapshot import Container, Image
from exporter.engine import apishapes
from exporter.engine.apishapes import MalformedAnswer
from exporter.engine.errors import EngineError
from exporter.engine.seam import EngineSeam
from exporter.state.history import ImageHistory

# Marking running images as used at most this often keeps the state file from being rewritten every poll.
RUNNING_USE_RESOLUTION = 60.0


class ContainerUse:
    """(container ID, state) -> when that stopped container last ran (inspect State), read once each."""

    def __init__(self, history: ImageHistory) -> None:
        self.history = history
        self._last_ran: dict[tuple[str, str], float | None] = {}

    async def fill(self, engine: EngineSeam, containers: list[Container]) -> None:
        """Inspect the stopped containers not read in their current state yet; EngineError and
        MalformedAnswer (naming the container's endpoint) stop it, the rest is read next poll."""
        wanted = {(c.id, c.state) for c in containers if c.state not in ("running", "created")}
        self._last_ran = {k: v for k, v in self._last_ran.items() if k in wanted}
        for key in sorted(wanted - self._last_ran.keys()):
            try:
                inspect = await engine.inspect_container(key[0])
            except EngineError as exc:
                if exc.status == 404:  # removed between list and inspect: the next poll will not list it
                    continue
                raise
            try:
                self._last_ran[key] = apishapes.parse_container_last_use(inspect)
            except MalformedAnswer as exc:
                raise (exc if exc.field.startswith("/") else exc.within(f"/containers/{key[0]}/json")) from None

    def track(self, images: list[Image], containers: list[Container], now: float) -> None:
        """Arrivals (images not proven present before count as arriving now, see `history`) and use."""
        self.history.observe((i.id for i in images), now)
        for c in containers:
            ran = self._last_ran.get((c.id, c.state))
            if ran is not None:
                self.history.mark_used(c.image_id, ran)
            if c.state == "running" and now - self.history.last_used.get(c.image_id, 0.0) > RUNNING_USE_RESOLUTION:
                self.history.mark_used(c.image_id, now)
