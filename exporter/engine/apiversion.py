"""Docker API versions: comparing them, and what a version changes in a request both engine clients send.

Standard library only: the launch read (`earlyread`) asks for the listing as the client will.
"""

from __future__ import annotations


def api_at_least(version: str | None, wanted: str) -> bool:
    """Compare `1.41`-style API versions."""
    if not version:
        return False
    try:
        have = tuple(int(p) for p in version.split("."))
        want = tuple(int(p) for p in wanted.split("."))
    except ValueError:
        return False
    return have >= want


def images_query(api_version: str | None) -> str:
    """The `/images/json` query: 1.42+ engines compute SharedSize only when asked (1.41 leaves it -1)."""
    return "shared-size=1" if api_at_least(api_version, "1.42") else ""
