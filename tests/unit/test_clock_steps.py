"""Arrival ages against wall-clock steps, and state files whose times cannot be trusted (exporter.core.clocks,
exporter.state.history): on an injected pair of clocks (a wall clock that steps, a boot clock that does not).

The property: within one boot, no step of the wall clock (forward or back, before or after a restart of
the exporter) makes an image deletable before `min_age` of real time has passed since it arrived.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.config import ProtectConfig, make_action, parse_config
from exporter.core import clocks
from exporter.core.clocks import Clock
from exporter.metrics.selfmetrics import PollMetrics
from exporter.remediation.planner import make_plan
from exporter.state.history import STATE_VERSION, ImageHistory
from exporter.state.poller import Poller
from tests.unit.fake_engine import FakeEngine
from tests.unit.recorded import RecordedEngine
from tests.unit.test_executor import NOW, OLD, Harness, act

WALL0 = 1_800_000_000.0  # after every Created and LastTagTime of the recordings
BOOT0 = 5_000.0
HOUR = 3600.0
DAY = 86400.0
MIN_AGE = HOUR
ACTION = make_action("unused", type="prune_unused", min_age="1h")
PROTECT = ProtectConfig(local_only=False)
A = f"sha256:{'a' * 64}"


class Machine:
    """A wall clock that steps and a boot clock that only advances, shared by everything under test."""

    def __init__(self, boot_id: str = "boot-1") -> None:
        self.wall = WALL0
        self.boot = BOOT0
        self.boot_id = boot_id

    def advance(self, seconds: float) -> None:
        """Real time passes: both clocks move."""
        self.wall += seconds
        self.boot += seconds

    def step(self, seconds: float) -> None:
        """The wall clock is set (NTP at boot, a restored VM, `date -s`): only it moves."""
        self.wall += seconds

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.wall, boot=lambda: self.boot, boot_id=self.boot_id)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    m = Machine()
    monkeypatch.setattr(clocks, "CLOCK", m.clock())  # what the planner and the executor read
    yield m


def exporter_on(machine: Machine, state: Path | None) -> Poller:
    """A poller on the recorded bookworm engine whose history loads `state` (None: in memory)."""
    history = ImageHistory(str(state) if state else None, clock=machine.clock())
    history.load()
    return Poller(
        RecordedEngine("bookworm"),
        parse_config({}),
        history,
        PollMetrics(CollectorRegistry()),
        clock=lambda: machine.wall,
    )


def deletable(poller: Poller, machine: Machine) -> set[str]:
    assert poller.store.snapshot is not None
    return {c.image_id for c in make_plan(poller.store.snapshot, ACTION, PROTECT, machine.wall).candidates}


def unused(poller: Poller) -> set[str]:
    assert poller.store.snapshot is not None
    return {i.id for i in poller.store.snapshot.images if i.containers == 0}


# ---------------------------------------------------------------------------------------------- clock steps


async def test_a_forward_step_of_the_wall_clock_does_not_age_a_just_arrived_image(machine: Machine) -> None:
    """First seen "3 s old, min_age 1h", then the clock steps forward three days: still 3 s old."""
    poller = exporter_on(machine, None)
    await poller.poll_once()
    machine.advance(3)
    assert deletable(poller, machine) == set()
    machine.step(3 * DAY)
    await poller.poll_once()
    assert deletable(poller, machine) == set()
    plan = make_plan(poller.store.snapshot, ACTION, PROTECT, machine.wall)  # type: ignore[arg-type]
    assert {s.reason for s in plan.skipped if s.image_id in unused(poller)} == {"too_young"}
    machine.advance(MIN_AGE)  # a real hour later they are old enough, the step notwithstanding
    assert deletable(poller, machine) == unused(poller) != set()


async def test_a_backward_step_keeps_images_young_at_least_as_long(machine: Machine) -> None:
    poller = exporter_on(machine, None)
    await poller.poll_once()
    machine.step(-2 * HOUR)
    machine.advance(MIN_AGE)
    await poller.poll_once()
    assert deletable(poller, machine) == set()  # an hour of real time, but the wall clock says -1 h
    machine.advance(2 * HOUR)
    assert deletable(poller, machine) == unused(poller) != set()


async def test_an_image_first_seen_after_the_step_ages_from_then(machine: Machine) -> None:
    """Anchors are per image: a step before an image is first seen does not hold it back."""
    machine.step(3 * DAY)
    poller = exporter_on(machine, None)
    await poller.poll_once()
    machine.advance(MIN_AGE)
    assert deletable(poller, machine) == unused(poller) != set()


async def test_a_step_while_tag_times_are_inspected_behind_the_listing_is_not_age(machine: Machine) -> None:
    """NTP's first sync while a start inspects LastTagTimes behind the first publish: the images were seen
    at the listing, before the step."""
    poller = exporter_on(machine, None)
    engine = poller.engine
    assert isinstance(engine, RecordedEngine)
    engine.on_call = lambda call: (
        machine.step(3 * DAY) if call == "inspect_image" and machine.wall < WALL0 + DAY else None
    )
    await poller.poll_once()
    assert machine.wall == WALL0 + 3 * DAY and poller.store.snapshot is not None
    assert poller.store.snapshot.pending_inspects == 0
    assert deletable(poller, machine) == set()
    machine.advance(MIN_AGE)
    assert deletable(poller, machine) == unused(poller) != set()


async def test_a_restart_in_the_same_boot_keeps_the_seen_offsets(machine: Machine, tmp_path: Path) -> None:
    """Saved before the step, loaded after it: the file's anchors still discount the step."""
    state = tmp_path / "state.json"
    first = exporter_on(machine, state)
    await first.poll_once()
    first.history.save()
    machine.advance(60)
    machine.step(3 * DAY)
    second = exporter_on(machine, state)
    assert second.history.saved_at == WALL0  # trusted: same boot, saved before now
    await second.poll_once()
    assert deletable(second, machine) == set()
    machine.advance(MIN_AGE)
    assert deletable(second, machine) == unused(second) != set()


