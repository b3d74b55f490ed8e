"""Schedules: parsing the config form, cron occurrences across DST, the catch-up rule, and the state section."""

from __future__ import annotations

import itertools
import json
import math
import sys
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.schedule import (
    MAX_SLEEP_SECONDS,
    Cron,
    Decision,
    Interval,
    Schedule,
    decide,
    parse_schedule,
    parse_timezone,
    sleep_seconds,
)
from exporter.core.schedulestate import SECTION, ScheduleState

BERLIN = ZoneInfo("Europe/Berlin")
HOUR, DAY, WEEK = 3600.0, 86400.0, 7 * 86400.0


def ts(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, tz: ZoneInfo | None = None, fold: int = 0
) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=tz or UTC, fold=fold).timestamp()


def local(t: float, tz: ZoneInfo = BERLIN) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()


def occurrences(schedule: Schedule, start: float, count: int) -> list[float]:
    out, t = [], start
    for _ in range(count):
        t = schedule.next_after(t)
        out.append(t)
    return out


# -- parsing the config form ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [("24h", DAY), ("168h", WEEK), ("1h30m", 5400.0), ("1m", 60.0)])
def test_a_value_without_spaces_is_an_interval(text: str, seconds: float) -> None:
    assert parse_schedule(text) == Interval(seconds)


def test_a_value_with_spaces_is_a_cron_expression_in_utc_by_default() -> None:
    assert parse_schedule("0 3 * * SUN") == Cron("0 3 * * SUN", "UTC")
    assert parse_schedule("  0  3 * *   SUN ", "Europe/Berlin") == Cron("0 3 * * SUN", "Europe/Berlin")


def test_five_minutes_and_minute_five_are_told_apart() -> None:
    assert parse_schedule("5m") == Interval(300.0)
    assert isinstance(parse_schedule("5 * * * *"), Cron)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0 3 * * * *", "exactly five fields .* got 6"),
        ("0 0 3 * * SUN 2027", "exactly five fields .* got 7"),
        ("0 3 * *", "exactly five fields .* got 4"),
        ("@reboot", "@reboot is not supported"),
        ("@daily", "@daily is not supported: write the five fields '0 0 \\* \\* \\*'"),
        ("@weekly", "'0 0 \\* \\* 0'"),
        ("@hourly", "'0 \\* \\* \\* \\*'"),
        ("@fortnightly", "unknown schedule '@fortnightly'"),
        ("61 * * * *", "invalid cron expression '61 \\* \\* \\* \\*': Bad minute"),
        ("0 3 * * FUNDAY", "invalid cron expression .*day-of-week"),
        ("0 0 31 2 *", "invalid cron expression .*day-of-month"),
        ("24x", "expected a duration like 24h or a five-field cron expression .*'24x'"),
        ("", "expected a duration"),
        ("   ", "expected a duration"),
        ("30s", "at least 1m, got 30s"),
        ("0s", "at least 1m"),
    ],
)
def test_bad_schedules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_a_schedule_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_schedule(3600)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "", "../../etc/passwd", "utc+2"])
def test_unknown_timezones_are_named(name: str) -> None:
    with pytest.raises(ValueError, match="timezone"):
        parse_schedule("0 3 * * SUN", name)
    with pytest.raises(ValueError, match="timezone"):
        parse_timezone(name)


def test_describe_says_it_in_words() -> None:
    assert parse_schedule("168h").describe() == "every 1w"
    assert (
        parse_schedule("0 3 * * SUN", "Europe/Berlin").describe() == "0 3 * * SUN (Europe/Berlin): At 03:00 on Sunday"
    )


