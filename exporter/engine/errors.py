"""What an engine call raises, and the checks every answer passes before anyone reads it.

Shared by the SDK path (`client`) and the lean unix-socket client (`lean`), so an answer means the same
whichever path read it.
"""

from __future__ import annotations

from typing import Any

from exporter.core import offloop


class EngineError(Exception):
    """The engine answered with an error that is not about reachability."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EngineUnavailable(EngineError):
    """The engine could not be reached or did not answer in time."""


class EngineConflict(EngineError):
    """409: the image is in use, has children, or another prune is running."""


class EngineNotFound(EngineError):
    """404: the image (or reference) is already gone."""


class AnswerTooLarge(EngineError):
    """The answer is larger than `docker.max_response_bytes`: not read further, nothing of it used."""

    def __init__(self, what: str, limit: int, size: int | None) -> None:
        told = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        super().__init__(f"{what}: the answer is {told}, over docker.max_response_bytes ({limit})")


def decode(body: bytes | bytearray, what: str) -> Any:
    """The JSON in `body`; EngineError naming `what` when it is not JSON (or nests deeper than Python parses).
    A large answer is decoded in slices (`offloop.loads_in_slices`): other threads, the event loop above all,
    get the interpreter lock between them."""
    try:
        return offloop.loads_in_slices(body) if body.strip() else None
    except RecursionError:
        raise EngineError(f"{what}: the answer nests too deeply to be a Docker API answer") from None
    except ValueError as exc:
        raise EngineError(f"{what}: the answer is not JSON ({exc})") from None


def shaped(data: Any, kind: type, what: str) -> Any:
    """`data` when it is a JSON `kind` (list or dict); null as an empty one; else EngineError."""
    if data is None:
        return kind()
    if not isinstance(data, kind):
        name = "a list" if kind is list else "an object"
        raise EngineError(f"{what}: expected {name}, the engine answered {type(data).__name__}")
    return data


def status_error(status: int, message: str) -> EngineError:
    if status == 409:
        return EngineConflict(message, status)
    if status == 404:
        return EngineNotFound(message, status)
    return EngineError(message, status)


def answered(status: int, body: bytes, what: str) -> Any:
    """The decoded JSON of a raw HTTP answer; for a status of 400 or more, the error it says (its `message`
    when the body is the engine's JSON error, else the start of the body)."""
    if status >= 400:
        try:
            data = decode(body, what)
        except EngineError:
            data = None
        message = data.get("message") if isinstance(data, dict) else None
        raise status_error(status, str(message or body[:1000].decode(errors="replace").strip()))
    return decode(body, what)
