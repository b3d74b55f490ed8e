"""Panel builders shared by both dashboards: one place for the options a panel type needs.

The data-root panels colour and draw their thresholds at the DockerDiskPressure levels read from
``alerts/render.py``, so a changed alert threshold moves the dashboard lines with it.
"""

from __future__ import annotations

from typing import Any

from alerts.render import DEFAULT_THRESHOLDS
from dashboards.model import AVAIL_RATIO, IMAGE_KEY, Panel, Target, sel


def steps(*steps: tuple[str, float | None]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def free_space_thresholds() -> dict[str, Any]:
    """Threshold steps at the DockerDiskPressure levels, so the panel draws the alert lines."""
    crit = float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"])
    warn = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"])
    clear = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning_clear"])
    return steps(("red", None), ("orange", crit), ("yellow", warn), ("green", clear))


def used_space_thresholds() -> dict[str, Any]:
    """The DockerDiskPressure levels as *used* shares (1 - free), for panels that rank hosts by use."""
    crit = float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"])
    warn = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"])
    clear = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning_clear"])
    return steps(
        ("green", None), ("yellow", round(1 - clear, 6)), ("orange", round(1 - warn, 6)), ("red", round(1 - crit, 6))
    )


def free_space_description(what: str) -> str:
    crit = float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"])
    warn = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"])
    clear = float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning_clear"])
    return (
        f"{what} Lines: DockerDiskPressure critical below {crit:.0%}, warning below {warn:.0%}; the warning "
        f"clears only above {clear:.0%} (low watermark). Thresholds come from alerts/render.py."
    )


def stat(pid: int, title: str, description: str, unit: str, expr: str, **kw: Any) -> Panel:
    return Panel(
        pid,
        "stat",
        title,
        description,
        unit,
        # A range query, not an instant one: the sparkline (graphMode "area") needs the series over time.
        [Target(expr, legend=kw.pop("legend", "{{instance}}"))],
        width=kw.pop("width", 4),
        height=kw.pop("height", 4),
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        },
        **kw,
    )


def timeseries(pid: int, title: str, description: str, unit: str, targets: list[Target], **kw: Any) -> Panel:
    custom: dict[str, Any] = {
        "drawStyle": kw.pop("draw_style", "line"),
        "lineWidth": 1,
        "fillOpacity": kw.pop("fill", 10),
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": kw.pop("stacking", "none"), "group": "A"},
        "thresholdsStyle": {"mode": kw.pop("thresholds_style", "off")},
    }
    defaults = kw.pop("defaults", {})
    defaults.setdefault("custom", custom)
    return Panel(
        pid,
        "timeseries",
        title,
        description,
        unit,
        targets,
        defaults=defaults,
        options={
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **kw,
    )


def free_space_stat(pid: int, what: str, **kw: Any) -> Panel:
    """The data-root free share as a stat coloured at the DockerDiskPressure levels."""
    return stat(
        pid,
        "Data root free",
        free_space_description(what),
        "percentunit",
        AVAIL_RATIO,
        defaults={"thresholds": free_space_thresholds(), "min": 0, "max": 1},
        **kw,
    )


def free_space_timeseries(pid: int, title: str, what: str) -> Panel:
    """The data-root free share over time with the alert levels drawn as lines."""
    return timeseries(
        pid,
        title,
        free_space_description(what),
        "percentunit",
        [Target(AVAIL_RATIO, "{{instance}} {{path}}")],
        width=12,
        thresholds_style="line+area",
        defaults={"thresholds": free_space_thresholds(), "min": 0, "max": 1},
    )


def bargauge(pid: int, title: str, description: str, unit: str, targets: list[Target], **kw: Any) -> Panel:
    return Panel(
        pid,
        "bargauge",
        title,
        description,
        unit,
        targets,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "gradient",
            "showUnfilled": True,
        },
        **kw,
    )


def unit_override(name: str, unit: str) -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": name}, "properties": [{"id": "unit", "value": unit}]}


def image_table(pid: int, title: str, description: str, rank: str, width: int = 12) -> Panel:
    """A per-image table: the rows are ``rank`` (a topk), the columns joined onto it by labels."""
    cols = [
        ("A", "Size", "bytes", sel("docker_image_size_bytes")),
        ("B", "Unique size", "bytes", sel("docker_image_unique_size_bytes")),
        ("C", "Age", "s", f"time() - {sel('docker_image_created_timestamp_seconds')}"),
        ("D", "Since last used", "s", f"time() - {sel('docker_image_last_used_timestamp_seconds')}"),
        ("E", "Containers", "short", sel("docker_image_containers")),
    ]
    targets = []
    for ref, _name, _unit, expr in cols:
        empty = (
            "last-used times exist only for images a container was created/started from while the exporter ran"
            if ref == "D"
            else ""
        )
        targets.append(Target(f"({expr})\nand on ({IMAGE_KEY})\n{rank}", instant=True, table=True, may_be_empty=empty))
    rename = {f"Value #{ref}": name for ref, name, _u, _e in cols}
    return Panel(
        pid,
        "table",
        title,
        description,
        "bytes",
        targets,
        width=width,
        height=10,
        options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}},
        overrides=[unit_override(name, unit) for _ref, name, unit, _e in cols],
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "__name__": True, "job": True},
                    "indexByName": {
                        "instance": 0,
                        "repository": 1,
                        "tag": 2,
                        "image_id": 3,
                        **{name: 4 + i for i, (_r, name, _u, _e) in enumerate(cols)},
                    },
                    "renameByName": rename,
                },
            },
        ],
    )


RUN_ANNOTATION = Target(
    f"changes({sel('docker_remediation_last_run_timestamp_seconds')}[$__rate_interval]) > 0",
    legend="{{action}} on {{instance}}",
    may_be_empty="a remediation run must have finished within the last rate interval",
)
