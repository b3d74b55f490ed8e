"""When a scheduled action runs: an interval or a calendar (cron) schedule, and the catch-up rule.

Pure: no clock, no I/O, no asyncio. The service loop, per scheduled action:

    anchor = state.counts_from(name, now)          # last run, or when its schedule was first kept
    decision = decide(schedule, anchor, now)
    if decision.due_now: start a run; state.record(name, run start); save the state file
    else: sleep sleep_seconds(decision, now), then decide again

The anchor survives restarts in the state file (`exporter.core.schedulestate`), so a restart
neither skips nor doubles a run, and a run missed while the exporter was down happens once after start.
A scheduled run skipped because the action is already running counts as that occurrence's run (record
it), so the loop does not spin.

The config form is one string. A value without whitespace is a Prometheus duration (`24h`, `168h`,
`1h30m`) and means "every interval, counted from the last run"; a value with whitespace is a five-field
cron expression (`0 3 * * SUN`) evaluated in an IANA timezone (UTC by default). The two never overlap:
a duration has no spaces and a cron expression always has four.

Cron library: `cronsim` (Healthchecks.io's evaluator, PyPI `cronsim` 2.8, released 2026-11,
"Production/Stable"). Chosen over `croniter` 7.0 (pallets-eco, 2026-11) because:
- it mimics Debian cron across DST changes: a fixed-time job ("30 2 * * *") whose local time does not
  exist on the spring-forward day runs at the first valid minute after it, and runs once (at the first
  of the two instants) on the fall-back day. croniter 7.0 yields 02:30 twice on the fall-back day, which
  is exactly the double run this module must not cause;
- it has no dependencies (croniter needs python-dateutil) and ships `py.typed`, so mypy strict checks
  our calls without an override;
- it is small (one 560-line module) and accepts little beyond cron's grammar (a seconds field and a
  few Quartz-style day forms), where croniter also takes year fields and `R` (random) and `H` (hashed)
  values that we would have to refuse one by one.
Its grammar is standard cron (numbers, names like SUN/JAN, ranges, lists, steps; 0 and 7 are Sunday;
day-of-month and day-of-week combine with OR when both are restricted) plus `L`, `LW`, `5L` (last
Friday) and `5#2` (second Friday) in the day fields. It also accepts a sixth (seconds) field, which
we refuse: five fields only.

`@reboot` is refused (it is not a calendar time). `@hourly`, `@daily`, `@weekly`, `@monthly` and
`@yearly` are refused too, because cronsim does not map them and we do not keep a parser of our own;
the error names the five-field equivalent to write instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

from exporter.core.units import format_duration, parse_duration

DEFAULT_TIMEZONE = "UTC"
MIN_INTERVAL_SECONDS = 60.0
# The service sleeps at most this long before deciding again, so a wall-clock step (NTP, VM resume,
# laptop suspend) delays a run by at most this much instead of by a whole monotonic sleep.
MAX_SLEEP_SECONDS = 300.0

_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Every lookup walks at most this many cron occurrences to step over the ambiguous hour of a DST
# fall-back (see Cron.next_after); two are ever needed, the rest is a safety margin.
_MAX_SKIPPED_OCCURRENCES = 100


def parse_timezone(name: str) -> tzinfo:
    """An IANA timezone by name (`Europe/Berlin`, `UTC`); ValueError naming the value otherwise.

    `UTC` (the default) needs no timezone database, so it works on images without one; other names
    come from the system's (Debian `tzdata`) or the `tzdata` Python package.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected an IANA timezone name like Europe/Berlin or UTC, got {name!r}")
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)  # ZoneInfo caches instances by name
    except (ZoneInfoNotFoundError, ValueError) as exc:
        if not available_timezones():
            raise ValueError(
                f"cannot use timezone {name!r}: this system has no timezone database "
                "(install the tzdata package, or use UTC)"
            ) from exc
        raise ValueError(f"unknown timezone {name!r}: expected an IANA name like Europe/Berlin or UTC") from exc


@dataclass(frozen=True)
class Interval:
    """Every `seconds`, counted from the last (persisted) run, not from process start."""

    seconds: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.seconds) or self.seconds < MIN_INTERVAL_SECONDS:
            raise ValueError(
                f"an interval schedule must be at least {format_duration(MIN_INTERVAL_SECONDS)}, "
                f"got {format_duration(self.seconds) if math.isfinite(self.seconds) else self.seconds}"
            )

    def next_after(self, t: float) -> float:
        """The time one interval after `t` (a run at `t` is next due then)."""
        return t + self.seconds

    def describe(self) -> str:
        """How the API and landing page show it: `every 1w`."""
        return f"every {format_duration(self.seconds)}"


