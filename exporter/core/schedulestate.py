"""The `schedules` section of the state file: what each scheduled action's next run counts from.

Without it a restart would reset every schedule, and an exporter restarted more often than weekly would
never run its weekly job. Per action it keeps two times (POSIX seconds):

- `since`: when the exporter first kept this action's schedule. Before the first run, the schedule
  counts from here, so restarts do not postpone the first run either.
- `last_run`: when its last scheduled run started (absent until there is one). Shown by the API.

The state-file writer (which already saves image history atomically: temp file + rename) stores the
section under the key `schedules`, for example

    {"schedules": {"weekly": {"since": 1794880800.0, "last_run": 1795489200.0}}}

Reading is forgiving, because the state file may be missing, from an older version, or damaged. A
missing or malformed section, or a malformed entry, loses what was known about the actions concerned:
they start over as new (their schedule counts from now). That is the conservative reading: a damaged
file can delay a scheduled run by up to one period, but never cause a run that was not due. Each
problem is reported back so the caller can log it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SECTION = "schedules"


@dataclass
class ActionRecord:
    since: float
    last_run: float | None = None


@dataclass
class ScheduleState:
    """Action name -> its schedule anchor; `changed` tells the state-file writer to save."""

    actions: dict[str, ActionRecord] = field(default_factory=dict)
    changed: bool = False

    def last_run(self, action: str) -> float | None:
        record = self.actions.get(action)
        return record.last_run if record else None

    def counts_from(self, action: str, now: float) -> float:
        """The time `schedule.decide` counts from: the last run, else `since`, starting it now if new."""
        record = self.actions.get(action)
        if record is None:
            record = self.actions[action] = ActionRecord(since=_finite(now, "the current time"))
            self.changed = True
        return record.last_run if record.last_run is not None else record.since

    def record(self, action: str, started_at: float) -> None:
        """Remember a scheduled run; never moves backwards, so a late or repeated record is harmless."""
        started_at = _finite(started_at, "a run start time")
        record = self.actions.setdefault(action, ActionRecord(since=started_at))
        if record.last_run is None or started_at > record.last_run:
            record.last_run = started_at
            self.changed = True

    def retain(self, actions: Iterable[str]) -> None:
        """Forget actions no longer configured (or no longer scheduled), so the section stays small."""
        keep = set(actions)
        for name in [n for n in self.actions if n not in keep]:
            del self.actions[name]
            self.changed = True

    def to_json(self) -> dict[str, Any]:
        """The value to store under `SECTION` in the state file (JSON-serialisable, sorted by action)."""
        out: dict[str, Any] = {}
        for name, record in sorted(list(self.actions.items()), key=lambda item: item[0]):  # list(): thread-safe copy
            out[name] = {"since": record.since}
            if record.last_run is not None:
                out[name]["last_run"] = record.last_run
        return out

    @classmethod
    def from_json(cls, data: object) -> tuple[ScheduleState, list[str]]:
        """Read the `SECTION` value (None when absent); bad parts are left out and listed as problems."""
        if data is None:
            return cls(), []
        if not isinstance(data, Mapping):
            return cls(), [f"{SECTION}: expected an object, got {type(data).__name__}; schedules start over"]
        state, problems = cls(), []
        for name, entry in data.items():
            if not isinstance(name, str) or not name:
                problems.append(f"{SECTION}: ignoring entry with invalid action name {name!r}")
                continue
            record = _record(entry)
            if record is None:
                problems.append(
                    f"{SECTION}.{name}: expected {{'since': <timestamp>, 'last_run': <timestamp>}}, "
                    f"got {entry!r}; its schedule starts over"
                )
            else:
                state.actions[name] = record
        return state, problems


def _record(entry: object) -> ActionRecord | None:
    """An entry with a valid `since` and, if present, a valid `last_run`; None if either is bad.

    Other keys are ignored, so a state file written by a later version still loads.
    """
    if not isinstance(entry, Mapping):
        return None
    since = _timestamp(entry.get("since"))
    last_run = _timestamp(entry.get("last_run")) if "last_run" in entry else None
    if since is None or ("last_run" in entry and last_run is None):
        return None
    return ActionRecord(since=since, last_run=last_run)


def _timestamp(value: object) -> float | None:
    """A positive finite POSIX time, or None (booleans, strings, NaN and infinities are not times)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite timestamp, got {value!r}")
    return float(value)