async def test_a_state_from_another_boot_keeps_ages_but_not_offsets(machine: Machine, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    first = exporter_on(machine, state)
    await first.poll_once()
    first.history.save()
    assert json.loads(state.read_text())["boot_id"] == "boot-1"
    machine.advance(DAY)  # a reboot a day later: the boot clock starts again
    machine.boot, machine.boot_id = 30.0, "boot-2"
    second = exporter_on(machine, state)
    assert second.history.saved_at == WALL0 and second.history.anchors == {}
    await second.poll_once()
    assert deletable(second, machine) == unused(second) != set()  # a day old by the trusted file


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("advance"), st.floats(0, 2 * HOUR)),
            st.tuples(st.just("step"), st.floats(-5 * DAY, 30 * DAY)),
            st.tuples(st.just("poll"), st.just(0.0)),
            st.tuples(st.just("restart"), st.just(0.0)),
        ),
        max_size=12,
    )
)
def test_no_clock_step_makes_an_image_deletable_before_min_age_of_real_time(
    tmp_path: Path, steps: list[tuple[str, float]]
) -> None:
    machine = Machine()
    state = tmp_path / "state.json"
    state.unlink(missing_ok=True)

    async def scenario() -> None:
        poller = exporter_on(machine, state)
        await poller.poll_once()  # every image is new here: arrives now
        arrived_boot = machine.boot
        for kind, value in steps:
            if kind == "advance":
                machine.advance(value)
            elif kind == "step":
                machine.step(value)
            elif kind == "poll":
                await poller.poll_once()
            else:
                poller.history.save()
                poller = exporter_on(machine, state)
                await poller.poll_once()
            if machine.boot - arrived_boot < MIN_AGE:
                assert deletable(poller, machine) == set(), (kind, value, machine.boot - arrived_boot)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(clocks, "CLOCK", machine.clock())
        asyncio.run(scenario())


