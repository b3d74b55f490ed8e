"""The alert rules: committed file equals the renderer, promtool accepts them, and promtool's unit tests prove
each alert fires and stays quiet — and fail when the rules are broken on purpose (mutation controls)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts import recording, render
from alerts.recording import render_recording_rules, render_recording_text
from alerts.render import (
    DEFAULT_THRESHOLDS,
    REMEDIATION_LABELS,
    dump_rules,
    render_rules,
    render_rules_text,
    runbook_anchor,
)
from tests.harness.requires import run_promtool

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "docker-image-exporter.rules.yml"
TESTS_DIR = REPO / "alerts" / "tests"
TEST_FILES = sorted(TESTS_DIR.glob("*.test.yml"))
RUNBOOKS = REPO / "docs" / "runbooks.md"
RECORDING = REPO / "alerts" / "docker-image-exporter.recording.yml"


def _rules(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in doc["groups"] for rule in group["rules"]]


# ----------------------------------------------------------------------------------------- file and shape


def test_committed_rules_equal_renderer() -> None:
    assert RULES.read_text(encoding="utf-8") == render_rules_text(), (
        "alerts/docker-image-exporter.rules.yml differs from alerts/render.py: run `python -m alerts.render`"
    )


def test_every_alert_is_complete() -> None:
    rules = _rules(yaml.safe_load(RULES.read_text(encoding="utf-8")))
    assert {r["alert"] for r in rules} == set(REMEDIATION_LABELS)
    for rule in rules:
        name = rule["alert"]
        assert rule["for"], name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["labels"].get("remediation") == REMEDIATION_LABELS[name], name
        for key in ("summary", "description"):
            assert "{{ $labels.instance }}" in rule["annotations"][key], f"{name} {key} does not name the host"


def test_alerts_for_humans_carry_no_remediation_label() -> None:
    """An alert no action can fix has no `remediation` label at all, so a route matching on the label (even
    `remediation!=""` or a broad regex) can never send it to the webhook."""
    for rule in _rules(render_rules()):
        if REMEDIATION_LABELS[rule["alert"]] is None:
            assert "remediation" not in rule["labels"], rule["alert"]
    assert render_rules()["groups"] and any(v is None for v in REMEDIATION_LABELS.values())


def test_exporter_down_is_a_warning() -> None:
    """A scrape failure is not an outage of the hosts' Docker: nobody should be woken for it."""
    severities = {r["labels"]["severity"] for r in _rules(render_rules()) if r["alert"] == "DockerImageExporterDown"}
    assert severities == {"warning"}


def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of ``markdown`` (lower case, punctuation dropped, spaces to -)."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_every_alert_has_a_runbook_url_whose_section_exists() -> None:
    anchors = _github_anchors(RUNBOOKS.read_text(encoding="utf-8"))
    base = DEFAULT_THRESHOLDS["runbook_base_url"]
    assert isinstance(base, str) and base.endswith("/docs/runbooks.md"), base
    for rule in _rules(yaml.safe_load(RULES.read_text(encoding="utf-8"))):
        url = rule["annotations"].get("runbook_url")
        assert url == f"{base}#{runbook_anchor(rule['alert'])}", rule["alert"]
        assert url.rpartition("#")[2] in anchors, f"docs/runbooks.md has no section for {rule['alert']}"


