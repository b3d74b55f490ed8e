"""Issue 12 on a private engine: a cron run missed while the exporter was stopped runs once, not twice.

Deterministic, no waiting for a clock: the state file is seeded as an exporter that last ran the weekly
job more than a week ago would have left it, so one occurrence (at least) was missed while it was "down".
The real exporter subprocess must catch up exactly once after start, persist that run, and after a
restart see from the state file that nothing is due (next run: the coming Sunday 03:00, Berlin time).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from exporter.core.schedule import Cron
from exporter.state.history import STATE_VERSION
from tests.harness.dockerd import PrivateDockerd
from tests.harness.exporter import ExporterProcess
from tests.harness.fixtures import ExporterFactory

# subject: schedules; the engine does not matter, so one engine (make test) is enough
pytestmark = pytest.mark.engine_agnostic

TOKEN = "schedule-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
WEEKLY = Cron("0 3 * * SUN", "Europe/Berlin")


def config(tmp_path: Path) -> dict[str, Any]:
    return {
        "state": {"path": str(tmp_path / "state.json")},
        "poll": {"interval": "10m"},
        "remediation": {
            "enabled": True,
            "auth": {"bearer_token": TOKEN},
            "audit_log": str(tmp_path / "audit.jsonl"),
            "timezone": "Europe/Berlin",
            "actions": {"weekly": {"type": "prune_dangling", "schedule": "0 3 * * SUN"}},
        },
    }


def actions(exp: ExporterProcess) -> dict[str, Any]:
    status, body = exp.request("GET", "/api/v1/actions", headers=BEARER)
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


def weekly(data: dict[str, Any]) -> dict[str, Any]:
    (action,) = [a for a in data["actions"] if a["name"] == "weekly"]
    assert isinstance(action, dict)
    return action


def scheduled_runs(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in data["runs"] if r["trigger"] == "schedule"]


def scheduled_runs_counted(exp: ExporterProcess) -> float:
    return sum(
        v
        for labels, v in exp.samples("docker_remediation_runs_total")
        if labels.get("action") == "weekly" and labels.get("trigger") == "schedule"
    )


def saved_schedule(tmp_path: Path) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads((tmp_path / "state.json").read_text())["schedules"]["weekly"]
    return entry


def test_a_cron_run_missed_while_stopped_runs_once_after_restart_and_not_twice(
    dockerd: PrivateDockerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    last_run = time.time() - 8 * 86400  # over a week ago: a Sunday 03:00 came and went while "down"
    missed = WEEKLY.next_after(last_run)
    assert missed < time.time()
    (tmp_path / "state.json").write_text(
        json.dumps(
            {"version": STATE_VERSION, "schedules": {"weekly": {"since": last_run - 86400, "last_run": last_run}}}
        )
    )

    exp = exporter_factory(dockerd, config(tmp_path))
    started = time.time()
    finished = exp.wait_for(
        lambda: [r for r in scheduled_runs(actions(exp)) if r["finished_at"]], timeout=60, what="the catch-up run"
    )
    (run,) = finished
    assert run["result"] == "success" and not run["dry_run"], run
    data = weekly(actions(exp))
    assert data["schedule"] == "0 3 * * SUN (Europe/Berlin): At 03:00 on Sunday"
    assert data["last_run"] == run["started_at"] and data["last_run_time"].endswith("Z")
    assert data["next_run"] == WEEKLY.next_after(run["started_at"]) > started
    assert exp.sample("docker_remediation_next_run_timestamp_seconds", {"action": "weekly"}) == data["next_run"]
    assert f'data-next-run="{data["next_run"]!r}"' in exp.get("/")  # the landing page, from the same place
    assert scheduled_runs_counted(exp) == 1
    assert len(scheduled_runs(actions(exp))) == 1
    exp.stop()
    assert saved_schedule(tmp_path)["last_run"] == run["started_at"]  # saved before the run, kept at stop

    exp.start()
    exp.wait_ready()
    # the schedule task decides at start: a next_run in the future means "not due", so no run will follow
    again = exp.wait_for(
        lambda: weekly(actions(exp))["next_run"], timeout=30, what="the restarted exporter timing the schedule"
    )
    assert again == data["next_run"]
    assert scheduled_runs(actions(exp)) == []
    assert scheduled_runs_counted(exp) == 0
    assert weekly(actions(exp))["last_run"] == run["started_at"]
    assert saved_schedule(tmp_path)["last_run"] == run["started_at"]
