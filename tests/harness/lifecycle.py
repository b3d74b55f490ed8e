"""The `with` protocol every harness service shares: start on enter, stop on exit, whatever happened."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Managed:
    """Base for harness services with `start()` and `stop()`; `with Service(...) as s:` cleans up after itself."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> object:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
