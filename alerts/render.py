"""Render the Prometheus alert rules for docker-image-exporter from a dict of thresholds.

Why code and not a hand-edited YAML file: the same rules ship in three places (``alerts/`` for plain
Prometheus, the Helm chart's PrometheusRule, and the end-to-end test that shrinks thresholds to make a
small loop filesystem trip them), and the dashboards draw the same thresholds as lines. One function
with one table of defaults keeps all of them in step; ``tests/unit/test_alerts.py`` fails when the
committed ``alerts/docker-image-exporter.rules.yml`` drifts from ``render_rules(DEFAULT_THRESHOLDS)``.

Regenerate the committed file with ``python -m alerts.render``; write a variant with
``python -m alerts.render --set disk_avail_ratio_warning=0.5 --set disk_for=0s --output /tmp/rules.yml``.

A threshold may also be given as a string: it is inserted verbatim, which lets a templating step
(e.g. Helm) put ``{{ .Values... }}`` placeholders where the numbers go.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from exporter.core.units import parse_duration

Threshold = int | float | str

RULES_PATH = Path(__file__).resolve().parent / "docker-image-exporter.rules.yml"

# ---------------------------------------------------------------------------------------------------
# THE THRESHOLDS. Change a default here (then run `python -m alerts.render`), or pass overrides to
# render_rules(). Ratios are fractions (0.15 = 15 %), sizes are bytes, durations are Prometheus style.
# ---------------------------------------------------------------------------------------------------
DEFAULT_THRESHOLDS: dict[str, Threshold] = {
    # DockerDiskPressure — free space of the filesystem holding the engine's data root (avail / size).
    # High/low watermark: a warning fires below 15 % free and keeps firing until more than 20 % is free
    # again, so a remediation that frees "just enough" does not make the alert flap.
    "disk_avail_ratio_warning": 0.15,
    "disk_avail_ratio_warning_clear": 0.20,
    "disk_avail_ratio_critical": 0.05,
    "disk_avail_ratio_critical_clear": 0.08,
    "disk_for": "5m",
    # Prometheus >= 2.42 `keep_firing_for`: keep the alert firing this long after the condition is gone
    # (rides over a missed scrape). "0s" leaves the field out, for Prometheus/operator versions without it.
    "disk_keep_firing_for": "0s",
    # DockerDanglingImagesPiling — untagged images: more than 5 GiB of them, or more than 100.
    "dangling_size_bytes": 5 * 2**30,
    "dangling_images": 100,
    "dangling_for": "1h",
    # DockerReclaimableSpaceHigh — unused images whose deletion would free more than 25 % of the data-root
    # filesystem, and at least 5 GiB (so small disks with a few unused images stay quiet).
    "reclaimable_ratio": 0.25,
    "reclaimable_min_bytes": 5 * 2**30,
    "reclaimable_for": "1h",
    # DockerEngineDown — docker_up == 0 this long.
    "engine_down_for": "2m",
    # DockerDataRootFillingUp — at the trend of the last `filling_window`, the data-root filesystem runs out
    # of space within `filling_horizon_seconds` (predict_linear < 0). Fires while there is still room, so the
    # free-disk remediation (and a human) can act before DockerDiskPressure goes critical.
    "filling_window": "6h",
    "filling_horizon_seconds": 86400,
    "filling_for": "30m",
    # DockerImageExporterDown — `up == 0` for the scrape job(s) of the exporter. ASSUMPTION: the job name
    # starts with "docker-image-exporter" (the examples and the Helm chart's ServiceMonitor use that).
    "exporter_job_regex": "docker-image-exporter.*",
    "exporter_down_for": "5m",
    # DockerImageMetricsStale — the snapshot the exporter serves is older than 10 minutes.
    "stale_seconds": 600,
    "stale_for": "5m",
    # DockerRemediationFailing — an action run ended with result="failure" within this window.
    "remediation_failing_window": "1h",
    "remediation_failing_for": "1m",
    # DockerRemediationNotFreeingSpace — an action keeps running (its last run is never older than 30 min)
    # for an hour and its last run was stuck: it selected images but reclaimed 0 bytes, or it ended short of
    # its free-space goal. A run that finds nothing to clean is healthy, however often it runs.
    "not_freeing_run_within_seconds": 1800,
    "not_freeing_for": "1h",
    # Not a threshold: where each alert's `runbook_url` annotation points (`<base>#<alertname in lower
    # case>`). It lives in this table so the Helm chart's prometheusRule.thresholds can override it too.
    "runbook_base_url": "https://github.com/docker-image-exporter/docker-image-exporter/blob/main/docs/runbooks.md",
}

# Which value of the `remediation` label each alert carries. Alertmanager routes on it (see
# examples/alertmanager/alertmanager.yml) and the exporter's remediation routes map it to an action
# (see examples/compose/exporter.yml). None = for humans only: the alert has no `remediation` label at all,
# so no route that matches on it can send it to the webhook by accident.
REMEDIATION_LABELS: dict[str, str | None] = {
    "DockerDiskPressure": "free-disk",
    "DockerDataRootFillingUp": "free-disk",
    "DockerDanglingImagesPiling": "clean-dangling",
    "DockerReclaimableSpaceHigh": "prune-unused",
    "DockerEngineDown": None,
    "DockerImageExporterDown": None,
    "DockerImageMetricsStale": None,
    "DockerRemediationFailing": None,
    "DockerRemediationNotFreeingSpace": None,
}


def _is_duration(value: Threshold) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_duration(value)
    except ValueError:
        return False
    return True


_DURATION_KEYS = {k for k, v in DEFAULT_THRESHOLDS.items() if _is_duration(v)}
_STRING_KEYS = {"exporter_job_regex", "runbook_base_url"}

HEADER = (
    "# GENERATED by `python -m alerts.render` from alerts/render.py — do not edit by hand.\n"
    "# Change a threshold in DEFAULT_THRESHOLDS there (each is commented), then regenerate;\n"
    "# tests/unit/test_alerts.py fails when this file drifts. Thresholds: docs/dashboards-and-alerts.md.\n"
)


def merge_thresholds(overrides: Mapping[str, Threshold] | None = None) -> dict[str, Threshold]:
    """Defaults updated with ``overrides``; unknown keys and bad values raise, so typos never pass silently."""
    merged = dict(DEFAULT_THRESHOLDS)
    for key, value in (overrides or {}).items():
        if key not in DEFAULT_THRESHOLDS:
            raise KeyError(f"unknown alert threshold {key!r}; known: {', '.join(sorted(DEFAULT_THRESHOLDS))}")
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError(f"alert threshold {key!r} must be a number or a string, got {value!r}")
        if key in _DURATION_KEYS and not isinstance(value, str):
            raise TypeError(f"alert threshold {key!r} is a duration like '5m', got {value!r}")
        if key in _STRING_KEYS and not isinstance(value, str):
            raise TypeError(f"alert setting {key!r} must be a string, got {value!r}")
        merged[key] = value
    for fire, clear in (
        ("disk_avail_ratio_warning", "disk_avail_ratio_warning_clear"),
        ("disk_avail_ratio_critical", "disk_avail_ratio_critical_clear"),
    ):
        lo, hi = merged[fire], merged[clear]
        if isinstance(lo, int | float) and isinstance(hi, int | float) and hi < lo:
            raise ValueError(f"{clear} ({hi}) must be >= {fire} ({lo}): it is the level the alert clears at")
    return merged


def _num(value: Threshold) -> str:
    """A threshold as PromQL source text (strings pass through for templating)."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _pct(value: Threshold) -> str:
    """A ratio for humans: 0.15 -> '15%'."""
    return value if isinstance(value, str) else f"{value * 100:g}%"


