"""Work too large for the event loop (plans, dry-run outcomes, a run's answer) in a worker thread that the
loop does not wait behind.

Why a thread is not enough by itself: a worker thread computing in Python holds the interpreter lock, and
CPython takes it away only after the switch interval (`sys.getswitchinterval()`). The event
loop gives the lock up again at each system call (every `epoll_wait`, read and write of a scrape), and each
time waits a whole interval to get it back: a scrape of many system calls waits many intervals behind one
plan. While such work runs, the interval is lowered to `SWITCH_INTERVAL`, so each
hand-back is short; the previous interval returns when the last such work ends.
The interval is process-wide: meanwhile the other threads only switch more often, which costs little.

The cyclic garbage collector is held meanwhile too (`hold_collector`): a collection keeps the lock for its
whole length, and the work's own allocations (a candidate and an outcome per image) trigger collections that
walk every image of the snapshot. What the work builds has no
cycles and is freed by reference counting; freeing it lowers the collector's counts again, so when the
objects are gone before the collector resumes (a dry run holds it until its answer is sent), they cost no
collection at all.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds a worker may keep the interpreter lock from a thread waiting for it, while off-loop work runs.
SWITCH_INTERVAL = 0.00005

_lock = threading.Lock()
_computing = 0
_saved_interval = 0.0
_holds = 0
_collecting = False


def hold_collector() -> None:
    """Pause cyclic collection until the matching `release_collector` (holds nest, from any thread)."""
    global _holds, _collecting
    with _lock:
        if _holds == 0:
            _collecting = gc.isenabled()  # off already (start-up, a test): left as found
            gc.disable()
        _holds += 1


def release_collector() -> None:
    global _holds
    with _lock:
        _holds -= 1
        if _holds == 0 and _collecting:
            gc.enable()


def collector_holds() -> int:
    """How many holds keep the collector paused now."""
    return _holds


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
    try:
        return fn(*args)
    finally:
        with _lock:
            _computing -= 1
            if _computing == 0:
                sys.setswitchinterval(_saved_interval)
        release_collector()


async def off_loop(fn: Callable[..., T], /, *args: object) -> T:
    """`fn(*args)` in a worker thread, the event loop handed the interpreter lock promptly meanwhile."""
    return await asyncio.to_thread(_lowered, fn, args)
