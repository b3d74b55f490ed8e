"""exporter/core/memory.py: the allocator settings take effect on glibc, give way to MALLOC_ARENA_MAX, and never fail.

Each check runs in a fresh interpreter: the arena cap only counts before a thread starts, and pytest's own
process already has threads.
"""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys

import pytest

from exporter.core import memory

GLIBC = platform.libc_ver()[0] == "glibc"


def fresh(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_")}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True, timeout=60
    )
    return out.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="the settings exist on glibc only")
def test_on_glibc_the_arena_cap_takes_effect_before_threads_start():
    assert fresh("import exporter.core.memory as m; print(m.configure())") == "True"


def test_an_operator_malloc_arena_max_wins():
    assert fresh("import exporter.core.memory as m; print(m.configure())", MALLOC_ARENA_MAX="4") == "False"


RSS_AFTER_BIG_BLOCKS = """
import exporter.core.memory as m
if CONFIGURE:
    m.configure()
def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
before = rss()
for size in (8 << 20, 7 << 20, 6 << 20):  # blocks of a few MB made and dropped, as a render's text per change
    block = b"x" * size
    del block
print(rss() - before)
"""


@pytest.mark.skipif(not GLIBC, reason="mallopt exists on glibc only")
def test_blocks_of_a_few_megabytes_go_back_to_the_system_when_freed():
    """Without the fixed mmap threshold glibc keeps such blocks in the heap once one was freed (the control)."""
    kept = int(fresh(RSS_AFTER_BIG_BLOCKS.replace("CONFIGURE", "True")))
    control = int(fresh(RSS_AFTER_BIG_BLOCKS.replace("CONFIGURE", "False")))
    assert kept < 2048 and control > 4096, (kept, control)  # KiB


@pytest.mark.skipif(not GLIBC, reason="malloc_trim exists on glibc only")
def test_freed_heap_goes_back_to_the_system():
    # 50 MB of small blocks freed: the top of the heap is free and malloc_trim(0) releases it
    code = "import exporter.core.memory as m; x = [bytearray(1000) for _ in range(50_000)]; del x; print(m.release_free_memory())"
    assert fresh(code) == "True"


def test_the_collector_paused_at_launch_resumes_with_start_up_frozen() -> None:
    """The launcher pauses cyclic collection; building the app resumes it, with what start-up made frozen
    (never scanned again). Run inside another program (tests, embedding) nothing changes."""
    gc.unfreeze()  # what an earlier test's publishes froze (gcpolicy.freeze_long_lived)
    assert gc.isenabled()
    assert not memory.resume_collector_after_startup()  # not paused: left alone, nothing frozen
    assert gc.get_freeze_count() == 0
    memory.pause_collector_for_startup()
    try:
        assert not gc.isenabled()
        assert memory.resume_collector_after_startup()
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.enable()
        gc.unfreeze()  # the rest of this test process keeps collecting everything
