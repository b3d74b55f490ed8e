"""The wall clock against a clock that never steps: what `min_age` measures real elapsed time on.

Arrival times, `LastTagTime` and `Created` are wall-clock times (the exporter's own and the engine's). A
step of the wall clock (NTP's first sync on a device without a real-time clock, a VM restored from a
snapshot, a person running `date -s`) moves "now" without moving them: a forward step makes every image
look older by the size of the step. Linux's `CLOCK_BOOTTIME` counts real time since boot (suspend
included) and never steps, so the difference "wall - boot" (the *offset*) stays constant except across a
step, and its change since a moment is the net forward step since then.

Each image carries the offset from when the exporter first saw its current age reference
(`Image.seen_offset`); its age for `min_age` is the wall age minus any forward step since (`forward_step`):
the wall age at first sight, plus real time elapsed since, never more than the wall age. A backward step
only makes wall ages smaller, which is the safe side, so only forward steps are subtracted.

The boot clock restarts at every boot: offsets are comparable only within one boot, which the kernel's
boot ID (`/proc/sys/kernel/random/boot_id`, the host's even inside a container) names. The state file
keeps it, so a restart within the same boot keeps the seen offsets and another boot does not.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
#: Seconds the offset must move before it counts as moved: two readings of two clocks a moment apart differ
#: by microseconds, and equal offsets keep equal images equal (a publish rebuilds only what changed).
OFFSET_RESOLUTION = 1.0
#: Offset changes remembered (boot time, new offset) for `forward_step_within`: steps are rare events.
OFFSET_HISTORY = 64


def boot_clock() -> float:
    """Seconds since boot, counting suspend, never stepped (CLOCK_MONOTONIC where there is no BOOTTIME)."""
    clock_id = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(clock_id) if clock_id is not None else time.monotonic()


def read_boot_id(path: Path = BOOT_ID_PATH) -> str | None:
    """The kernel's ID of this boot; None where there is none (not Linux): no offset outlives the process."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


class Clock:
    """The wall clock and the boot clock read together (injectable: tests step a fake wall clock)."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        boot: Callable[[], float] = boot_clock,
        boot_id: str | None = None,
    ) -> None:
        self.wall = wall
        self.boot = boot
        self.boot_id = boot_id
        self._offset = self.wall() - self.boot()
        self._changes: deque[tuple[float, float]] = deque([(float("-inf"), self._offset)], maxlen=OFFSET_HISTORY)

    def offset(self) -> float:
        """Wall minus boot clock now: constant while the wall clock does not step (moves below
        OFFSET_RESOLUTION answer the previous value)."""
        boot = self.boot()
        value = self.wall() - boot
        if abs(value - self._offset) >= OFFSET_RESOLUTION:
            self._offset = value
            self._changes.append((boot, value))
        return self._offset

    def forward_step(self, since_offset: float | None) -> float:
        """How far the wall clock has stepped forward, net, since the offset was `since_offset` (0 if unknown)."""
        if since_offset is None:
            return 0.0
        return max(0.0, self.offset() - since_offset)

    def forward_step_within(self, seconds: float) -> float:
        """The net forward step over the last `seconds` of real time: now's offset minus the lowest in effect
        in that span (as read by `offset`, which every publish and plan calls)."""
        now = self.offset()
        start = self.boot() - seconds
        changes = list(self._changes)
        ends = [since for since, _ in changes[1:]] + [math.inf]  # each offset is in effect until the next change
        lowest = min(offset for (_, offset), end in zip(changes, ends, strict=True) if end > start)
        return max(0.0, now - lowest)

    def lowest(self) -> float:
        """The lowest offset read since this clock was made (the process started): the offset in effect at
        any moment since, or lower."""
        return min(offset for _, offset in self._changes)

    def boot_started(self) -> float:
        """When this boot began, on the wall clock as it is now."""
        return self.offset()


#: The process's clock: the poller records seen offsets with it, the planner and executor subtract steps.
CLOCK = Clock(boot_id=read_boot_id())
