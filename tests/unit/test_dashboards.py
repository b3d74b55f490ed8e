"""The Grafana dashboards: committed JSON equals the generator, every panel is complete, every query is PromQL.

PromQL is checked with Prometheus's own parser (``promtool check rules``, each query as a recording rule) and
evaluated with Prometheus's own engine (``promtool test rules`` over synthetic series shaped like the
exporter's metric contract) — no hand-rolled PromQL grammar.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import bargauge, prometheus, stat, table, timeseries
from grafana_foundation_sdk.models.dashboard import Dashboard as GrafanaDashboard
from grafana_foundation_sdk.models.dashboard import Panel as GrafanaPanel

from alerts.render import DEFAULT_THRESHOLDS
from dashboards import generate
from tests.harness.dashboard_queries import all_queries, queries_that_may_be_empty, substitute_variables
from tests.harness.requires import run_promtool

REPO = Path(__file__).resolve().parents[2]
JOB = "docker-image-exporter"
INSTANCE = "127.0.0.1:10151"  # dots: proves the substitution escapes regex metacharacters


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO / "dashboards" / name).read_text(encoding="utf-8"))
    return data


def _dashboards() -> list[dict[str, Any]]:
    return [_load(name) for name in generate.DASHBOARDS]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


# ----------------------------------------------------------------------------------------- drift, shape


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_committed_json_equals_generator(name: str) -> None:
    committed = (REPO / "dashboards" / name).read_text(encoding="utf-8")
    assert committed == generate.render_all()[name], (
        f"dashboards/{name} differs from dashboards/generate.py: run `make dashboards` and commit the result"
    )


def test_dashboards_have_uids_titles_and_current_schema() -> None:
    uids = set()
    for dashboard in _dashboards():
        assert dashboard["schemaVersion"] >= 39
        assert dashboard["uid"] and dashboard["title"] and dashboard["description"]
        assert "docker-image-exporter" in dashboard["tags"]
        uids.add(dashboard["uid"])
    assert uids == {generate.IMAGES_UID, generate.REMEDIATION_UID}


def test_variables_datasource_job_node_instance() -> None:
    for dashboard in _dashboards():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert list(variables) == ["datasource", "job", "node", "instance"]
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name in ("job", "node", "instance"):
            var = variables[name]
            assert var["type"] == "query"
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert var["definition"].startswith("label_values(")
            assert var["definition"].endswith(f", {name})")
            assert var["includeAll"] and var["multi"]
        assert "$job" in variables["instance"]["definition"], "instance choices should follow the job filter"
        assert "$node" in variables["instance"]["definition"], "instance choices should follow the node filter"
        # The chart's ServiceMonitor writes the Kubernetes node into this label.
        assert variables["node"]["definition"] == 'label_values(docker_up{job=~"$job"}, node)'
        # "All" must also match hosts whose series have no node label (outside Kubernetes).
        assert variables["node"]["allValue"] == ".*"


def test_node_label_is_the_one_the_chart_relabels() -> None:
    values = yaml.safe_load((REPO / "helm/docker-image-exporter/values.yaml").read_text(encoding="utf-8"))
    relabelings = values["prometheus"]["monitor"]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node", "action": "replace"} in (
        relabelings
    )


def test_no_hard_coded_datasource_uids() -> None:
    def walk(node: Any) -> list[str]:
        found: list[str] = []
        if isinstance(node, dict):
            ds = node.get("datasource")
            if isinstance(ds, dict):
                found.append(str(ds.get("uid")))
            elif ds is not None:
                found.append(str(ds))
            for value in node.values():
                found.extend(walk(value))
        elif isinstance(node, list):
            for value in node:
                found.extend(walk(value))
        return found

    for dashboard in _dashboards():
        uids = set(walk(dashboard))
        assert uids <= {"${datasource}", "-- Grafana --"}, uids


def test_every_panel_has_unit_description_datasource_and_a_query() -> None:
    for dashboard in _dashboards():
        panels = _panels(dashboard)
        assert len(panels) >= 10
        for panel in panels:
            where = f"{dashboard['uid']} / {panel['title']!r}"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where}: no unit"
            assert len(panel.get("description", "")) >= 20, f"{where}: no description"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["targets"], f"{where}: no query"
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
                assert target["expr"].strip(), where


def test_panel_ids_unique_and_layout_inside_grid() -> None:
    for dashboard in _dashboards():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{dashboard['uid']}: duplicate panel ids"
        for panel in dashboard["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]


def test_panel_ids_are_pinned() -> None:
    """Ids are written out in the generator; moving a panel must not renumber the ones people link to."""
    images = {p["title"]: p["id"] for p in _load("docker-images.json")["panels"]}
    assert images["Data-root free space (with alert thresholds)"] == 7
    assert images["Largest images"] == 18
    remediation = {p["title"]: p["id"] for p in _load("docker-remediation.json")["panels"]}
    assert remediation["Runs by action and result"] == 6


def test_issue_panels_present() -> None:
    images = {p["title"] for p in _panels(_load("docker-images.json"))}
    for title in (
        "Data-root free space (with alert thresholds)",
        "Images",
        "Dangling images",
        "Unused images",
        "Local-only images",
        "Disk usage vs logical size",
        "Reclaimable space",
        "Build cache",
        "Top repositories by size",
        "Largest images",
        "Oldest images",
        "Tag age distribution",
        "Repositories that only have latest",
        "Engine reachable",
        "Snapshot age",
        "Poll duration",
        "Polls and poll errors",
    ):
        assert title in images, title
    remediation = {p["title"] for p in _panels(_load("docker-remediation.json"))}
    for title in (
        "Runs by action and result",
        "Images deleted",
        "Bytes reclaimed",
        "Skipped images by reason",
        "Webhook requests by code",
        "Alerts by outcome",
        "Last run per action",
        "Trash used",
        "Images in the trash",
        "Trash bytes vs max",
        "Restores by result",
    ):
        assert title in remediation, title


def test_stat_panels_show_their_sparkline() -> None:
    """graphMode "area" draws a sparkline only from a range query: an instant query gives one point."""
    stats = [(d["uid"], p) for d in _dashboards() for p in _panels(d) if p["type"] == "stat"]
    assert len(stats) >= 10
    for uid, panel in stats:
        where = f"{uid} / {panel['title']}"
        assert panel["options"]["graphMode"] == "area", where
        for target in panel["targets"]:
            assert target["range"] is True and target["instant"] is False, f"{where}: instant query, no sparkline"


def test_fleet_row_ranks_hosts() -> None:
    """Many hosts on one dashboard: the images dashboard has a row ranking the selected hosts."""
    panels = _load("docker-images.json")["panels"]
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows[:2] == ["Overview", "Fleet: hosts ranked"]
    by_title = {p["title"]: p for p in panels}
    reclaimable = by_title["Top hosts by reclaimable bytes"]
    used = by_title["Top hosts by data-root use"]
    assert reclaimable["id"] == 27 and used["id"] == 28
    assert reclaimable["targets"][0]["expr"].startswith("topk(10, docker_images_reclaimable_bytes{")
    assert used["targets"][0]["expr"].startswith("topk(10, 1 - (docker_filesystem_avail_bytes{")
    assert used["fieldConfig"]["defaults"]["unit"] == "percentunit"
    steps = {s["value"] for s in used["fieldConfig"]["defaults"]["thresholds"]["steps"]}
    warning = round(1 - float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"]), 6)
    critical = round(1 - float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"]), 6)
    assert {warning, critical} <= steps


def test_image_table_columns() -> None:
    panel = next(p for p in _load("docker-images.json")["panels"] if p["title"] == "Largest images")
    exprs = " ".join(t["expr"] for t in panel["targets"])
    for metric in (
        "docker_image_size_bytes",
        "docker_image_unique_size_bytes",
        "docker_image_created_timestamp_seconds",
        "docker_image_last_used_timestamp_seconds",
        "docker_image_containers",
    ):
        assert metric in exprs, metric
    assert all(t["format"] == "table" and t["instant"] for t in panel["targets"])


def test_filesystem_panels_draw_the_alert_thresholds() -> None:
    levels = {
        float(DEFAULT_THRESHOLDS["disk_avail_ratio_warning"]),
        float(DEFAULT_THRESHOLDS["disk_avail_ratio_critical"]),
    }
    for name, title in (
        ("docker-images.json", "Data-root free space (with alert thresholds)"),
        ("docker-remediation.json", "Data-root free space during remediation"),
    ):
        panel = next(p for p in _load(name)["panels"] if p["title"] == title)
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == "percentunit"
        steps = {s["value"] for s in defaults["thresholds"]["steps"] if s["value"] is not None}
        assert levels <= steps, f"{title}: threshold lines {steps} miss the alert levels {levels}"
        assert "line" in defaults["custom"]["thresholdsStyle"]["mode"]


def test_remediation_runs_annotation_from_metrics() -> None:
    for dashboard in _dashboards():
        annotations = [a for a in dashboard["annotations"]["list"] if a.get("expr")]
        assert annotations, dashboard["uid"]
        for annotation in annotations:
            assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert re.match(r"changes\(docker_remediation_last_run_timestamp_seconds\{", annotation["expr"])
            assert annotation["expr"].endswith("> 0")


# ----------------------------------------------------------------------------------------- Grafana's model

# The typed options model of each panel type the dashboards use: decoding into it proves Grafana knows the type.
_OPTIONS_MODELS: dict[str, type] = {
    "stat": stat.Options,
    "timeseries": timeseries.Options,
    "bargauge": bargauge.Options,
    "table": table.Options,
}
# Fields Grafana writes and reads that the SDK's schema leaves out, so they cannot round-trip: a query
# variable's `definition` (the query text the editor shows), the Prometheus annotation query's own fields,
# and the null `id` of an importable dashboard. Nothing inside a panel is on this list.
_NOT_IN_SDK_SCHEMA = {
    "/id",
    "/templating/list[]/definition",
    *(f"/annotations/list[]/{key}" for key in ("step", "titleFormat", "textFormat", "tagKeys", "useValueForTime")),
}


def _lost_fields(original: Any, decoded: Any, path: str = "") -> list[str]:
    """Paths (list indexes as ``[]``) of fields in ``original`` that ``decoded`` lacks or holds differently.

    The SDK fills in its defaults, so fields it adds are fine; a field it drops is one its model does not
    know (a misspelt key, an option of another panel type), and a changed value one it reads differently.
    """
    if isinstance(original, dict) and isinstance(decoded, dict):
        lost: list[str] = []
        for key, value in original.items():
            if key not in decoded:
                lost.append(f"{path}/{key}")
            else:
                lost.extend(_lost_fields(value, decoded[key], f"{path}/{key}"))
        return lost
    if isinstance(original, list) and isinstance(decoded, list) and len(original) == len(decoded):
        return [p for a, b in zip(original, decoded, strict=True) for p in _lost_fields(a, b, f"{path}[]")]
    return [] if original == decoded else [f"{path} (value)"]


def _decode(data: dict[str, Any]) -> tuple[GrafanaDashboard, dict[str, Any]]:
    """``data`` through the SDK's Dashboard model, and that model encoded back to JSON."""
    register_default_plugins()
    model = GrafanaDashboard.from_json(data)
    encoded: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return model, encoded


