"""Remediation put together: the parts below, wired once, behind the calls the web layer and the app make.

No HTTP here: the web layer (exporter/web/remediation.py) authenticates and parses requests, calls this
service, and turns its plain results (`DeliveryResult`, a `Run`, `Refused`) into responses.

The parts, one job each:
- gate.py: who may start a run now (one real run and one preview per action, cooldowns, the engine up);
- routing.py: which action a delivery's alerts route to, and whether each starts a run (fleet relays too);
- runner.py: a claimed run from its plan to its record, and the recent runs' history;
- scheduler.py: the timers of scheduled actions and their state-file section;
- status.py: the one projection of all of it that the actions API and the landing page read;
- unconfirmed.py: the watch that confirms DELETEs that got no answer.

Previews are free: a dry run (`?dry_run=true`, or a global `dry_run: true`) never starts a cooldown and
never holds the gate of real runs; it only keeps a second preview of the same action from starting while
it runs.

A reload (`reconfigure`) swaps the config between runs: a run in progress keeps the config it started
with, except that protections only grow: the re-check before each of its DELETEs also applies the
protections in force now. Cooldowns, running gates and unchanged schedules carry over for actions that
keep their name, and the state of removed actions is dropped.

The state that makes runs happen "once" (which action is running, when each last started) lives in this
process only. After a restart the cooldown is forgotten, so one more run may happen inside it; that is
safe because every run re-plans from a fresh snapshot, so a repeated run only deletes what is (still)
eligible. Scheduled runs are the exception: their last run is in the state file (scheduler.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from exporter.config import RemediationConfig, RouteConfig
from exporter.core.logs import kv
from exporter.core.schedulestate import ScheduleState
from exporter.core.snapshot import Filesystem
from exporter.engine import apishapes
from exporter.engine.seam import EngineSeam
from exporter.remediation import routing
from exporter.remediation.alerts import Alert, Envelope
from exporter.remediation.audit import AuditError, AuditLog
from exporter.remediation.audittail import AUDIT_TAIL_LINES, AuditTail, recent_audit
from exporter.remediation.executor import Executor
from exporter.remediation.gate import Refused, RunGate
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.registrycheck import RegistryCheck
from exporter.remediation.relay import Relay
from exporter.remediation.routing import DeliveryResult, RunStarted
from exporter.remediation.runner import Runner
from exporter.remediation.runs import Run, Trigger
from exporter.remediation.scheduler import Scheduler
from exporter.remediation.status import ActionStatus, StatusView
from exporter.remediation.trash import Trash
from exporter.remediation.unconfirmed import UnknownWatch
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.poller import Poller, read_filesystem

log = logging.getLogger(__name__)


class RemediationService:
    """Created by the app when `remediation.enabled`; owns every path that may delete an image."""

    def __init__(
        self,
        config: RemediationConfig,
        engine: EngineSeam,
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
        self.relay = relay
        self.metrics = RemediationMetrics(registry, config.actions)
        self.audit = AuditLog(config.audit_log)
        current = self.current_config
        self.executor = Executor(engine, self.audit, self.metrics, read_fs, protect_now=lambda: current().protect)
        self.gate = RunGate(self.executor, current, lambda: poller.store.up, clock, monotonic)
        self.runner = Runner(self.gate, self.executor, poller, disk_usage, self.metrics, current, clock)
        self.scheduler = Scheduler(
            poller.history,
            self.metrics,
            current,
            self.gate.begin,
            self.runner.run_to_completion,
            lambda: self.executor.stopping,
            clock,
        )
        self.status = StatusView(current, self.gate, self.scheduler, self.runner.history)
        self.unknown_watch = UnknownWatch(self.executor, poller.store, self.metrics, self.runner.history, monotonic)
        self.executor.on_unknown = self.unknown_watch.watch
        self.executor.trash = self._trash_for(config)
        poller.store.subscribe(self.unknown_watch.on_publish)
        # the parts' state under the names tests and the API read (the same objects, not copies)
        self.history = self.runner.history
        self.last_started = self.gate.last_started
        self._tasks = self.runner.tasks
        self._next_run = self.scheduler.next_run
        self._unconfirmed = self.unknown_watch.watched
        self._confirming = self.unknown_watch.confirming

    def current_config(self) -> RemediationConfig:
        """The config in force now (a reload swaps it); the parts read it through this."""
        return self.config

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the audit log is writable and start one timer task per scheduled action."""
        try:
            await asyncio.to_thread(self.audit.check)
        except AuditError as exc:
            log.error(
                "the audit log is not writable: every remediation run will fail until this is fixed", extra=kv(err=exc)
            )
        self.scheduler.reschedule()
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

    def stop_runs(self) -> None:
        """Start no more deletions: running runs end after their current one (the first step of a shutdown)."""
        self.executor.stop()
        if self.executor.trash is not None:
            self.executor.trash.stop()

    async def stop(self) -> None:
        """Stop schedules, let running runs end after their current deletion, then close the audit log."""
        self.stop_runs()
        await self.scheduler.stop()
        await self.runner.stop()
        await self.unknown_watch.stop()  # confirmations already seen are written before the audit log closes
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
        removed = old.actions.keys() - config.actions.keys()
        self.gate.forget(removed)
        for name in removed:
            self.metrics.clear_next_run(name)
        self.metrics.add_actions(sorted(config.actions.keys() - old.actions.keys()))
        if self.executor.trash is not None and config.trash is not None:
            self.executor.trash.reconfigure(config.trash)
            if config.registry_check != old.registry_check:
                self.executor.trash.registry_check = _registry_check(config)
        else:
            self.executor.trash = self._trash_for(config)
        self.scheduler.reschedule()

    def _trash_for(self, config: RemediationConfig) -> Trash | None:
        """The trash of `remediation.trash` (None when off); repo digests prove a registry copy only on the
        classic store, and only once the engine is known."""
        if config.trash is None:
            return None

        def digests_prove_copy() -> bool:
            snapshot = self.poller.store.snapshot
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
        return self.scheduler.state

    # -- reading ----------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """GET /api/v1/actions: the configured actions and recent runs, newest first."""
        return self.status.describe()

    def action_status(self) -> list[ActionStatus]:
        """Each configured action with its newest run from the history (None before the first)."""
        return self.status.actions()

    async def recent_audit(self, lines: int = AUDIT_TAIL_LINES) -> AuditTail:
        """The audit log's last lines, read off the event loop."""
        return await recent_audit(self.audit.path, lines)

    # -- accepting work ---------------------------------------------------------------------------------
    async def accept_delivery(
        self, envelope: Envelope, authorization: str, relayed_by: str | None
    ) -> DeliveryResult | Refused:
        """One webhook delivery: act on this host's alerts, relay the others (fleet mode), answer for all.

        Local alerts are accepted first (no await before their claims); relays follow. Any failed relay
        makes the answer not `ok` so Alertmanager retries; the retry finds the local action claimed or
        cooling down, so it never runs twice.
        """
        if self.relay is None:
            return self.accept_alerts(envelope.alerts)
        split = self.relay.split(envelope.alerts, relayed=relayed_by is not None)
        local = self.accept_alerts(split.local, extra=[(a, "out_of_scope") for a in split.misrouted])
        if isinstance(local, Refused) or not split.foreign:
            return local
        return await routing.relay_foreign(self.relay, envelope, split, authorization, local, self.metrics)

    def accept_alerts(
        self, alerts: Sequence[Alert], extra: Sequence[tuple[Alert, str]] = ()
    ) -> DeliveryResult | Refused:
        """Route alerts and start what is due, with no await in between (so claims cannot interleave).

        `extra` are alerts already decided elsewhere (fleet mode's misrouted ones): counted and reported.
        """
        routed = routing.route(alerts, extra, self.config, self.gate)
        due = routed.due()
        refusal = self.gate.refuse_alerts([name for name, _ in due])
        if refusal is not None:
            return refusal
        runs: list[RunStarted] = []
        for name, fingerprints in due:
            run = self.begin(name, "alert", fingerprints, routed.dry_run)
            if run is None:
                routed.deduplicated(name)
                continue
            self.runner.start_background(run)
            runs.append(RunStarted(name, run.run_id, run.dry_run))
        return routed.answer(runs, self.metrics)

    async def run_manual(self, name: str, requested_dry_run: bool | None) -> Run | Refused:
        """Run an action now and wait for its end. A global `dry_run: true` wins over a requested real run."""
        dry_run = self.config.dry_run or bool(requested_dry_run)
        refusal = self.gate.refuse_manual(name)
        if refusal is not None:
            return refusal
        run = self.begin(name, "manual", (), dry_run)
        if run is None:
            return self.gate.busy_refusal(name, dry_run)
        return await self.runner.run_to_completion(run)

    # -- the gate and the runner, for callers that claim and run themselves -----------------------------
    def begin(self, name: str, trigger: Trigger, fingerprints: Sequence[str], dry_run: bool) -> Run | None:
        """Claim `name` for a new run (None if one of the same kind is in progress); see gate.py."""
        return self.gate.begin(name, trigger, fingerprints, dry_run)

    def busy(self, name: str, dry_run: bool) -> bool:
        return self.gate.busy(name, dry_run)

    def cooldown_left(self, name: str, route: RouteConfig) -> float:
        return self.gate.cooldown_left(name, route)

    def in_cooldown(self, name: str, route: RouteConfig) -> bool:
        return self.gate.in_cooldown(name, route)

    def start_background(self, run: Run) -> asyncio.Task[Run]:
        return self.runner.start_background(run)

    async def run_to_completion(self, run: Run) -> Run:
        return await self.runner.run_to_completion(run)


def _registry_check(config: RemediationConfig) -> RegistryCheck | None:
    return None if config.registry_check is None else RegistryCheck(config.registry_check)
