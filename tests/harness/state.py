"""The exporter's state file as a test needs it before the exporter starts.

Without a state file an exporter counts every image as just arrived (docs/remediation.md, "Across
restarts"), so `min_age` holds everything back for one `min_age`. Tests about what happens to *old* images
write the file an exporter that had been running would have left: every image listed now was present.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from exporter.engine.apishapes import normalize_id
from exporter.state.history import STATE_VERSION
from tests.harness.dockerd import PrivateDockerd


def write_saved_state(path: str | Path, engine: PrivateDockerd, saved_at: float | None = None) -> None:
    """Write `path` proving every image the engine lists now was present at `saved_at` (default: now)."""
    present = sorted(normalize_id(str(i["Id"])) for i in engine.get_json("/images/json?all=1"))
    data = {"version": STATE_VERSION, "saved_at": saved_at or time.time(), "present": present}
    Path(path).write_text(json.dumps({**data, "last_used": {}, "arrived": {}}))
