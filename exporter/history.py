"""What the engine does not remember: when each image was last used and when it arrived here.

Last-used times come from container create/start events, running containers seen by polls, and each
container's own `State.FinishedAt`/`StartedAt` (read once per container, so a use from before the
exporter started counts from its first poll); arrival
times from images appearing or being pulled/loaded/tagged. Both drive remediation (LRU order, min_age), so
they persist in a small JSON file together with the set of images present at the last save.

The arrival rule (`observe`), because on the classic store a pull leaves no trace the engine will tell
us later (no `LastTagTime`, `Created` is the build time):
- an image present at the last save keeps what was recorded for it (or nothing: it is as old as its
  `Created`/`LastTagTime` say);
- any other image counts as arriving when this exporter first sees it: after downtime, after the state
  file was lost or corrupt, and on the very first start, everything new to the file is "just arrived".
Losing history therefore makes remediation more conservative about age, never less. Replayed engine
events (only the last 256 survive in the engine) can move an arrival or a last use later, never earlier.

The same file keeps the `schedules` section (`ScheduleState`: when each scheduled action last ran), so a
restart neither skips nor doubles a scheduled run. It is read on its own: a damaged image history does not
lose the schedules, and a damaged schedules section (logged) only makes the actions concerned wait for
their next occurrence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from exporter.logs import kv
from exporter.schedulestate import SECTION as SCHEDULES
from exporter.schedulestate import ScheduleState

log = logging.getLogger(__name__)

STATE_VERSION = 2


class ImageHistory:
    """Image ID -> last-used and arrival timestamps, plus the IDs present at the last save."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.last_used: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        #: IDs the state proves were present (at `saved_at`); anything else seen is new here.
        self.present: set[str] = set()
        #: When the loaded state was saved: where a replay of engine events starts. None = no usable state.
        self.saved_at: float | None = None
        #: When `present` was last listed: saved as the next start's `saved_at`.
        self.observed_at: float | None = None
        #: Scheduled actions' last runs (see exporter.schedulestate), saved in the same file.
        self.schedules = ScheduleState()
        self._dirty = False
        self._save_lock = threading.Lock()  # the poller and the remediation service both save

    def load(self) -> None:
        """Read the state file; missing, unreadable or from an older format: start with nothing proven."""
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
            self._load_schedules(data)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state format (want version {STATE_VERSION})")
            last_used = {str(k): float(v) for k, v in (data.get("last_used") or {}).items()}
            arrived = {str(k): float(v) for k, v in (data.get("arrived") or {}).items()}
            if "saved_at" not in data:  # only schedules were saved (before the first poll)
                log.info(
                    "no image history yet: every image counts as arriving when first seen", extra=kv(path=self.path)
                )
                return
            present = {str(i) for i in data["present"]}
            saved_at = float(data["saved_at"])
        except FileNotFoundError:
            log.info("no image history yet: every image counts as arriving when first seen", extra=kv(path=self.path))
            return
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning(
                "ignoring unreadable image history: every image counts as arriving when first seen",
                extra=kv(path=self.path, err=exc),
            )
            return
        self.last_used, self.arrived, self.present, self.saved_at = last_used, arrived, present, saved_at
        log.info("loaded image history", extra=kv(images=len(present), path=self.path))

    def _load_schedules(self, data: object) -> None:
        """The `schedules` section, whatever the state of the rest; problems are logged (conservative)."""
        section = data.get(SCHEDULES) if isinstance(data, dict) else None
        self.schedules, problems = ScheduleState.from_json(section)
        for problem in problems:
            log.warning("problem in the state file's schedules", extra=kv(path=self.path, err=problem))
        if isinstance(data, dict) and data.get("version") == STATE_VERSION and section is None:
            log.info(
                "no schedules in the state file yet: scheduled actions wait for their next occurrence",
                extra=kv(path=self.path),
            )

    def observe(self, present: Iterable[str], now: float) -> list[str]:
        """Record the images listed now: those not proven present before arrive at `now`; returns them."""
        ids = set(present)
        self.observed_at = now
        new = sorted(ids - self.present)
        for image_id in new:
            self.mark_arrived(image_id, now)
        if ids != self.present:
            self.present = ids
            self._dirty = True
        self.retain(ids)
        return new

    def mark_used(self, image_id: str, when: float) -> None:
        if self.last_used.get(image_id, 0.0) < when:
            self.last_used[image_id] = when
            self._dirty = True

    def mark_arrived(self, image_id: str, when: float) -> None:
        if self.arrived.get(image_id, 0.0) < when:
            self.arrived[image_id] = when
            self._dirty = True

    def retain(self, present: Iterable[str]) -> None:
        """Forget images that are gone, so the file stays as small as the image list."""
        keep = set(present)
        for table in (self.last_used, self.arrived):
            for image_id in [i for i in table if i not in keep]:
                del table[image_id]
                self._dirty = True

    def save(self) -> None:
        """Write atomically (temp file + rename) when something changed; failures are logged, not fatal.

        No image history is written before the first `observe` (a state without the present images proves
        nothing), unless one was loaded: it is written back as it was. Schedules are written regardless.
        Blocking: for the shutdown path; a running exporter uses `save_in_thread`.
        """
        data = self.prepare()
        if data is not None:
            self.write(data)

    async def save_in_thread(self) -> None:
        """`save` with the file work in a worker thread. The tables are copied here, on the event loop thread
        that changes them: copying them in the worker could meet a dict changing size mid-copy."""
        data = self.prepare()
        if data is not None:
            await asyncio.to_thread(self.write, data)

    def prepare(self) -> dict[str, Any] | None:
        """What to write now (copies), or None when nothing changed; marks it as being written."""
        schedules_changed = self.schedules.changed
        if self.path is None or not (schedules_changed or (self._dirty and self.observed_at is not None)):
            return None
        data: dict[str, Any] = {"version": STATE_VERSION, SCHEDULES: self.schedules.to_json()}
        saved_at = self.observed_at if self.observed_at is not None else self.saved_at
        if saved_at is not None:
            data.update(
                saved_at=saved_at,
                present=sorted(self.present),
                last_used=dict(self.last_used),
                arrived=dict(self.arrived),
            )
        self.schedules.changed = False
        self._dirty = False
        return data

    def write(self, data: dict[str, Any]) -> None:
        """Write `data` (from `prepare`) atomically; serialised, since the poller and the service both save.
        On failure the state counts as changed again, so the next save retries."""
        assert self.path is not None
        with self._save_lock:
            tmp: str | None = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
                with os.fdopen(fd, "w") as handle:
                    json.dump(data, handle, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                self.schedules.changed = True  # try again next time
                self._dirty = True
                log.warning("cannot save image history", extra=kv(path=self.path, err=exc))
                if tmp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
