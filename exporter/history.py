"""What the engine does not remember: when each image was last used and when it arrived here.

Last-used times come from container create/start events (and running containers seen by polls); arrival
times from images appearing after startup or being pulled/loaded/tagged. Both drive remediation (LRU
order, min_age), so they persist in a small JSON file. A missing, unreadable or corrupt file is logged and
survived: history then starts empty, which only makes remediation more conservative about age.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

STATE_VERSION = 1


class ImageHistory:
    """Image ID -> last-used and arrival timestamps, saved atomically when changed."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.last_used: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self._dirty = False

    def load(self) -> None:
        if self.path is None:
            return
        try:
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError("unknown state format")
            self.last_used = {str(k): float(v) for k, v in (data.get("last_used") or {}).items()}
            self.arrived = {str(k): float(v) for k, v in (data.get("arrived") or {}).items()}
            log.info("loaded image history for %d images from %s", len(self.last_used), self.path)
        except FileNotFoundError:
            log.info("no image history at %s yet; starting empty", self.path)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable image history %s (%s); starting empty", self.path, exc)
            self.last_used, self.arrived = {}, {}

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
        """Write atomically (temp file + rename) when something changed; failures are logged, not fatal."""
        if self.path is None or not self._dirty:
            return
        data = {"version": STATE_VERSION, "last_used": self.last_used, "arrived": self.arrived}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, sort_keys=True)
            os.replace(tmp, self.path)
            self._dirty = False
        except OSError as exc:
            log.warning("cannot save image history to %s: %s", self.path, exc)
