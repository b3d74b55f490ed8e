"""ImageHistory on its own: the arrival rule that keeps `min_age` honest across downtime and lost state."""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.core.clocks import Clock
from exporter.engine.apishapes import normalize_id
from exporter.engine.client import Engine, EngineNotFound, Lane
from exporter.metrics.selfmetrics import PollMetrics
from exporter.state import history as history_module
from exporter.state.events import EventFollower, event_time
from exporter.state.history import STATE_VERSION, ImageHistory
from exporter.state.poller import Poller

T0 = 1_700_000_000.0
A, B, C = (f"sha256:{c * 64}" for c in "abc")


def saved(tmp_path: Path, present: list[str], now: float = T0) -> Path:
    """A state file written by a real ImageHistory that had seen `present` at `now`."""
    path = tmp_path / "state.json"
    history = ImageHistory(str(path))
    history.observe(present, now)
    history.mark_used(A, now - 5)
    history.save()
    return path


def test_round_trip_keeps_uses_arrivals_and_what_was_present(tmp_path: Path) -> None:
    path = saved(tmp_path, [A, B])
    again = ImageHistory(str(path))
    again.load()
    assert again.present == {A, B}
    assert again.saved_at == T0
    assert again.last_used == {A: T0 - 5}
    assert again.arrived == {A: T0, B: T0}  # the first start knew nothing: both arrived when first seen


def test_images_present_at_the_last_save_keep_their_age_and_new_ones_arrive_now(tmp_path: Path) -> None:
    path = saved(tmp_path, [A, B])
    later = T0 + 86400
    history = ImageHistory(str(path))
    history.load()
    assert history.observe([A, B, C], later) == [C]  # C was pulled while the exporter was down
    assert history.arrived == {A: T0, B: T0, C: later}