def _bytes(value: Threshold) -> str:
    """A byte count for humans: 5368709120 -> '5GiB'."""
    if isinstance(value, str):
        return value
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}B"


def _is_zero_duration(value: Threshold) -> bool:
    """``"0s"``/``"0m"``: the field is left out. Placeholders and other strings are not durations."""
    return _is_duration(value) and parse_duration(str(value)) == 0


def _recent(selector: str, window: Threshold) -> str:
    """Series of counter ``selector`` that grew within ``window``, including a series born inside it.

    ``increase()`` needs two samples, so a counter that first appears already at 1 (the exporter creates
    a labelled series on its first event) would be missed; the ``unless ... offset`` arm catches it.
    """
    w = _num(window)
    return f"(increase({selector}[{w}]) > 0 or ({selector} unless {selector} offset {w}) > 0)"


def _query_value(metric: str, fmt: str = "", by: Sequence[str] = ("job", "instance")) -> str:
    """Go template snippet: the current value of ``metric`` for the alert's ``by`` labels (job, instance)."""
    pipe = f" | {fmt}" if fmt else ""
    matchers = ",".join(f"{label}=%q" for label in by)
    args = " ".join(f"$labels.{label}" for label in by)
    return (
        f'{{{{ with printf "{metric}{{{matchers}}}" {args} | query }}}}{{{{ . | first | value{pipe} }}}}{{{{ end }}}}'
    )