@pytest.mark.parametrize("name", sorted(generate.DASHBOARDS))
def test_dashboards_round_trip_through_grafanas_model(name: str) -> None:
    """Both dashboards decode with grafana-foundation-sdk's model (pinned Grafana 11.6 schema): every panel's
    type has its typed options, every query is a Prometheus query, and every field round-trips."""
    data = _load(name)
    model, encoded = _decode(data)
    panels = [p for p in model.panels or [] if isinstance(p, GrafanaPanel)]
    assert len(panels) == len(_panels(data))
    for panel in panels:
        assert panel.type_val in _OPTIONS_MODELS, f"{panel.title}: panel type {panel.type_val} not expected"
        assert isinstance(panel.options, _OPTIONS_MODELS[panel.type_val]), f"{panel.title}: options not decoded"
        assert panel.targets, panel.title
        assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets), panel.title
    lost = [path for path in _lost_fields(data, encoded) if path not in _NOT_IN_SDK_SCHEMA]
    assert not lost, f"{name}: fields Grafana's model does not know or reads differently: {lost}"


def test_round_trip_check_catches_unknown_fields_and_panel_types() -> None:
    """Control: a misspelt option, a misspelt panel field and an unknown panel type are all caught."""
    data = _load("docker-images.json")
    stat_panel = next(p for p in data["panels"] if p["type"] == "stat")
    stat_panel["options"]["graphmode"] = stat_panel["options"].pop("graphMode")
    stat_panel["gridpos"] = stat_panel.pop("gridPos")
    _model, encoded = _decode(data)
    lost = {path for path in _lost_fields(data, encoded) if path not in _NOT_IN_SDK_SCHEMA}
    assert {"/panels[]/options/graphmode", "/panels[]/gridpos"} <= lost
    stat_panel["type"] = "stats"
    model, _encoded = _decode(data)
    decoded = next(p for p in model.panels or [] if isinstance(p, GrafanaPanel) and p.title == stat_panel["title"])
    assert not isinstance(decoded.options, stat.Options)


