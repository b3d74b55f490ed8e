"""What the engine does not remember: when each image was last used and when it arrived here.

Last-used times come from container create/start events, running containers seen by polls, and each
container's own `State.FinishedAt`/`StartedAt` (read once per container, so a use from before the
exporter started counts from its first poll); arrival
times from images appearing or being pulled/loaded/tagged. Both drive remediation (LRU order, min_age), so
they persist in a small JSON file together with the set of images present at the last save.

The arrival rule (`observe`), because on the classic store a pull leaves no trace the engine will tell
us later (no `LastTagTime`, `Created` is the build time):
- an image present at the last save keeps what was recorded for it (or nothing: it is as old as its
  `Created`/`LastTagTime` say);
- any other image counts as arriving when this exporter first sees it: after downtime, after the state
  file was lost or corrupt, and on the very first start, everything new to the file is "just arrived".
Losing history therefore makes remediation more conservative about age, never less. Replayed engine
events (only the last 256 survive in the engine) can move an arrival or a last use later, never earlier.

Clock steps and untrusted files (see exporter.core.clocks): each image's age reference is anchored to the
offset of the wall clock from the boot clock when it was first seen (`anchor`), so a forward step does
not age it. Anchors are kept in the file with the kernel's boot ID and reused only in the same boot. The
file's times are trusted only when every one is a finite positive number, none lies in the future, and
`saved_at` fits the boot: from another boot not after this boot began, otherwise (this boot, or a file
naming no boot) not after now. Otherwise the whole image history is distrusted, logged with the reason, and every image
counts as arriving when first seen, as without a file. `CLOCK_TOLERANCE` allows for clock readings taken
a moment apart; it is also the only span by which a state saved on a clock running ahead can shorten
the replay of engine events.

The same file keeps the `schedules` section (`ScheduleState`: when each scheduled action last ran), so a
restart neither skips nor doubles a scheduled run. It is read on its own: a damaged image history does not
lose the schedules, and a damaged schedules section (logged) only makes the actions concerned wait for
their next occurrence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from bisect import bisect_left
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

from exporter.core.clocks import CLOCK, Clock
from exporter.core.logs import kv
from exporter.core.schedulestate import SECTION as SCHEDULES
from exporter.core.schedulestate import ScheduleState

log = logging.getLogger("exporter.history")  # the caller= name log pipelines filter on, not the file's place

STATE_VERSION = 2
#: Seconds a saved time may lie ahead of the check it must pass (two clock readings a moment apart).
CLOCK_TOLERANCE = 10.0


class UntrustedTimes(ValueError):
    """The state file parses but its times cannot be trusted: the message says which and why."""


class _JsonConstant:
    """What `json.loads` makes of NaN, Infinity and -Infinity here (Python's json accepts them by default):
    not a number, so every check of a time refuses it, while the rest of the file (the schedules) still
    parses."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _finite(value: object, what: str) -> float:
    """A finite number; anything else (a JSON constant, a bool, a string, 1e999) distrusts the file."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UntrustedTimes(f"{what} is {value!r}, not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise UntrustedTimes(f"{what} is {value!r}, not a finite number")
    return number


def _time(value: object, what: str, latest: float) -> float:
    """A finite, positive POSIX time not after `latest`; anything else distrusts the file."""
    number = _finite(value, what)
    if number <= 0:
        raise UntrustedTimes(f"{what} is {value!r}, not a time")
    if number > latest + CLOCK_TOLERANCE:
        raise UntrustedTimes(f"{what} is {number - latest:.0f}s in the future")
    return number


def _times(table: object, what: str, latest: float) -> dict[str, float]:
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise UntrustedTimes(f"{what} is not an object")
    return {str(k): _time(v, f"{what}[{k}]", latest) for k, v in table.items()}


#: Blocks a table's encoded members are kept in (by the key's hash): a change re-encodes its block's members.
MEMBER_BLOCKS = 1024


class _Members:
    """One table's JSON object text kept block by block, each block the members (`"key": value`) of the keys
    that hash to it, re-encoded only for the blocks whose keys changed since the last save: encoding every
    entry holds the interpreter lock in proportion to the images, while a change touches a few. One string per
    block rather than one per member: a member string costs its header and the allocator's rounding on top of
    its text, about as much again, for every image (the loader reads a mapping: member order is free)."""

    def __init__(self) -> None:
        self._keys: list[list[str]] = [[] for _ in range(MEMBER_BLOCKS)]  # each block's keys, as last encoded
        self._texts: list[str] = [""] * MEMBER_BLOCKS
        self._changed: set[str] = set()
        self._all = True

    def touch(self, key: str) -> None:
        self._changed.add(key)

    def replaced(self) -> None:
        """The whole table was replaced (a load): encode it afresh."""
        self._all = True

    def text(self, table: dict[str, Any]) -> list[str]:
        """The object's text in pieces (written one after the other: no copy of the whole)."""
        blocks: dict[int, list[str]] = {}
        if self._all:
            self._keys = [[] for _ in range(MEMBER_BLOCKS)]
            self._texts = [""] * MEMBER_BLOCKS
            for key in table:
                blocks.setdefault(hash(key) % MEMBER_BLOCKS, []).append(key)
            self._all = False
        else:
            for key in self._changed:
                blocks.setdefault(hash(key) % MEMBER_BLOCKS, []).append(key)
        for block, touched in blocks.items():
            keys = [key for key in dict.fromkeys([*self._keys[block], *touched]) if key in table]
            self._keys[block] = keys
            self._texts[block] = ", ".join([f"{json.dumps(key)}: {json.dumps(table[key])}" for key in keys])
        self._changed = set()
        pieces = ["{"]
        for text in filter(None, self._texts):  # the blocks as they are: no copy of the whole text per save
            pieces += (text, ", ")
        if len(pieces) > 1:
            pieces[-1] = "}"  # in place of the last separator
        else:
            pieces.append("}")
        return pieces


def _object_pieces(parts: dict[str, list[str]]) -> list[str]:
    """A JSON object's text in pieces, its members' keys sorted, from each member's value in pieces."""
    out = ["{"]
    for key, value in sorted(parts.items()):
        out += [", " if len(out) > 1 else "", json.dumps(key), ": ", *value]
    out.append("}")
    return out


def _forget(table: dict[str, Any], members: _Members, image_ids: list[str]) -> bool:
    """Take `image_ids` out of `table` (and its encoded members); whether there were any."""
    for image_id in image_ids:
        del table[image_id]
        members.touch(image_id)
    return bool(image_ids)


def _came_and_went(known: set[str], present: Collection[str], touched: Iterable[str]) -> tuple[list[str], list[str]]:
    """Of the `touched` IDs: those present and not `known`, and those `known` and no longer present."""
    came = [i for i in touched if i in present and i not in known]
    return came, [i for i in touched if i in known and i not in present]


#: The characters a JSON string holds as they are: printable ASCII but the quote and the backslash.
_PLAIN = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def _plain(text: str) -> bool:
    """Whether `json.dumps(text)` is `text` in quotes (no escapes): checked in C, not character by character."""
    return text.isascii() and not text.encode("ascii").translate(None, _PLAIN)


class _SortedList:
    """`present` as its sorted JSON list, kept sorted item by item: an applied event adds or removes an ID or
    two, and sorting every ID on each save would cost in proportion to the images. The IDs are joined as they
    are (in C) when none needs escaping (image IDs never do), which costs less than keeping every item's
    encoded copy; encoded one by one otherwise."""

    def __init__(self) -> None:
        self._ids: list[str] | None = None  # sorted; None: sort afresh from the set
        self._escaped: set[str] = set()  # the IDs whose JSON text needs escapes

    def replaced(self) -> None:
        self._ids = None

    def change(self, came: Iterable[str], went: Iterable[str]) -> None:
        ids = self._ids
        if ids is None:
            return
        for image_id in went:
            index = bisect_left(ids, image_id)
            if index < len(ids) and ids[index] == image_id:
                del ids[index]
                self._escaped.discard(image_id)
        for image_id in came:
            index = bisect_left(ids, image_id)
            if index == len(ids) or ids[index] != image_id:
                ids.insert(index, image_id)
                if not _plain(image_id):
                    self._escaped.add(image_id)

    def text(self, present: set[str]) -> list[str]:
        if self._ids is None:
            self._ids = ids = sorted(present)
            self._escaped = set() if _plain("".join(ids)) else {i for i in ids if not _plain(i)}
        if self._escaped:
            return ["[", ", ".join(map(json.dumps, self._ids)), "]"]
        return ['["', '", "'.join(self._ids), '"]'] if self._ids else ["[]"]


class ImageHistory:
    """Image ID -> last-used and arrival timestamps, plus the IDs present at the last save."""

    def __init__(self, path: str | None, clock: Clock | None = None) -> None:
        self.path = Path(path) if path else None
        self.clock = clock or CLOCK
        self.last_used: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        #: Image ID -> (age reference, clock offset when first seen with it): see `anchor`.
        self.anchors: dict[str, tuple[float, float]] = {}
        #: IDs the state proves were present (at `saved_at`); anything else seen is new here.
        self.present: set[str] = set()
        #: When the loaded state was saved: where a replay of engine events starts. None = no usable state.
        self.saved_at: float | None = None
        #: When `present` was last listed: saved as the next start's `saved_at`.
        self.observed_at: float | None = None
        #: Scheduled actions' last runs (see exporter.core.schedulestate), saved in the same file.
        self.schedules = ScheduleState()
        self._dirty = False
        self._save_lock = threading.Lock()  # the poller and the remediation service both save
        #: The encoded tables (see `_Members`), and `present` as a sorted JSON list while it holds.
        self._encoded = {"last_used": _Members(), "arrived": _Members(), "anchors": _Members()}
        self._present_list = _SortedList()

    def load(self) -> None:
        """Read the state file; missing, unreadable, from an older format or with times that cannot be trusted
        (see the module docstring): start with nothing proven."""
        if self.path is None:
            log.info("state.path is null: image history and schedules are kept in memory only")
            return
        try:
            data = json.loads(self.path.read_text(), parse_constant=_JsonConstant)
            self._load_schedules(data)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state format (want version {STATE_VERSION})")
            if "saved_at" not in data:  # only schedules were saved (before the first poll)
                log.info(
                    "no image history yet: every image counts as arriving when first seen", extra=kv(path=self.path)
                )
                return
            now = self.clock.wall()
            saved_at = self._saved_at(data, now)
            last_used = _times(data.get("last_used"), "last_used", now)
            arrived = _times(data.get("arrived"), "arrived", now)
            present = {str(i) for i in data["present"]}
            anchors = self._anchors(data)
        except FileNotFoundError:
            log.info("no image history yet: every image counts as arriving when first seen", extra=kv(path=self.path))
            return
        except UntrustedTimes as exc:
            log.warning(
                "distrusting the image history's times: every image counts as arriving when first seen",
                extra=kv(path=self.path, reason=exc),
            )
            return
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
            log.warning(
                "ignoring unreadable image history: every image counts as arriving when first seen",
                extra=kv(path=self.path, err=exc),
            )
            return
        self.last_used, self.arrived, self.present, self.saved_at = last_used, arrived, present, saved_at
        self.anchors = anchors
        for members in self._encoded.values():
            members.replaced()
        self._present_list.replaced()
        log.info("loaded image history", extra=kv(images=len(present), path=self.path))

    def _saved_at(self, data: dict[str, Any], now: float) -> float:
        """`saved_at`, if it fits this boot: not after now, and from another boot not after this boot began."""
        saved_at = _time(data["saved_at"], "saved_at", now)
        saved_boot, this_boot = data.get("boot_id"), self.clock.boot_id
        if saved_boot is not None and this_boot is not None and saved_boot != this_boot:
            began = self.clock.boot_started()
            if saved_at > began + CLOCK_TOLERANCE:
                raise UntrustedTimes(
                    f"saved_at is {saved_at - began:.0f}s after this boot began, yet the file was saved in "
                    "another boot: the wall clock is behind the one that saved it"
                )
        return saved_at

    def _anchors(self, data: dict[str, Any]) -> dict[str, tuple[float, float]]:
        """The saved seen offsets, when saved in this boot (offsets of another boot mean nothing here)."""
        if self.clock.boot_id is None or data.get("boot_id") != self.clock.boot_id:
            return {}
        table = data.get("anchors")
        if table is None:
            return {}
        if not isinstance(table, dict):
            raise UntrustedTimes("anchors is not an object")
        anchors: dict[str, tuple[float, float]] = {}
        for image_id, entry in table.items():
            if not isinstance(entry, list) or len(entry) != 2:
                raise UntrustedTimes(f"anchors[{image_id}] is {entry!r}, not [age reference, offset]")
            anchors[str(image_id)] = (
                _finite(entry[0], f"anchors[{image_id}]"),
                _finite(entry[1], f"anchors[{image_id}]"),
            )
        return anchors

    def _load_schedules(self, data: object) -> None:
        """The `schedules` section, whatever the state of the rest; problems are logged (conservative)."""
        section = data.get(SCHEDULES) if isinstance(data, dict) else None
        self.schedules, problems = ScheduleState.from_json(section)
        for problem in problems:
            log.warning("problem in the state file's schedules", extra=kv(path=self.path, err=problem))
        if isinstance(data, dict) and data.get("version") == STATE_VERSION and section is None:
            log.info(
                "no schedules in the state file yet: scheduled actions wait for their next occurrence",
                extra=kv(path=self.path),
            )

    def observe(self, present: Iterable[str], now: float) -> list[str]:
        """Record the images listed now: those not proven present before arrive at `now`; returns them."""
        ids = set(present)
        self.observed_at = now
        new = sorted(ids - self.present)
        for image_id in new:
            self.mark_arrived(image_id, now)
        if ids != self.present:
            self.present = ids
            self._present_list.replaced()
            self._dirty = True
        self.retain(ids)
        return new

    def observe_changed(self, present: Collection[str], touched: Iterable[str], now: float) -> list[str]:
        """`observe(present, now)` when only the `touched` IDs can differ from the images observed last (an
        applied event): costs those, not every image. `observe` when the counts disagree."""
        known, touched = self.present, set(touched)
        came, went = _came_and_went(known, present, touched)
        if self.observed_at is None or len(known) + len(came) - len(went) != len(present):
            return self.observe(present, now)
        self.observed_at = now
        came.sort()
        for image_id in came:
            self.mark_arrived(image_id, now)
        if came or went:
            known.update(came)
            known.difference_update(went)
            self._present_list.change(came, went)
            self._dirty = True
        # `retain` for these: an arrival marked for an image that never came is forgotten too, as `observe` does
        for name, table in self._tables():
            self._dirty |= _forget(table, self._encoded[name], [i for i in touched if i in table and i not in present])
        return came

    def mark_used(self, image_id: str, when: float) -> None:
        if self.last_used.get(image_id, 0.0) < when:
            self.last_used[image_id] = when
            self._encoded["last_used"].touch(image_id)
            self._dirty = True

    def mark_arrived(self, image_id: str, when: float) -> None:
        if self.arrived.get(image_id, 0.0) < when:
            self.arrived[image_id] = when
            self._encoded["arrived"].touch(image_id)
            self._dirty = True

    def anchor(self, image_id: str, reference: float, offset: float) -> float:
        """The clock offset when `image_id` was first seen with this age reference; `offset` (now's) when new.

        A changed age reference (a new tag, a later arrival) is a new start: anchored afresh.
        """
        held = self.anchors.get(image_id)
        if held is not None and held[0] == reference:
            return held[1]
        self.anchors[image_id] = (reference, offset)
        self._encoded["anchors"].touch(image_id)
        self._dirty = True
        return offset

    def retain(self, present: Iterable[str]) -> None:
        """Forget images that are gone, so the file stays as small as the image list."""
        keep = present if isinstance(present, set | frozenset) else set(present)
        for name, table in self._tables():
            if len(table) <= len(keep) and keep.issuperset(table):
                continue  # nothing gone from this table (checked in C: this runs on every applied event)
            self._dirty |= _forget(table, self._encoded[name], [i for i in table if i not in keep])

    def _tables(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return (("last_used", self.last_used), ("arrived", self.arrived), ("anchors", self.anchors))

    def save(self) -> None:
        """Write atomically (temp file + rename) when something changed; failures are logged, not fatal.

        No image history is written before the first `observe` (a state without the present images proves
        nothing), unless one was loaded: it is written back as it was. Schedules are written regardless.
        Blocking: for the shutdown path; a running exporter uses `save_in_thread`.
        """
        data = self.prepare()
        if data is not None:
            self.write(data)

    async def save_in_thread(self) -> None:
        """`save` with the file work in a worker thread. The tables are encoded here, on the event loop thread
        that changes them: reading them in the worker could meet a dict changing size mid-read."""
        data = self.prepare()
        if data is not None:
            await asyncio.to_thread(self.write, data)

    def prepare(self) -> list[str] | None:
        """The file's text now, in pieces (encoded on the thread that changes the tables, re-encoding only
        what changed since the last save), or None when nothing changed; marks it as being written."""
        schedules_changed = self.schedules.changed
        if self.path is None or not (schedules_changed or (self._dirty and self.observed_at is not None)):
            return None
        parts: dict[str, list[str]] = {
            "version": [json.dumps(STATE_VERSION)],
            SCHEDULES: [json.dumps(self.schedules.to_json(), sort_keys=True)],
        }
        saved_at = self.observed_at if self.observed_at is not None else self.saved_at
        if saved_at is not None:
            parts.update(
                saved_at=[json.dumps(saved_at)],
                present=self._present_list.text(self.present),
                last_used=self._encoded["last_used"].text(self.last_used),
                arrived=self._encoded["arrived"].text(self.arrived),
            )
            anchors = self._encoded["anchors"].text(self.anchors)  # kept current even when not written
            if self.clock.boot_id is not None:
                parts.update(boot_id=[json.dumps(self.clock.boot_id)], anchors=anchors)
        self.schedules.changed = False
        self._dirty = False
        return _object_pieces(parts)

    def write(self, data: list[str]) -> None:
        """Write `data` (from `prepare`) atomically; serialised, since the poller and the service both save.
        On failure the state counts as changed again, so the next save retries."""
        assert self.path is not None
        with self._save_lock:
            tmp: str | None = None
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
                with os.fdopen(fd, "w") as handle:
                    handle.writelines(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            except OSError as exc:
                self.schedules.changed = True  # try again next time
                self._dirty = True
                log.warning("cannot save image history", extra=kv(path=self.path, err=exc))
                if tmp is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