def runbook_anchor(alertname: str) -> str:
    """The section of docs/runbooks.md for ``alertname``: its ``## <alertname>`` heading as GitHub links it."""
    return alertname.lower()


def _alert(
    t: Mapping[str, Threshold],
    name: str,
    expr: str,
    for_: Threshold,
    severity: str,
    summary: str,
    description: str,
    keep_firing_for: Threshold | None = None,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr, "for": for_}
    if keep_firing_for is not None and not _is_zero_duration(keep_firing_for):
        rule["keep_firing_for"] = keep_firing_for
    rule["labels"] = {"severity": severity}
    remediation = REMEDIATION_LABELS[name]
    if remediation is not None:
        rule["labels"]["remediation"] = remediation
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{t['runbook_base_url']}#{runbook_anchor(name)}",
    }
    return rule


_FS = ("job", "instance", "path")
_ACTION = ("job", "instance", "action")
_AVAIL_RATIO = "docker_filesystem_avail_bytes / (docker_filesystem_size_bytes > 0)"


def _disk_pressure(t: Mapping[str, Threshold], severity: str) -> dict[str, Any]:
    fire, clear = t[f"disk_avail_ratio_{severity}"], t[f"disk_avail_ratio_{severity}_clear"]
    expr = f"{_AVAIL_RATIO} < {_num(fire)}"
    hysteresis = not (isinstance(fire, int | float) and isinstance(clear, int | float) and clear <= fire)
    if hysteresis:
        # Low watermark: once firing, stay firing while still below the clear level.
        expr = (
            f"(\n  {expr}\n)\nor\n(\n  {_AVAIL_RATIO} < {_num(clear)}\n"
            f"  and on (job, instance, path)\n"
            f'  ALERTS{{alertname="DockerDiskPressure", severity="{severity}", alertstate="firing"}}\n)'
        )
    clears = f", clears above {_pct(clear)}" if hysteresis else ""
    return _alert(
        t,
        "DockerDiskPressure",
        expr,
        t["disk_for"],
        severity,
        "Docker data root on {{ $labels.instance }} has only {{ $value | humanizePercentage }} free",
        "The filesystem holding {{ $labels.path }} on {{ $labels.instance }} has "
        f"{{{{ $value | humanizePercentage }}}} space available (fires below {_pct(fire)}{clears}). "
        "Routed to the free-disk remediation, which deletes least-recently-used unused images.",
        keep_firing_for=t["disk_keep_firing_for"],
    )