# ----------------------------------------------------------------------------------------- the queries


def test_all_queries_covers_every_target_and_annotation() -> None:
    from_json = sorted(
        [(d["uid"], p["title"], t["expr"]) for d in _dashboards() for p in _panels(d) for t in p["targets"]]
        + [
            (d["uid"], f"annotation: {a['name']}", a["expr"])
            for d in _dashboards()
            for a in d["annotations"]["list"]
            if a.get("expr")
        ]
    )
    assert sorted(all_queries()) == from_json
    assert set(queries_that_may_be_empty()) <= set(all_queries())


def test_every_selector_filters_by_job_and_instance() -> None:
    for uid, title, expr in all_queries():
        metrics = re.findall(r"\b(docker_[a-z_]+)\b(\{[^}]*\})?", expr)
        assert metrics, f"{uid} / {title}: no exporter metric in {expr}"
        for metric, matchers in metrics:
            for matcher in ('job=~"$job"', 'node=~"$node"', 'instance=~"$instance"'):
                assert matcher in matchers, f"{uid} / {title}: {metric} is not filtered by {matcher}"


def test_substitute_variables() -> None:
    expr = 'sum(rate(x{job=~"$job", instance=~"${instance}"}[$__rate_interval])) / $__range_s + 0*y[$__interval]'
    out = substitute_variables(expr, "docker-image-exporter", "127.0.0.1:10151", rate_interval="2m")
    assert out == (
        'sum(rate(x{job=~"docker-image-exporter", instance=~"127\\\\.0\\\\.0\\\\.1:10151"}[2m])) / 3600 + 0*y[1m]'
    )
    for _uid, _title, query in all_queries():
        substituted = substitute_variables(query, JOB, INSTANCE)
        assert "$" not in substituted, substituted
        assert "__" not in substituted.replace("__name__", ""), substituted