# -- occurrences --------------------------------------------------------------------------------------
def test_cron_next_after_is_the_next_calendar_time_strictly_later() -> None:
    weekly = parse_schedule("0 3 * * SUN")
    wednesday = ts(2026, 11, 25, 12)
    assert weekly.next_after(wednesday) == ts(2026, 11, 29, 3)
    assert weekly.next_after(ts(2026, 11, 29, 3)) == ts(2026, 12, 6, 3)
    assert weekly.next_after(ts(2026, 11, 29, 3) - 0.5) == ts(2026, 11, 29, 3)


def test_cron_times_are_local_to_the_timezone() -> None:
    weekly = parse_schedule("0 3 * * SUN", "Europe/Berlin")
    assert weekly.next_after(ts(2026, 1, 7)) == ts(2026, 1, 11, 2)  # CET = UTC+1
    assert weekly.next_after(ts(2026, 7, 1)) == ts(2026, 7, 5, 1)  # CEST = UTC+2


def test_interval_next_after_counts_from_the_given_time() -> None:
    assert Interval(DAY).next_after(1_000_000.0) == 1_000_000.0 + DAY


def test_dst_spring_forward_neither_skips_nor_doubles_a_daily_run() -> None:
    # 2026-03-29 in Berlin: 02:00 CET jumps to 03:00 CEST, so 02:30 does not exist that day.
    daily = parse_schedule("30 2 * * *", "Europe/Berlin")
    runs = occurrences(daily, ts(2026, 3, 27, 12, tz=BERLIN), 3)
    assert [local(t) for t in runs] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # the first valid minute after the missing 02:30, like Debian cron
        "2026-03-30T02:30:00+02:00",
    ]


