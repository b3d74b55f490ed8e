"""One polling loop for every "wait until" of the harness: exceptions from the predicate count as "not yet"
(the program may be restarting), and the caller turns a timeout into its own error with its own log tail."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll(
    predicate: Callable[[], T],
    timeout: float,
    interval: float,
    on_timeout: Callable[[BaseException | None], Exception],
    check: Callable[[], None] = lambda: None,
) -> T:
    """`predicate()`'s first truthy answer; `on_timeout(last exception)` is raised after `timeout` seconds.

    `check()` runs before each try and may raise to stop early (a program that exited will not get ready).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        check()
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise on_timeout(last)
        time.sleep(interval)
