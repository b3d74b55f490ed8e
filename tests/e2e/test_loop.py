"""The whole loop on real programs: a filling disk is noticed, alerted on, fixed, and the alert resolves.

A private dockerd keeps its data root on a small loop-mounted ext4 filesystem filled with generated images
past the threshold. Debian's Prometheus (1 s scrape and evaluation) loads the project's own rules with the
disk threshold raised so the small filesystem trips it; Debian's Alertmanager (group_wait 1 s) posts to the
exporter's webhook with a bearer token from a file; the exporter's free_space action deletes the least
recently used unprotected images until the filesystem is back above its target. Afterwards every
dashboard query runs against that Prometheus.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from alerts.render import render_rules
from tests.harness.dashboard_queries import all_queries, queries_that_may_be_empty, substitute_variables
from tests.harness.dockerd import PrivateDockerd
from tests.harness.fixtures import EngineFactory, ExporterFactory, LoopFactory
from tests.harness.images import ImageSpec, Layer, create_container, load_images
from tests.harness.promstack import PrivateAlertmanager, PrivatePrometheus, webhook_receiver_config
from tests.harness.registry import PrivateRegistry
from tests.harness.requires import require_programs
from tests.harness.state import write_saved_state

pytestmark = [pytest.mark.engine, pytest.mark.e2e]

MIB = 1024 * 1024
FS_MB = 330
FIRE_BELOW = 0.5  # the rules' DockerDiskPressure threshold, raised for a small filesystem
CLEAR_ABOVE = 0.55
TARGET = 0.6  # the free_space action's goal
TOKEN = "loop-token-0123456789"


def avail_ratio(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail / st.f_blocks


def fill(engine: PrivateDockerd, registry: PrivateRegistry) -> dict[str, list[str]]:
    """Images that push the filesystem under the threshold: pulled-like victims (pushed to a registry, so
    they have repo digests and exist elsewhere), plus four kinds that must survive."""
    old = datetime.now(UTC) - timedelta(days=30)
    base = Layer.random(4 * MIB, "loop-base")
    victims = [
        ImageSpec(
            tags=[registry.ref(f"ci/build:{n}")],
            layers=[base, Layer.random(22 * MIB, f"victim-{n}")],
            created=old + timedelta(hours=n),
        )
        for n in range(8)
    ]
    keepers = {
        "label": ImageSpec(
            tags=["tools/pinned:1"], layers=[Layer.random(12 * MIB, "pinned")], created=old, labels={"keep": "true"}
        ),
        "reference": ImageSpec(tags=["app:production"], layers=[Layer.random(12 * MIB, "prod")], created=old),
        "in_use": ImageSpec(tags=["db:5"], layers=[Layer.random(12 * MIB, "db")], created=old),
        "local_only": ImageSpec(tags=["built/here:1"], layers=[Layer.random(8 * MIB, "local")], created=old),
    }
    for spec in [*victims, *keepers.values()]:  # one by one: dockerd stages each load in its data root
        load_images(engine, [spec])
    for spec in victims:
        engine.cli("push", spec.tags[0])
    create_container(engine, "db:5", name="db-stopped")
    return {"victims": [s.tags[0] for s in victims], "keepers": [s.tags[0] for s in keepers.values()]}


def test_disk_pressure_loop(
    dockerd_factory: EngineFactory,
    loop_fs_factory: LoopFactory,
    exporter_factory: ExporterFactory,
    registry: PrivateRegistry,
    tmp_path: Path,
) -> None:
    require_programs("prometheus", "prometheus-alertmanager")
    fs = loop_fs_factory(FS_MB)
    engine = dockerd_factory("loop", data_root=fs.mountpoint / "docker")
    images = fill(engine, registry)
    start_ratio = avail_ratio(fs.mountpoint)
    assert start_ratio < FIRE_BELOW, f"filling left {start_ratio:.0%} available; the alert could not fire"

    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    audit = tmp_path / "audit.jsonl"
    write_saved_state(tmp_path / "state.json", engine)  # the images filled in were here before
    exp = exporter_factory(
        engine,
        {
            "poll": {"interval": "2s", "disk_usage_interval": "30s", "disk_usage_min_interval": "2s"},
            "filesystem": {"path": str(fs.mountpoint)},
            "state": {"path": str(tmp_path / "state.json")},
            "remediation": {
                "enabled": True,
                "auth": {"bearer_token_file": str(token_file)},
                "protect": {"references": ["*:production"], "labels": ["keep=true"], "local_only": True},
                "audit_log": str(audit),
                # on another filesystem than the data root it frees; the victims have a registry copy, so
                # nothing is saved, but the trash panels have their series
                "trash": {"path": str(tmp_path / "trash"), "max_bytes": "64MiB", "keep_for": "1d"},
                "actions": {
                    "free-disk": {"type": "free_space", "target_avail_ratio": TARGET, "min_age": "10m"},
                },
                "routes": [{"matchers": ['alertname="DockerDiskPressure"'], "action": "free-disk", "cooldown": "10m"}],
            },
        },
    )
    am = PrivateAlertmanager(
        tmp_path / "am",
        webhook_receiver_config(f"{exp.url}/webhook/alertmanager", token_file, matchers=['remediation="free-disk"']),
    )
    rules = render_rules(
        {
            "disk_avail_ratio_warning": FIRE_BELOW,
            "disk_avail_ratio_warning_clear": CLEAR_ABOVE,
            "disk_for": "0s",
        }
    )
    prom = PrivatePrometheus(tmp_path / "prom", [exp.address], [rules], [f"127.0.0.1:{am.port}"])
    am.start()
    prom.start()
    try:
        prom.wait_scraped()
        # noticed and alerted on
        prom.wait_for(
            lambda: any(a["labels"]["alertname"] == "DockerDiskPressure" for a in prom.alerts()),
            timeout=60,
            what="DockerDiskPressure pending or firing",
        )
        # fixed
        exp.wait_for(lambda: avail_ratio(fs.mountpoint) >= TARGET, timeout=120, what=f"avail >= {TARGET:.0%}")
        end_ratio = avail_ratio(fs.mountpoint)
        print(f"data root: {start_ratio:.1%} available before, {end_ratio:.1%} after")

        # protected and in-use images survived; the oldest victims went first
        tags = {t for i in engine.client().api.images() for t in (i.get("RepoTags") or [])}
        assert set(images["keepers"]) <= tags
        gone = [v for v in images["victims"] if v not in tags]
        assert gone, "nothing was deleted"
        assert gone == images["victims"][: len(gone)], f"not least-recently-used first: {gone}"

        # the alert resolves
        prom.wait_for(
            lambda: not any(a["labels"]["alertname"] == "DockerDiskPressure" for a in prom.alerts()),
            timeout=60,
            what="DockerDiskPressure resolved",
        )
        # exactly one run happened, triggered by the alert, however many notifications arrived
        exp.wait_for(lambda: exp.sample("docker_remediation_running", {"action": "free-disk"}) == 0, what="run done")
        assert (
            exp.sample(
                "docker_remediation_runs_total", {"action": "free-disk", "trigger": "alert", "result": "success"}
            )
            == 1
        )
        runs = sum(v for lbl, v in exp.samples("docker_remediation_runs_total") if lbl["action"] == "free-disk")
        assert runs == 1
        assert exp.sample("docker_remediation_images_deleted_total", {"action": "free-disk"}) == len(gone)
        assert audit.read_text().count('"deleted"') >= len(gone)

        _check_dashboard_queries(prom, exp.address)
    finally:
        prom.stop()
        am.stop()


def _check_dashboard_queries(prom: PrivatePrometheus, instance: str) -> None:
    """Every dashboard expr is valid PromQL here, and all but the named few return data."""
    time.sleep(2)  # let rate() windows see two samples of the counters the run moved
    may_be_empty = queries_that_may_be_empty()
    empty: list[str] = []
    for uid, title, expr in all_queries():
        promql = substitute_variables(expr, "docker-image-exporter", instance, rate_interval="1m", range_="5m")
        result = prom.query_range(promql, seconds=120, step="5s")  # raises on invalid PromQL
        if not result and (uid, title, expr) not in may_be_empty:
            empty.append(f"{uid} / {title}: {promql}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
