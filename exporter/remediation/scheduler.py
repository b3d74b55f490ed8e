"""Scheduled actions: one timer task per action, timed from the last scheduled run kept in the state file.

Schedules survive restarts: each scheduled action's last scheduled run is kept in the state file
(`ImageHistory.schedules`, saved before the run starts), so a run missed while the exporter was down
happens once after start and a restart never repeats one (see exporter/core/schedule.py for the rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from exporter.config import RemediationConfig
from exporter.core.logs import kv
from exporter.core.schedule import Schedule, decide, sleep_seconds
from exporter.core.schedulestate import ScheduleState
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.records import rfc3339
from exporter.remediation.runs import Run, Trigger
from exporter.state.history import ImageHistory

log = logging.getLogger(__name__)

#: Saving the schedules (state file) before a scheduled run: a hung disk must not hold the schedule forever.
SCHEDULE_SAVE_TIMEOUT_SECONDS = 30.0

Begin = Callable[[str, Trigger, Sequence[str], bool], Run | None]


class Scheduler:
    """The timers of scheduled actions, their next run, and the schedules section of the state file."""

    def __init__(
        self,
        history: ImageHistory,
        metrics: RemediationMetrics,
        config: Callable[[], RemediationConfig],
        begin: Begin,
        run: Callable[[Run], Awaitable[Run]],
        stopping: Callable[[], bool],
        clock: Callable[[], float],
    ) -> None:
        self.history = history
        self.metrics = metrics
        self._config = config
        self._begin = begin
        self._run = run
        self._stopping = stopping
        self.clock = clock
        self.next_run: dict[str, float] = {}  # action -> wall-clock time its timer waits for
        self._timers: dict[str, tuple[Schedule, asyncio.Task[None]]] = {}  # action -> (schedule, timer)

    @property
    def state(self) -> ScheduleState:
        """The persisted last scheduled runs, kept with the image history in the state file."""
        return self.history.schedules

    def reschedule(self) -> None:
        """One timer task per scheduled action: keep those whose schedule is unchanged, replace the rest.

        Actions no longer scheduled are forgotten in the state file; a changed schedule keeps its last run,
        so changing `24h` to `12h` counts from the last run, not from the reload.
        """
        if self._stopping():  # a reload that ends during shutdown starts nothing
            return
        actions = self._config().actions
        for name, (schedule, task) in list(self._timers.items()):
            action = actions.get(name)
            if action is None or action.schedule != schedule:
                task.cancel()
                del self._timers[name]
                self.next_run.pop(name, None)
                self.metrics.clear_next_run(name)
        scheduled = [a for a in actions.values() if a.schedule is not None]
        self.state.retain(a.name for a in scheduled)
        for action in scheduled:
            if action.name not in self._timers:
                assert action.schedule is not None
                task = asyncio.create_task(
                    self._scheduled(action.name, action.schedule), name=f"schedule-{action.name}"
                )
                self._timers[action.name] = (action.schedule, task)

    async def stop(self) -> None:
        timers = [task for _schedule, task in self._timers.values()]
        self._timers.clear()
        for timer in timers:
            timer.cancel()
        for timer in timers:
            with contextlib.suppress(asyncio.CancelledError):
                await timer

    async def _scheduled(self, name: str, schedule: Schedule) -> None:
        """Run when `decide` says so, counting from the persisted last run (see schedule.py).

        The run is recorded and saved before it starts, so a stop in the middle of it does not repeat
        it after a restart; a run skipped because the action is busy counts as that occurrence's run.
        """
        while True:
            now = self.clock()
            decision = decide(schedule, self.state.counts_from(name, now), now)
            self.next_run[name] = decision.next_run
            self.metrics.set_next_run(name, decision.next_run)
            if not decision.due_now:
                if self.state.changed:  # a new schedule's anchor: keep it, or restarts postpone it
                    await self._save()
                await asyncio.sleep(sleep_seconds(decision, now))
                continue
            run = self._begin(name, "schedule", (), self._config().dry_run)
            self.state.record(name, run.started_at if run is not None else now)
            await self._save()
            if run is None:
                log.info(
                    "scheduled run skipped: a run is in progress (counts as this occurrence)", extra=kv(action=name)
                )
                continue
            log.info("scheduled run started", extra=kv(run_id=run.run_id, action=name, due=rfc3339(decision.next_run)))
            await self._run(run)

    async def _save(self) -> None:
        """Write the state file in a worker thread; a failure is logged by the writer and retried next save."""
        if self.history.path is None:  # kept in memory only: nothing to write
            self.state.changed = False
            return
        try:
            async with asyncio.timeout(SCHEDULE_SAVE_TIMEOUT_SECONDS):  # not wait_for: it can swallow a cancel
                await self.history.save_in_thread()
        except TimeoutError:
            log.warning(
                "saving schedules to the state file timed out", extra=kv(timeout_seconds=SCHEDULE_SAVE_TIMEOUT_SECONDS)
            )