async def test_the_re_check_before_a_delete_discounts_a_recent_forward_step(machine: Machine, tmp_path: Path) -> None:
    """Re-tagged a minute before a three-day forward step, after the snapshot the plan used: the DELETE's
    re-inspect reads a LastTagTime that looks three days old, yet it is a minute old in real time."""
    engine = FakeEngine()
    iid = engine.add("old", ("app:1",), arrived=OLD)
    h = Harness(tmp_path, engine)
    action = act("prune_unused")
    plan = h.plan(action)
    assert [c.image_id for c in plan.candidates] == [iid]
    machine.advance(60)
    machine.step(3 * DAY)
    engine.images[iid].last_tag_time = NOW - 3 * DAY - 60  # the same name tagged again, before the step
    run = await h.run(action, plan=plan)
    assert [(o.result, o.skip_reason) for o in run.outcomes] == [("skipped", "too_young")]
    assert iid in engine.images


# ------------------------------------------------------------------------------------- state file trust


def write_state(path: Path, text: str) -> None:
    path.write_text(text)


def state_text(
    saved_at: str = str(WALL0), arrived: str = str(WALL0), last_used: str = str(WALL0), **extra: object
) -> str:
    """The state file, with JSON text (not values) where a test puts NaN and friends."""
    rest = "".join(f', "{k}": {json.dumps(v)}' for k, v in extra.items())
    return (
        f'{{"version": {STATE_VERSION}, "saved_at": {saved_at}, "present": ["{A}"], '
        f'"arrived": {{"{A}": {arrived}}}, "last_used": {{"{A}": {last_used}}}, '
        f'"schedules": {{"nightly": {{"since": {WALL0 - DAY}}}}}{rest}}}'
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (state_text(saved_at=str(WALL0 + 2 * DAY)), "saved_at is 172800s in the future"),
        (state_text(saved_at="-Infinity"), "saved_at is -Infinity, not a number"),
        (state_text(saved_at="NaN"), "saved_at is NaN, not a number"),
        (state_text(saved_at="1e999"), "saved_at is inf, not a finite number"),
        (state_text(saved_at="-5"), "saved_at is -5, not a time"),
        (state_text(saved_at="0"), "saved_at is 0, not a time"),
        (state_text(saved_at="true"), "saved_at is True, not a number"),
        (state_text(saved_at='"1800000000"'), "saved_at is '1800000000', not a number"),
        (state_text(arrived="Infinity"), f"arrived[{A}] is Infinity, not a number"),
        (state_text(arrived=str(WALL0 + DAY)), f"arrived[{A}] is 86400s in the future"),
        (state_text(last_used="NaN"), f"last_used[{A}] is NaN, not a number"),
        (state_text(anchors={A: [WALL0, "x"]}, boot_id="boot-1"), f"anchors[{A}] is 'x', not a number"),
    ],
    ids=[
        "saved-in-the-future",
        "minus-infinity",
        "nan",
        "overflowing",
        "negative",
        "zero",
        "bool",
        "string",
        "infinite-arrival",
        "arrival-in-the-future",
        "nan-use",
        "bad-anchor",
    ],
)
def test_a_state_whose_times_cannot_be_trusted_makes_everything_arrive_now(
    machine: Machine, tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, why: str
) -> None:
    path = tmp_path / "state.json"
    write_state(path, text)
    history = ImageHistory(str(path), clock=machine.clock())
    with caplog.at_level(logging.INFO, logger="exporter.history"):
        history.load()
    assert history.saved_at is None and history.present == set() and history.last_used == {}
    assert history.observe([A], machine.wall) == [A] and history.arrived == {A: machine.wall}
    warned = [r for r in caplog.records if "distrusting the image history's times" in r.getMessage()]
    assert len(warned) == 1 and str(getattr(warned[0], "log_fields", {}).get("reason")) == why
    assert set(history.schedules.actions) == {"nightly"}  # the schedules section is read on its own


