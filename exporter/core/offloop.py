"""Work too large for the event loop (plans, dry-run outcomes, a run's answer) in a worker thread that the
loop does not wait behind.

Why a thread is not enough by itself: a worker thread computing in Python holds the interpreter lock, and
CPython takes it away only after the switch interval (`sys.getswitchinterval()`). The event
loop gives the lock up again at each system call (every `epoll_wait`, read and write of a scrape), and each
time waits a whole interval to get it back: a scrape of many system calls waits many intervals behind one
plan. While such work runs, the interval is lowered to `SWITCH_INTERVAL`, so each
hand-back is short; the previous interval returns when the last such work ends.
The interval is process-wide: meanwhile the other threads only switch more often, which costs little.

The cyclic garbage collector is held meanwhile too (`hold_collector`, see exporter.core.gcpolicy): a
collection keeps the lock for its whole length, and the work's own allocations (a candidate and an outcome
per image) trigger collections that walk every image of the snapshot.

What holds the lock without a switch point is a single call into C: sorting many keys (`sorted_in_slices`
sorts in slices and merges them in Python) and freeing many objects at once, as when the last reference to
a large plan goes. `free_later` takes such results over so that they are freed here, a slice at a time, once
everything else has let go of them.

Scrapes first: even with the lock handed back promptly, a scrape served while such work runs shares the
interpreter with it about evenly, so it takes about twice its own time. While the event loop serves a scrape
(`scrapes_first`, from its handler's start until its body is written), off-loop work pauses at its
`checkpoint()` calls: a read of one number while no scrape is in flight, a wait (without the lock) for the
scrape to end when one is. A pause is bounded (`PAUSE_LIMIT`); after a pause cut short by that bound the
thread runs `RUN_AFTER_LIMIT` without pausing, so scrapes that never stop (overlapping, or one stuck writing
to a slow client) slow a plan down by half at most, never stop it. Only threads running `off_loop` work (and
`free_later`'s) pause: a checkpoint anywhere else, the event loop above all, returns at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from itertools import islice
from operator import itemgetter
from typing import Any, TypeVar

from exporter.core import gcpolicy

T = TypeVar("T")
K = TypeVar("K", bound=tuple[Any, ...])

#: Seconds a worker may keep the interpreter lock from a thread waiting for it, while off-loop work runs.
SWITCH_INTERVAL = 0.00005

#: Items sorted, or freed, in one call at most: such a call holds the interpreter lock from start to end.
SLICE = 2048
#: Items of a list encoded in one `json.dumps` call at most by `dumps_in_slices` (records of a dozen fields),
#: and decoded between two checkpoints by `loads_in_slices`.
JSON_SLICE = 256
#: Answers shorter than this (bytes) are decoded in one `json.loads` call: a few milliseconds at most.
LOADS_IN_ONE = 256 * 1024
#: How often `free_later` looks whether the results it holds are its own alone (seconds), and how long it
#: waits for that before letting go of them as they are. Short: a result still held when the next dry run
#: builds its own (back to back, a few tenths of a second apart) puts two runs' records in memory at once,
#: and the allocator keeps that peak; the thread runs only while it holds something.
FREE_INTERVAL = 0.01
FREE_PATIENCE = 60.0

_lock = threading.Lock()
_computing = 0
_saved_interval = 0.0
_held: list[tuple[float, object]] = []  # (when taken over, result) for free_later
_freeing = False

#: Longest one checkpoint waits for the scrapes in flight to end (seconds): a scrape takes a few milliseconds.
PAUSE_LIMIT = 0.05
#: After a pause cut short by `PAUSE_LIMIT`, how long the thread runs before a checkpoint pauses it again.
RUN_AFTER_LIMIT = 0.05
_scrapes = 0  # scrapes in flight (`scrapes_first`)
_no_scrape = threading.Event()  # set while none is
_no_scrape.set()
_worker = threading.local()  # .depth: off-loop calls running in this thread; .free_until: see RUN_AFTER_LIMIT

hold_collector = gcpolicy.hold
release_collector = gcpolicy.release
collector_holds = gcpolicy.holds


def computing() -> int:
    """How many off-loop calls are computing now (the lowered interval holds while this is above 0)."""
    return _computing


def _lowered(fn: Callable[..., T], args: tuple[object, ...]) -> T:
    """`fn(*args)` with the interval lowered and the collector held for exactly as long as it runs (a call
    cancelled before its thread started changes nothing; one whose caller went away restores both when it
    really ends)."""
    global _computing, _saved_interval
    hold_collector()
    with _lock:
        if _computing == 0:
            _saved_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_saved_interval, SWITCH_INTERVAL))
        _computing += 1
    _worker.depth = getattr(_worker, "depth", 0) + 1
    try:
        checkpoint()  # a scrape in flight goes first from the start
        return fn(*args)
    finally:
        _worker.depth -= 1
        with _lock:
            _computing -= 1
            if _computing == 0:
                sys.setswitchinterval(_saved_interval)
        release_collector()


async def off_loop(fn: Callable[..., T], /, *args: object) -> T:
    """`fn(*args)` in a worker thread, the event loop handed the interpreter lock promptly meanwhile."""
    return await asyncio.to_thread(_lowered, fn, args)


def checkpoint() -> None:
    """Where off-loop work may pause for the scrapes in flight (see the module doc); call it every few hundred
    items of a long loop. Costs one read of a number while no scrape is in flight."""
    if _scrapes:
        _pause()


def _pause() -> None:
    if not getattr(_worker, "depth", 0):  # not off-loop work: the event loop itself, or an unrelated thread
        return
    if time.monotonic() < getattr(_worker, "free_until", 0.0):
        return
    if not _no_scrape.wait(PAUSE_LIMIT):
        _worker.free_until = time.monotonic() + RUN_AFTER_LIMIT


@contextlib.contextmanager
def scrapes_first() -> Iterator[None]:
    """Off-loop work pauses at its checkpoints while this runs (on the event loop: a scrape being served),
    whatever way it ends; nested and concurrent uses count, the work resumes when the last one ends."""
    global _scrapes
    with _lock:
        _scrapes += 1
        _no_scrape.clear()
    try:
        yield
    finally:
        with _lock:
            _scrapes -= 1
            if _scrapes == 0:
                _no_scrape.set()


def scrapes_in_flight() -> int:
    """How many `scrapes_first` blocks are running now."""
    return _scrapes


def dumps_in_slices(value: Any) -> str:
    """`json.dumps(value)` (default options: the same text), with a checkpoint between slices of `SLICE`
    items of each long list (`JSON_SLICE`): one `json.dumps` call over a large answer holds the interpreter lock
    throughout.
    Dicts with keys other than strings, and anything else, are encoded in one call each."""
    if isinstance(value, dict) and all(type(key) is str for key in value):
        return "{" + ", ".join(f"{json.dumps(key)}: {dumps_in_slices(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list | tuple) and len(value) > JSON_SLICE:
        parts: list[str] = []
        for start in range(0, len(value), JSON_SLICE):
            checkpoint()
            parts.append(json.dumps(value[start : start + JSON_SLICE])[1:-1])
        return "[" + ", ".join(parts) + "]"
    checkpoint()
    return json.dumps(value)


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
#: Characters of an array of objects decoded in one `json.loads` call by `loads_in_slices` (about a hundred
#: images of a listing: well under a millisecond).
LOADS_SLICE = 64 * 1024
#: Where one object ends and the next begins in an engine's compact JSON. Inside a string the same characters
#: can occur (a label value), so a cut there is only a guess, confirmed by its slice decoding (below).
_NEXT_OBJECT = '},{"'


def loads_in_slices(body: bytes | bytearray | str) -> Any:
    """`json.loads(body)`: the same value, the same errors, in slices with a checkpoint between them, for the
    top-level array and the arrays in a top-level object (an engine's listing, `/system/df`'s `Images`): one
    `json.loads` of a large host's listing holds the interpreter lock from its first byte to its last.

    An array of objects is cut after about `LOADS_SLICE` characters where one object seems to end and the
    next to begin, and each slice is decoded as an array of its own. A wrong cut (inside a string, or past the
    array's end) leaves a slice that is not JSON: a string left open, a bracket unmatched, data after the
    end. Then the rest of the array is decoded an item per call. Short answers, other shapes and anything
    malformed go to one `json.loads` call, whose value or error is the answer."""
    if len(body) < LOADS_IN_ONE:
        return json.loads(body)
    text = body if isinstance(body, str) else bytes(body).decode(json.detect_encoding(body), "surrogatepass")
    start = _space_after(text, 0)
    if text[start : start + 1] not in ("[", "{"):
        return json.loads(text)
    try:
        value, end = _container(text, start, 0)
        if _space_after(text, end) != len(text):
            raise ValueError("extra data")
    except (ValueError, IndexError):
        return json.loads(text)  # malformed: json.loads raises its own error, naming the place
    return value


def _space_after(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    return match.end() if match else at


def _container(text: str, at: int, depth: int) -> tuple[Any, int]:
    """The array or object opening at `text[at]` and where it ends: an object's members one call each (an
    array among them sliced), an array's items in slices."""
    if text[at] == "[":
        return _array(text, at)
    members: dict[str, Any] = {}
    at = _space_after(text, at + 1)
    if text[at] == "}":
        return members, at + 1
    while True:
        if text[at] != '"':
            raise ValueError("expecting a key")
        key, at = json.decoder.scanstring(text, at + 1)  # type: ignore[attr-defined]
        at = _space_after(text, at)
        if text[at] != ":":
            raise ValueError("expecting ':'")
        at = _space_after(text, at + 1)
        if depth == 0 and text[at] == "[":
            members[key], at = _array(text, at)
        else:
            members[key], at = _DECODER.raw_decode(text, at)
        ended, at = _after_item(text, at, "}")
        if ended:
            return members, at


