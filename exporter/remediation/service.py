"""Ties remediation together: once-only run claims, cooldowns, schedules, relays, metrics and history.

No HTTP here: the web layer (exporter/web/remediation.py) authenticates and parses requests, calls this
service, and turns its plain results (`DeliveryResult`, a `Run`, `Refused`) into responses.

Previews are free: a dry run (`?dry_run=true`, or a global `dry_run: true`) never starts a cooldown and
never holds the gate of real runs; it only keeps a second preview of the same action from starting while
it runs. A real run that fails (engine unreachable, audit log unwritable, a crash) before it deleted,
untagged or sent an unanswered DELETE gives its cooldown back, so the next delivery of the alert tries
again instead of being answered `cooldown` for nothing; a run that did any of these keeps it, so retries
cannot add up to more than `max_deletions` within one cooldown.

A reload (`reconfigure`) swaps the config between runs: a run in progress keeps the config it started
with, except that protections only grow: the re-check before each of its DELETEs also applies the
protections in force now. Cooldowns, running gates and unchanged schedules carry over for actions that
keep their name, and the state of removed actions is dropped.

A DELETE that got no answer while its image stayed is recorded `unknown`, since the engine may still finish
it. The service watches such images for UNCONFIRMED_WATCH_SECONDS: when a published snapshot no longer has
one, it writes a `deleted` line under the same run_id with `confirmed_by` (`event` or `poll`) and counts it.
The watch lives in this process only: after a restart the audit keeps `unknown` (docs/remediation.md says
how to read it).

Schedules survive restarts: each scheduled action's last scheduled run is kept in the state file
(`ImageHistory.schedules`, saved before the run starts), so a run missed while the exporter was down
happens once after start and a restart never repeats one (see exporter/schedule.py).

The other state that makes runs happen "once" (which action is running, when each last started) lives in
this process only. After a restart the cooldown is forgotten, so one more run may happen inside it; that is
safe because every run re-plans from a fresh snapshot, so a repeated run only deletes what is (still)
eligible.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from exporter import memory
from exporter.config import ActionConfig, FreeSpaceAction, RemediationConfig, RouteConfig
from exporter.engine import apishapes
from exporter.engine.client import Engine
from exporter.logs import kv
from exporter.remediation.alerts import Alert, Envelope, route_alert
from exporter.remediation.audit import AuditError, AuditLog
from exporter.remediation.executor import Executor
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Candidate, action_select, make_plan
from exporter.remediation.records import record_json
from exporter.remediation.registrycheck import RegistryCheck
from exporter.remediation.relay import Relay, RelayResult
from exporter.remediation.runs import Outcome, Run, Trigger
from exporter.remediation.trash import Trash
from exporter.schedule import Interval, Schedule, decide, sleep_seconds
from exporter.schedulestate import ScheduleState
from exporter.snapshot import Filesystem, Snapshot
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.poller import Poller, read_filesystem

log = logging.getLogger(__name__)

HISTORY_SIZE = 100
STOP_GRACE_SECONDS = 30.0
#: The landing page's audit tail: the last lines, read from at most this many bytes at the end of the file.
AUDIT_TAIL_LINES = 20
AUDIT_TAIL_MAX_BYTES = 256 * 1024
AUDIT_TAIL_TIMEOUT_SECONDS = 5.0
#: Saving the schedules (state file) before a scheduled run: a hung disk must not hold the schedule forever.
SCHEDULE_SAVE_TIMEOUT_SECONDS = 30.0
#: After a run ends, wait this long before returning freed heap to the system (its answer is encoded meanwhile).
TRIM_DELAY_SECONDS = 1.0
#: How long an `unknown` DELETE's image is watched: an engine carries out a DELETE whose client gave up as
#: soon as it gets to it; an image that goes much later is more likely someone else's doing than that DELETE's.
UNCONFIRMED_WATCH_SECONDS = 600.0
#: The most `unknown` images watched at once (each run ends at its first one, so this is many runs' worth).
UNCONFIRMED_MAX = 1000


@dataclass(frozen=True)
class _Unconfirmed:
    """An image whose DELETE got no answer while it was still there: the engine may still delete it."""

    run: Run
    outcome: Outcome
    candidate: Candidate
    since: float  # monotonic


@dataclass(frozen=True)
class Refused:
    """A request the service will not act on, with the HTTP status that says why."""

    status: int
    message: str


@dataclass(frozen=True)
class RunStarted:
    action: str
    run_id: str
    dry_run: bool

    def to_json(self) -> dict[str, Any]:
        return record_json(self)


@dataclass(frozen=True)
class AlertOutcome:
    """What one delivered alert led to (`outcome` is one of metrics.ALERT_OUTCOMES)."""

    fingerprint: str
    status: str
    outcome: str
    action: str | None
    cooldown_remaining_seconds: float | None = None  # for `cooldown`: when a delivery would start a run

    def to_json(self) -> dict[str, Any]:
        return record_json(self, omit_empty=("cooldown_remaining_seconds",))


@dataclass(frozen=True)
class DeliveryResult:
    """The answer to one webhook delivery; `relayed` is None when nothing was forwarded to a peer."""

    runs_started: tuple[RunStarted, ...]
    alerts: tuple[AlertOutcome, ...]
    relayed: tuple[RelayResult, ...] | None = None

    @property
    def ok(self) -> bool:
        """False when a relay failed: the delivery must be retried (the local part is idempotent)."""
        return self.relayed is None or all(r.ok for r in self.relayed)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": "ok" if self.ok else "error",
            "runs_started": [r.to_json() for r in self.runs_started],
            "alerts": [a.to_json() for a in self.alerts],
        }
        if self.relayed is not None:
            data["relayed"] = [r.to_json() for r in self.relayed]
        if not self.ok:
            data["error"] = "relay to a peer failed; retry the delivery"
        return data


@dataclass(frozen=True)
class ActionStatus:
    """One action as the landing page shows it: its last run (a history summary) and its next scheduled run.

    `schedule` is the schedule's `describe()` (None: alert or manual only). `next_run` and
    `last_scheduled_run` are wall-clock times, None when the service cannot say (no schedule, not timed
    yet, never run on its schedule). While a missed run is being caught up, `next_run` is when it was due.
    """

    name: str
    type: str
    schedule: str | None
    running: bool
    last_run: dict[str, Any] | None
    next_run: float | None
    last_scheduled_run: float | None = None


@dataclass(frozen=True)
class AuditTail:
    """The newest audit records first; `problem` says why some or all could not be read (None: all fine).

    A line that is not a JSON object comes back as `{"unreadable": <its text>}` so the page can show it.
    """

    records: tuple[dict[str, Any], ...]
    problem: str | None = None


def read_audit_tail(path: str | os.PathLike[str], lines: int, max_bytes: int = AUDIT_TAIL_MAX_BYTES) -> AuditTail:
    """The last `lines` records of an audit log, reading only its last `max_bytes` (it grows forever).

    Blocking: call it in a worker thread. A missing file is no problem (no run has written yet); a
    cut-off first line (the read started mid-line) is dropped; corrupt lines are returned as unreadable.
    """
    try:
        with open(path, "rb") as handle:
            end = handle.seek(0, os.SEEK_END)
            start = max(0, end - max_bytes)
            handle.seek(start)
            data = handle.read(end - start)
    except FileNotFoundError:
        return AuditTail(())
    except OSError as exc:
        return AuditTail((), f"cannot read audit log {path}: {exc.strerror or exc}")
    chunks = data.split(b"\n")
    if start > 0:
        chunks = chunks[1:]
    records: list[dict[str, Any]] = []
    unreadable = 0
    for raw in reversed(chunks):
        if len(records) >= lines:
            break
        if not raw.strip():
            continue
        text = raw.decode("utf-8", errors="replace")
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            unreadable += 1
            record = {"unreadable": text}
        records.append(record)
    problem = f"{unreadable} unreadable line(s) in audit log {path}" if unreadable else None
    return AuditTail(tuple(records), problem)


def _rfc3339(t: float | None) -> str | None:
    """A POSIX time as RFC 3339 in UTC (`2026-11-29T03:00:00Z`), for people reading the API."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class RemediationService:
    """Created by the app when `remediation.enabled`; owns every path that may delete an image."""

    def __init__(
        self,
        config: RemediationConfig,
        engine: Engine,
        poller: Poller,
        registry: CollectorRegistry,
        *,
        disk_usage: DiskUsageRefresher,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        read_fs: Callable[[str], Filesystem] = read_filesystem,
        relay: Relay | None = None,
    ) -> None:
        self.config = config
        self.engine = engine
        self.poller = poller
        self.disk_usage = disk_usage
        self.clock = clock
        self.monotonic = monotonic
        self.metrics = RemediationMetrics(registry, config.actions)
        self.audit = AuditLog(config.audit_log)
        self.executor = Executor(engine, self.audit, self.metrics, read_fs, protect_now=lambda: self.config.protect)
        self.executor.on_unknown = self._watch_unknown
        self.executor.trash = self._trash_for(config)
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self.last_started: dict[str, float] = {}
        self._cooldown_claims: dict[str, tuple[float | None, float]] = {}  # run_id -> (before, claimed)
        self._previewing: set[str] = set()
        self._tasks: set[asyncio.Task[Run]] = set()
        self.relay = relay
        self._warned_local_only = False
        self._schedules: dict[str, tuple[Schedule, asyncio.Task[None]]] = {}  # action -> (schedule, timer)
        self._run_configs: dict[str, RemediationConfig] = {}  # run_id -> the config the run started with
        self._next_run: dict[str, float] = {}
        self._trim: asyncio.Task[None] | None = None
        self._unconfirmed: dict[str, _Unconfirmed] = {}  # image ID -> its unknown outcome
        self._confirming: set[asyncio.Task[None]] = set()
        poller.on_publish.append(self._on_publish)

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the audit log is writable and start one timer task per scheduled action."""
        try:
            await asyncio.to_thread(self.audit.check)
        except AuditError as exc:
            log.error(
                "the audit log is not writable: every remediation run will fail until this is fixed", extra=kv(err=exc)
            )
        self._reschedule()
        if self.executor.trash is not None:  # what a restart left: expired archives, cut-short saves
            await asyncio.to_thread(self.executor.trash.expire)
        log.info(
            "remediation enabled",
            extra=kv(
                actions=len(self.config.actions),
                routes=len(self.config.routes),
                dry_run=self.config.dry_run,
                audit_log=self.config.audit_log,
            ),
        )

    async def stop(self) -> None:
        """Stop schedules, let running runs end after their current deletion, then close the audit log."""
        self.executor.stop()
        if self.executor.trash is not None:
            self.executor.trash.stop()
        schedules = [task for _schedule, task in self._schedules.values()]
        self._schedules.clear()
        for schedule in schedules:
            schedule.cancel()
        for schedule in schedules:
            with contextlib.suppress(asyncio.CancelledError):
                await schedule
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=STOP_GRACE_SECONDS)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._trim is not None:
            self._trim.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trim
        if self._confirming:  # confirmations already seen are written before the audit log closes
            await asyncio.wait(list(self._confirming), timeout=STOP_GRACE_SECONDS)
        self.audit.close()

    def reconfigure(self, config: RemediationConfig) -> None:
        """Apply a reloaded config; no await, so no request sees half of it.

        Runs in progress keep the config they started with, but the executor re-checks each of their images
        against the new protections too (`protect_now`), so a protection added now holds at once. Per-action
        state (cooldowns, running gates, timers whose schedule is unchanged) survives for actions that keep
        their name; cooldowns of removed actions are dropped and their timers stopped; new actions get their
        metric series and timers.
        """
        old = self.config
        self.config = config
        for name in old.actions.keys() - config.actions.keys():
            self.last_started.pop(name, None)
            self.metrics.clear_next_run(name)
        self.metrics.add_actions(sorted(config.actions.keys() - old.actions.keys()))
        if self.executor.trash is not None and config.trash is not None:
            self.executor.trash.reconfigure(config.trash)
            if config.registry_check != old.registry_check:
                self.executor.trash.registry_check = _registry_check(config)
        else:
            self.executor.trash = self._trash_for(config)
        self._reschedule()

    def _trash_for(self, config: RemediationConfig) -> Trash | None:
        """The trash of `remediation.trash` (None when off); repo digests prove a registry copy only on the
        classic store, and only once the engine is known."""
        if config.trash is None:
            return None

        def digests_prove_copy() -> bool:
            snapshot = self.poller.snapshot
            engine = snapshot.engine if snapshot is not None else None
            return engine is not None and not apishapes.local_images_have_digests(engine)

        return Trash(
            config.trash,
            self.engine,
            digests_prove_copy=digests_prove_copy,
            gauges=self.metrics,
            registry_check=_registry_check(config),
        )

    @property
    def schedules(self) -> ScheduleState:
        """The persisted last scheduled runs, kept with the image history in the state file."""
        return self.poller.history.schedules

    def _reschedule(self) -> None:
        """One timer task per scheduled action: keep those whose schedule is unchanged, replace the rest.

        Actions no longer scheduled are forgotten in the state file; a changed schedule keeps its last run,
        so changing `24h` to `12h` counts from the last run, not from the reload.
        """
        if self.executor.stopping:  # a reload that ends during shutdown starts nothing
            return
        for name, (schedule, task) in list(self._schedules.items()):
            action = self.config.actions.get(name)
            if action is None or action.schedule != schedule:
                task.cancel()
                del self._schedules[name]
                self._next_run.pop(name, None)
                self.metrics.clear_next_run(name)
        scheduled = [a for a in self.config.actions.values() if a.schedule is not None]
        self.schedules.retain(a.name for a in scheduled)
        for action in scheduled:
            if action.name not in self._schedules:
                assert action.schedule is not None
                task = asyncio.create_task(
                    self._scheduled(action.name, action.schedule), name=f"schedule-{action.name}"
                )
                self._schedules[action.name] = (action.schedule, task)

    async def _scheduled(self, name: str, schedule: Schedule) -> None:
        """Run when `decide` says so, counting from the persisted last run (see schedule.py).

        The run is recorded and saved before it starts, so a stop in the middle of it does not repeat
        it after a restart; a run skipped because the action is busy counts as that occurrence's run.
        """
        while True:
            now = self.clock()
            decision = decide(schedule, self.schedules.counts_from(name, now), now)
            self._next_run[name] = decision.next_run
            self.metrics.set_next_run(name, decision.next_run)
            if not decision.due_now:
                if self.schedules.changed:  # a new schedule's anchor: keep it, or restarts postpone it
                    await self._save_schedules()
                await asyncio.sleep(sleep_seconds(decision, now))
                continue
            run = self.begin(name, "schedule", (), self.config.dry_run)
            self.schedules.record(name, run.started_at if run is not None else now)
            await self._save_schedules()
            if run is None:
                log.info(
                    "scheduled run skipped: a run is in progress (counts as this occurrence)", extra=kv(action=name)
                )
                continue
            log.info("scheduled run started", extra=kv(run_id=run.run_id, action=name, due=_rfc3339(decision.next_run)))
            await self.run_to_completion(run)

    async def _save_schedules(self) -> None:
        """Write the state file in a worker thread; a failure is logged by the writer and retried next save."""
        if self.poller.history.path is None:  # kept in memory only: nothing to write
            self.schedules.changed = False
            return
        try:
            async with asyncio.timeout(SCHEDULE_SAVE_TIMEOUT_SECONDS):  # not wait_for: it can swallow a cancel
                await self.poller.history.save_in_thread()
        except TimeoutError:
            log.warning(
                "saving schedules to the state file timed out", extra=kv(timeout_seconds=SCHEDULE_SAVE_TIMEOUT_SECONDS)
            )

    def _schedule_json(self, name: str, schedule: Schedule | None, newest: dict[str, Any] | None) -> dict[str, Any]:
        """The run-time fields of GET /api/v1/actions (POSIX + RFC 3339): the schedule, its last and next run,
        and the last run of any trigger.

        `newest` is the action's newest run in the history (since start, every trigger, dry runs included);
        the last scheduled run comes from the state file and outlives restarts, so `last_run` is the later of
        the two: an action run by hand or by an alert shows when, a scheduled one still does after a restart.
        """
        scheduled = self.schedules.last_run(name) if schedule is not None else None
        nxt = self._next_run.get(name) if schedule is not None else None
        last, trigger = scheduled, None if scheduled is None else "schedule"
        if newest is not None and (last is None or newest["started_at"] > last):
            last, trigger = newest["started_at"], newest["trigger"]
        return {
            "schedule": None if schedule is None else schedule.describe(),
            "schedule_seconds": schedule.seconds if isinstance(schedule, Interval) else None,  # intervals only
            "last_run": last,
            "last_run_time": _rfc3339(last),
            "last_run_trigger": trigger,
            "last_scheduled_run": scheduled,
            "last_scheduled_run_time": _rfc3339(scheduled),
            "next_run": nxt,
            "next_run_time": _rfc3339(nxt),
        }

    # -- reading --------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """GET /api/v1/actions: the configured actions and recent runs, newest first."""
        now = self.monotonic()
        newest: dict[str, dict[str, Any]] = {}
        for summary in self.history:  # newest first
            newest.setdefault(summary["action"], summary)
        actions = []
        for name, action in self.config.actions.items():
            started = self.last_started.get(name)
            actions.append(
                {
                    "name": name,
                    "type": action.type,
                    "running": self.executor.is_running(name),
                    "previewing": name in self._previewing,
                    **self._schedule_json(name, action.schedule, newest.get(name)),
                    "max_deletions": action.max_deletions,
                    "min_age_seconds": action.min_age,
                    "select": None if (rules := action_select(action)) is None else rules.describe(),
                    "seconds_since_last_start": None if started is None else round(now - started, 3),
                }
            )
        return {"dry_run": self.config.dry_run, "actions": actions, "runs": list(self.history)}

    def action_status(self) -> list[ActionStatus]:
        """Each configured action with its newest run from the history (None before the first)."""
        last: dict[str, dict[str, Any]] = {}
        for summary in self.history:  # newest first
            last.setdefault(summary["action"], summary)
        return [
            ActionStatus(
                name=name,
                type=action.type,
                schedule=None if action.schedule is None else action.schedule.describe(),
                running=self.executor.is_running(name),
                last_run=last.get(name),
                next_run=self._next_run.get(name) if action.schedule is not None else None,
                last_scheduled_run=self.schedules.last_run(name) if action.schedule is not None else None,
            )
            for name, action in self.config.actions.items()
        ]

    async def recent_audit(self, lines: int = AUDIT_TAIL_LINES) -> AuditTail:
        """The audit log's last lines, read in a worker thread (a slow disk must not stall the event loop)."""
        try:
            async with asyncio.timeout(AUDIT_TAIL_TIMEOUT_SECONDS):  # not wait_for: it can swallow a cancel
                return await asyncio.to_thread(read_audit_tail, self.audit.path, lines)
        except TimeoutError:
            return AuditTail((), f"reading audit log {self.audit.path} took over {AUDIT_TAIL_TIMEOUT_SECONDS:g}s")

    # -- accepting work ---------------------------------------------------------------------------------
    def begin(self, name: str, trigger: Trigger, fingerprints: Sequence[str], dry_run: bool) -> Run | None:
        """Claim `name` for a new run (None if one of the same kind is in progress).

        A real run holds the executor's gate and starts the cooldown now; a dry run holds only the preview
        gate, so it never delays or blocks a real run.
        """
        if dry_run:
            if name in self._previewing:
                return None
            self._previewing.add(name)
        elif not self.executor.try_begin(name):
            return None
        action = self.config.actions[name]
        run = Run(
            action=name,
            type=action.type,
            trigger=trigger,
            dry_run=dry_run,
            fingerprints=tuple(fingerprints),
            started_at=self.clock(),
        )
        self._run_configs[run.run_id] = self.config
        if not dry_run:
            claimed = self.monotonic()
            self._cooldown_claims[run.run_id] = (self.last_started.get(name), claimed)
            self.last_started[name] = claimed
        return run

    def busy(self, name: str, dry_run: bool) -> bool:
        """Whether a run of this kind (real or preview) of the action is in progress."""
        return name in self._previewing if dry_run else self.executor.is_running(name)

    def cooldown_left(self, name: str, route: RouteConfig) -> float:
        """Seconds until the route may start the action again (0 when it may now)."""
        started = self.last_started.get(name)
        return 0.0 if started is None else max(0.0, route.cooldown - (self.monotonic() - started))

    def in_cooldown(self, name: str, route: RouteConfig) -> bool:
        return self.cooldown_left(name, route) > 0

    def _end(self, run: Run) -> None:
        """Release the run's gate; a failed real run that changed nothing also gives back its cooldown.

        A run that deleted or untagged anything, or sent a DELETE whose fate is unknown, keeps it: a retry
        inside the cooldown would delete up to `max_deletions` more on top.
        """
        if run.dry_run:
            self._previewing.discard(run.action)
            return
        self.executor.end(run.action)
        before, claimed = self._cooldown_claims.pop(run.run_id, (None, None))
        if run.result == "failure" and _acted(run):
            log.info(
                "run failed after changing images: its cooldown stays",
                extra=kv(run_id=run.run_id, action=run.action, deleted=run.images_deleted),
            )
        elif run.result == "failure" and self.last_started.get(run.action) == claimed:
            if before is None:
                self.last_started.pop(run.action, None)
            else:
                self.last_started[run.action] = before
            log.info(
                "run failed: its cooldown is released, a redelivery runs again",
                extra=kv(run_id=run.run_id, action=run.action),
            )

    # -- DELETEs without an answer ---------------------------------------------------------------------
    def _watch_unknown(self, run: Run, cand: Candidate, outcome: Outcome) -> None:
        """Executor hook: watch an `unknown` DELETE's image until a snapshot shows it gone (or time runs out).

        Only whole-image candidates: an untag of an image that keeps other tags does not make it go.
        """
        if not cand.removes_image or run.dry_run:
            return
        if len(self._unconfirmed) >= UNCONFIRMED_MAX:
            oldest = min(self._unconfirmed, key=lambda i: self._unconfirmed[i].since)
            self._give_up(self._unconfirmed.pop(oldest), "too many unconfirmed DELETEs watched")
        # only what its audit line needs: the run itself holds its whole plan (every image) and outcomes
        names = Run(run.action, run.type, run.trigger, run.dry_run, run.fingerprints, run.run_id, run.started_at)
        self._unconfirmed[cand.image_id] = _Unconfirmed(names, outcome, cand, self.monotonic())
        snapshot = self.poller.snapshot
        if snapshot is not None:  # a publish may have shown it gone while its line was written
            self._on_publish(snapshot)

    def _on_publish(self, snapshot: Snapshot) -> None:
        """Poller hook (every publish): confirm watched images the snapshot no longer has.

        Not once stopping: the audit log closes when the service stops; the `unknown` line stays.
        """
        if not self._unconfirmed or self.executor.stopping:
            return
        by = "event" if self.poller.publishing_events else "poll"
        now = self.monotonic()
        for image_id, entry in list(self._unconfirmed.items()):
            if image_id not in snapshot.by_id:
                del self._unconfirmed[image_id]
                task = asyncio.create_task(self._confirm(entry, by, now - entry.since), name=f"confirm-{image_id[:19]}")
                self._confirming.add(task)
                task.add_done_callback(self._confirming.discard)
            elif now - entry.since > UNCONFIRMED_WATCH_SECONDS:
                del self._unconfirmed[image_id]
                self._give_up(entry, f"still there after {UNCONFIRMED_WATCH_SECONDS:g}s")

    def _give_up(self, entry: _Unconfirmed, why: str) -> None:
        log.info(
            "no longer watching an image whose DELETE got no answer: its audit line stays `unknown`",
            extra=kv(run_id=entry.run.run_id, action=entry.run.action, image_id=entry.candidate.image_id, why=why),
        )

    async def _confirm(self, entry: _Unconfirmed, by: str, after: float) -> None:
        """The `deleted` line (same run_id, `confirmed_by`) and the counts of an image an unknown DELETE took."""
        run, cand = entry.run, entry.candidate
        reclaimed = cand.size if cand.size_basis == "unique" else 0
        self.metrics.images_deleted.labels(run.action).inc()
        self.metrics.reclaimed.labels(run.action).inc(reclaimed)
        for summary in self.history:  # the run's entry in GET /api/v1/actions counts it too
            if summary["run_id"] == run.run_id:
                summary["images_deleted"] += 1
                summary["reclaimed_bytes"] += reclaimed
                summary["confirmed_later"] = summary.get("confirmed_later", 0) + 1
        outcome = Outcome(
            cand.image_id,
            cand.references,
            cand.size,
            cand.size_basis,
            cand.reason,
            "deleted",
            detail=f"its DELETE got no answer; gone {after:.1f}s later (seen by {by})",
            untagged=entry.outcome.untagged,
            tags=cand.known_references,
            repo_digests=cand.repo_digests,
            created=cand.created,
        )
        log.info(
            "a DELETE that got no answer did delete the image",
            extra=kv(run_id=run.run_id, action=run.action, image_id=cand.image_id, confirmed_by=by),
        )
        try:
            await self.executor.confirm_deleted(run, outcome, by)
        except AuditError as exc:
            log.error(
                "cannot write a confirmed deletion to the audit log",
                extra=kv(run_id=run.run_id, image_id=cand.image_id, err=exc),
            )

    async def accept_delivery(
        self, envelope: Envelope, authorization: str, relayed_by: str | None
    ) -> DeliveryResult | Refused:
        """One webhook delivery: act on this host's alerts, relay the others (fleet mode), answer for all.

        Local alerts are accepted first (no await before their claims); relays follow. Any failed relay
        makes the answer not `ok` (502) so Alertmanager retries; the retry finds the local action claimed or
        cooling down, so it never runs twice.
        """
        if self.relay is None:
            return self.accept_alerts(envelope.alerts)
        split = self.relay.split(envelope.alerts, relayed=relayed_by is not None)
        local = self.accept_alerts(split.local, extra=[(a, "out_of_scope") for a in split.misrouted])
        if isinstance(local, Refused) or not split.foreign:
            return local
        results = await self.relay.forward_all(envelope.fields, split.foreign, authorization)
        for result in results:
            self.metrics.relays.labels("ok" if result.ok else "failed").inc()
        for alerts_for_host in split.foreign.values():
            for alert in alerts_for_host:
                self.metrics.webhook_alerts.labels(alert.status, "relayed").inc()
        return DeliveryResult(local.runs_started, local.alerts, tuple(results))

    def accept_alerts(
        self, alerts: Sequence[Alert], extra: Sequence[tuple[Alert, str]] = ()
    ) -> DeliveryResult | Refused:
        """Route alerts and start what is due, with no await in between (so claims cannot interleave).

        `extra` are alerts already decided elsewhere (fleet mode's misrouted ones): counted and reported.
        """
        decisions: list[tuple[Alert, str, RouteConfig | None]] = []
        by_action: dict[str, tuple[RouteConfig, list[Alert]]] = {}
        for alert in alerts:
            outcome, route = route_alert(alert, self.config.scope, self.config.routes)
            decisions.append((alert, outcome, route))
            if route is not None:
                by_action.setdefault(route.action, (route, []))[1].append(alert)
        dry_run = self.config.dry_run
        verdict: dict[str, str] = {}
        remaining: dict[str, float] = {}
        for name, (route, _) in by_action.items():
            if self.busy(name, dry_run):
                verdict[name] = "deduplicated"
            elif not dry_run and self.in_cooldown(name, route):
                verdict[name] = "cooldown"
                remaining[name] = round(self.cooldown_left(name, route), 3)
            else:
                verdict[name] = "routed"
        if "routed" in verdict.values() and not self.poller.up:
            names = ", ".join(n for n, v in verdict.items() if v == "routed")
            return Refused(503, f"engine unreachable: cannot run {names} now (retry later)")
        runs: list[RunStarted] = []
        for name, (_, routed_alerts) in by_action.items():
            if verdict[name] != "routed":
                continue
            run = self.begin(name, "alert", sorted({a.fingerprint for a in routed_alerts}), dry_run)
            if run is None:  # cannot happen without an await since the check, but never run twice
                verdict[name] = "deduplicated"
                continue
            self.start_background(run)
            runs.append(RunStarted(name, run.run_id, run.dry_run))
        answer: list[AlertOutcome] = []
        decisions.extend((alert, outcome, None) for alert, outcome in extra)
        for alert, outcome, route in decisions:
            final = verdict[route.action] if route is not None else outcome
            self.metrics.webhook_alerts.labels(alert.status, final).inc()
            action = route.action if route is not None else None
            answer.append(AlertOutcome(alert.fingerprint, alert.status, final, action, remaining.get(action or "")))
        return DeliveryResult(tuple(runs), tuple(answer))

    async def run_manual(self, name: str, requested_dry_run: bool | None) -> Run | Refused:
        """Run an action now and wait for its end. A global `dry_run: true` wins over a requested real run."""
        if name not in self.config.actions:
            return Refused(404, f"no action named {name!r} (configured: {', '.join(sorted(self.config.actions))})")
        dry_run = self.config.dry_run or bool(requested_dry_run)
        if not self.poller.up:
            return Refused(503, "the engine is unreachable right now; nothing was run")
        run = self.begin(name, "manual", (), dry_run)
        if run is None:
            kind = "a preview of" if dry_run else "a run of"
            return Refused(409, f"{kind} action {name!r} is already running")
        return await self.run_to_completion(run)

    def start_background(self, run: Run) -> asyncio.Task[Run]:
        """Run in a task the service tracks (stop() waits for it)."""
        task = asyncio.create_task(self._run(run), name=f"remediation-{run.action}-{run.run_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- running ----------------------------------------------------------------------------------------
    async def run_to_completion(self, run: Run) -> Run:
        """Plan on a fresh snapshot and execute; always releases the claim and records the run.

        Shielded from the caller's cancellation (a client hanging up on a manual run must not leave a run
        half-recorded); `stop()` ends runs through `executor.stop()` instead.
        """
        return await asyncio.shield(self.start_background(run))

    async def _run(self, run: Run) -> Run:
        config = self._run_configs.pop(run.run_id, self.config)  # the config of begin(), whatever a reload did
        action = config.actions[run.action]
        try:
            snapshot, source = await self._plan_snapshot()
            if not self.poller.up or snapshot is None:
                run.result = "failure"
                run.detail = f"engine unreachable: {self.poller.last_error or 'no snapshot'}"
                run.finished_at = self.clock()
            else:
                if action.type not in ("build_cache", "prune_containers"):  # these plan no image sizes
                    snapshot = await self._with_shared_sizes(snapshot)
                self._warn_engine_limits(snapshot)
                # in a worker thread: with many images a plan takes long enough to hold up scrapes and webhooks
                plan = await asyncio.to_thread(make_plan, snapshot, action, config.protect, self.clock())
                if self.executor.trash is not None:  # said before anything is deleted, dry runs included
                    plan = await asyncio.to_thread(self.executor.trash.annotate, plan)
                local_images, local_bytes = plan.local_only_kept
                log.info(
                    "remediation run planned",
                    extra=kv(
                        run_id=run.run_id,
                        action=run.action,
                        type=action.type,
                        trigger=run.trigger,
                        dry_run=run.dry_run,
                        snapshot=source,
                        candidates=len(plan.candidates),
                        skipped=len(plan.skipped),
                        estimated_bytes=plan.estimated_bytes,
                        local_only="on" if plan.local_only_enabled else "off",
                        local_only_kept_images=local_images,
                        local_only_kept_bytes=local_bytes,
                        not_selected=None if plan.select is None else plan.not_selected,
                        note=plan.unreachable_note or None,
                    ),
                )
                if plan.unreachable_note:  # said up front; the executor keeps it unless something is more urgent
                    run.detail = plan.unreachable_note
                await self.executor.execute(run, plan, action)
        except Exception as exc:  # a bug must not leave the action claimed forever
            log.exception("remediation run crashed", extra=kv(run_id=run.run_id, action=run.action))
            run.result = "failure"
            run.detail = f"internal error: {exc}"
            run.finished_at = self.clock()
        finally:
            self._end(run)
            self._record(run, action)
            if not run.dry_run:  # deletions: re-list soon (events tell most of it); a dry run changed nothing
                self.poller.wake()
            self._trim_memory_soon()
        return run

    async def _plan_snapshot(self) -> tuple[Snapshot | None, str]:
        """The snapshot to plan on, and where it came from (`live` or `fresh poll`, for the log line).

        The live snapshot when nothing says it lags the engine (`Poller.behind`): engine events are applied to
        it as they arrive and the periodic poll reconciles, so a fresh re-list per run would only cost time
        (seconds with many images, its parsing on the event loop). It is safe for real runs too: each image
        is re-checked right before its DELETE, and the engine refuses a DELETE by ID of an image in use. When a
        refresh is pending or running, LastTagTimes are still being read, or the event stream is not live (not
        connected or replayed yet, lost, reconnecting: the snapshot may be a whole poll interval old), the run
        waits for a fresh poll.
        """
        if not self.poller.behind:
            return self.poller.snapshot, "live"
        return await self.poller.poll_once(), "fresh poll"

    def _trim_memory_soon(self) -> None:
        """Give the heap a finished run freed back to the system, once its answer is written (see memory.py).

        One pending trim at a time, a moment after the last run ends: a large run's answer is still being
        encoded when the run returns, and trimming in between would only be repeated.
        """
        if self._trim is not None and not self._trim.done():
            return

        async def trim() -> None:
            await asyncio.sleep(TRIM_DELAY_SECONDS)
            await asyncio.to_thread(memory.release_free_memory)

        self._trim = asyncio.create_task(trim(), name="remediation-memory-trim")

    def _warn_engine_limits(self, snapshot: Snapshot) -> None:
        """Say once when protect.local_only cannot protect anything on this engine."""
        engine = snapshot.engine
        if self._warned_local_only or engine is None or not self.config.protect.local_only:
            return
        if apishapes.local_images_have_digests(engine):
            self._warned_local_only = True
            log.warning(
                "protect.local_only protects nothing on %s: the engine gives every image a repo digest, "
                "even images built or loaded here; protect them with protect.labels or protect.references",
                "Podman" if engine.podman else "the containerd image store",
            )

    async def _with_shared_sizes(self, snapshot: Snapshot) -> Snapshot:
        """Unique sizes need SharedSize, which API 1.41 only gives in /system/df: refresh it when missing."""
        if all(image.shared_size is not None for image in snapshot.images) or not apishapes.shared_sizes_known(
            snapshot.engine
        ):
            return snapshot
        refreshed = await self.disk_usage.refresh_now()
        if refreshed is None:
            log.warning("cannot refresh shared sizes (/system/df failed); sizes are totals (upper bounds)")
            return snapshot
        return refreshed

    def _record(self, run: Run, action: ActionConfig) -> None:
        result = run.result or "failure"
        m = self.metrics
        m.runs.labels(run.action, run.trigger, result).inc()
        m.images_deleted.labels(run.action).inc(run.images_deleted)
        m.reclaimed.labels(run.action).inc(run.reclaimed_bytes)
        for outcome in run.outcomes:
            if outcome.skip_reason is not None:
                m.skipped.labels(run.action, outcome.skip_reason).inc()
        m.last_run.labels(run.action).set(run.finished_at or self.clock())
        m.last_reclaimed.labels(run.action).set(run.reclaimed_bytes)
        m.last_candidates.labels(run.action).set(len(run.plan.candidates) if run.plan else 0)
        shortfall = run.shortfall_bytes(action if isinstance(action, FreeSpaceAction) else None)
        if shortfall is not None:
            m.last_shortfall.labels(run.action).set(shortfall)
        self.history.appendleft(run.summary())
        log.info(
            "remediation run ended",
            extra=kv(
                run_id=run.run_id,
                action=run.action,
                result=result,
                deleted=run.images_deleted,
                reclaimed_bytes=run.reclaimed_bytes,
                detail=run.detail or None,
            ),
        )


def _acted(run: Run) -> bool:
    """Whether a run changed images, or may have: deleted, untagged, or sent a DELETE of unknown fate."""
    return run.images_deleted > 0 or any(o.result in ("deleted", "untagged", "unknown") for o in run.outcomes)


def _registry_check(config: RemediationConfig) -> RegistryCheck | None:
    return None if config.registry_check is None else RegistryCheck(config.registry_check)