@pytest.mark.parametrize(
    "content",
    ["{not json", "[]", json.dumps({"version": 1, "last_used": {}, "arrived": {}}), json.dumps({"version": 99})],
    ids=["corrupt", "not-an-object", "older-format-without-present", "unknown-version"],
)
def test_an_unusable_state_file_makes_every_image_just_arrived(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    history = ImageHistory(str(path))
    history.load()
    assert history.saved_at is None and history.present == set()
    later = T0 + 86400
    assert history.observe([A, B], later) == [A, B]
    assert history.arrived == {A: later, B: later}
    assert "ignoring unreadable image history" in caplog.text


def test_a_missing_state_file_makes_every_image_just_arrived(tmp_path: Path) -> None:
    history = ImageHistory(str(tmp_path / "absent" / "state.json"))
    history.load()
    assert history.observe([A], T0) == [A]
    assert history.arrived == {A: T0}


def test_arrivals_and_uses_only_move_later(tmp_path: Path) -> None:
    history = ImageHistory(None)
    history.observe([A], T0)
    history.mark_arrived(A, T0 - 100)  # a replayed event from before: a hint that cannot make A older
    history.mark_used(A, T0)
    history.mark_used(A, T0 - 100)
    assert history.arrived[A] == T0 and history.last_used[A] == T0


def test_gone_images_are_forgotten_and_come_back_as_new(tmp_path: Path) -> None:
    history = ImageHistory(None)
    history.observe([A, B], T0)
    history.observe([A], T0 + 10)
    assert B not in history.arrived
    assert history.observe([A, B], T0 + 20) == [B]  # deleted and pulled again: young again
    assert history.arrived[B] == T0 + 20


def test_nothing_is_saved_before_the_first_listing(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    history = ImageHistory(str(path))
    history.mark_used(A, T0)  # an event before the first poll
    history.save()
    assert not path.exists()  # a file without the present images would prove nothing


def test_the_saved_file_is_versioned_json(tmp_path: Path) -> None:
    data = json.loads(saved(tmp_path, [B, A]).read_text())
    assert data["version"] == STATE_VERSION and data["present"] == [A, B] and data["saved_at"] == T0


def test_a_failing_save_is_logged_and_leaves_no_temp_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "state.json"
    target.mkdir()  # os.replace onto a directory fails
    history = ImageHistory(str(target))
    history.observe([A], T0)
    history.save()
    assert "cannot save image history" in caplog.text
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]
    target.rmdir()
    history.save()  # still unsaved after the failure: the next save tries again
    assert json.loads(target.read_text())["present"] == [A]
    assert history.prepare() is None  # saved: nothing left to write


async def test_a_save_in_a_thread_writes_the_tables_as_they_were_when_it_started(tmp_path: Path) -> None:
    """The copy is made on the event loop: a change after the save started belongs to the next save."""
    history = ImageHistory(str(tmp_path / "state.json"))
    history.observe([A], T0)
    data = history.prepare()
    assert data is not None
    history.mark_used(A, T0 + 5)  # the loop goes on changing the tables while the worker writes
    history.write(data)
    assert json.loads((tmp_path / "state.json").read_text())["last_used"] == {}
    await history.save_in_thread()
    assert json.loads((tmp_path / "state.json").read_text())["last_used"] == {A: T0 + 5}


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "api"


class RecordedEngine(Engine):
    """bookworm's recorded answers for the reads a poll and a replay make; nothing else is reachable."""

    def __init__(self) -> None:
        super().__init__("unix:///nonexistent/never.sock")
        self.events_asked: list[dict[str, Any]] = []

    def _load(self, name: str) -> Any:
        return json.loads((FIXTURES / "bookworm" / name).read_text())

    async def version_and_info(self) -> tuple[dict[str, Any], dict[str, Any], str]:
        return self._load("version.json"), self._load("info.json"), "1.41"

    async def list_images(self) -> list[dict[str, Any]]:
        return list(self._load("images.json"))

    async def list_containers(self, *, lane: Lane = "api") -> list[dict[str, Any]]:
        return list(self._load("containers-all.json"))

    async def inspect_image(self, ref: str, *, lane: Lane = "api") -> dict[str, Any]:
        for image in self._load("images.json"):
            if normalize_id(ref) == normalize_id(image["Id"]) or ref in (image.get("RepoTags") or []):
                return {"Id": image["Id"], "RepoTags": image.get("RepoTags"), "Metadata": {}}
        raise EngineNotFound(f"no such image: {ref}", 404)

    async def inspect_container(self, container_id: str) -> dict[str, Any]:
        raise EngineNotFound("gone", 404)

    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]:
        self.events_asked.append({"since": since, "until": until})
        return list(self._load("events.json"))


def recorded_ids() -> list[str]:
    return [normalize_id(i["Id"]) for i in json.loads((FIXTURES / "bookworm" / "images.json").read_text())]


async def test_the_first_poll_after_downtime_marks_unproven_images_as_just_arrived(tmp_path: Path) -> None:
    """Reproduces #2: the first poll used to mark nothing, so images pulled while down were 'old'."""
    ids = recorded_ids()
    known, pulled_while_down = ids[:-2], ids[-2:]
    state = saved(tmp_path, known)
    history = ImageHistory(str(state))
    history.load()
    later = time.time()  # after the recorded images were created, so arrival is what makes them young
    poller = Poller(RecordedEngine(), parse_config({}), history, PollMetrics(CollectorRegistry()), clock=lambda: later)
    snapshot = await poller.poll_once()
    assert snapshot is not None
    arrived = {i.id: i.arrived for i in snapshot.images}
    assert {i: arrived[i] for i in pulled_while_down} == dict.fromkeys(pulled_while_down, later)
    assert {i: arrived[i] for i in known} == dict.fromkeys(known, T0)
    assert all(snapshot.by_id[i].age_reference == later for i in pulled_while_down)


