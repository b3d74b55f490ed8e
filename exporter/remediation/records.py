"""One way to turn the remediation records (plans, candidates, outcomes) into JSON for the API and history.

A record's JSON is its dataclass fields with `image_id` called `id` (the engine's word), tuples as lists,
and optional fields left out while empty, so records do not each hand-write a near-copy of their fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

_RENAMED = {"image_id": "id"}


def record_json(record: Any, *, omit_empty: Collection[str] = ()) -> dict[str, Any]:
    """The fields of a flat dataclass as JSON; fields named in `omit_empty` are left out when falsy/None."""
    data: dict[str, Any] = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in omit_empty and (value is None or value == "" or value == ()):
            continue
        data[_RENAMED.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
    return data


def rfc3339(t: float | None) -> str | None:
    """A POSIX time as RFC 3339 in UTC (`2026-11-29T03:00:00Z`), for people reading the API and the log."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