def _rule_file_with(exprs: list[str]) -> str:
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    return yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False, width=1000)


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    exprs = [substitute_variables(q, JOB, INSTANCE) for _u, _t, q in all_queries()]
    rules = tmp_path / "dashboards.rules.yml"
    rules.write_text(_rule_file_with(exprs), encoding="utf-8")
    result = run_promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_rejects_broken_promql(tmp_path: Path) -> None:
    """Control for the test above: the same harness fails on bad PromQL and on unsubstituted variables."""
    unsubstituted = next(q for _u, _t, q in all_queries() if "$__rate_interval" in q)
    for bad in ("sum by (instance (docker_images)", unsubstituted):
        rules = tmp_path / "bad.rules.yml"
        rules.write_text(_rule_file_with([bad]), encoding="utf-8")
        assert run_promtool("check", "rules", str(rules)).returncode != 0, bad


# A host as the exporter's metric contract describes it, with every optional thing present (a last-used time,
# a poll error, a repository that only has `latest`, a skipped image, a run in the last minutes), so that
# every dashboard query must return data. Values are synthetic; the shapes (names, labels, types) are the
# contract's. promtool's clock starts at 0, so timestamps are seconds since then.
_T = f'job="{JOB}",instance="{INSTANCE}"'
_IMAGES = [
    ("app", "1.0", "aaaaaaaaaaaa", 300, 100),
    ("app", "2.0", "bbbbbbbbbbbb", 320, 120),
    ("localhost:5000/team/web", "latest", "cccccccccccc", 500, 500),
    ("<none>", "<none>", "dddddddddddd", 50, 50),
]
_SERIES: list[tuple[str, str]] = [
    (f"docker_up{{{_T}}}", "1x120"),
    (
        f'docker_engine_info{{{_T},version="20.10.24",api_version="1.41",storage_driver="overlay2",'
        f'os="linux",arch="amd64"}}',
        "1x120",
    ),
    (f'docker_exporter_build_info{{{_T},version="0.1.0",python_version="3.11.2"}}', "1x120"),
    (f"docker_exporter_poll_duration_seconds{{{_T}}}", "0.05x120"),
    (f'docker_exporter_poll_errors_total{{{_T},stage="disk_usage"}}', "0+1x120"),
    (f"docker_exporter_polls_total{{{_T}}}", "0+2x120"),
    (f"docker_exporter_snapshot_timestamp_seconds{{{_T}}}", "0+60x120"),
    (f"docker_exporter_disk_usage_timestamp_seconds{{{_T}}}", "0+60x120"),
    (f"docker_exporter_image_series_dropped{{{_T}}}", "0x120"),
    (f"docker_images{{{_T}}}", "4x120"),
    (f"docker_images_size_bytes{{{_T}}}", "1170x120"),
    (f"docker_images_disk_usage_bytes{{{_T}}}", "970x120"),
    (f"docker_images_dangling{{{_T}}}", "1x120"),
    (f"docker_images_dangling_size_bytes{{{_T}}}", "50x120"),
    (f"docker_images_unused{{{_T}}}", "2x120"),
    (f"docker_images_reclaimable_bytes{{{_T}}}", "170x120"),
    (f"docker_images_local_only{{{_T}}}", "1x120"),
    (f"docker_images_local_only_size_bytes{{{_T}}}", "1048576x120"),
    (f'docker_repository_images{{{_T},repository="app"}}', "2x120"),
    (f'docker_repository_tags{{{_T},repository="app"}}', "2x120"),
    (f'docker_repository_size_bytes{{{_T},repository="app"}}', "620x120"),
    (f'docker_repository_images{{{_T},repository="localhost:5000/team/web"}}', "1x120"),
    (f'docker_repository_tags{{{_T},repository="localhost:5000/team/web"}}', "1x120"),
    (f'docker_repository_size_bytes{{{_T},repository="localhost:5000/team/web"}}', "500x120"),
    (f"docker_build_cache_size_bytes{{{_T}}}", "400x120"),
    (f"docker_build_cache_reclaimable_bytes{{{_T}}}", "300x120"),
    (f"docker_build_cache_entries{{{_T}}}", "7x120"),
    (f'docker_filesystem_size_bytes{{{_T},path="/var/lib/docker"}}', "10000x120"),
    (f'docker_filesystem_avail_bytes{{{_T},path="/var/lib/docker"}}', "1200x60 2500x60"),
    (f'docker_remediation_runs_total{{{_T},action="free-disk",trigger="alert",result="success"}}', "0+1x120"),
    (f'docker_remediation_images_deleted_total{{{_T},action="free-disk"}}', "0+2x120"),
    (f'docker_remediation_reclaimed_bytes_total{{{_T},action="free-disk"}}', "0+100x120"),
    (f'docker_remediation_skipped_images_total{{{_T},action="free-disk",reason="in_use"}}', "0+1x120"),
    (f'docker_remediation_last_run_timestamp_seconds{{{_T},action="free-disk"}}', "0+60x120"),
    (f'docker_remediation_last_run_reclaimed_bytes{{{_T},action="free-disk"}}', "100x120"),
    (f'docker_remediation_running{{{_T},action="free-disk"}}', "0x120"),
    (f'docker_webhook_requests_total{{{_T},code="200"}}', "0+1x120"),
    (f'docker_webhook_alerts_total{{{_T},status="firing",outcome="routed"}}', "0+1x120"),
    (f"docker_remediation_trash_bytes{{{_T}}}", "0+1000x120"),
    (f"docker_remediation_trash_images{{{_T}}}", "2x120"),
    (f"docker_remediation_trash_max_bytes{{{_T}}}", "1073741824x120"),
    (f'docker_remediation_restored_images_total{{{_T},result="restored"}}', "0+1x120"),
]
for _repo, _tag, _id, _size, _unique in _IMAGES:
    _labels = f'{_T},repository="{_repo}",tag="{_tag}",image_id="{_id}"'
    _SERIES += [
        (f"docker_image_size_bytes{{{_labels}}}", f"{_size}x120"),
        (f"docker_image_shared_size_bytes{{{_labels}}}", f"{_size - _unique}x120"),
        (f"docker_image_unique_size_bytes{{{_labels}}}", f"{_unique}x120"),
        (f"docker_image_created_timestamp_seconds{{{_labels}}}", "0x120"),
        (f"docker_image_last_tag_timestamp_seconds{{{_labels}}}", "60x120"),
        (f"docker_image_last_used_timestamp_seconds{{{_labels}}}", "600x120"),
        (f"docker_image_containers{{{_labels}}}", "1x120"),
    ]