async def test_start_replays_engine_events_since_the_saved_time(tmp_path: Path) -> None:
    """Uses and tags during downtime come back from the engine's buffer (a hint: it keeps 256 events)."""
    state = saved(tmp_path, recorded_ids())
    history = ImageHistory(str(state))
    history.load()
    engine = RecordedEngine()
    poller = Poller(engine, parse_config({}), history, PollMetrics(CollectorRegistry()))
    follower = EventFollower(engine, poller, history, PollMetrics(CollectorRegistry()))
    events = json.loads((FIXTURES / "bookworm" / "events.json").read_text())
    assert await follower.replay() == len(events)
    assert engine.events_asked[0]["since"] == int(T0)
    doomed = next(normalize_id(i["Id"]) for i in engine._load("images.json") if "doomed:2" in (i["RepoTags"] or []))
    tagged_at = max(event_time(e) for e in events if e.get("Action") == "tag")
    assert history.arrived[doomed] == max(tagged_at, T0)
    assert follower.resume_from == max(event_time(e) for e in events)


async def test_no_saved_state_means_no_replay(tmp_path: Path) -> None:
    engine = RecordedEngine()
    history = ImageHistory(None)
    poller = Poller(engine, parse_config({}), history, PollMetrics(CollectorRegistry()))
    follower = EventFollower(engine, poller, history, PollMetrics(CollectorRegistry()))
    assert await follower.replay() == 0 and engine.events_asked == []


async def test_replay_skips_what_the_saved_state_already_covers(tmp_path: Path) -> None:
    """`since` has whole seconds: events up to the saved time itself were seen before the save.

    Reproduces a regression caught by the engine tests: images loaded a moment before the save were
    replayed as fresh arrivals and held back by min_age.
    """
    events = json.loads((FIXTURES / "bookworm" / "events.json").read_text())
    tagged_at = max(event_time(e) for e in events if e.get("Action") == "tag")
    history = ImageHistory(str(saved(tmp_path, recorded_ids(), now=tagged_at)))
    history.load()
    engine = RecordedEngine()
    poller = Poller(engine, parse_config({}), history, PollMetrics(CollectorRegistry()))
    follower = EventFollower(engine, poller, history, PollMetrics(CollectorRegistry()))
    later = [e for e in events if event_time(e) > tagged_at]
    assert len(later) < len(events)
    assert await follower.replay() == len(later)


