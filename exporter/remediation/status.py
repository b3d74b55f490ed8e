"""What each configured action is doing, in one projection read by the actions API and the landing page.

`ActionStatus` is built once per request from the parts that know it: the gate (running, previewing,
cooldown), the scheduler (next run, last scheduled run from the state file) and the runner's history (the
newest run of any trigger). `GET /api/v1/actions` is its `to_json()`; the landing page reads its fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.config import RemediationConfig
from exporter.core.schedule import Interval
from exporter.remediation.gate import RunGate
from exporter.remediation.planner import action_select
from exporter.remediation.records import rfc3339
from exporter.remediation.scheduler import Scheduler


@dataclass(frozen=True)
class ActionStatus:
    """One action: its last run (a history summary) and its next scheduled run.

    `schedule` is the schedule's `describe()` (None: alert or manual only). `next_run` and
    `last_scheduled_run` are wall-clock times, None when the service cannot say (no schedule, not timed
    yet, never run on its schedule). While a missed run is being caught up, `next_run` is when it was due.
    The fields after `last_scheduled_run` are for the API only.
    """

    name: str
    type: str
    schedule: str | None
    running: bool
    last_run: Mapping[str, Any] | None
    next_run: float | None
    last_scheduled_run: float | None = None
    previewing: bool = False
    schedule_seconds: float | None = None  # intervals only
    max_deletions: int | None = None
    min_age_seconds: float | None = None
    select: dict[str, list[str]] | None = None
    seconds_since_last_start: float | None = None  # of the last real run (the cooldown's clock)

    def to_json(self) -> dict[str, Any]:
        """The action in GET /api/v1/actions (times as POSIX and RFC 3339).

        `last_run` there is a time: the later of the newest run in the history (since start, every trigger,
        dry runs included) and the last scheduled run from the state file, which outlives restarts; so an
        action run by hand or by an alert shows when, and a scheduled one still does after a restart.
        """
        scheduled = self.last_scheduled_run
        last, trigger = scheduled, None if scheduled is None else "schedule"
        newest = self.last_run
        if newest is not None and (last is None or newest["started_at"] > last):
            last, trigger = newest["started_at"], newest["trigger"]
        return {
            "name": self.name,
            "type": self.type,
            "running": self.running,
            "previewing": self.previewing,
            "schedule": self.schedule,
            "schedule_seconds": self.schedule_seconds,
            "last_run": last,
            "last_run_time": rfc3339(last),
            "last_run_trigger": trigger,
            "last_scheduled_run": scheduled,
            "last_scheduled_run_time": rfc3339(scheduled),
            "next_run": self.next_run,
            "next_run_time": rfc3339(self.next_run),
            "max_deletions": self.max_deletions,
            "min_age_seconds": self.min_age_seconds,
            "select": self.select,
            "seconds_since_last_start": self.seconds_since_last_start,
        }


class StatusView:
    """Reads the parts on the event loop; what it returns is a copy, safe to encode or render off it."""

    def __init__(
        self,
        config: Callable[[], RemediationConfig],
        gate: RunGate,
        scheduler: Scheduler,
        history: Iterable[Mapping[str, Any]],
    ) -> None:
        self._config = config
        self.gate = gate
        self.scheduler = scheduler
        self.history = history

    def actions(self) -> list[ActionStatus]:
        """Each configured action with its newest run from the history (None before the first)."""
        now = self.gate.monotonic()
        newest: dict[str, Mapping[str, Any]] = {}
        for summary in self.history:  # newest first
            newest.setdefault(summary["action"], summary)
        statuses = []
        for name, action in self._config().actions.items():
            schedule = action.schedule
            started = self.gate.last_started.get(name)
            rules = action_select(action)
            statuses.append(
                ActionStatus(
                    name=name,
                    type=action.type,
                    schedule=None if schedule is None else schedule.describe(),
                    running=self.gate.executor.is_running(name),
                    last_run=newest.get(name),
                    next_run=self.scheduler.next_run.get(name) if schedule is not None else None,
                    last_scheduled_run=self.scheduler.state.last_run(name) if schedule is not None else None,
                    previewing=name in self.gate.previewing,
                    schedule_seconds=schedule.seconds if isinstance(schedule, Interval) else None,
                    max_deletions=action.max_deletions,
                    min_age_seconds=action.min_age,
                    select=None if rules is None else rules.describe(),
                    seconds_since_last_start=None if started is None else round(now - started, 3),
                )
            )
        return statuses

    def describe(self) -> dict[str, Any]:
        """GET /api/v1/actions: the configured actions and recent runs, newest first."""
        return {
            "dry_run": self._config().dry_run,
            "actions": [status.to_json() for status in self.actions()],
            "runs": list(self.history),
        }
