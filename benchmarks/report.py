"""The Markdown table of a results JSON: one row per figure of issue 14, the reference and ratio beside it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.measure import SCRAPE_PACE

Row = tuple[str, Callable[[dict[str, Any]], str]]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _spread(s: dict[str, Any], fmt: Callable[[float], str] = _ms) -> str:
    """p50 (p95 / p99, n) when there are enough rounds for percentiles to mean anything, else min-max."""
    if s["n"] >= 10:
        return f"{fmt(s['p50'])} (p95 {fmt(s['p95'])}, p99 {fmt(s['p99'])}, n={s['n']})"
    if s["n"] > 1:
        return f"{fmt(s['p50'])} ({fmt(s['min'])}-{fmt(s['max'])}, n={s['n']})"
    return fmt(s["p50"])


def _vs(c: dict[str, Any], fmt: Callable[[float], str] = _ms) -> str:
    return (
        f"{_spread(c['value'], fmt)} vs {fmt(c['reference']['p50'])} = x{c['ratio']['p50']} (p99 x{c['ratio']['p99']})"
    )


def _paced(p: dict[str, Any], what: str) -> str:
    during, rest = p[f"scrape_during_{what}"], p["scrape_at_rest"]
    return (
        f"p50 {_ms(during['p50'])}, p99 {_ms(during['p99'])}, max {_ms(during['max'])} (n={during['n']}) vs at rest "
        f"p99 {_ms(rest['p99'])} (n={rest['n']}) = p99 x{p['scrape_p99_ratio']}"
    )


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _rate(x: float) -> str:
    return f"{x:.0f}/s"


ROWS: list[Row] = [
    ("`/metrics` default settings vs raw `/images/json`", lambda r: _vs(r["scrape"]["default"])),
    (
        "… its size",
        lambda r: f"{r['scrape']['default']['series']} series, {_mb(r['scrape']['default']['exposition_bytes'])}",
    ),
    ("`/metrics` uncapped vs raw `/images/json`", lambda r: _vs(r["scrape"]["uncapped"])),
    (
        "… its size",
        lambda r: f"{r['scrape']['uncapped']['series']} series, {_mb(r['scrape']['uncapped']['exposition_bytes'])}",
    ),
    ("`/metrics` over HTTPS, new handshake each vs plain HTTP", lambda r: _vs(r["tls_scrape"])),
    (
        "change → end of the first scrape showing it, uncapped (tag/rmi) vs the CLI call",
        lambda r: _vs(r["change"]),
    ),
    (
        "… start of that scrape, polls",
        lambda r: (
            f"{_spread(r['change']['scrape_start'])}; {r['change']['polls']:.0f} polls for "
            f"{r['change']['changes']} changes"
        ),
    ),
    (
        "RSS over N changes (uncapped)",
        lambda r: (
            f"{r['change_memory']['changes']} changes: {_mb(r['change_memory']['rss_before_bytes'])} → "
            f"{_mb(r['change_memory']['rss_after_bytes'])} ({r['change_memory']['rss_growth_ratio'] * 100:+.1f} %)"
        ),
    ),
    (
        "burst of untags → `/metrics`",
        lambda r: (
            f"{r['burst']['untags']} untags: API {_ms(r['burst']['api_seconds'])}, "
            f"gone from /metrics after {_ms(r['burst']['to_metrics_seconds'])}, {r['burst']['polls']:.0f} polls"
        ),
    ),
    ("start → ready vs one raw list", lambda r: _vs(r["startup"])),
    ("… inspecting every image (raw)", lambda r: _spread(r["startup"]["inspect_every_image"])),
    (
        "… the interpreter: `python -c pass`; the exporter's imports (`-X importtime`)",
        lambda r: f"{_spread(r['startup']['python_c_pass'])}; {_spread(r['startup']['imports'])}",
    ),
    (
        "catch-up after ready: LastTagTime filled / first disk usage (vs all inspects raw / one raw df)",
        lambda r: (
            f"{_spread(r['catch_up']['last_tag_times'])} / {_spread(r['catch_up']['first_disk_usage'])} "
            f"(vs {_ms(r['catch_up']['raw_inspect_every_image']['p50'])} / "
            f"{_ms(r['catch_up']['raw_system_df']['p50'])})"
        ),
    ),
    (
        "… LastTagTime and `/system/df` filled in behind ready (after the start)",
        lambda r: (
            "; ".join(
                f"{name}: LastTagTime {_ms(f['last_tag_times_seconds'])}, df {_ms(f['disk_usage_seconds'])}"
                for name, f in r.get("fill", {}).items()
            )
            or "-"
        ),
    ),
    (
        "dry-run plan `free_space` (audit log on tmpfs)",
        lambda r: (
            f"{_spread(r['plans']['free']['plan'])}, {r['plans']['free']['candidates']} candidates; "
            f"while scraped every {SCRAPE_PACE} s: {_spread(r['plans']['free']['plan_while_scraped'])}"
        ),
    ),
    (
        "dry-run plan `keep_last` (audit log on tmpfs)",
        lambda r: (
            f"{_spread(r['plans']['keep']['plan'])}, {r['plans']['keep']['candidates']} candidates; "
            f"while scraped every {SCRAPE_PACE} s: {_spread(r['plans']['keep']['plan_while_scraped'])}"
        ),
    ),
    (
        "dry-run plans, audit log on disk (fsync per line)",
        lambda r: (
            "free_space "
            + _spread(r["plans_audit_on_disk"]["free"]["plan"])
            + ", keep_last "
            + _spread(r["plans_audit_on_disk"]["keep"]["plan"])
        ),
    ),
    ("… one audit line appended + fsync'd there", lambda r: _spread(r["audit_fsync"])),
    *[
        (
            f"scrape every {SCRAPE_PACE * 1000:.0f} ms while `{name}` plans vs the same at rest (default settings)",
            lambda r, a=a: _paced(r["plans"][a], "plan"),
        )
        for a, name in (("free", "free_space"), ("keep", "keep_last"))
    ],
    (
        f"scrape every {SCRAPE_PACE * 1000:.0f} ms while deleting vs the same at rest",
        lambda r: _paced(r["deletion"], "run"),
    ),
    (
        "… the same while `docker image prune -a` deletes (the exporter following its events)",
        lambda r: (
            f"p50 {_ms(r['deletion']['scrape_during_prune']['p50'])}, p99 {_ms(r['deletion']['scrape_during_prune']['p99'])}"
            f" (n={r['deletion']['scrape_during_prune']['n']}); ours p99 x{r['deletion']['scrape_p99_vs_prune']} of it"
        ),
    ),
    (
        "RSS default / uncapped",
        lambda r: f"{_mb(r['process']['default']['rss_bytes'])} / {_mb(r['process']['uncapped']['rss_bytes'])}",
    ),
    (
        "RSS after N dry runs",
        lambda r: (
            f"{r['dry_run_memory']['dry_runs']} runs: {_mb(r['dry_run_memory']['rss_before_bytes'])} → "
            f"{_mb(r['dry_run_memory']['rss_after_bytes'])} ({r['dry_run_memory']['rss_growth_ratio'] * 100:+.1f} %)"
        ),
    ),
    (
        "idle CPU default / uncapped",
        lambda r: (
            f"{r['process']['default']['idle_cpu_percent']:.2f} % / "
            f"{r['process']['uncapped']['idle_cpu_percent']:.2f} % over {r['process']['default']['idle_seconds']:.0f} s"
        ),
    ),
    (
        "deleting unused images vs `docker image prune -a`",
        lambda r: f"{r['deletion']['images']} images: {_vs(r['deletion'], _rate)}",
    ),
]


def markdown(report: dict[str, Any]) -> str:
    """Rows are figures, columns image counts; a figure missing from a run shows as `-`."""
    runs = report["runs"]
    lines = [
        "| figure | " + " | ".join(f"{r['images']:,} images" for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for title, cell in ROWS:
        cells = []
        for r in runs:
            try:
                cells.append(cell(r))
            except (KeyError, TypeError, ValueError):
                cells.append("-")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Every figure a run must produce, as a path into a run's JSON, and whether it must be > 0 (else >= 0:
#: a change can be visible in the very first scrape, an idle process can use no measurable CPU).
FIGURES: list[tuple[tuple[str, ...], bool]] = [
    *[
        (("scrape", key, part, p), True)
        for key in ("default", "uncapped")
        for part in ("value", "reference")
        for p in ("p50", "p95", "p99")
    ],
    *[(("scrape", key, "ratio", p), True) for key in ("default", "uncapped") for p in ("p50", "p99")],
    *[(("scrape", key, field), True) for key in ("default", "uncapped") for field in ("series", "exposition_bytes")],
    (("tls_scrape", "value", "p50"), True),
    (("tls_scrape", "reference", "p50"), True),
    (("change", "value", "p50"), True),
    (("change", "value", "p95"), True),
    (("change", "scrape_start", "p50"), False),
    (("change", "served", "p50"), True),
    (("change_memory", "rss_before_bytes"), True),
    (("change_memory", "rss_after_bytes"), True),
    (("change", "reference", "p50"), True),
    (("change", "polls"), False),  # 0 once events are applied without a re-list (issue 14)
    (("burst", "api_seconds"), True),
    (("burst", "to_metrics_seconds"), True),
    (("burst", "polls"), False),
    (("startup", "value", "p50"), True),
    (("startup", "reference", "p50"), True),
    (("startup", "ratio", "p50"), True),
    (("startup", "inspect_every_image", "p50"), True),
    (("startup", "python_c_pass", "p50"), True),
    (("startup", "imports", "p50"), True),
    *[(("catch_up", k, "p50"), True) for k in ("last_tag_times", "first_disk_usage", "raw_inspect_every_image")],
    *[(("plans", a, "plan", "p50"), True) for a in ("free", "keep")],
    *[(("plans", a, "scrape_during_plan", p), True) for a in ("free", "keep") for p in ("p99", "max")],
    *[(("plans", a, "scrape_at_rest", "p99"), True) for a in ("free", "keep")],
    *[(("plans", a, "scrape_p99_ratio"), True) for a in ("free", "keep")],
    *[(("plans", a, "candidates"), True) for a in ("free", "keep")],
    *[(("plans", a, "plan_while_scraped", "p50"), True) for a in ("free", "keep")],
    *[(("plans_audit_on_disk", a, "plan", "p50"), True) for a in ("free", "keep")],
    (("audit_fsync", "p50"), True),
    *[(("process", key, "rss_bytes"), True) for key in ("default", "uncapped")],
    *[(("process", key, "idle_cpu_percent"), False) for key in ("default", "uncapped")],
    (("dry_run_memory", "rss_before_bytes"), True),
    (("dry_run_memory", "rss_after_bytes"), True),
    (("dry_run_memory", "run_seconds", "p50"), True),
    (("deletion", "value", "p50"), True),
    (("deletion", "reference", "p50"), True),
    (("deletion", "ratio", "p50"), True),
    (("deletion", "scrape_during_run", "p99"), True),
    (("deletion", "scrape_p99_ratio"), True),
]


def missing_figures(run: dict[str, Any]) -> list[str]:
    """The FIGURES a run lacks or has out of range (not a number, or not positive where it must be)."""
    problems = []
    for path, positive in FIGURES:
        value: Any = run
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        ok = isinstance(value, int | float) and not isinstance(value, bool) and (value > 0 if positive else value >= 0)
        if not ok:
            problems.append(f"{'.'.join(path)} = {value!r}")
    return problems


def main(argv: list[str]) -> int:
    """`python -m benchmarks.report results/<file>.json ...`: the table again from saved results, the runs
    of every file as columns of one table (e.g. the 1k and the 10k profile side by side)."""
    runs = [run for name in argv for run in json.loads(Path(name).read_text())["runs"]]
    print(markdown({"runs": runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
