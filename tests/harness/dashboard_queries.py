"""Every PromQL query the dashboards run, and Grafana's variable substitution, for the tests.

The unit tests run the queries with Prometheus's engine (``promtool``) over a synthetic host; the
end-to-end loop runs them against a real Prometheus scraping a real exporter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from dashboards.generate import DASHBOARDS
from dashboards.model import Target
from exporter.core.units import parse_duration


def _all_targets() -> Iterable[tuple[str, str, Target]]:
    for build in DASHBOARDS.values():
        dashboard = build()
        for name, target in dashboard.annotations:
            yield dashboard.uid, f"annotation: {name}", target
        for row in dashboard.rows:
            for panel in row.panels:
                for target in panel.targets:
                    yield dashboard.uid, panel.title, target


def all_queries() -> list[tuple[str, str, str]]:
    """Every PromQL expression the dashboards run: (dashboard uid, panel title, expr)."""
    return [(uid, title, t.expr) for uid, title, t in _all_targets()]


def queries_that_may_be_empty() -> dict[tuple[str, str, str], str]:
    """The queries that can legitimately return no series on a healthy host, with the reason."""
    return {(uid, title, t.expr): t.may_be_empty for uid, title, t in _all_targets() if t.may_be_empty}


def _regex_literal(value: str) -> str:
    r"""``value`` as a regex matching only itself, escaped for a double-quoted PromQL string (``.`` -> ``\\.``)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\\\1", value)


def substitute_variables(
    expr: str,
    job: str,
    instance: str,
    *,
    node: str | None = None,
    rate_interval: str = "1m",
    interval: str = "1m",
    range_: str = "1h",
) -> str:
    """Replace the Grafana variables in ``expr`` the way Grafana would, so Prometheus can run it.

    ``job`` and ``instance`` are matched literally (regex metacharacters escaped, as Grafana does for a
    single selected value); ``node`` too, and ``None`` stands for its "All" value ``.*`` (what a host outside
    Kubernetes, without the label, needs); ``$__rate_interval``/``$__interval``/``$__range`` get concrete durations.
    """
    seconds = _duration_seconds(range_)
    node_regex = ".*" if node is None else _regex_literal(node)
    replacements = {
        "$__rate_interval": rate_interval,
        "$__interval_ms": str(_duration_seconds(interval) * 1000),
        "$__interval": interval,
        "$__range_s": str(seconds),
        "$__range_ms": str(seconds * 1000),
        "$__range": range_,
        "${job}": _regex_literal(job),
        "$job": _regex_literal(job),
        "${instance}": _regex_literal(instance),
        "${node}": node_regex,
        "$node": node_regex,
        "$instance": _regex_literal(instance),
    }
    # Longest names first, so "$__interval" never eats the start of "$__interval_ms".
    for name in sorted(replacements, key=len, reverse=True):
        expr = expr.replace(name, replacements[name])
    return expr


def _duration_seconds(duration: str) -> int:
    return int(parse_duration(duration))
