"""When the cyclic garbage collector may run: paused while large work runs, never for long, and kept off
the snapshot's long-lived objects.

A collection holds the interpreter lock for its whole length, and a full one walks every object the process
tracks: with many images, the snapshot's per-image objects make each full collection long enough to stall a
scrape. Two tools, both process-wide:

- `hold` / `release`: pause collection while work that allocates much and frees it again (a plan, a dry
  run's outcomes) runs. Such work builds no cycles; freeing it lowers the collector's counts again, so when
  it is gone before the collector resumes, it costs no collection at all. A chain of holds (dry runs back
  to back, each taking its hold as the last one's goes) never keeps the collector from running for longer
  than `MAX_PAUSE_SECONDS`: a hold that finds it paused that long without one collection leaves it running.
  A chain ends when the collector runs, or is left running for `CHAIN_GAP_SECONDS` (had anything been due,
  the allocations of that time would have started a collection).
- `freeze_long_lived`: after a new snapshot is published, move every object alive then out of the
  collector's reach (`gc.freeze`). They are still freed by reference counting when the snapshot is
  replaced; only cycles among them would stay, so every `REFREEZE_SECONDS` the frozen set is returned to the
  collector and swept once, in the one full collection that then walks the whole heap.
"""

from __future__ import annotations

import gc
import threading
import time

#: Longest a chain of holds keeps the collector from running.
MAX_PAUSE_SECONDS = 30.0
#: A chain of holds ends when the collector ran, or was left running for this long in between (seconds).
CHAIN_GAP_SECONDS = 1.0
#: How often the objects frozen by `freeze_long_lived` are returned to the collector for one full sweep.
REFREEZE_SECONDS = 600.0

_lock = threading.Lock()
_holds = 0
_paused = False  # this module disabled the collector (it is re-enabled when the last hold goes)
_pause_started = 0.0  # when the current chain of holds first paused the collector
_collections_at_pause = -1  # `_collections()` then: a change means the chain ended
_resumed_at = 0.0  # when the last hold of a chain went
_last_thaw = time.monotonic()


def _collections() -> int:
    """Collections of any generation so far."""
    return sum(int(stats["collections"]) for stats in gc.get_stats())


def hold() -> None:
    """Pause cyclic collection until the matching `release` (holds nest, from any thread); a collector found
    off (start-up, a test) is left as found."""
    global _holds, _paused, _pause_started, _collections_at_pause
    with _lock:
        _holds += 1
        if not _paused and not gc.isenabled():
            return
        now = time.monotonic()
        if _paused:  # held already: unless for too long
            if now - _pause_started > MAX_PAUSE_SECONDS:
                gc.enable()
                _paused = False
            return
        collections = _collections()
        if collections != _collections_at_pause or now - _resumed_at >= CHAIN_GAP_SECONDS:  # a new chain
            _pause_started, _collections_at_pause = now, collections
        elif now - _pause_started > MAX_PAUSE_SECONDS:
            return  # this chain paused it long enough: it runs until it has collected once
        gc.disable()
        _paused = True


def release() -> None:
    global _holds, _paused, _resumed_at
    with _lock:
        _holds -= 1
        if _holds == 0 and _paused:
            gc.enable()
            _paused = False
            _resumed_at = time.monotonic()


def holds() -> int:
    """How many holds are taken now."""
    return _holds


def paused() -> bool:
    """Whether the holds keep the collector paused now."""
    return _paused


def freeze_long_lived() -> None:
    """Call after publishing a snapshot that replaced many objects (a poll, the end of a catch-up; one event's
    few objects are not worth a collection each): collect the young generations (what just became garbage,
    cycles included), then freeze everything alive, so no later collection walks it; every
    `REFREEZE_SECONDS`, a full collection first (frozen cycles become collectable again). Skipped while
    holds pause the collector: the work in progress is not long-lived."""
    global _last_thaw
    with _lock:
        if _paused or not gc.isenabled():
            return
        now = time.monotonic()
        if now - _last_thaw >= REFREEZE_SECONDS:
            _last_thaw = now
            gc.unfreeze()
            gc.collect()
        else:
            gc.collect(1)
        gc.freeze()