@dataclass(frozen=True)
class Cron:
    """A five-field cron expression evaluated in the IANA timezone `tz` (DST handled like Debian cron)."""

    expr: str
    tz: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        zone = parse_timezone(self.tz)
        text = self.expr.strip()
        if text.lower() == "@reboot":
            raise ValueError("@reboot is not supported: a schedule must name calendar times")
        if text.lower() in _NICKNAMES:
            raise ValueError(f"{text} is not supported: write the five fields {_NICKNAMES[text.lower()]!r} instead")
        if text.startswith("@"):
            raise ValueError(f"unknown schedule {text!r}: write a duration like 24h or five cron fields")
        if len(text.split()) != 5:
            raise ValueError(
                f"a cron schedule needs exactly five fields (minute hour day-of-month month day-of-week), "
                f"got {len(text.split())} in {self.expr!r}"
            )
        try:
            CronSim(self.expr, datetime(2000, 1, 1, tzinfo=zone))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {self.expr!r}: {exc}") from exc

    @property
    def zone(self) -> tzinfo:
        return parse_timezone(self.tz)

    def next_after(self, t: float) -> float:
        """The first occurrence strictly after `t` (a POSIX timestamp).

        Starting from a time inside the repeated hour of a DST fall-back, cronsim (which walks local
        wall-clock time for fixed-time jobs) can answer with the first of the two instants, which lies
        before `t`; such answers are stepped over, so the result is always later than `t`.
        """
        it = CronSim(self.expr, datetime.fromtimestamp(t, self.zone))
        for _ in range(_MAX_SKIPPED_OCCURRENCES):
            try:
                occurrence = next(it).timestamp()
            except StopIteration:
                raise ValueError(f"cron expression {self.expr!r} has no occurrence within 50 years") from None
            if occurrence > t:
                return occurrence
        raise ValueError(f"cron expression {self.expr!r}: no occurrence found after {t}")  # pragma: no cover

    def describe(self) -> str:
        """How the API and landing page show it: `0 3 * * SUN (Europe/Berlin): At 03:00 on Sunday`."""
        explained = CronSim(self.expr, datetime(2000, 1, 1, tzinfo=self.zone)).explain()
        return f"{self.expr} ({self.tz}): {explained}"


Schedule = Interval | Cron


def parse_schedule(text: str, tz: str = DEFAULT_TIMEZONE) -> Schedule:
    """The config string form: a duration without spaces is an interval, otherwise a cron expression.

    Raises ValueError saying what is wrong; the config layer prefixes the key.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"expected a duration like 24h or a cron expression like '0 3 * * SUN', got {text!r}")
    text = text.strip()
    if text.startswith("@") or len(text.split()) > 1:
        return Cron(" ".join(text.split()), tz)
    try:
        seconds = parse_duration(text)
    except ValueError:
        raise ValueError(
            f"expected a duration like 24h or a five-field cron expression like '0 3 * * SUN', got {text!r}"
        ) from None
    return Interval(seconds)


@dataclass(frozen=True)
class Decision:
    """What a scheduled action should do now.

    `due_now`: run now. `next_run`: when it is due; while due this is the (past) time the missed
    occurrence was due, otherwise a time after `now` to sleep until.
    """

    due_now: bool
    next_run: float


def decide(schedule: Schedule, counts_from: float | None, now: float) -> Decision:
    """The catch-up rule, like anacron or systemd's `Persistent=true`.

    `counts_from` is the action's last scheduled run or, before its first one, the time the exporter
    began keeping its schedule (`ScheduleState.counts_from` supplies it and persists both). It must be
    such a persisted anchor: deciding afresh from `now` at every wake-up would push the first run away
    forever, which is the very bug of an interval counted from process start.

    - Due when the schedule's next occurrence after `counts_from` is at or before `now`, once: however
      many occurrences were missed while the exporter was down, they collapse into this one run. The
      caller records the run's start as the new last run, after which the next occurrence lies ahead.
    - Otherwise not due until that occurrence. Intervals count from the last run, not from process
      start, so restarts do not postpone them.
    - A first start (the anchor is `now`) therefore waits for the next occurrence: running at once would
      turn every fresh install or lost state file into an immediate deletion run.
    - `None` or a non-finite anchor (nothing known) is treated the same way, as `now`.
    - An anchor later than `now` (the clock stepped back, or a bad state file) also counts as `now`: it
      must neither trigger a run nor push the next one further than one period away.
    """
    if counts_from is None or not math.isfinite(counts_from):
        counts_from = now
    due_at = schedule.next_after(min(counts_from, now))
    return Decision(due_now=due_at <= now, next_run=due_at)


def sleep_seconds(decision: Decision, now: float) -> float:
    """How long the service sleeps before calling `decide` again (0 when due, capped at MAX_SLEEP_SECONDS)."""
    if decision.due_now:
        return 0.0
    return max(0.0, min(decision.next_run - now, MAX_SLEEP_SECONDS))
