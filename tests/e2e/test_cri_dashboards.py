"""The shipped dashboards on a containerd node: every query that needs only what the CRI knows returns data.

Debian's Prometheus scrapes an exporter reading a private containerd over the CRI (after a remediation run,
so the remediation panels have series); every dashboard query runs against it. A query may come back empty
only where the dashboards say so for any host, or where it reads a series the CRI cannot know (absent there,
docs/engines.md): the list is computed from the query text, not kept by hand.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.harness.audit import read_audit
from tests.harness.containerd import PrivateContainerd
from tests.harness.dashboard_queries import all_queries, queries_that_may_be_empty, substitute_variables
from tests.harness.fakecri import recorded_specs
from tests.harness.fixtures import ExporterFactory
from tests.harness.images import scenario_basic
from tests.harness.promstack import PrivatePrometheus
from tests.harness.requires import require_programs
from tests.integration.test_cri_engine import ABSENT_ON_CRI
from tests.integration.test_golden_exposition import FIXED_NOW

pytestmark = [pytest.mark.cri, pytest.mark.e2e]
TOKEN = "cri-dashboards"
#: Beyond ABSENT_ON_CRI: last use needs a container that ran (none can here); no trash is configured here
#: (tests/e2e/test_loop.py checks those panels).
EMPTY_HERE = (*ABSENT_ON_CRI, "docker_image_last_used_timestamp_seconds", "docker_remediation_trash_")


def test_dashboard_queries_return_data_on_a_containerd_node(
    containerd: PrivateContainerd, exporter_factory: ExporterFactory, tmp_path: Path
) -> None:
    require_programs("prometheus")
    scenario = scenario_basic(now=FIXED_NOW)
    containerd.load([s for s in scenario.images.values() if s.tags])
    containerd.load(list(scenario.successors.values()))
    containerd.load(recorded_specs())
    audit = tmp_path / "audit.jsonl"
    exp = exporter_factory(
        containerd,
        {
            "poll": {"interval": "1s"},
            "state": {"path": str(tmp_path / "state.json")},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token": TOKEN},
                "audit_log": str(audit),
                "actions": {"dangling": {"type": "prune_dangling", "min_age": "1s"}},
                "routes": [{"matchers": ['remediation="dangling"'], "action": "dangling", "cooldown": "10m"}],
            },
        },
    )
    prom = PrivatePrometheus(tmp_path / "prom", [exp.address])
    prom.start()
    try:
        prom.wait_scraped()
        time.sleep(1.5)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        status, answer = exp.request("POST", "/api/v1/actions/dangling", b"", headers=headers)
        assert status in (200, 202), answer
        exp.wait_for(lambda: any(r.get("event") == "run_end" for r in read_audit(audit)) if audit.exists() else False)
        results = [r["result"] for r in read_audit(audit) if r.get("event") == "image"]
        assert results and set(results) == {"deleted"}, json.dumps(read_audit(audit))
        time.sleep(3)  # let rate() windows see two samples of the counters the run moved
        may_be_empty = queries_that_may_be_empty()
        empty: list[str] = []
        checked = 0
        for uid, title, expr in all_queries():
            promql = substitute_variables(expr, "docker-image-exporter", exp.address, rate_interval="1m", range_="5m")
            result = prom.query_range(promql, seconds=120, step="5s")  # raises on invalid PromQL
            if (uid, title, expr) in may_be_empty or any(name in expr for name in EMPTY_HERE):
                continue
            checked += 1
            if not result:
                empty.append(f"{uid} / {title}: {promql}")
        assert not empty, "dashboard queries without data on a containerd node:\n" + "\n".join(empty)
        assert checked >= 10
    finally:
        prom.stop()