def test_dst_fall_back_runs_a_daily_job_once() -> None:
    # 2026-10-25 in Berlin: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice that day.
    daily = parse_schedule("30 2 * * *", "Europe/Berlin")
    runs = occurrences(daily, ts(2026, 10, 24, 12, tz=BERLIN), 3)
    assert [local(t) for t in runs] == [
        "2026-10-25T02:30:00+02:00",  # the first of the two 02:30s only
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_dst_fall_back_from_inside_the_repeated_hour_answers_a_later_time() -> None:
    # 02:15 CET comes after 02:30 CEST (the run of that day); cronsim walks local wall time and would
    # answer 02:30 CEST, which lies before the start. The next run is the next day's.
    daily = parse_schedule("30 2 * * *", "Europe/Berlin")
    start = ts(2026, 10, 25, 2, 15, tz=BERLIN, fold=1)
    assert local(start) == "2026-10-25T02:15:00+01:00"
    assert local(daily.next_after(start)) == "2026-10-26T02:30:00+01:00"


def test_wildcard_hours_follow_elapsed_time_through_dst() -> None:
    """Only fixed-time jobs get the once-a-day treatment; `30 * * * *` stays hourly through the change."""
    hourly = parse_schedule("30 * * * *", "Europe/Berlin")
    runs = occurrences(hourly, ts(2026, 10, 25, 0, tz=BERLIN), 5)
    assert [b - a for a, b in itertools.pairwise(runs)] == [HOUR] * 4
    assert local(runs[2]) == "2026-10-25T02:30:00+02:00" and local(runs[3]) == "2026-10-25T02:30:00+01:00"


@pytest.fixture
def no_timezone_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A system without /usr/share/zoneinfo and without the tzdata package (as on some slim images)."""
    monkeypatch.setitem(sys.modules, "tzdata", None)  # makes `import tzdata` fail
    zoneinfo.reset_tzpath(to=[])
    zoneinfo.ZoneInfo.clear_cache()
    yield
    zoneinfo.reset_tzpath()
    zoneinfo.ZoneInfo.clear_cache()


@pytest.mark.usefixtures("no_timezone_database")
def test_no_timezone_database_is_named_as_the_problem() -> None:
    with pytest.raises(ValueError, match=r"no timezone database .*tzdata"):
        parse_timezone("Europe/Berlin")
    assert parse_schedule("0 3 * * SUN").next_after(ts(2026, 11, 25)) == ts(2026, 11, 29, 3)  # UTC needs none


@settings(max_examples=40, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    tz=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "America/Santiago"]),
    first_day=st.dates(min_value=date(2024, 1, 1), max_value=date(2030, 12, 31)),
)
def test_a_daily_job_runs_exactly_once_every_local_day(minute: int, hour: int, tz: str, first_day: date) -> None:
    """Over a year, whatever DST does (Lord Howe shifts by 30 minutes), each local date gets one run."""
    daily = parse_schedule(f"{minute} {hour} * * *", tz)
    zone = ZoneInfo(tz)
    start = datetime.combine(first_day, datetime.min.time(), zone).timestamp() - 1  # just before midnight
    runs = occurrences(daily, start, 366)
    days = [datetime.fromtimestamp(t, zone).date() for t in runs]
    assert days == [first_day + timedelta(days=i) for i in range(366)]


# -- the catch-up rule --------------------------------------------------------------------------------
WEEKLY = Cron("0 3 * * SUN", "Europe/Berlin")
SUNDAY_3AM = ts(2026, 11, 29, 3, tz=BERLIN)


def test_first_start_waits_for_the_next_occurrence() -> None:
    now = ts(2026, 11, 25, 12)
    state = ScheduleState()
    assert decide(WEEKLY, state.counts_from("weekly", now), now) == Decision(due_now=False, next_run=SUNDAY_3AM)
    assert decide(Interval(DAY), state.counts_from("daily", now), now) == Decision(due_now=False, next_run=now + DAY)


def test_the_first_run_is_due_when_its_time_comes() -> None:
    """Deciding again at the wake-up must not push the first run away (the anchor is kept, not `now`)."""
    started = ts(2026, 11, 25, 12)
    state = ScheduleState()
    state.counts_from("weekly", started)
    later = SUNDAY_3AM + 1
    assert decide(WEEKLY, state.counts_from("weekly", later), later) == Decision(due_now=True, next_run=SUNDAY_3AM)
    state.counts_from("daily", started)
    assert decide(Interval(DAY), state.counts_from("daily", started + DAY), started + DAY).due_now


def test_a_run_missed_while_down_happens_once_after_start() -> None:
    last = SUNDAY_3AM - WEEK
    now = SUNDAY_3AM + 5 * HOUR  # down over Sunday 03:00, back at 08:00
    assert decide(WEEKLY, last, now) == Decision(due_now=True, next_run=SUNDAY_3AM)
    # The service records the run's start; deciding again at once must not run a second time.
    assert decide(WEEKLY, now, now) == Decision(due_now=False, next_run=SUNDAY_3AM + WEEK)


def test_many_missed_occurrences_collapse_into_one_run() -> None:
    last = SUNDAY_3AM - 5 * WEEK
    now = SUNDAY_3AM + HOUR
    decision = decide(WEEKLY, last, now)
    assert decision == Decision(due_now=True, next_run=SUNDAY_3AM - 4 * WEEK)
    assert decide(WEEKLY, now, now + 1) == Decision(due_now=False, next_run=SUNDAY_3AM + WEEK)


def test_a_restart_between_runs_neither_skips_nor_doubles() -> None:
    last = SUNDAY_3AM - WEEK
    restarted = SUNDAY_3AM - 2 * DAY
    assert decide(WEEKLY, last, restarted) == Decision(due_now=False, next_run=SUNDAY_3AM)
    assert decide(WEEKLY, SUNDAY_3AM, SUNDAY_3AM + HOUR) == Decision(due_now=False, next_run=SUNDAY_3AM + WEEK)


def test_an_interval_counts_from_the_last_run_not_from_process_start() -> None:
    last = 1_800_000_000.0
    restarted = last + 23 * HOUR
    assert decide(Interval(DAY), last, restarted) == Decision(due_now=False, next_run=last + DAY)
    assert decide(Interval(DAY), last, last + DAY) == Decision(due_now=True, next_run=last + DAY)
    assert decide(Interval(DAY), last, last + 30 * DAY) == Decision(due_now=True, next_run=last + DAY)


def test_a_weekly_interval_runs_even_if_restarted_daily() -> None:
    """The issue's case: restarts more often than the interval used to mean it never ran."""
    state, now, runs = ScheduleState(), 1_800_000_000.0, []
    for _day in range(15):
        saved = json.loads(json.dumps(state.to_json()))
        state, _problems = ScheduleState.from_json(saved)  # the restart
        decision = decide(Interval(WEEK), state.counts_from("weekly", now), now)
        if decision.due_now:
            runs.append(now)
            state.record("weekly", now)
        now += DAY
    assert runs == [1_800_000_000.0 + 7 * DAY, 1_800_000_000.0 + 14 * DAY]


def test_a_wakeup_slightly_early_is_not_due() -> None:
    assert decide(WEEKLY, SUNDAY_3AM - WEEK, SUNDAY_3AM - 0.25) == Decision(due_now=False, next_run=SUNDAY_3AM)


@pytest.mark.parametrize("schedule", [WEEKLY, Interval(DAY)])
def test_an_anchor_in_the_future_counts_as_now(schedule: Schedule) -> None:
    now = SUNDAY_3AM - 2 * DAY
    for future in (now + HOUR, now + 10 * 365 * DAY):
        assert decide(schedule, future, now) == Decision(due_now=False, next_run=schedule.next_after(now))


@pytest.mark.parametrize("unknown", [None, math.nan, math.inf])
def test_an_unknown_anchor_counts_as_now(unknown: float | None) -> None:
    now = SUNDAY_3AM - 2 * DAY
    assert decide(WEEKLY, unknown, now) == Decision(due_now=False, next_run=SUNDAY_3AM)


def test_sleep_seconds_is_capped_so_clock_steps_are_noticed() -> None:
    now = SUNDAY_3AM - 2 * DAY
    assert sleep_seconds(decide(WEEKLY, now, now), now) == MAX_SLEEP_SECONDS
    assert sleep_seconds(decide(WEEKLY, now, SUNDAY_3AM - 10), SUNDAY_3AM - 10) == 10
    assert sleep_seconds(Decision(due_now=True, next_run=now - DAY), now) == 0
    assert sleep_seconds(Decision(due_now=False, next_run=now - 1), now) == 0


# -- the schedules section of the state file ---------------------------------------------------------
def test_state_round_trips_through_json() -> None:
    state = ScheduleState()
    state.counts_from("weekly", SUNDAY_3AM - WEEK)
    state.record("weekly", SUNDAY_3AM)
    state.counts_from("nightly", 1_800_000_000)
    text = json.dumps({SECTION: state.to_json()})
    assert json.loads(text)[SECTION] == {
        "nightly": {"since": 1_800_000_000.0},
        "weekly": {"since": SUNDAY_3AM - WEEK, "last_run": SUNDAY_3AM},
    }
    loaded, problems = ScheduleState.from_json(json.loads(text)[SECTION])
    assert problems == []
    assert loaded.actions == state.actions and not loaded.changed


def test_counts_from_is_the_last_run_else_since_and_marks_new_actions_changed() -> None:
    state = ScheduleState()
    assert state.counts_from("weekly", 1000.0) == 1000.0
    assert state.changed and state.last_run("weekly") is None
    state.changed = False
    assert state.counts_from("weekly", 5000.0) == 1000.0
    assert not state.changed
    state.record("weekly", 3000.0)
    assert state.counts_from("weekly", 5000.0) == 3000.0 and state.last_run("weekly") == 3000.0
    assert state.changed


def test_record_never_moves_backwards() -> None:
    state = ScheduleState()
    state.record("weekly", SUNDAY_3AM)
    state.changed = False
    state.record("weekly", SUNDAY_3AM - WEEK)
    assert state.last_run("weekly") == SUNDAY_3AM and not state.changed
    with pytest.raises(ValueError, match="finite"):
        state.record("weekly", math.nan)


def test_retain_forgets_actions_no_longer_scheduled() -> None:
    state = ScheduleState()
    state.record("weekly", 1.0e9)
    state.record("gone", 1.0e9)
    state.changed = False
    state.retain(["weekly", "new"])
    assert state.to_json() == {"weekly": {"since": 1.0e9, "last_run": 1.0e9}} and state.changed


def test_a_missing_section_means_unknown_without_complaint() -> None:
    state, problems = ScheduleState.from_json(None)
    assert state.actions == {} and problems == []


@pytest.mark.parametrize("section", [[], "weekly", 42, True])
def test_a_malformed_section_starts_over_and_says_so(section: object) -> None:
    state, problems = ScheduleState.from_json(section)
    assert state.actions == {}
    assert len(problems) == 1 and "schedules: expected an object" in problems[0]


def test_a_malformed_entry_loses_only_that_action() -> None:
    good = {"since": SUNDAY_3AM - WEEK, "last_run": SUNDAY_3AM}
    section = {
        "weekly": good,
        "newer": {"since": SUNDAY_3AM, "added_later": "ignored"},
        "nightly": {"since": SUNDAY_3AM, "last_run": "yesterday"},
        "hourly": 1_800_000_000,
        "monthly": {"since": True},
        "yearly": {"since": -5},
        "daily": {},
        "no-since": {"last_run": SUNDAY_3AM},
        "": good,
    }
    state, problems = ScheduleState.from_json(section)
    assert state.counts_from("weekly", SUNDAY_3AM + DAY) == SUNDAY_3AM
    assert state.counts_from("newer", SUNDAY_3AM + DAY) == SUNDAY_3AM
    assert sorted(state.actions) == ["newer", "weekly"]
    assert len(problems) == 7
    assert any("schedules.nightly" in p and "'yesterday'" in p and "starts over" in p for p in problems)
    assert any("invalid action name ''" in p for p in problems)


def test_a_lost_entry_never_causes_a_run_that_was_not_due() -> None:
    """Conservative: with its entry unreadable, a long-overdue action waits for the next occurrence."""
    state, _problems = ScheduleState.from_json({"weekly": {"since": "garbage", "last_run": SUNDAY_3AM - 9 * WEEK}})
    now = SUNDAY_3AM - 2 * DAY
    assert decide(WEEKLY, state.counts_from("weekly", now), now) == Decision(due_now=False, next_run=SUNDAY_3AM)


def test_json_cannot_smuggle_in_non_finite_times() -> None:
    section = json.loads('{"weekly": {"since": NaN}, "daily": {"since": 1e9, "last_run": Infinity}}')
    state, problems = ScheduleState.from_json(section)
    assert state.actions == {} and len(problems) == 2


# -- the whole thing across restarts -----------------------------------------------------------------
MINUTES = ["0", "30", "*/20", "15,45", "5-35/10"]
HOURS = ["*", "2", "3", "*/6", "1-4", "0,12"]
DAYS_OF_MONTH = ["*", "*", "1", "15", "L"]
MONTHS = ["*", "*", "3", "10", "*/2", "1-6"]
DAYS_OF_WEEK = ["*", "*", "0", "SUN", "1-5", "6"]
TIMEZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]

