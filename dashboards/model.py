"""The dashboards as data: panels, rows and queries before Grafana's JSON layout.

Every query goes through :func:`sel`, so the job/instance filters cannot be forgotten on one panel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
# `node` is the Kubernetes node (the Helm chart's ServiceMonitor relabels it from the pod's node name); its
# "All" value is `.*`, which also matches series without the label, so the filter is harmless elsewhere.
FILTER = 'job=~"$job", node=~"$node", instance=~"$instance"'
# One key covers a whole image row: these five labels identify a per-tag series.
IMAGE_KEY = "job, instance, repository, tag, image_id"


def sel(metric: str, extra: str = "") -> str:
    """``metric{job=~"$job", node=~"$node", instance=~"$instance", <extra>}``: every query filters by the variables."""
    return f"{metric}{{{FILTER}{', ' + extra if extra else ''}}}"


AVAIL_RATIO = f"{sel('docker_filesystem_avail_bytes')} / ({sel('docker_filesystem_size_bytes')} > 0)"


@dataclass(frozen=True)
class Target:
    """One query of a panel; ``may_be_empty`` names why it can legitimately return no series."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    may_be_empty: str = ""


@dataclass
class Panel:
    """A panel before layout; ``width``/``height`` are grid units (24 columns wide)."""

    id: int
    type: str
    title: str
    description: str
    unit: str
    targets: list[Target]
    width: int = 8
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Row:
    """A row header followed by its panels."""

    id: int
    title: str
    panels: list[Panel]


@dataclass
class Dashboard:
    """Everything that differs between the two dashboards."""

    uid: str
    title: str
    description: str
    rows: list[Row]
    annotations: list[tuple[str, Target]] = field(default_factory=list)