def _array(text: str, at: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    at = _space_after(text, at + 1)
    if text[at] == "]":
        return items, at + 1
    while text[at] == "{":  # slices of objects, while the cuts hold
        cut = text.find(_NEXT_OBJECT, at + LOADS_SLICE)
        if cut < 0:
            break
        try:
            items.extend(json.loads("[" + text[at : cut + 1] + "]"))
        except ValueError:
            break
        at = cut + 2
        checkpoint()
    while True:  # the rest, an item per call
        if len(items) % JSON_SLICE == 0:
            checkpoint()
        item, at = _DECODER.raw_decode(text, at)
        items.append(item)
        ended, at = _after_item(text, at, "]")
        if ended:
            return items, at


def _after_item(text: str, at: int, close: str) -> tuple[bool, int]:
    """Past an item of an array or object: (True, past `close`) at its end, else (False, the next item)."""
    at = _space_after(text, at)
    if text[at] == close:
        return True, at + 1
    if text[at] != ",":
        raise ValueError("expecting ','")
    return False, _space_after(text, at + 1)


def sorted_in_slices(items: list[K]) -> list[K]:
    """`sorted(items)`, for tuples whose keys are distinct, in steps that each hold the interpreter lock
    briefly: slices of `SLICE` sorted one call each, merged by `heapq.merge` (Python code, where the lock
    changes hands as anywhere else). The same order as one sort."""
    if len(items) <= SLICE:
        return sorted(items)
    runs: list[list[K]] = []
    for i in range(0, len(items), SLICE):
        checkpoint()
        runs.append(sorted(items[i : i + SLICE]))
    merged = heapq.merge(*runs)
    out: list[K] = []
    while True:
        checkpoint()
        step = len(out)
        out.extend(islice(merged, SLICE))
        if len(out) == step:
            return out


def sorted_by(items: list[K], first: int, then: int) -> list[K]:
    """`sorted(items, key=lambda i: (i[first], i[then]))`, for tuples whose `first` is a number, holding the
    interpreter lock briefly: one sort by that number alone (numbers compare much faster than tuples), then,
    in Python, each run of equal numbers sorted by `then` (in slices when long). Stable, as one sort."""
    out = sorted(items, key=itemgetter(first))
    by_then = itemgetter(then)
    start, count, checked = 0, len(out), 0
    while start < count:
        if start - checked >= SLICE:
            checkpoint()
            checked = start
        value = out[start][first]
        end = start + 1
        while end < count and out[end][first] == value:
            end += 1
        if end - start > SLICE:
            keyed = sorted_in_slices([(by_then(item), n, item) for n, item in enumerate(out[start:end])])
            out[start:end] = [item for _, _, item in keyed]
        elif end - start > 1:
            out[start:end] = sorted(out[start:end], key=by_then)
        start = end
    return out


def free_later(*results: object) -> None:
    """Take `results` over so that they are freed in a worker thread, a slice at a time, once nothing else
    refers to them (or after `FREE_PATIENCE` seconds, then wherever their last reference goes). For results
    with many items (a plan, a list of outcomes) whose last reference would otherwise go on the event loop:
    freeing them there is one long call into C."""
    global _freeing
    now = time.monotonic()
    with _lock:
        _held.extend((now, result) for result in results)
        if _freeing:
            return
        _freeing = True
    threading.Thread(target=_free_held, name="offloop-free", daemon=True).start()


def held_for_freeing() -> int:
    """How many results `free_later` holds now."""
    return len(_held)


def _free_held() -> None:
    """The thread of `free_later`: until nothing is held, every `FREE_INTERVAL` free what is ours alone."""
    global _freeing
    while True:
        time.sleep(FREE_INTERVAL)
        with _lock:
            if not _held:
                _freeing = False
                return
            now = time.monotonic()
            ours: list[object] = []
            for index in range(len(_held) - 1, -1, -1):
                since, result = _held[index]
                # references: the list entry's tuple, `result` here, getrefcount's argument
                if sys.getrefcount(result) <= 3 or now - since > FREE_PATIENCE:
                    ours.append(result)
                    del _held[index]
            del result
        if ours:
            _lowered(_free_in_slices, (ours,))


def _free_in_slices(results: list[object]) -> None:
    """Free `results` (each ours alone), their large tuples and lists a slice of items at a time."""
    while results:
        result = results.pop()
        parts = _large_parts(result)
        del result  # the container goes; its items stay in `parts` for now
        for items in parts:
            while items:
                checkpoint()
                del items[-SLICE:]


def _large_parts(result: object) -> list[list[Any]]:
    """The items of `result` (a sequence, the values of a dict, or a record whose fields are) in lists of
    their own."""
    if isinstance(result, list | tuple):
        return [list(result)]
    if isinstance(result, dict):
        return [list(result.values())]
    fields = getattr(result, "__dict__", None)
    if fields is None:
        return []
    return [list(value) for value in fields.values() if isinstance(value, list | tuple) and len(value) > SLICE]
