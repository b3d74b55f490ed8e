"""Grafana's JSON model of a :class:`~dashboards.model.Dashboard`: grid layout, variables, annotations.

Panel ids come from the dashboard modules (written out by hand) so links like ``?viewPanel=7`` survive
panels being added or moved; only the grid positions are computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dashboards.model import DS, Dashboard, Panel, Row, Target
from dashboards.panels import steps

SCHEMA_VERSION = 39
TAGS = ["docker", "docker-image-exporter"]


def _target_json(target: Target, ref: str) -> dict[str, Any]:
    return {
        "datasource": DS,
        "editorMode": "code",
        "expr": target.expr,
        "legendFormat": target.legend or "__auto",
        "range": not target.instant,
        "instant": target.instant,
        "format": "table" if target.table else "time_series",
        "refId": ref,
    }


def _panel_json(panel: Panel, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, **panel.defaults}
    defaults.setdefault("color", {"mode": "palette-classic" if panel.type == "timeseries" else "thresholds"})
    defaults.setdefault("thresholds", steps(("green", None)))
    return {
        "id": panel.id,
        "type": panel.type,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": panel.overrides},
        "options": panel.options,
        "targets": [_target_json(t, chr(ord("A") + i)) for i, t in enumerate(panel.targets)],
        "transformations": panel.transformations,
    }


def _layout(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Place rows and panels left to right, wrapping at 24 columns."""
    out: list[dict[str, Any]] = []
    y = 0
    for row in rows:
        out.append(
            {
                "id": row.id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        y += 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            out.append(_panel_json(panel, x, y))
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


def _annotation_json(name: str, target: Target) -> dict[str, Any]:
    return {
        "name": name,
        "datasource": DS,
        "enable": True,
        "hide": False,
        "iconColor": "purple",
        "expr": target.expr,
        "step": "1m",
        "titleFormat": "Remediation run",
        "textFormat": target.legend,
        "tagKeys": "action,instance",
        "useValueForTime": False,
    }


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str, all_value: str = ".+") -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-variable"},
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": all_value,
            "current": {},
            "options": [],
            "regex": "",
            "sort": 1,
            "hide": 0,
        }

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "regex": "",
            "refresh": 1,
            "hide": 0,
        },
        query_var("job", "Job", "label_values(docker_up, job)"),
        # Kubernetes: the node a pod runs on (label from the chart's ServiceMonitor relabeling). "All" is `.*`
        # so that series without a node label (plain hosts) still match; elsewhere the list is just empty.
        query_var("node", "Node", 'label_values(docker_up{job=~"$job"}, node)', all_value=".*"),
        query_var("instance", "Instance", 'label_values(docker_up{job=~"$job", node=~"$node"}, instance)'),
    ]


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The importable Grafana JSON model of ``dashboard``."""
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    return {
        "annotations": {"list": [builtin, *(_annotation_json(n, t) for n, t in dashboard.annotations)]},
        "description": dashboard.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "type": "dashboards",
                "title": "docker-image-exporter",
                "tags": ["docker-image-exporter"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "panels": _layout(dashboard.rows),
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": TAGS,
        "templating": {"list": _variables()},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": dashboard.title,
        "uid": dashboard.uid,
        "version": 1,
        "weekStart": "",
    }
