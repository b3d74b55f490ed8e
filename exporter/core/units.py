"""Prometheus durations and byte sizes, parsed exactly and strictly so config errors name the value.

The one duration parser of the package: config, planner and landing page all go through it, so `1h30m`
means the same everywhere and the same as in Prometheus (`common/model.ParseDuration`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_MS_PER_UNIT = {"y": 31_536_000_000, "w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
#: Prometheus's grammar: each unit at most once, largest first (`1h30m` yes, `30m1h` and `1.5h` no).
DURATION_PATTERN = "^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$"
_DURATION_RE = re.compile(DURATION_PATTERN)
_UNIT_ORDER = ("y", "w", "d", "h", "m", "s", "ms")
_MAX_MS = 2**63 - 1  # Prometheus stores a duration as int64 nanoseconds / milliseconds: larger is "out of range"
_DURATION_HINT = "units y w d h m s ms, largest first, each at most once; or a bare 0"

#: SI units are powers of 1000 (as the docs always said: `5GB` is 5·10⁹), IEC ones powers of 1024; the
#: Kubernetes spellings `Ki`/`Mi`/`Gi`/`Ti` are IEC too. A bare `K`/`M`/`G`/`T` is refused: Docker's own
#: CLI reads `5G` as 5 GiB and Kubernetes as 5·10⁹, so either reading would surprise somebody.
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "pb": 10**15,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "pib": 2**50,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
    "pi": 2**50,
}
_AMBIGUOUS_BYTE_UNITS = {"k", "m", "g", "t", "p"}
SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtTpP]([iI][bB]?|[bB])|[bB])?\s*$"
_BYTES_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_HINT = "want e.g. 512MiB, 5GB (10⁹), 5GiB or 5Gi (2³⁰), or a number of bytes"


def parse_duration_ms(text: str) -> int:
    """Whole milliseconds for a Prometheus duration string; raise ValueError naming the text otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m, 7d, got {text!r} ({_DURATION_HINT})")
    if text == "0":  # Prometheus allows a bare 0 and nothing else without a unit
        return 0
    match = _DURATION_RE.fullmatch(text) if text else None
    if match is None:
        raise ValueError(f"expected a duration like 30s, 5m, 1h30m, 7d, got {text!r} ({_DURATION_HINT})")
    total = 0
    for unit, digits in zip(_UNIT_ORDER, match.groups()[1::2], strict=True):
        if digits is not None:
            total += int(digits) * _MS_PER_UNIT[unit]
    if total > _MAX_MS:
        raise ValueError(f"duration out of range: {text!r}")
    return total


def parse_duration(text: str) -> float:
    """Seconds for a Prometheus duration (`30s`, `5m`, `1h30m`, `7d`, `0`); ValueError otherwise."""
    return parse_duration_ms(text) / 1000


def format_duration(seconds: float) -> str:
    """Seconds back in Prometheus style, largest unit first (`1w2d`, `1h30m`, `250ms`, `0s`)."""
    rest = round(seconds * 1000)
    parts = []
    for unit in _UNIT_ORDER:
        size = _MS_PER_UNIT[unit]
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def parse_bytes(value: str | int) -> int:
    """Bytes for `5GB` (SI), `512MiB`/`512Mi` (IEC) or a plain non-negative integer; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}; {_SIZE_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size, got {value!r}; {_SIZE_HINT}")
    match = _BYTES_RE.match(value)
    unit = match.group(2).lower() if match else ""
    if match and unit in _AMBIGUOUS_BYTE_UNITS:
        raise ValueError(f"ambiguous size unit in {value!r}: write {unit.upper()}B (SI) or {unit.upper()}iB (IEC)")
    if not match or unit not in _BYTE_UNITS:
        raise ValueError(f"not a valid size: {value!r}; {_SIZE_HINT}")
    try:
        exact = Decimal(match.group(1)) * _BYTE_UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex admits only plain decimals
        raise ValueError(f"not a valid size: {value!r}") from None
    if exact != exact.to_integral_value():
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(exact)