def _empty_check(
    tmp_path: Path, exprs: list[tuple[str, str]], series: list[tuple[str, str]] = _SERIES
) -> subprocess.CompletedProcess[str]:
    """Run ``absent(expr)`` alerts for every expr over the synthetic host; an alert fires per empty query."""
    rules = [
        {"alert": "DashboardQueryEmpty", "expr": f"absent({expr})", "labels": {"query": label}} for label, expr in exprs
    ]
    (tmp_path / "empty.rules.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "empty", "rules": rules}]}, sort_keys=False, width=1000),
        encoding="utf-8",
    )
    test = {
        "rule_files": ["empty.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "alert_rule_test": [{"eval_time": "110m", "alertname": "DashboardQueryEmpty", "exp_alerts": []}],
            }
        ],
    }
    (tmp_path / "empty.test.yml").write_text(yaml.safe_dump(test, sort_keys=False, width=1000), encoding="utf-8")
    return run_promtool("test", "rules", "empty.test.yml", cwd=tmp_path)


def test_every_query_returns_data_for_a_host_shaped_like_the_contract(tmp_path: Path) -> None:
    exprs = [
        (f"{uid} / {title} / {i}", substitute_variables(q, JOB, INSTANCE, rate_interval="5m"))
        for i, (uid, title, q) in enumerate(all_queries())
    ]
    result = _empty_check(tmp_path, exprs)
    assert result.returncode == 0, "queries that returned nothing:\n" + result.stdout + result.stderr