def _filling_up(t: Mapping[str, Threshold]) -> dict[str, Any]:
    """Full within the horizon at the recent trend: early warning, routed to free-disk before it is critical.

    ``predict_linear`` over ``filling_window`` (not minutes) so one large pull does not page; the
    ``size > 0`` guard keeps a filesystem whose statvfs failed (size 0) out, as DockerDiskPressure does.
    """
    window, horizon = _num(t["filling_window"]), _num(t["filling_horizon_seconds"])
    fs = "{job=%q,instance=%q,path=%q}"
    left = (
        f'{{{{ with printf "docker_filesystem_avail_bytes{fs} / -deriv(docker_filesystem_avail_bytes{fs}[{window}])" '
        "$labels.job $labels.instance $labels.path $labels.job $labels.instance $labels.path | query }}"
        "{{ . | first | value | humanizeDuration }}{{ end }}"
    )
    return _alert(
        t,
        "DockerDataRootFillingUp",
        f"predict_linear(docker_filesystem_avail_bytes[{window}], {horizon}) < 0\n"
        "and on (job, instance, path)\n"
        "docker_filesystem_size_bytes > 0",
        t["filling_for"],
        "warning",
        f"Docker data root on {{{{ $labels.instance }}}} will be full in about {left}",
        "The filesystem holding {{ $labels.path }} on {{ $labels.instance }} has "
        f"{_query_value('docker_filesystem_avail_bytes', 'humanize1024', _FS)}B available and, at the trend "
        f"of the last {window}, runs out within {horizon}s (about {left}). Routed to the free-disk "
        "remediation, which frees space only while the filesystem is below its goal (target_avail_ratio, target_avail_bytes).",
    )


