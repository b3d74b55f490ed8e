"""The run gate: who may start a run of an action now, shared by previews and real runs.

One real run per action at a time (the executor's gate, which the executor also reports as
`docker_remediation_running`), one preview per action at a time (a set of its own, so a preview never
delays or blocks a real run), a cooldown per action for routes, and the engine-up check before anything
is started. A refusal says its kind, never an HTTP status: the web layer chooses the status.

A real run that fails before it deleted, untagged or sent an unanswered DELETE gives its cooldown back,
so the next delivery of the alert tries again instead of being answered `cooldown` for nothing; a run that
did any of these keeps it, so retries cannot add up to more than `max_deletions` within one cooldown.

A run keeps the config it was claimed under (`config_of`), whatever a reload does meanwhile.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from exporter.config import RemediationConfig, RouteConfig
from exporter.core.logs import kv
from exporter.remediation.executor import Executor
from exporter.remediation.runs import Run, Trigger

log = logging.getLogger(__name__)


class Refusal(enum.Enum):
    """Why a request to run was not acted on; the web layer maps each kind to its status code."""

    NOT_FOUND = "not_found"  # no action by that name
    BUSY = "busy"  # a run of the same kind (real or preview) of the action is in progress
    ENGINE_DOWN = "engine_down"  # the engine is unreachable: retry later


@dataclass(frozen=True)
class Refused:
    """A request the service will not act on: the kind of refusal and a message for the person or sender."""

    kind: Refusal
    message: str


class RunGate:
    """Claims and releases runs; keeps each action's last real start for cooldowns."""

    def __init__(
        self,
        executor: Executor,
        config: Callable[[], RemediationConfig],
        up: Callable[[], bool],
        clock: Callable[[], float],
        monotonic: Callable[[], float],
    ) -> None:
        self.executor = executor
        self._config = config
        self._up = up
        self.clock = clock
        self.monotonic = monotonic
        self.last_started: dict[str, float] = {}  # action -> monotonic time of its last real run's claim
        self.previewing: set[str] = set()
        self._cooldown_claims: dict[str, tuple[float | None, float]] = {}  # run_id -> (before, claimed)
        self._run_configs: dict[str, RemediationConfig] = {}  # run_id -> the config the run started with

    # -- before a claim ---------------------------------------------------------------------------------
    def refuse_manual(self, name: str) -> Refused | None:
        """Why a manual run of `name` cannot start now (unknown action, engine down), or None."""
        actions = self._config().actions
        if name not in actions:
            return Refused(Refusal.NOT_FOUND, f"no action named {name!r} (configured: {', '.join(sorted(actions))})")
        if not self._up():
            return Refused(Refusal.ENGINE_DOWN, "the engine is unreachable right now; nothing was run")
        return None

    def refuse_alerts(self, names: Sequence[str]) -> Refused | None:
        """Why runs that alerts routed to `names` cannot start now (engine down), or None."""
        if names and not self._up():
            return Refused(Refusal.ENGINE_DOWN, f"engine unreachable: cannot run {', '.join(names)} now (retry later)")
        return None

    @staticmethod
    def busy_refusal(name: str, dry_run: bool) -> Refused:
        kind = "a preview of" if dry_run else "a run of"
        return Refused(Refusal.BUSY, f"{kind} action {name!r} is already running")

    def busy(self, name: str, dry_run: bool) -> bool:
        """Whether a run of this kind (real or preview) of the action is in progress."""
        return name in self.previewing if dry_run else self.executor.is_running(name)

    def cooldown_left(self, name: str, route: RouteConfig) -> float:
        """Seconds until the route may start the action again (0 when it may now)."""
        started = self.last_started.get(name)
        return 0.0 if started is None else max(0.0, route.cooldown - (self.monotonic() - started))

    def in_cooldown(self, name: str, route: RouteConfig) -> bool:
        return self.cooldown_left(name, route) > 0

    # -- claim and release ------------------------------------------------------------------------------
    def begin(self, name: str, trigger: Trigger, fingerprints: Sequence[str], dry_run: bool) -> Run | None:
        """Claim `name` for a new run (None if one of the same kind is in progress).

        A real run holds the executor's gate and starts the cooldown now; a dry run holds only the preview
        gate, so it never delays or blocks a real run.
        """
        if dry_run:
            if name in self.previewing:
                return None
            self.previewing.add(name)
        elif not self.executor.try_begin(name):
            return None
        config = self._config()
        action = config.actions[name]
        run = Run(
            action=name,
            type=action.type,
            trigger=trigger,
            dry_run=dry_run,
            fingerprints=tuple(fingerprints),
            started_at=self.clock(),
        )
        self._run_configs[run.run_id] = config
        if not dry_run:
            claimed = self.monotonic()
            self._cooldown_claims[run.run_id] = (self.last_started.get(name), claimed)
            self.last_started[name] = claimed
        return run

    def config_of(self, run: Run) -> RemediationConfig:
        """The config `run` was claimed under (the current one for a run begun elsewhere)."""
        return self._run_configs.pop(run.run_id, self._config())

    def end(self, run: Run) -> None:
        """Release the run's gate; a failed real run that changed nothing also gives back its cooldown.

        A run that deleted or untagged anything, or sent a DELETE whose fate is unknown, keeps it: a retry
        inside the cooldown would delete up to `max_deletions` more on top.
        """
        if run.dry_run:
            self.previewing.discard(run.action)
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

    def forget(self, names: Iterable[str]) -> None:
        """Drop the cooldowns of actions a reload removed."""
        for name in names:
            self.last_started.pop(name, None)


def _acted(run: Run) -> bool:
    """Whether a run changed images, or may have: deleted, untagged, or sent a DELETE of unknown fate."""
    return run.images_deleted > 0 or any(o.result in ("deleted", "untagged", "unknown") for o in run.outcomes)