def test_empty_query_check_detects_an_empty_query(tmp_path: Path) -> None:
    """Control: a query for another instance (or a misspelt metric) must trip the check above."""
    _uid, _title, query = all_queries()[1]
    exprs = [
        ("other instance", substitute_variables(query, JOB, "10.0.0.9:10151")),
        ("misspelt", 'docker_imagez{job="docker-image-exporter"}'),
    ]
    result = _empty_check(tmp_path, exprs)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "other instance" in output and "misspelt" in output


def test_every_query_filters_by_the_kubernetes_node(tmp_path: Path) -> None:
    """The same host scraped through the Helm chart (a `node` label on every series): with that node selected
    every query returns data; with another node selected none does (control)."""
    on_node = [(name.replace(_T, f'{_T},node="worker-1"'), values) for name, values in _SERIES]
    assert all('node="worker-1"' in name for name, _v in on_node)

    def exprs(node: str) -> list[tuple[str, str]]:
        return [
            (f"{uid} / {title} / {i}", substitute_variables(q, JOB, INSTANCE, node=node, rate_interval="5m"))
            for i, (uid, title, q) in enumerate(all_queries())
        ]

    selected = _empty_check(tmp_path, exprs("worker-1"), on_node)
    assert selected.returncode == 0, "queries that returned nothing:\n" + selected.stdout + selected.stderr
    other = _empty_check(tmp_path, exprs("worker-2"), on_node)
    assert other.returncode != 0
    reported = set(re.findall(r'query="([^"]+)"', other.stdout + other.stderr))
    # Every query but the tag-age buckets (`count(...) or vector(0)` always answers) is empty for worker-2.
    expected = {label for label, expr in exprs("worker-2") if "vector(0)" not in expr}
    assert expected and reported == expected, sorted(expected ^ reported)