cron_schedules = st.builds(
    lambda fields, tz: Cron(" ".join(fields), tz),
    st.tuples(*(st.sampled_from(f) for f in (MINUTES, HOURS, DAYS_OF_MONTH, MONTHS, DAYS_OF_WEEK))),
    st.sampled_from(TIMEZONES),
)
interval_schedules = st.sampled_from([Interval(HOUR), Interval(6 * HOUR), Interval(DAY), Interval(WEEK)])
# (seconds up, seconds down afterwards, whether the state file survives the restart into this segment)
segments = st.lists(
    st.tuples(st.integers(1, 3 * 86400), st.integers(0, 20 * 86400), st.booleans()), min_size=1, max_size=5
)
starts = st.integers(int(ts(2025, 1, 1)), int(ts(2030, 1, 1)))


@dataclass
class Timeline:
    """What a simulated exporter did: when it ran the action, and when each process was up."""

    runs: list[float] = field(default_factory=list)
    up: list[tuple[float, float, bool]] = field(default_factory=list)  # (start, end, state kept)
    catch_ups: list[float] = field(default_factory=list)


def simulate(schedule: Schedule, start: float, plan: list[tuple[int, int, bool]]) -> Timeline:
    """Run the service loop as it will be wired: decide, run if due (recording the start), else sleep.

    Each restart reloads the state through its JSON section, or starts without it when the file was lost.
    Sleeps are capped like the service's (`sleep_seconds`), so every wake-up decides afresh.
    """
    timeline, saved, t = Timeline(), None, float(start)
    for up, down, kept in plan:
        begin, end = t, t + up
        state, problems = ScheduleState.from_json(saved if kept else None)
        assert problems == []
        timeline.up.append((begin, end, kept))
        now = begin
        while now < end:
            decision = decide(schedule, state.counts_from("a", now), now)
            saved = json.loads(json.dumps(state.to_json()))
            if decision.due_now:
                timeline.runs.append(now)
                if now == begin:
                    timeline.catch_ups.append(now)
                state.record("a", now)
                saved = json.loads(json.dumps(state.to_json()))
                assert not decide(schedule, state.counts_from("a", now), now).due_now
                continue
            assert decision.next_run > now
            now += sleep_seconds(decision, now)
        t = end + down
    return timeline


