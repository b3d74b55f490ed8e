"""Summaries of repeated timings: median and spread, and the ratio to a reference measured in the same run."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def percentile(samples: Sequence[float], pct: float) -> float:
    """The `pct`-th percentile (linear interpolation between the closest ranks, as numpy's default)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(samples: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """n, p50/p95/p99 and min/max of `samples` (seconds or any unit), rounded for the report."""
    return {
        "n": len(samples),
        "p50": round(statistics.median(samples), digits),
        "p95": round(percentile(samples, 95), digits),
        "p99": round(percentile(samples, 99), digits),
        "min": round(min(samples), digits),
        "max": round(max(samples), digits),
    }


def ratio(value: float, reference: float) -> float | None:
    """`value / reference`, None when the reference is not positive (nothing to compare with)."""
    return round(value / reference, 3) if reference > 0 else None


def compared(samples: Sequence[float], reference: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """A figure next to its reference from the same run: both summaries and the p50/p95/p99 ratios."""
    ours, ref = summary(samples, digits), summary(reference, digits)
    return {
        "value": ours,
        "reference": ref,
        "ratio": {p: ratio(ours[p], ref["p50"]) for p in ("p50", "p95", "p99")},
    }
