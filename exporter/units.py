"""Prometheus-style durations and human byte sizes, parsed strictly so config errors name the value."""

from __future__ import annotations

import re

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
    "y": 31536000.0,
}
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_BYTES_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(text: str) -> float:
    """Parse `30s`, `5m`, `1h30m`, `7d` (Prometheus syntax) into seconds; raise ValueError otherwise."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a duration like 30s, 5m, 1h, 7d, got {text!r}")
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"expected a duration like 30s, 5m, 1h, 7d, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds back in Prometheus style (for logs, the landing page and JSON answers)."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    rest, parts = int(seconds), []
    for unit in ("w", "d", "h", "m", "s"):
        size = int(_DURATION_UNITS[unit])
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def parse_bytes(value: str | int) -> int:
    """Parse `5GB` (SI), `512MiB` (IEC) or a plain integer number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like 5GB or 512MiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    match = _BYTES_RE.match(str(value))
    if not match or match.group(2).lower() not in _BYTE_UNITS:
        raise ValueError(f"expected a size like 5GB or 512MiB, got {value!r}")
    return int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