@settings(max_examples=50, deadline=None)
@given(schedule=cron_schedules, start=starts, plan=segments)
def test_cron_restarts_never_double_and_never_lose_a_run(
    schedule: Cron, start: int, plan: list[tuple[int, int, bool]]
) -> None:
    timeline = simulate(schedule, start, plan)
    # Never two runs for one occurrence: between any two runs (and before the first) an occurrence passed.
    previous = float(start)
    for run in timeline.runs:
        assert schedule.next_after(previous) <= run
        previous = run
    # Every occurrence while the exporter is up runs exactly then.
    runs = set(timeline.runs)
    for begin, end, _kept in timeline.up:
        occurrence = schedule.next_after(begin)
        while occurrence < end:
            assert occurrence in runs
            occurrence = schedule.next_after(occurrence)
    # An occurrence missed while down runs once right after a restart that kept its state, and only then.
    anchor: float | None = None
    for begin, end, kept in timeline.up:
        anchor = anchor if kept else None
        missed = anchor is not None and schedule.next_after(anchor) <= begin
        assert (begin in timeline.catch_ups) == missed
        anchor = max([r for r in timeline.runs if begin <= r < end], default=begin if anchor is None else anchor)


@settings(max_examples=50, deadline=None)
@given(schedule=interval_schedules, start=starts, plan=segments)
def test_interval_restarts_never_shorten_or_stretch_the_interval(
    schedule: Interval, start: int, plan: list[tuple[int, int, bool]]
) -> None:
    timeline = simulate(schedule, start, plan)
    for earlier, later in itertools.pairwise(timeline.runs):
        assert later - earlier >= schedule.seconds
    # While up, a run follows the last one (or the first start) by one interval, or at once if overdue.
    anchor: float | None = None
    for begin, end, kept in timeline.up:
        anchor = anchor if kept and anchor is not None else begin
        due = max(begin, anchor + schedule.seconds)
        expected = []
        while due < end:
            expected.append(due)
            due += schedule.seconds
        mine = [r for r in timeline.runs if begin <= r < end]
        assert mine == expected
        anchor = mine[-1] if mine else anchor