def render_rules(thresholds: Mapping[str, Threshold] | None = None) -> dict[str, Any]:
    """The rule file as a dict (``{"groups": [...]}``) for the given threshold overrides."""
    t = merge_thresholds(thresholds)
    runs = "docker_remediation_runs_total"
    disk = {
        "name": "docker-image-exporter.disk",
        "rules": [_disk_pressure(t, "warning"), _disk_pressure(t, "critical"), _filling_up(t)],
    }
    images = {
        "name": "docker-image-exporter.images",
        "rules": [
            _alert(
                t,
                "DockerDanglingImagesPiling",
                f"docker_images_dangling_size_bytes > {_num(t['dangling_size_bytes'])}\n"
                f"or on (job, instance)\n"
                f"docker_images_dangling > {_num(t['dangling_images'])}",
                t["dangling_for"],
                "warning",
                "Dangling images are piling up on {{ $labels.instance }}",
                f"{{{{ $labels.instance }}}} has {_query_value('docker_images_dangling')} untagged images "
                f"taking {_query_value('docker_images_dangling_size_bytes', 'humanize1024')}B "
                f"(threshold: more than {_bytes(t['dangling_size_bytes'])} or more than "
                f"{_num(t['dangling_images'])} images). Routed to the clean-dangling remediation.",
            ),
            _alert(
                t,
                "DockerReclaimableSpaceHigh",
                "docker_images_reclaimable_bytes\n"
                "/ on (job, instance)\n"
                "max by (job, instance) (docker_filesystem_size_bytes > 0)\n"
                f"> {_num(t['reclaimable_ratio'])}\n"
                f"and\n"
                f"docker_images_reclaimable_bytes > {_num(t['reclaimable_min_bytes'])}",
                t["reclaimable_for"],
                "warning",
                "Unused images on {{ $labels.instance }} hold {{ $value | humanizePercentage }} of its Docker disk",
                "Deleting the images no container uses on {{ $labels.instance }} would free "
                f"{_query_value('docker_images_reclaimable_bytes', 'humanize1024')}B, "
                "{{ $value | humanizePercentage }} of the data-root filesystem (threshold: more than "
                f"{_pct(t['reclaimable_ratio'])} and more than {_bytes(t['reclaimable_min_bytes'])}). "
                "Routed to the prune-unused remediation.",
            ),
        ],
    }
    health = {
        "name": "docker-image-exporter.health",
        "rules": [
            _alert(
                t,
                "DockerEngineDown",
                "docker_up == 0",
                t["engine_down_for"],
                "critical",
                "Docker engine on {{ $labels.instance }} is unreachable",
                "docker-image-exporter on {{ $labels.instance }} cannot reach the Docker engine; it keeps "
                "serving the last good snapshot (see DockerImageMetricsStale) and reconnects with backoff.",
            ),
            _alert(
                t,
                "DockerImageExporterDown",
                f'up{{job=~"{t["exporter_job_regex"]}"}} == 0',
                t["exporter_down_for"],
                "warning",
                "docker-image-exporter on {{ $labels.instance }} is down",
                "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}): no Docker image "
                "metrics and no remediation webhook for that host.",
            ),
            _alert(
                t,
                "DockerImageMetricsStale",
                f"time() - docker_exporter_snapshot_timestamp_seconds > {_num(t['stale_seconds'])}",
                t["stale_for"],
                "warning",
                "Docker image metrics from {{ $labels.instance }} are {{ $value | humanizeDuration }} old",
                "The snapshot docker-image-exporter serves on {{ $labels.instance }} was taken "
                "{{ $value | humanizeDuration }} ago (threshold: "
                f"{_num(t['stale_seconds'])}s): the poller is stuck or the engine is unreachable.",
            ),
        ],
    }
    not_freeing_recent = (
        f"(time() - docker_remediation_last_run_timestamp_seconds < {_num(t['not_freeing_run_within_seconds'])})"
    )
    dry_runs = _recent(f'{runs}{{result="dry_run"}}', t["not_freeing_for"])
    remediation = {
        "name": "docker-image-exporter.remediation",
        "rules": [
            _alert(
                t,
                "DockerRemediationFailing",
                "sum without (trigger, result) (\n  "
                + _recent(f'{runs}{{result="failure"}}', t["remediation_failing_window"])
                + "\n) > 0",
                t["remediation_failing_for"],
                "warning",
                "Remediation action {{ $labels.action }} fails on {{ $labels.instance }}",
                "Runs of the {{ $labels.action }} action on {{ $labels.instance }} ended with "
                f"result=failure within the last {_num(t['remediation_failing_window'])} (engine "
                "unreachable or an error): read the exporter log and its audit log on that host.",
            ),
            _alert(
                t,
                "DockerRemediationNotFreeingSpace",
                "(\n"
                "  (\n"
                "    docker_remediation_last_run_candidates > 0\n"
                "    and on (job, instance, action)\n"
                "    docker_remediation_last_run_reclaimed_bytes == 0\n"
                "  )\n"
                "  or on (job, instance, action)\n"
                "  docker_remediation_last_run_shortfall_bytes > 0\n"
                ")\n"
                f"and on (job, instance, action)\n"
                f"{not_freeing_recent}\n"
                f"unless on (job, instance, action)\n"
                f"sum without (trigger, result) (\n  {dry_runs}\n)",
                t["not_freeing_for"],
                "critical",
                "Remediation {{ $labels.action }} keeps running on {{ $labels.instance }} without freeing enough space",
                "The {{ $labels.action }} action on {{ $labels.instance }} has run at least every "
                f"{_num(t['not_freeing_run_within_seconds'])}s for {_num(t['not_freeing_for'])} and its last run "
                f"selected {_query_value('docker_remediation_last_run_candidates', '', _ACTION)} images, reclaimed "
                f"{_query_value('docker_remediation_last_run_reclaimed_bytes', 'humanize1024', _ACTION)}B and "
                f"ended {_query_value('docker_remediation_last_run_shortfall_bytes', 'humanize1024', _ACTION)}B "
                "short of its free-space goal: what it selected could not be deleted (refused by the engine, "
                "in use by then) or what fills the disk is not something it may delete (protected, too young, "
                "volumes, containers). A human has to look.",
            ),
        ],
    }
    return {"groups": [disk, images, health, remediation]}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL) as literal blocks, so the committed file reads like hand-written rules."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_rules(rules: Mapping[str, Any]) -> str:
    """YAML text of a rendered rule dict, with the 'generated' header."""
    body = yaml.dump(dict(rules), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return HEADER + body


def render_rules_text(thresholds: Mapping[str, Threshold] | None = None) -> str:
    """``render_rules`` as the YAML text Prometheus loads."""
    return dump_rules(render_rules(thresholds))


def _parse_override(item: str) -> tuple[str, Threshold]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
    value: Threshold = raw
    if key not in _DURATION_KEYS and key not in _STRING_KEYS:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
            except ValueError:
                value = raw
    return key, value


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: write the rule file (defaults: the committed file) with optional ``--set key=value``."""
    parser = argparse.ArgumentParser(prog="python -m alerts.render", description=__doc__.split("\n")[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=_parse_override)
    parser.add_argument("--output", default=str(RULES_PATH), help="file to write, '-' for stdout")
    args = parser.parse_args(argv)
    text = render_rules_text(dict(args.overrides))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