def _runbook_sections(markdown: str) -> dict[str, str]:
    """The text under each `## <alert>` heading of docs/runbooks.md, by alert name."""
    parts = re.split(r"^## (\S+)\s*$", markdown, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_runbook_of_every_deleting_or_remediation_alert_links_the_way_back() -> None:
    """Alerts that start deletions (a `remediation` label) and the alerts about remediation itself tell the
    reader how a deleted image comes back."""
    sections = _runbook_sections(RUNBOOKS.read_text(encoding="utf-8"))
    concerned = [n for n, action in REMEDIATION_LABELS.items() if action is not None or "Remediation" in n]
    assert len(concerned) >= 6, concerned
    for name in concerned:
        assert "(remediation.md#getting-an-image-back)" in sections[name], f"runbook of {name}"
    assert "## Getting an image back" in (REPO / "docs" / "remediation.md").read_text(encoding="utf-8")


def test_runbook_anchor_check_detects_a_missing_section() -> None:
    """Control for the test above: a runbook without the alert's heading does not have its anchor."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    assert runbook_anchor("DockerDiskPressure") in _github_anchors(text)
    without = text.replace("## DockerDiskPressure\n", "## Disk pressure\n")
    assert runbook_anchor("DockerDiskPressure") not in _github_anchors(without)


def test_runbook_base_url_is_a_render_setting() -> None:
    rules = _rules(render_rules({"runbook_base_url": "https://wiki.example.com/docker"}))
    assert {r["annotations"]["runbook_url"] for r in rules} == {
        f"https://wiki.example.com/docker#{runbook_anchor(name)}" for name in REMEDIATION_LABELS
    }


def test_remediation_labels_match_example_routes() -> None:
    """Every remediation label is routed to the webhook by the example Alertmanager configs and
    mapped to an action by the example exporter config."""
    actionable = {v for v in REMEDIATION_LABELS.values() if v is not None}
    for path in (REPO / "examples/alertmanager/alertmanager.yml", REPO / "examples/compose/alertmanager.yml"):
        text = path.read_text(encoding="utf-8")
        for label in actionable:
            assert label in text, f"{path}: {label} not routed"
    exporter = yaml.safe_load((REPO / "examples/compose/exporter.yml").read_text(encoding="utf-8"))
    routed = {r["action"]: r["matchers"] for r in exporter["remediation"]["routes"]}
    for label in actionable:
        assert label in exporter["remediation"]["actions"], label
        assert f'remediation="{label}"' in routed[label], label


def test_promtool_check_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules(render_rules()))} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES, "no alerts/tests/*.test.yml"
    result = run_promtool("test", "rules", *map(str, TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_firing_and_quiet_cases() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        for case in doc["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fires == set(REMEDIATION_LABELS), f"never shown firing: {set(REMEDIATION_LABELS) - fires}"
    assert quiet == set(REMEDIATION_LABELS), f"never shown quiet: {set(REMEDIATION_LABELS) - quiet}"


# ----------------------------------------------------------------------------------------- mutation controls


def _drop_fresh_series_arm(doc: dict[str, Any]) -> None:
    for rule in _rules(doc):
        if rule["alert"] == "DockerRemediationFailing":
            start = rule["expr"].index(" or (docker_remediation_runs_total")
            end = rule["expr"].index("offset 1h) > 0", start) + len("offset 1h) > 0")
            rule["expr"] = rule["expr"][:start] + rule["expr"][end:]


def _drop_dry_run_exclusion(doc: dict[str, Any]) -> None:
    for rule in _rules(doc):
        if rule["alert"] == "DockerRemediationNotFreeingSpace":
            rule["expr"] = rule["expr"].split("\nunless on (job, instance, action)")[0]


def _candidates_ignored(doc: dict[str, Any]) -> None:
    """A run that selected nothing counts as stuck: the busy-but-healthy host must then alert."""
    for rule in _rules(doc):
        if rule["alert"] == "DockerRemediationNotFreeingSpace":
            rule["expr"] = rule["expr"].replace("last_run_candidates > 0", "last_run_candidates >= 0")


def _shortfall_ignored(doc: dict[str, Any]) -> None:
    for rule in _rules(doc):
        if rule["alert"] == "DockerRemediationNotFreeingSpace":
            start = rule["expr"].index("  or on (job, instance, action)\n  docker_remediation_last_run_shortfall")
            end = rule["expr"].index("\n", rule["expr"].index("shortfall_bytes > 0", start))
            rule["expr"] = rule["expr"][:start] + rule["expr"][end + 1 :]


def _filling_up_without_size_guard(doc: dict[str, Any]) -> None:
    for rule in _rules(doc):
        if rule["alert"] == "DockerDataRootFillingUp":
            rule["expr"] = rule["expr"].split("\nand on (job, instance, path)")[0]


def _dangling_needs_both(doc: dict[str, Any]) -> None:
    for rule in _rules(doc):
        if rule["alert"] == "DockerDanglingImagesPiling":
            rule["expr"] = rule["expr"].replace("or on (job, instance)", "and on (job, instance)")


MUTATIONS: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], None] | None, str]] = [
    (
        "no low watermark",
        {"disk_avail_ratio_warning_clear": 0.15, "disk_avail_ratio_critical_clear": 0.05},
        None,
        "disk",
    ),
    ("exporter job not filtered", {"exporter_job_regex": ".*"}, None, "health"),
    ("stale threshold ignored", {"stale_seconds": 3600}, None, "health"),
    ("reclaimable floor ignored", {"reclaimable_min_bytes": 0}, None, "images"),
    ("failure counter born at 1 missed", {}, _drop_fresh_series_arm, "remediation"),
    ("dry runs counted as not freeing", {}, _drop_dry_run_exclusion, "remediation"),
    ("dangling needs size and count", {}, _dangling_needs_both, "images"),
    ("runs without candidates counted as stuck", {}, _candidates_ignored, "remediation"),
    ("goal shortfall ignored", {}, _shortfall_ignored, "remediation"),
    ("filling up beyond the horizon", {"filling_horizon_seconds": 864000}, None, "disk"),
    ("filling up on a filesystem of size 0", {}, _filling_up_without_size_guard, "disk"),
]


@pytest.mark.parametrize(
    ("overrides", "mutate", "test_file"),
    [pytest.param(o, m, f, id=name) for name, o, m, f in MUTATIONS],
)
def test_unit_tests_catch_broken_rules(
    tmp_path: Path,
    overrides: dict[str, Any],
    mutate: Callable[[dict[str, Any]], None] | None,
    test_file: str,
) -> None:
    """Each promtool test file must fail against rules broken in a way it is meant to catch."""
    doc = render_rules(overrides)
    if mutate is not None:
        mutate(doc)
    assert dump_rules(doc) != render_rules_text(), "the mutation changed nothing"
    (tmp_path / "alerts" / "tests").mkdir(parents=True)
    (tmp_path / "alerts" / RULES.name).write_text(dump_rules(doc), encoding="utf-8")
    target = tmp_path / "alerts" / "tests" / f"{test_file}.test.yml"
    shutil.copy(TESTS_DIR / f"{test_file}.test.yml", target)
    assert run_promtool("check", "rules", str(tmp_path / "alerts" / RULES.name)).returncode == 0
    result = run_promtool("test", "rules", str(target))
    assert result.returncode != 0, f"{test_file}.test.yml still passes with broken rules:\n{result.stdout}"


# ----------------------------------------------------------------------------------------- overrides


def test_overrides_for_the_e2e_loop(tmp_path: Path) -> None:
    """What the end-to-end loop does: fire below 50 % free at once, no hysteresis, keep firing 2m after."""
    text = render_rules_text(
        {
            "disk_avail_ratio_warning": 0.5,
            "disk_avail_ratio_warning_clear": 0.5,
            "disk_for": "0s",
            "disk_keep_firing_for": "2m",
        }
    )
    warning = next(
        r
        for r in _rules(yaml.safe_load(text))
        if r["alert"] == "DockerDiskPressure" and r["labels"]["severity"] == "warning"
    )
    assert "ALERTS" not in warning["expr"], "clear == fire: no hysteresis arm"
    assert warning["keep_firing_for"] == "2m" and warning["for"] == "0s"
    (tmp_path / "rules.yml").write_text(text, encoding="utf-8")
    labels = {
        "severity": "warning",
        "remediation": "free-disk",
        "job": "docker-image-exporter",
        "instance": "127.0.0.1:10151",
        "path": "/var/lib/docker",
    }
    description = (
        "The filesystem holding /var/lib/docker on 127.0.0.1:10151 has {v} space available (fires below 50%). "
        "Routed to the free-disk remediation, which deletes least-recently-used unused images."
    )

    def firing(value: str) -> list[dict[str, Any]]:
        return [
            {
                "exp_labels": labels,
                "exp_annotations": {
                    "summary": f"Docker data root on 127.0.0.1:10151 has only {value} free",
                    "description": description.format(v=value),
                    "runbook_url": f"{DEFAULT_THRESHOLDS['runbook_base_url']}#dockerdiskpressure",
                },
            }
        ]

    test = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": f"docker_filesystem_size_bytes{_lbl(labels)}", "values": "100x10"},
                    # 60 % free, 40 % at 2m, 70 % from 4m: fires at once, keeps firing 2m after recovery.
                    {"series": f"docker_filesystem_avail_bytes{_lbl(labels)}", "values": "60 60 40 40 70x6"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "DockerDiskPressure", "exp_alerts": []},
                    {"eval_time": "2m", "alertname": "DockerDiskPressure", "exp_alerts": firing("40%")},
                    {"eval_time": "5m", "alertname": "DockerDiskPressure", "exp_alerts": firing("40%")},
                    {"eval_time": "7m", "alertname": "DockerDiskPressure", "exp_alerts": []},
                ],
            }
        ],
    }
    (tmp_path / "loop.test.yml").write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    result = run_promtool("test", "rules", "loop.test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _lbl(labels: dict[str, str]) -> str:
    keep = {k: v for k, v in labels.items() if k in ("job", "instance", "path")}
    return "{" + ",".join(f'{k}="{v}"' for k, v in keep.items()) + "}"


def test_merge_thresholds_rejects_typos_and_inverted_watermarks() -> None:
    with pytest.raises(KeyError, match="disk_avail_ratio_warnin"):
        render_rules({"disk_avail_ratio_warnin": 0.5})
    with pytest.raises(ValueError, match="must be >="):
        render_rules({"disk_avail_ratio_warning": 0.5})  # clear level 0.2 is below it
    with pytest.raises(TypeError):
        render_rules({"disk_for": 300})
    with pytest.raises(TypeError):
        render_rules({"dangling_images": True})
    with pytest.raises(TypeError, match="runbook_base_url"):
        render_rules({"runbook_base_url": 1})


def test_string_thresholds_pass_through_for_templating() -> None:
    placeholder = "{{ .Values.alerts.diskAvailRatioWarning }}"
    rules = _rules(render_rules({"disk_avail_ratio_warning": placeholder}))
    assert any(placeholder in r["expr"] for r in rules if r["alert"] == "DockerDiskPressure")
    base = "{{ .Values.runbookBaseUrl }}"
    rules = _rules(render_rules({"runbook_base_url": base}))
    assert all(r["annotations"]["runbook_url"].startswith(base + "#") for r in rules)


def test_every_threshold_is_used() -> None:
    """Changing any threshold changes the rendered rules: no dead knobs in DEFAULT_THRESHOLDS."""
    base = render_rules_text()
    for key, value in DEFAULT_THRESHOLDS.items():
        if key == "disk_keep_firing_for":
            changed: Any = "3m"
        elif isinstance(value, str):
            changed = "7h" if key.endswith(("_for", "_window")) else value + "x"
        else:
            changed = value * 1.01 if key.endswith("_clear") else value * 0.99
        if key == "disk_avail_ratio_warning":
            changed = 0.149
        assert render_rules_text({key: changed}) != base, key


def test_cli_writes_overridden_rules(tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alerts.render",
            "--set",
            "disk_avail_ratio_warning=0.5",
            "--set",
            "disk_avail_ratio_warning_clear=0.6",
            "--set",
            "disk_for=0s",
            "--output",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text(encoding="utf-8") == render_rules_text(
        {"disk_avail_ratio_warning": 0.5, "disk_avail_ratio_warning_clear": 0.6, "disk_for": "0s"}
    )
    assert "< 0.5\n" in out.read_text(encoding="utf-8")
    assert render.main(["--output", str(tmp_path / "default.yml")]) == 0
    assert (tmp_path / "default.yml").read_text(encoding="utf-8") == RULES.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------- fleet recording rules


def test_committed_recording_rules_equal_renderer() -> None:
    assert RECORDING.read_text(encoding="utf-8") == render_recording_text(), (
        "alerts/docker-image-exporter.recording.yml differs from alerts/recording.py: run `python -m alerts.recording`"
    )


def test_promtool_check_recording_rules() -> None:
    result = run_promtool("check", "rules", str(RECORDING))
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(render_recording_rules()["groups"][0]["rules"])
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_pressure_count_follows_the_warning_threshold() -> None:
    text = render_recording_text({"disk_avail_ratio_warning": 0.1, "disk_avail_ratio_warning_clear": 0.2})
    assert "> 0.9)" in text and "> 0.85" not in text


def _no_zero_arm(doc: dict[str, Any]) -> None:
    for rule in doc["groups"][0]["rules"]:
        rule["expr"] = rule["expr"].split("\nor\n")[0]


def _no_born_at_one_arm(doc: dict[str, Any]) -> None:
    for rule in doc["groups"][0]["rules"]:
        if rule["record"].endswith("runs:increase1h"):
            rule["expr"] = "sum by (job, action, result) (increase(docker_remediation_runs_total[1h]))"


@pytest.mark.parametrize(
    ("overrides", "mutate"),
    [
        pytest.param({"disk_avail_ratio_warning": 0.16, "disk_avail_ratio_warning_clear": 0.2}, None, id="threshold"),
        pytest.param({}, _no_zero_arm, id="no data instead of 0"),
        pytest.param({}, _no_born_at_one_arm, id="counter born at 1 missed"),
    ],
)
def test_recording_unit_tests_catch_broken_rules(
    tmp_path: Path, overrides: dict[str, Any], mutate: Callable[[dict[str, Any]], None] | None
) -> None:
    doc = render_recording_rules(overrides)
    if mutate is not None:
        mutate(doc)
    (tmp_path / "alerts" / "tests").mkdir(parents=True)
    (tmp_path / "alerts" / RECORDING.name).write_text(dump_rules(doc), encoding="utf-8")
    assert dump_rules(doc) != dump_rules(render_recording_rules()), "the mutation changed nothing"
    target = tmp_path / "alerts" / "tests" / "recording.test.yml"
    shutil.copy(TESTS_DIR / "recording.test.yml", target)
    assert run_promtool("check", "rules", str(tmp_path / "alerts" / RECORDING.name)).returncode == 0
    result = run_promtool("test", "rules", str(target))
    assert result.returncode != 0, f"recording.test.yml still passes with broken rules:\n{result.stdout}"


def test_recording_cli_writes_the_committed_file(tmp_path: Path) -> None:
    assert recording.main(["--output", str(tmp_path / "rec.yml")]) == 0
    assert (tmp_path / "rec.yml").read_text(encoding="utf-8") == RECORDING.read_text(encoding="utf-8")
