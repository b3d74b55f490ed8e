"""A claimed run, from a fresh plan to its record: plan, execute, release, count, remember.

Every trigger (alert, schedule, manual) ends here once the gate (gate.py) has claimed the action. A run
plans on the config it was claimed under; the executor re-checks each image against the protections in
force now as well, so a reload only ever adds protection to a run in progress. Whatever happens (the
engine gone, the audit log unwritable, a crash), the claim is released and the run recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from exporter.config import ActionConfig, FreeSpaceAction, RemediationConfig
from exporter.core import memory, offloop
from exporter.core.logs import kv
from exporter.core.snapshot import Snapshot
from exporter.engine import apishapes
from exporter.remediation.executor import Executor
from exporter.remediation.gate import RunGate
from exporter.remediation.metrics import RemediationMetrics
from exporter.remediation.planner import Plan, make_plan
from exporter.remediation.runs import Run
from exporter.state.diskusage import DiskUsageRefresher
from exporter.state.poller import Poller

log = logging.getLogger(__name__)

HISTORY_SIZE = 100
STOP_GRACE_SECONDS = 30.0
#: After a run ends, wait this long before returning freed heap to the system (its answer is encoded meanwhile).
TRIM_DELAY_SECONDS = 1.0


class Runner:
    """Runs claimed runs in tasks it tracks, and keeps the summaries of the last HISTORY_SIZE, newest first."""

    def __init__(
        self,
        gate: RunGate,
        executor: Executor,
        poller: Poller,
        disk_usage: DiskUsageRefresher,
        metrics: RemediationMetrics,
        config: Callable[[], RemediationConfig],
        clock: Callable[[], float],
    ) -> None:
        self.gate = gate
        self.executor = executor
        self.poller = poller
        self.disk_usage = disk_usage
        self.metrics = metrics
        self._config = config
        self.clock = clock
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_SIZE)
        self.tasks: set[asyncio.Task[Run]] = set()
        self._trim: asyncio.Task[None] | None = None
        self._warned_local_only = False
        #: Finished dry runs' holds on the cyclic collector, each released a moment after its run ended.
        self._releases: set[asyncio.TimerHandle] = set()

    def start_background(self, run: Run) -> asyncio.Task[Run]:
        """Run in a task the runner tracks (stop() waits for it)."""
        task = asyncio.create_task(self._run(run), name=f"remediation-{run.action}-{run.run_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run_to_completion(self, run: Run) -> Run:
        """Plan on a fresh snapshot and execute; always releases the claim and records the run.

        Shielded from the caller's cancellation (a client hanging up on a manual run must not leave a run
        half-recorded); `stop()` ends runs through `executor.stop()` instead.
        """
        return await asyncio.shield(self.start_background(run))

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Wait for running runs (the executor is stopped first, so they end after their current deletion)."""
        if self.tasks:
            _done, pending = await asyncio.wait(list(self.tasks), timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._trim is not None:
            self._trim.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._trim
        self._release_collector_now()

    def _release_collector_now(self) -> None:
        """Release now the holds of finished dry runs still waiting for their moment (runs in progress keep theirs)."""
        for handle in self._releases:
            handle.cancel()
            offloop.release_collector()
        self._releases.clear()

    def _release_collector_soon(self) -> None:
        """Let the collector resume a moment after a dry run ends: its answer is encoded and sent meanwhile,
        and its plan and outcomes freed (see offloop.py); `stop()` releases what is still held."""

        def release() -> None:
            self._releases.discard(handle)
            offloop.release_collector()

        handle = asyncio.get_running_loop().call_later(TRIM_DELAY_SECONDS, release)
        self._releases.add(handle)

    async def _run(self, run: Run) -> Run:
        config = self.gate.config_of(run)  # the config of begin(), whatever a reload did
        action = config.actions[run.action]
        if run.dry_run:  # its plan and outcomes are freed with its answer: no collection need ever walk them
            # dry runs back to back would keep the collector paused without end: the last one's hold goes
            # first, so the collector sweeps what accumulated since (its objects are gone by now)
            self._release_collector_now()
            offloop.hold_collector()
        try:
            snapshot, source = await self._plan_snapshot()
            if not self.poller.store.up or snapshot is None:
                run.result = "failure"
                run.detail = f"engine unreachable: {self.poller.store.last_error or 'no snapshot'}"
                run.finished_at = self.clock()
            else:
                if action.type not in ("build_cache", "prune_containers"):  # these plan no image sizes
                    snapshot = await self._with_shared_sizes(snapshot)
                self._warn_engine_limits(snapshot)
                # off the loop: with many images a plan takes long enough to hold up scrapes and webhooks
                plan = await offloop.off_loop(make_plan, snapshot, action, config.protect, self.clock())
                if self.executor.trash is not None:  # said before anything is deleted, dry runs included
                    plan = await offloop.off_loop(self.executor.trash.annotate, plan)
                # passes over every candidate and skip, off the loop too (estimated_bytes is kept once summed)
                local_images, local_bytes = await offloop.off_loop(_summed, plan)
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
            self.gate.end(run)
            await self._record(run, action)
            if not run.dry_run:  # deletions: re-list soon (events tell most of it); a dry run changed nothing
                self.poller.wake()
            # its plan and outcomes are freed off the loop once the answer (if any) has let go of them
            offloop.free_later(*(part for part in (run.plan, run.outcomes) if part))
            self._trim_memory_soon()
            if run.dry_run:
                self._release_collector_soon()
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
            return self.poller.store.snapshot, "live"
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
        if self._warned_local_only or engine is None or not self._config().protect.local_only:
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

    async def _record(self, run: Run, action: ActionConfig) -> None:
        """Count the ended run and keep its summary; what passes over every outcome is worked out off the loop
        (on it only when the run is cancelled meanwhile: it is recorded all the same)."""
        try:
            digest = await offloop.off_loop(_digest, run, action)
        except asyncio.CancelledError:
            self._count(run, _digest(run, action))
            raise
        self._count(run, digest)

    def _count(self, run: Run, digest: _Digest) -> None:
        skipped, shortfall, summary = digest
        result = run.result or "failure"
        m = self.metrics
        m.runs.labels(run.action, run.trigger, result).inc()
        m.images_deleted.labels(run.action).inc(run.images_deleted)
        m.reclaimed.labels(run.action).inc(run.reclaimed_bytes)
        for reason, count in skipped.items():
            m.skipped.labels(run.action, reason).inc(count)
        m.last_run.labels(run.action).set(run.finished_at or self.clock())
        m.last_reclaimed.labels(run.action).set(run.reclaimed_bytes)
        m.last_candidates.labels(run.action).set(len(run.plan.candidates) if run.plan else 0)
        if shortfall is not None:
            m.last_shortfall.labels(run.action).set(shortfall)
        self.history.appendleft(summary)
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


#: What recording an ended run needs from every outcome: skips by reason, the free_space shortfall, the summary.
_Digest = tuple[dict[str, int], int | None, dict[str, Any]]


def _digest(run: Run, action: ActionConfig) -> _Digest:
    """The passes over an ended run's outcomes that recording it needs (pure reads: runs off the loop)."""
    skipped: dict[str, int] = {}
    for outcome in run.outcomes:
        if outcome.skip_reason is not None:
            skipped[outcome.skip_reason] = skipped.get(outcome.skip_reason, 0) + 1
    offloop.checkpoint()  # scrapes first between the passes (see offloop.py)
    shortfall = run.shortfall_bytes(action if isinstance(action, FreeSpaceAction) else None)
    return skipped, shortfall, run.summary()


def _summed(plan: Plan) -> tuple[int, int]:
    """`plan.local_only_kept`, with `plan.estimated_bytes` summed on the way (it is kept once summed)."""
    _ = plan.estimated_bytes
    offloop.checkpoint()  # scrapes first between the passes (see offloop.py)
    return plan.local_only_kept