class StreamingEngine(RecordedEngine):
    """A live stream that stays open until closed, and a replay that is slow: what happens in between counts."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.closed = threading.Event()
        self.during_replay: dict[str, Any] | None = None
        self.deliver: Callable[[dict[str, Any]], None] | None = None

    def follow_events(
        self, on_event: Callable[[dict[str, Any]], None], on_connected: Callable[[], None] | None = None
    ) -> None:
        self.order.append("stream connected")
        self.deliver = on_event
        if on_connected is not None:
            on_connected()
        self.closed.wait(30)

    def close_events(self) -> None:
        self.closed.set()

    async def events_between(self, since: int, until: int) -> list[dict[str, Any]]:
        self.order.append("replay")
        assert self.deliver is not None and self.during_replay is not None
        self.deliver(self.during_replay)  # an event that happens while the replay is asked for
        await asyncio.sleep(0.05)
        return await super().events_between(since, until)


async def test_the_live_stream_is_subscribed_before_the_replay_so_nothing_falls_between(tmp_path: Path) -> None:
    """Reproduces a loss found by the 10k benchmark: the replay ran first and the live stream began only after
    its events were handled, so a 1,000-image load during a start-up replay lost ~400 images (the engine
    keeps only its last 256 events for a stream that starts later)."""
    history = ImageHistory(str(saved(tmp_path, recorded_ids())))
    history.load()
    engine = StreamingEngine()
    events = json.loads((FIXTURES / "bookworm" / "events.json").read_text())
    engine.during_replay = next(e for e in events if e.get("Action") == "tag")
    poller = Poller(engine, parse_config({}), history, PollMetrics(CollectorRegistry()))
    follower = EventFollower(engine, poller, history, PollMetrics(CollectorRegistry()))
    handled: list[dict[str, Any]] = []
    real_handle = follower.handle_batch

    async def handle_batch(events: list[dict[str, Any]]) -> None:
        handled.extend(events)
        await real_handle(events)

    follower.handle_batch = handle_batch  # type: ignore[method-assign]
    task = asyncio.create_task(follower.run())
    try:
        for _ in range(1000):
            if len(handled) > len(events):  # the replayed ones and the one the live stream delivered
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert engine.order[:2] == ["stream connected", "replay"]
    assert handled.count(engine.during_replay) == 2  # once live, once replayed: harmless, nothing lost


# ----------------------------------------------------------------------------- the schedules section


def test_schedules_round_trip_with_the_history(tmp_path: Path) -> None:
    path = saved(tmp_path, [A])
    history = ImageHistory(str(path))
    history.load()
    history.schedules.counts_from("weekly", T0 + 10)
    history.schedules.record("weekly", T0 + 20)
    history.save()
    again = ImageHistory(str(path))
    again.load()
    assert again.schedules.last_run("weekly") == T0 + 20
    assert again.schedules.counts_from("weekly", T0 + 99) == T0 + 20
    assert again.present == {A} and again.saved_at == T0  # the image history was written back unchanged


def test_schedules_are_saved_before_the_first_listing_without_inventing_a_history(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    history = ImageHistory(str(path))
    history.schedules.record("weekly", T0)
    history.save()
    assert "present" not in json.loads(path.read_text())  # nothing proven present: no image history
    again = ImageHistory(str(path))
    again.load()
    assert again.schedules.last_run("weekly") == T0
    assert again.saved_at is None and again.present == set()


def test_a_corrupt_schedules_section_is_logged_and_only_loses_the_schedules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = saved(tmp_path, [A, B])
    data = json.loads(path.read_text())
    data["schedules"] = {"weekly": {"since": "yesterday"}, "daily": {"since": T0, "last_run": T0 + 5}}
    path.write_text(json.dumps(data))
    history = ImageHistory(str(path))
    history.load()
    assert history.present == {A, B}
    assert history.schedules.last_run("daily") == T0 + 5
    assert "weekly" not in history.schedules.actions  # starts over: waits for its next occurrence
    assert any("schedules.weekly" in str(getattr(r, "log_fields", {}).get("err")) for r in caplog.records)


def test_a_corrupt_image_history_keeps_the_schedules(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(
        json.dumps({"version": STATE_VERSION, "present": 7, "saved_at": "x", "schedules": {"w": {"since": T0}}})
    )
    history = ImageHistory(str(path))
    history.load()
    assert history.saved_at is None and history.present == set()
    assert history.schedules.counts_from("w", T0 + 60) == T0


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["use", "arrive", "anchor", "observe", "save", "reload"]),
            st.sets(st.sampled_from([A, B, C, "sha256:" + "d" * 64]), max_size=4),
            st.integers(min_value=1, max_value=1000),
        ),
        max_size=40,
    )
)
def test_a_save_re_encoding_only_what_changed_writes_every_table_as_it_is(
    steps: list[tuple[str, set[str], int]],
) -> None:
    """Each save re-encodes only the entries changed since the last one; the file must still hold every table
    exactly as it is in memory (and `present` sorted), after any sequence of changes, saves and reloads."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.json"
        history = ImageHistory(str(path), clock=Clock(lambda: T0 + 2000, boot_id="boot"))
        for action, ids, when in steps:
            now = T0 + when
            if action == "use":
                for image_id in ids:
                    history.mark_used(image_id, now)
            elif action == "arrive":
                for image_id in ids:
                    history.mark_arrived(image_id, now)
            elif action == "anchor":
                for image_id in ids:
                    history.anchor(image_id, now, float(when))
            elif action == "observe":
                history.observe(ids, now)
            elif action == "save":
                history.save()
            elif path.exists():
                history = ImageHistory(str(path), clock=Clock(lambda: T0 + 2000, boot_id="boot"))
                history.load()
        history.save()
        if history.observed_at is None:
            return  # nothing listed since the start or the reload: nothing new is written
        if not path.exists():  # only empty listings so far: nothing changed to write
            assert not (history.present or history.last_used or history.arrived or history.anchors)
            return
        data = json.loads(path.read_text())
        assert data["present"] == sorted(history.present)
        assert data["last_used"] == history.last_used and data["arrived"] == history.arrived
        assert data["anchors"] == {k: list(v) for k, v in history.anchors.items()}