def test_a_state_saved_after_this_boot_began_by_another_boot_is_distrusted(
    machine: Machine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The clock now is behind the one that saved the file (a device without a real-time clock, booted at a
    stale time): the file's times are not in the future of now, yet later than this boot's start."""
    path = tmp_path / "state.json"
    write_state(path, state_text(saved_at=str(WALL0 - 60), boot_id="boot-0"))
    history = ImageHistory(str(path), clock=machine.clock())  # this boot began BOOT0 seconds before WALL0
    history.load()
    assert history.saved_at is None and history.present == set()
    assert "after this boot began" in str(getattr(caplog.records[-1], "log_fields", {}).get("reason"))


def test_a_state_saved_before_this_boot_began_is_trusted(machine: Machine, tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    saved = WALL0 - BOOT0 - 60
    write_state(path, state_text(saved_at=str(saved), arrived=str(saved), last_used=str(saved), boot_id="boot-0"))
    history = ImageHistory(str(path), clock=machine.clock())
    history.load()
    assert history.saved_at == saved and history.present == {A} and history.arrived == {A: saved}


async def test_replay_from_a_distrusted_state_does_not_use_its_time(machine: Machine, tmp_path: Path) -> None:
    """`"saved_at": -Infinity` would stop the event follower (`int(-inf)` raises); distrusted, nothing replays."""
    from exporter.state.events import EventFollower

    path = tmp_path / "state.json"
    write_state(path, state_text(saved_at="-Infinity"))
    poller = exporter_on(machine, path)
    follower = EventFollower(poller.engine, poller, poller.history, PollMetrics(CollectorRegistry()))
    assert await follower.replay() == 0


class AskedEngine(RecordedEngine):
    """The recorded engine, remembering the window each replay asked for."""

    def __init__(self) -> None:
        super().__init__("bookworm")
        self.asked: list[tuple[int, int]] = []

    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]:
        self.asked.append((since, until))
        return []


async def test_a_replay_ends_at_the_engines_clock_not_this_process(machine: Machine, tmp_path: Path) -> None:
    """A replay `until` a time the engine's clock has not reached is held open by the engine until then:
    asked up to this process's clock, stepped three days ahead alone, it would end only at the timeout."""
    from exporter.engine.apishapes import parse_time
    from exporter.state.events import EventFollower

    path = tmp_path / "state.json"
    write_state(path, state_text(saved_at=str(WALL0 - 600)))
    machine.step(3 * DAY)
    engine = AskedEngine()
    poller = exporter_on(machine, path)
    follower = EventFollower(engine, poller, poller.history, PollMetrics(CollectorRegistry()))
    await follower.replay()
    _, info, _ = await engine.version_and_info()
    engine_now = parse_time(info["SystemTime"])
    assert engine_now is not None
    assert engine.asked == [(int(WALL0 - 600), int(engine_now) + 1)]


# ------------------------------------------------------------------------------------------------ state.path


@pytest.mark.parametrize(
    ("yaml_text", "path"),
    [
        ("state:\n  path: null\n", None),
        ("state:\n  path:\n", None),
        ("state: {path: ~}\n", None),
        ("state:\n", "/var/lib/docker-image-exporter/state.json"),
        ("state: {}\n", "/var/lib/docker-image-exporter/state.json"),
    ],
    ids=["null", "empty", "tilde", "section-null", "section-empty"],
)
def test_state_path_null_means_in_memory_only(tmp_path: Path, yaml_text: str, path: str | None) -> None:
    from exporter.config import load_config

    file = tmp_path / "config.yml"
    file.write_text(yaml_text)
    assert load_config(str(file)).state.path == path


def test_an_in_memory_history_never_writes(machine: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    history = ImageHistory(None, clock=machine.clock())
    history.load()
    history.observe([A], machine.wall)
    history.save()
    assert list(tmp_path.iterdir()) == []
