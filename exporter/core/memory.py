"""The C allocator's settings: keep the process's memory flat under repeated large, short-lived work.

Why: a plan over many images builds and drops tens of megabytes of small objects in a worker thread. glibc's malloc
gives each thread that allocates its own arena (up to 8 per core) and keeps what is freed there for reuse,
so RSS climbs over repeated dry runs while the Python heap stays flat (tracemalloc). Two arenas
are enough for an exporter whose threads mostly wait on the engine, and `malloc_trim(0)` after a run gives the
freed pages back. Elsewhere (musl, macOS, a glibc without these calls) both are no-ops.

Blocks of a few megabytes (the text of a render, of the state file) are allocated and freed on every change.
glibc serves a large block by mmap, but after the first such block is freed it raises its mmap threshold to
that block's size, and from then on serves them from the heap, whose freed top is kept while smaller than
twice the threshold: RSS climbs by tens of megabytes over a few hundred changes with a flat Python heap.
`configure` therefore holds the threshold at glibc's starting value (MMAP_THRESHOLD), so such blocks
are unmapped when freed; `MALLOC_MMAP_THRESHOLD_` in the environment wins.

`configure` must run before the first thread starts (arenas are created on a thread's first malloc);
`MALLOC_ARENA_MAX` in the environment wins, as glibc documents.

Start-up also pauses Python's cyclic garbage collector (`pause_collector_for_startup`): importing pydantic,
aiohttp and the docker SDK creates a few hundred thousand long-lived objects, and each full collection on
the way walks all of them again (a visible part of start-up). Once the app is built they are frozen
(`gc.freeze`: never scanned again, still freed by reference counting) and collection resumes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
from functools import cache

log = logging.getLogger("exporter.memory")  # the caller= name log pipelines filter on, not the file's place

#: glibc's mallopt() parameter for the arena cap (malloc.h: M_ARENA_MAX).
M_ARENA_MAX = -8
#: Arenas for the whole process: the main thread's and one shared by the worker threads.
ARENA_MAX = 2
#: glibc's mallopt() parameter for the mmap threshold (malloc.h: M_MMAP_THRESHOLD).
M_MMAP_THRESHOLD = -3
#: Blocks from this size up are mmapped (and unmapped when freed): glibc's starting value, held fixed.
MMAP_THRESHOLD = 128 * 1024


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc, when this process runs on it (None on musl, macOS and anything without mallopt/malloc_trim)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


def configure() -> bool:
    """Cap glibc's arenas at ARENA_MAX (unless MALLOC_ARENA_MAX is set) and hold the mmap threshold at
    MMAP_THRESHOLD (unless MALLOC_MMAP_THRESHOLD_ is set); True when the arena cap took effect."""
    libc = _libc()
    if libc is None:
        return False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    done = bool(libc.mallopt(M_ARENA_MAX, ARENA_MAX))
    log.debug("malloc arenas capped at %d: %s", ARENA_MAX, "done" if done else "refused")
    return done


def release_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc `malloc_trim(0)`); True when some were released.

    Blocking for a few milliseconds on a large heap: call it in a worker thread, after big work, not per request.
    """
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


def pause_collector_for_startup() -> None:
    """Stop cyclic collection until `resume_collector_after_startup` (the launcher calls this first thing)."""
    gc.disable()


def resume_collector_after_startup() -> bool:
    """Freeze what start-up built and collect again from here on; a no-op (False) when it was not paused,
    as when the CLI runs inside another program or a test."""
    if gc.isenabled():
        return False
    gc.freeze()
    gc.enable()
    return True