@settings(max_examples=150, deadline=None)
@given(
    st.sets(st.sampled_from("abcdefgh"), max_size=6),
    st.lists(
        st.tuples(
            st.sets(st.sampled_from("abcdefgh"), max_size=3),  # the IDs an event touched (toggled present)
            st.sets(st.sampled_from("abcdefghij"), max_size=2),  # touched too, present or not as they are
            st.sets(st.sampled_from("abcdefghij"), max_size=2),  # marked arrived before the apply
            st.booleans(),  # a save after this step
        ),
        max_size=12,
    ),
)
def test_observing_only_the_touched_images_equals_observing_all(
    first: set[str], steps: list[tuple[set[str], set[str], set[str], bool]]
) -> None:
    """`observe_changed` (an applied event: only the touched IDs can have come or gone) leaves the history,
    and the file it saves, exactly as `observe` of every image would."""
    with tempfile.TemporaryDirectory() as folder:
        full = ImageHistory(f"{folder}/full.json")
        changed = ImageHistory(f"{folder}/changed.json")
        present = {f"sha256:{c * 64}" for c in first}
        for history in (full, changed):
            history.observe(present, T0)
            history.save()
        for n, (toggled, also, arrivals, save) in enumerate(steps, start=1):
            now = T0 + n
            toggled_ids = {f"sha256:{c * 64}" for c in toggled}
            touched = toggled_ids | {f"sha256:{c * 64}" for c in also} | {f"sha256:{c * 64}" for c in arrivals}
            present = present ^ toggled_ids
            for history in (full, changed):
                for c in sorted(arrivals):
                    history.mark_arrived(f"sha256:{c * 64}", now - 0.5)
            assert full.observe(present, now) == changed.observe_changed(present, touched, now)
            assert (full.present, full.arrived, full.last_used, full.anchors, full.observed_at) == (
                changed.present,
                changed.arrived,
                changed.last_used,
                changed.anchors,
                changed.observed_at,
            )
            if save:
                assert full.prepare() == changed.prepare()


def test_observing_only_the_touched_images_falls_back_when_the_last_listing_differs(tmp_path: Path) -> None:
    """Counts that disagree (the last observation was of another listing): every image is observed."""
    history = ImageHistory(str(tmp_path / "state.json"))
    history.observe([A], T0)
    assert history.observe_changed([A, B, C], [B], T0 + 1) == [B, C]
    assert history.present == {A, B, C} and history.arrived == {A: T0, B: T0 + 1, C: T0 + 1}


_IDS = st.sampled_from([A, B, C, 'sha256:"quoted"', "sha256:back\\slash", "sha256:caf\u00e9", "sha256:tab\there", ""])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["observe", "changed", "used", "arrived", "save"]), st.lists(_IDS, max_size=4)),
        max_size=12,
    )
)
def test_the_saved_file_holds_the_tables_whatever_changed_between_saves(steps: list[tuple[str, list[str]]]) -> None:
    """The file is encoded incrementally (blocks of members, the present list joined as is when no ID needs
    escaping): after any sequence of changes and saves it reads back as the tables, IDs needing escapes too."""
    # two blocks: changed keys share a block with unchanged ones
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(history_module, "MEMBER_BLOCKS", 2):
        path = Path(tmp) / "state.json"
        history = ImageHistory(str(path))
        now = T0
        history.observe([A], now)  # something to save
        for step, ids in steps:
            now += 1
            if step == "observe":
                history.observe(ids, now)
            elif step == "changed" and history.observed_at is not None:
                touched = set(ids)
                present = (history.present - touched) | {i for i in ids if hash(i) % 2}
                history.observe_changed(present, touched, now)
            elif step == "used":
                for image_id in ids:
                    history.mark_used(image_id, now)
            elif step == "arrived":
                for image_id in ids:
                    history.mark_arrived(image_id, now)
            else:
                history.save()
        history.mark_used(A, now + 1)  # something changed since the last save
        history.save()
        data = json.loads(path.read_text())
        assert data["present"] == sorted(history.present)
        assert (data["last_used"], data["arrived"]) == (history.last_used, history.arrived)
